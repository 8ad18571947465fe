//! `tracectl run --profile-syscalls` against the real daemon and kernel:
//! commands run as an unprivileged user created by the test, in a sandbox
//! below the test's cgroup. The profile's OCI form applied to the same
//! command (ct-seccomp loads it as a container runtime would); a command
//! shorter than 5 ms against strace's count; tracectl's own calls before
//! the exec (Landlock, failed PATH lookups) left out.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use connectracer_tests::sandbox::{log_path, run, sandbox_dirs, stderr, tracectl_run, user, Reaped, CONFIG};
use connectracer_tests::{bin_path, output, strace_names, wait_until, Daemon, TestCgroup};
use serde_json::Value;

/// A file in a directory the test user may write.
fn out_file(tag: &str, name: &str) -> PathBuf {
    log_path(tag).with_file_name(name)
}

fn read_json(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}: {text}", path.display()))
}

/// name -> count, for the native ABI, from the JSON form.
fn counts(reply: &Value) -> BTreeMap<String, u64> {
    reply["syscalls"]
        .as_array()
        .expect("syscalls")
        .iter()
        .filter(|s| s["arch"] == "x86_64")
        .map(|s| {
            (
                s["name"].as_str().unwrap().to_string(),
                s["count"].as_u64().unwrap(),
            )
        })
        .collect()
}

#[test]
fn the_oci_profile_of_a_run_lets_the_command_run_and_refuses_what_it_never_called() {
    let cg = TestCgroup::new("sbprof-oci");
    let mut d = Daemon::start(&cg, CONFIG).expect("daemon");
    let u = user("po");
    let file = out_file("sbprof-oci", "oci.json");
    let out = run(
        &d,
        &u,
        &[
            "--profile-syscalls",
            file.to_str().unwrap(),
            "--",
            "/bin/cat",
            "/etc/hostname",
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        stderr(&out).contains(&format!("written to {}", file.display())),
        "{}",
        stderr(&out)
    );
    d.wait_log("syscall profile ended", Duration::from_secs(5))
        .expect("the daemon ends the recording");
    let first = String::from_utf8_lossy(&out.stdout).into_owned();
    let oci = read_json(&file);
    assert_eq!(oci["defaultAction"], "SCMP_ACT_ERRNO", "{oci:#}");
    let names: BTreeSet<&str> = oci["syscalls"][0]["names"]
        .as_array()
        .expect("names")
        .iter()
        .map(|n| n.as_str().unwrap())
        .collect();
    // execve: the call that started the command, made while the profile
    // was still armed, is in it (a filter applied before exec needs it).
    for expected in ["execve", "openat", "read", "write", "exit_group"] {
        assert!(names.contains(expected), "{expected} missing from {names:?}");
    }
    assert!(!names.contains("getppid"), "{names:?}");
    let seccomp = bin_path("ct-seccomp");
    let (code, again, err) =
        output(
            Command::new(&seccomp)
                .arg(&file)
                .args(["exec", "/bin/cat", "/etc/hostname"]),
        );
    assert_eq!((code, again.as_str()), (0, first.as_str()), "{err}");
    // ct-seccomp exits 0 when the call failed with EPERM.
    let (code, _, err) = output(Command::new(&seccomp).arg(&file).args(["call", "getppid"]));
    assert_eq!(code, 0, "getppid was not refused with EPERM: {err}");
    let _ = std::fs::remove_file(&file);
}

#[test]
fn a_command_shorter_than_5ms_is_profiled_completely() {
    let cg = TestCgroup::new("sbprof-short");
    let d = Daemon::start(&cg, CONFIG).expect("daemon");
    let u = user("ps");
    // How long /bin/true takes here, from spawn to exit, at its fastest.
    let took = (0..10)
        .map(|_| {
            let t = Instant::now();
            Command::new("/bin/true").status().unwrap();
            t.elapsed()
        })
        .min()
        .unwrap();
    assert!(took < Duration::from_millis(5), "/bin/true took {took:?}");
    let file = out_file("sbprof-short", "true.json");
    let out = run(
        &d,
        &u,
        &[
            "--profile-syscalls",
            file.to_str().unwrap(),
            "--profile-format",
            "json",
            "--",
            "/bin/true",
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let reply = read_json(&file);
    let _ = std::fs::remove_file(&file);
    assert!(
        reply["cgroup"]
            .as_str()
            .is_some_and(|c| c.starts_with(&format!("{}/connectracer-sandbox/sb-", cg.rel))),
        "{reply:#}"
    );
    let seen = counts(&reply);
    let traced = strace_names(&["/bin/true"]);
    assert!(traced.len() > 5, "strace saw {traced:?}");
    let missing: Vec<&String> = traced.iter().filter(|n| !seen.contains_key(*n)).collect();
    assert!(
        missing.is_empty(),
        "/bin/true ({took:?}) made {missing:?} (strace) that the profile lacks: {seen:?}"
    );
    assert_eq!(seen.get("execve"), Some(&1), "{seen:?}");
}

#[test]
fn the_launchers_calls_before_the_exec_are_left_out() {
    let cg = TestCgroup::new("sbprof-launcher");
    let d = Daemon::start(&cg, CONFIG).expect("daemon");
    let u = user("pl");
    let file = out_file("sbprof-launcher", "launcher.json");
    // --allow-read: tracectl's child makes Landlock's calls before it
    // execs; a bare `sh` is looked for along PATH, where the child's
    // first two execve fail. Neither is the command's.
    let out = tracectl_run(
        &d,
        &u,
        &[
            "--allow-read",
            "/tmp",
            "--profile-syscalls",
            file.to_str().unwrap(),
            "--profile-format",
            "json",
            "--",
            "sh",
            "-c",
            "/bin/cat /etc/hostname; /bin/cat /etc/hostname",
        ],
    )
    .env("PATH", "/nonexistent/a:/nonexistent/b:/usr/bin:/bin")
    .output()
    .expect("running tracectl run");
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let seen = counts(&read_json(&file));
    let _ = std::fs::remove_file(&file);
    for landlock in [
        "landlock_create_ruleset",
        "landlock_add_rule",
        "landlock_restrict_self",
    ] {
        assert!(!seen.contains_key(landlock), "{landlock}: {seen:?}");
    }
    // The shell's exec and its two children's, and none of the lookups.
    assert_eq!(seen.get("execve"), Some(&3), "{seen:?}");
    // The children are in it: the shell waited for them.
    assert!(seen.contains_key("wait4"), "{seen:?}");
    // The command itself never calls Landlock (so its absence above is
    // the launcher's calls left out, not a command that made none).
    let traced = strace_names(&["sh", "-c", "/bin/cat /etc/hostname; /bin/cat /etc/hostname"]);
    assert!(!traced.iter().any(|n| n.starts_with("landlock")), "{traced:?}");
}

/// A user profiles at most 4 sandboxes at once (each slows every syscall
/// of the host while it records); a sandbox without a profile is not
/// counted, and a slot freed is free again.
#[test]
fn a_user_records_at_most_four_sandbox_profiles_at_once() {
    let cg = TestCgroup::new("sbprof-limit");
    let d = Daemon::start(&cg, CONFIG).expect("daemon");
    let u = user("pm");
    let file = |i: usize| out_file("sbprof-limit", &format!("p{i}.json"));
    let gate = out_file("sbprof-limit", "go");
    let wait = format!("while [ ! -e {} ]; do sleep 0.05; done", gate.display());
    let held: Vec<Reaped> = (0..4)
        .map(|i| {
            let f = file(i);
            let child = tracectl_run(
                &d,
                &u,
                &["--profile-syscalls", f.to_str().unwrap(), "--", "sh", "-c", &wait],
            )
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
            Reaped(child)
        })
        .collect();
    wait_until("four sandboxes placed", Duration::from_secs(10), || {
        sandbox_dirs(&cg).len() == 4
    });
    let fifth = file(4);
    let out = run(
        &d,
        &u,
        &["--profile-syscalls", fifth.to_str().unwrap(), "--", "/bin/true"],
    );
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("has 4 sandboxes recording syscall profiles already"),
        "{}",
        stderr(&out)
    );
    let out = run(&d, &u, &["--", "/bin/true"]);
    assert_eq!(out.status.code(), Some(0), "without a profile: {}", stderr(&out));
    std::fs::write(&gate, "").unwrap();
    for mut h in held {
        assert!(h.0.wait().unwrap().success());
    }
    let out = run(
        &d,
        &u,
        &["--profile-syscalls", fifth.to_str().unwrap(), "--", "/bin/true"],
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    for i in 0..5 {
        assert!(read_json(&file(i))["syscalls"].is_array());
        let _ = std::fs::remove_file(file(i));
    }
    let _ = std::fs::remove_file(&gate);
}
