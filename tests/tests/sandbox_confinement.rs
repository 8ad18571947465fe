//! `tracectl run` against the real daemon and kernel, the confinement
//! side: nothing leaves a sandbox, only the caller's own child enters one,
//! a sandbox goes with its tracectl and survives a daemon restart, and the
//! file rules hold.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use connectracer_tests::sandbox::{
    lines, log_path, run, sandbox_dirs, stderr, tracectl_run, user, Reaped, CONFIG,
};
use connectracer_tests::{bin_path, tcp_server, wait_until, Daemon, TestCgroup, TestUser};
use serde_json::Value;

/// Nothing in the sandbox can move itself out, into a cgroup it chooses,
/// or create cgroups below it; another user cannot move anything in or
/// out either.
#[test]
fn the_command_cannot_leave_its_sandbox() {
    let cg = TestCgroup::new("sandbox-leave");
    let d = Daemon::start(&cg, CONFIG).expect("daemon");
    let (a, b) = (user("a"), user("b"));
    let mount = cg
        .path
        .to_str()
        .unwrap()
        .strip_suffix(&cg.rel)
        .unwrap()
        .to_string();
    let script = format!(
        "cg=$(sed -n 's/^0:://p' /proc/self/cgroup); \
         for t in \"{mount}$cg\" \"{mount}$cg/..\" \"{cgpath}\" \"{mount}\"; do \
           echo $$ > \"$t/cgroup.procs\" 2>/dev/null && echo \"moved to $t\"; done; \
         mkdir \"{mount}$cg/sub\" 2>/dev/null && echo made-sub; \
         sed -n 's/^0:://p' /proc/self/cgroup",
        cgpath = cg.path.display()
    );
    let out = run(&d, &a, &["--", "sh", "-c", &script]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    let last: Vec<&str> = text.lines().collect();
    assert_eq!(last.len(), 1, "the command moved itself or made a cgroup: {text}");
    assert!(
        last[0].starts_with(&format!("{}/connectracer-sandbox/sb-{}-", cg.rel, a.uid)),
        "{text}"
    );

    // While A's command runs, B can neither put a process in A's sandbox
    // nor take A's out.
    let held = Reaped(
        tracectl_run(&d, &a, &["--", "sleep", "30"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    wait_until("A's sandbox", Duration::from_secs(10), || {
        sandbox_dirs(&cg)
            .iter()
            .any(|p| std::fs::read_to_string(p.join("cgroup.procs")).is_ok_and(|o| !o.trim().is_empty()))
    });
    let dir = sandbox_dirs(&cg).pop().unwrap();
    let victim = std::fs::read_to_string(dir.join("cgroup.procs"))
        .unwrap()
        .trim()
        .to_string();
    let b_try = format!(
        "echo $$ > '{0}/cgroup.procs' 2>/dev/null && echo in; echo {victim} > '{1}/cgroup.procs' 2>/dev/null && echo out; true",
        dir.display(),
        cg.path.display()
    );
    let mut cmd = Command::new("sh");
    std::os::unix::process::CommandExt::uid(&mut cmd, b.uid);
    std::os::unix::process::CommandExt::gid(&mut cmd, b.gid);
    let o = cmd.args(["-c", &b_try]).output().unwrap();
    assert_eq!(String::from_utf8_lossy(&o.stdout), "", "B moved a process");
    assert_eq!(
        std::fs::read_to_string(dir.join("cgroup.procs")).unwrap().trim(),
        victim
    );
    drop(held);
}

/// The daemon places only the caller's own child: a pidfd of another
/// user's process, or of one of the caller's processes that is not its
/// child, is refused and nothing is created.
#[test]
fn a_process_that_is_not_the_callers_child_is_refused() {
    let cg = TestCgroup::new("sandbox-forged");
    let d = Daemon::start(&cg, CONFIG).expect("daemon");
    let (a, b) = (user("fa"), user("fb"));
    let sleep_as = |u: &TestUser| {
        let mut cmd = Command::new("sleep");
        std::os::unix::process::CommandExt::uid(&mut cmd, u.uid);
        std::os::unix::process::CommandExt::gid(&mut cmd, u.gid);
        Reaped(cmd.arg("30").spawn().unwrap())
    };
    let theirs = sleep_as(&b);
    let own = sleep_as(&a);
    // Given as text: the test user may not be able to read the checkout.
    let client =
        std::fs::read_to_string(connectracer_tests::repo_root().join("tests/python/sandbox_call.py"))
            .unwrap();
    let sandbox_socket = connectracer_proto::varlink::sandbox_socket_for(&d.socket);
    for (victim, why) in [
        (theirs.0.id(), "is not the caller's child"),
        (own.0.id(), "is not the caller's child"),
    ] {
        let mut cmd = Command::new("python3");
        std::os::unix::process::CommandExt::uid(&mut cmd, a.uid);
        std::os::unix::process::CommandExt::gid(&mut cmd, a.gid);
        let o = cmd
            .args(["-c", &client])
            .arg(&sandbox_socket)
            .arg(victim.to_string())
            .output()
            .unwrap();
        let reply: Value = serde_json::from_slice(&o.stdout)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&o.stderr)));
        assert_eq!(reply["error"], "org.connectracer.Tracer.AccessDenied", "{reply}");
        assert!(
            reply["parameters"]["reason"].as_str().unwrap().contains(why),
            "{reply}"
        );
    }
    assert!(sandbox_dirs(&cg).is_empty());
    // Other calls are refused on the sandbox socket.
    let o = Command::new(bin_path("tracectl"))
        .arg("--socket")
        .arg(&sandbox_socket)
        .arg("stats")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(3), "{err}");
    assert!(err.contains("serves Sandbox only"), "{err}");
    drop((theirs, own));
}

/// tracectl killed with SIGKILL: the command is stopped, and its cgroup
/// and scope are gone within seconds.
#[test]
fn killing_tracectl_stops_the_command_and_removes_the_sandbox() {
    let cg = TestCgroup::new("sandbox-kill");
    let d = Daemon::start(&cg, CONFIG).expect("daemon");
    let u = user("k");
    let mut t = Reaped(
        tracectl_run(&d, &u, &["--", "sh", "-c", "sleep 60 & sleep 60"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let populated =
        |p: &Path| std::fs::read_to_string(p.join("cgroup.events")).is_ok_and(|e| e.contains("populated 1"));
    wait_until("the command in its sandbox", Duration::from_secs(10), || {
        sandbox_dirs(&cg).iter().any(|p| populated(p))
    });
    let dir = sandbox_dirs(&cg).pop().unwrap();
    let state = d.config.dir().join("state").join("sandboxes.toml");
    assert!(std::fs::read_to_string(&state)
        .unwrap()
        .contains(&dir.file_name().unwrap().to_string_lossy()[3..]));
    t.0.kill().unwrap();
    t.0.wait().unwrap();
    wait_until("the sandbox removed", Duration::from_secs(5), || !dir.exists());
    let (_, show, _) = d.tracectl(&["--json", "policy", "show"]);
    assert!(!show.contains("connectracer-sandbox"), "{show}");
    assert!(!std::fs::read_to_string(&state).unwrap().contains("[[sandbox]]"));
}

/// The daemon stopped and started again while the command runs: the
/// command stays confined meanwhile (the programs stay attached) and
/// after, and the new instance removes the sandbox once it is empty.
#[test]
fn a_restarted_daemon_keeps_the_command_confined() {
    let cg = TestCgroup::new("sandbox-restart");
    let mut d = Daemon::start(&cg, CONFIG).expect("daemon");
    let u = user("r");
    let ok = tcp_server("127.0.0.1:0", 0, 0);
    let no = tcp_server("127.0.0.1:0", 0, 0);
    let flags = log_path("restart").with_file_name("");
    let probe = bin_path("ct-probe").display().to_string();
    let step = |n: u32| {
        format!(
            "while [ ! -e {0}/go{n} ]; do sleep 0.05; done; {probe} connect {ok} {no}; touch {0}/done{n}",
            flags.display()
        )
    };
    let script = format!("{}; {}", step(1), step(2));
    let allow = ok.to_string();
    let child = tracectl_run(&d, &u, &["--allow-net", &allow, "--", "sh", "-c", &script])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_until("the command in its sandbox", Duration::from_secs(10), || {
        !sandbox_dirs(&cg).is_empty()
    });
    d.stop().expect("clean stop");
    // No daemon now.
    std::fs::write(flags.join("go1"), "").unwrap();
    wait_until("the first round", Duration::from_secs(10), || {
        flags.join("done1").exists()
    });
    let (cfg, socket, pin_dir) = d.crash();
    let d = Daemon::start_with(&cg, cfg, socket, pin_dir).expect("restart");
    std::fs::write(flags.join("go2"), "").unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let eperm = i64::from(libc::EPERM);
    for r in lines(&out.stdout) {
        let errnos: Vec<Option<i64>> = r["results"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x["errno"].as_i64())
            .collect();
        assert_eq!(errnos, vec![None, Some(eperm)], "{r}");
    }
    assert_eq!(lines(&out.stdout).len(), 2);
    assert!(
        stderr(&out).contains("the sandbox stays in force"),
        "{}",
        stderr(&out)
    );
    wait_until("the orphaned sandbox removed", Duration::from_secs(5), || {
        sandbox_dirs(&cg).is_empty()
    });
    drop(d);
}

/// Files: a denied path cannot be read, a write-denied one not written;
/// with an allow-list, what is outside it cannot be read, what is inside
/// can, and only --allow-write paths can be written.
#[test]
fn file_rules_deny_and_allow() {
    let cg = TestCgroup::new("sandbox-files");
    let d = Daemon::start(&cg, CONFIG).expect("daemon");
    let u = user("f");
    let root = log_path("files").with_file_name("");
    for (rel, text) in [("secret/key", "k"), ("plain", "p"), ("ro/a", "a"), ("rw/b", "b")] {
        let p = root.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, text).unwrap();
    }
    let _ = Command::new("chmod").args(["-R", "a+rwX"]).arg(&root).status();
    let r = |p: &str| root.join(p).display().to_string();
    let script = format!(
        "cat {} && echo read-secret; cat {} >/dev/null && echo read-plain; echo x > {} && echo wrote-ro; cat {} >/dev/null && echo read-ro; true",
        r("secret/key"),
        r("plain"),
        r("ro/a"),
        r("ro/a")
    );
    let (deny_read, deny_write) = (r("secret"), r("ro"));
    let out = run(
        &d,
        &u,
        &[
            "--deny-read",
            &deny_read,
            "--deny-write",
            &deny_write,
            "--",
            "sh",
            "-c",
            &script,
        ],
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "read-plain\nread-ro\n",
        "{}",
        stderr(&out)
    );
    let script = format!(
        "cat {} >/dev/null && echo read-outside; cat {} >/dev/null && echo read-inside; echo x > {} && echo wrote-readonly; echo y > {} && echo wrote-writable; true",
        r("plain"),
        r("ro/a"),
        r("ro/a"),
        r("rw/b")
    );
    let (allow_read, allow_write) = (r("ro"), r("rw"));
    let out = run(
        &d,
        &u,
        &[
            "--allow-read",
            &allow_read,
            "--allow-write",
            &allow_write,
            "--",
            "sh",
            "-c",
            &script,
        ],
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "read-inside\nwrote-writable\n",
        "{}",
        stderr(&out)
    );
    let _ = std::fs::remove_dir_all(&root);
}
