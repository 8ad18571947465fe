//! Syscall profiles (`tracectl profile`) against the real kernel: a
//! command run in a profiled cgroup, then run again under the OCI profile
//! it produced (ct-seccomp loads it as a container runtime would); a short
//! command's profile against strace's count; the systemd drop-in through
//! `systemd-analyze verify`; who may ask.

use std::collections::BTreeSet;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use connectracer_tests::{bin_path, output, strace_names, Daemon, TestCgroup, TestUser};
use serde_json::Value;

/// Starts `tracectl profile` for `args` in the background, writing to
/// `out`, and waits until the daemon records.
fn start_profile(d: &mut Daemon, args: &[&str], out: &Path) -> Child {
    let child = Command::new(bin_path("tracectl"))
        .arg("--socket")
        .arg(&d.socket)
        .arg("profile")
        .args(args)
        .arg("--write")
        .arg(out)
        .stderr(Stdio::piped())
        .spawn()
        .expect("running tracectl profile");
    d.wait_log("syscall profile started", Duration::from_secs(10))
        .expect("the profile starts");
    child
}

fn finish(child: Child) {
    let out = child.wait_with_output().expect("tracectl profile ends");
    assert!(
        out.status.success(),
        "tracectl profile: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn names(oci: &Value) -> BTreeSet<String> {
    oci["syscalls"][0]["names"]
        .as_array()
        .expect("names")
        .iter()
        .map(|n| n.as_str().unwrap().to_string())
        .collect()
}

fn tmp(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("ct-profile-{}-{name}", std::process::id()))
}

#[test]
fn the_oci_profile_of_a_command_lets_it_run_and_refuses_what_it_never_called() {
    let cg = TestCgroup::new("profile-oci");
    let mut d = Daemon::start(&cg, "").unwrap();
    let work = cg.child("work");
    let file = tmp("oci.json");
    let t = start_profile(&mut d, &["--cgroup", &work.rel, "--for", "3s"], &file);
    let (code, first, err) = output(work.command(Path::new("/bin/cat")).arg("/etc/hostname"));
    assert_eq!(code, 0, "{err}");
    finish(t);
    let oci: Value = serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
    let _ = std::fs::remove_file(&file);
    assert_eq!(oci["defaultAction"], "SCMP_ACT_ERRNO");
    assert_eq!(oci["architectures"], serde_json::json!(["SCMP_ARCH_X86_64"]));
    assert_eq!(oci["syscalls"][0]["action"], "SCMP_ACT_ALLOW");
    let seen = names(&oci);
    for expected in ["execve", "openat", "read", "write", "exit_group"] {
        assert!(seen.contains(expected), "{expected} missing from {seen:?}");
    }
    assert!(!seen.contains("getppid"), "{seen:?}");
    let path = tmp("oci-applied.json");
    std::fs::write(&path, oci.to_string()).unwrap();
    let seccomp = bin_path("ct-seccomp");
    let (code, again, err) =
        output(
            Command::new(&seccomp)
                .arg(&path)
                .args(["exec", "/bin/cat", "/etc/hostname"]),
        );
    assert_eq!((code, again.as_str()), (0, first.as_str()), "{err}");
    // getppid, which cat never calls, fails with EPERM under the profile
    // (and succeeds without it: the helper's exit status 1).
    let (code, _, err) = output(Command::new(&seccomp).arg(&path).args(["call", "getppid"]));
    assert_eq!(code, 0, "getppid was not refused with EPERM: {err}");
    let allow_all = tmp("allow-all.json");
    let mut everything = oci.clone();
    everything["syscalls"][0]["names"]
        .as_array_mut()
        .unwrap()
        .push("getppid".into());
    std::fs::write(&allow_all, everything.to_string()).unwrap();
    let (code, _, err) = output(Command::new(&seccomp).arg(&allow_all).args(["call", "getppid"]));
    assert_eq!(code, 1, "getppid allowed should succeed: {err}");
    let _ = std::fs::remove_file(&path);
    let _ = std::fs::remove_file(&allow_all);
}

#[test]
fn a_short_command_is_profiled_completely_and_by_unit() {
    let cg = TestCgroup::new("profile-short");
    let mut d = Daemon::start(&cg, "").unwrap();
    // Named like a unit's cgroup: found by --unit.
    let unit = format!("ct-profile-{}.scope", std::process::id());
    let work = cg.child(&unit);
    let file = tmp("short.json");
    let t = start_profile(
        &mut d,
        &["--unit", &unit, "--for", "2s", "--format", "json"],
        &file,
    );
    let started = Instant::now();
    let (code, _, err) = output(&mut work.command(Path::new("/bin/true")));
    let took = started.elapsed();
    assert_eq!(code, 0, "{err}");
    finish(t);
    let reply: Value = serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
    let _ = std::fs::remove_file(&file);
    assert_eq!(reply["cgroup"], format!("{}/{unit}", cg.rel).as_str());
    let seen: BTreeSet<String> = reply["syscalls"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            assert_eq!(s["arch"], "x86_64", "{s}");
            assert!(s["count"].as_u64().unwrap() > 0, "{s}");
            s["name"].as_str().unwrap().to_string()
        })
        .collect();
    let traced = strace_names(&["/bin/true"]);
    assert!(traced.len() > 5, "strace saw {traced:?}");
    let missing: Vec<&String> = traced.difference(&seen).collect();
    assert!(
        missing.is_empty(),
        "/bin/true ({took:?}) made {missing:?} (strace) that the profile lacks: {seen:?}"
    );
    eprintln!(
        "/bin/true ran {took:?} (spawn to exit); {} syscalls in its profile",
        seen.len()
    );
}

#[test]
fn i386_calls_are_profiled_under_their_own_abi_with_their_families() {
    let cg = TestCgroup::new("profile-i386");
    let mut d = Daemon::start(&cg, "").unwrap();
    let work = cg.child("work");
    let file = tmp("i386.json");
    let t = start_profile(
        &mut d,
        &["--cgroup", &work.rel, "--for", "2s", "--format", "json"],
        &file,
    );
    let (code, _, err) = output(work.command(&bin_path("ct-seccomp")).arg("int80"));
    assert_eq!(code, 0, "{err}");
    finish(t);
    let reply: Value = serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
    let _ = std::fs::remove_file(&file);
    let compat: BTreeSet<(u64, &str)> = reply["syscalls"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["arch"] == "x86")
        .map(|s| (s["number"].as_u64().unwrap(), s["name"].as_str().unwrap()))
        .collect();
    let want: BTreeSet<(u64, &str)> = [(20, "getpid"), (359, "socket"), (6, "close")].into();
    assert_eq!(compat, want, "{reply:#}");
    // socket(2) through the i386 ABI: its family read from ebx.
    assert!(
        reply["families"]
            .as_array()
            .unwrap()
            .contains(&(libc::AF_INET6 as u64).into()),
        "{reply:#}"
    );
    assert_eq!(reply["socketcall"], 0);
}

#[test]
fn systemd_analyze_verify_accepts_the_drop_in() {
    let cg = TestCgroup::new("profile-systemd");
    let mut d = Daemon::start(&cg, "").unwrap();
    let work = cg.child("work");
    let file = tmp("dropin.conf");
    let t = start_profile(
        &mut d,
        &["--cgroup", &work.rel, "--for", "2s", "--format", "systemd"],
        &file,
    );
    let (code, _, err) = output(
        work.command(Path::new("/usr/bin/getent"))
            .args(["hosts", "localhost"]),
    );
    assert_eq!(code, 0, "{err}");
    finish(t);
    let dropin = std::fs::read_to_string(&file).unwrap();
    let _ = std::fs::remove_file(&file);
    let filter = dropin
        .lines()
        .find_map(|l| l.strip_prefix("SystemCallFilter="))
        .unwrap_or_else(|| panic!("no SystemCallFilter= in {dropin}"));
    // As systemd users write it: @system-service, then what it lacks.
    assert!(filter.starts_with("@system-service"), "{dropin}");
    assert!(dropin.contains("\nSystemCallArchitectures=native\n"), "{dropin}");
    // getent resolved through its sockets (AF_UNIX for nscd at least).
    let families = dropin
        .lines()
        .find_map(|l| l.strip_prefix("RestrictAddressFamilies="))
        .unwrap_or_else(|| panic!("no RestrictAddressFamilies= in {dropin}"));
    assert!(families.contains("AF_UNIX"), "{dropin}");
    connectracer_tests::verify_unit_with("ct-profiled.service", "/usr/bin/getent hosts localhost", &dropin);
}

#[test]
fn a_profile_ends_when_its_caller_goes_away() {
    let cg = TestCgroup::new("profile-gone");
    let mut d = Daemon::start(&cg, "").unwrap();
    let file = tmp("gone.json");
    let mut t = start_profile(&mut d, &["--cgroup", &cg.rel, "--for", "10min"], &file);
    t.kill().unwrap();
    let _ = t.wait();
    // Found at the owner's next once-a-second round, not in ten minutes.
    d.wait_log("syscall profile ended", Duration::from_secs(5))
        .expect("the recording ends with its caller");
    assert!(!file.exists());
    // Its slot and the program are free for the next one; -o json (with
    // no --format) asks for the daemon's JSON.
    let t = start_profile(
        &mut d,
        &["--cgroup", &cg.rel, "--for", "200ms", "-o", "json"],
        &file,
    );
    finish(t);
    let reply: Value = serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
    assert_eq!(reply["cgroup"], cg.rel.as_str(), "{reply:#}");
    assert_eq!(reply["duration_ms"], 200, "{reply:#}");
    let _ = std::fs::remove_file(&file);
}

#[test]
fn only_privileged_callers_may_profile() {
    let cg = TestCgroup::new("profile-authz");
    let d = Daemon::start(&cg, "").unwrap();
    let user = TestUser::create(&format!("ctprof{}", std::process::id() % 100_000), &[]).unwrap();
    std::fs::set_permissions(&d.socket, std::os::unix::fs::PermissionsExt::from_mode(0o666)).unwrap();
    let out = Command::new(bin_path("tracectl"))
        .arg("--socket")
        .arg(&d.socket)
        .args(["profile", "--cgroup", &cg.rel, "--for", "1s"])
        .uid(user.uid)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert!(
        err.contains("recording a syscall profile needs root or membership in group connectracer"),
        "{err}"
    );
    let (code, _, err) = d.tracectl(&["profile", "--cgroup", "/../etc", "--for", "1s"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("invalid value for --cgroup"), "{err}");
}
