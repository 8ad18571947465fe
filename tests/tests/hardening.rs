//! A configuration the kernel cannot hold changes nothing, on every path
//! that applies one, and says so the same way on each: the rules in force
//! stay exactly the ones the daemon reports. Runs as root, loopback only.

use std::time::Duration;

use connectracer_tests::{probe, Daemon, Dnsmasq, TestCgroup};
use nix::sys::signal::Signal;
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(30);
const EPERM: i64 = 1;
const REFUSED: i64 = 111;
/// Loopback is a built-in exception; these tests need it judged by rules.
const NO_EXCEPTIONS: &str = "[policy]\nallow_loopback = false\n";

fn deny(dests: &str, port: u16) -> String {
    format!("[[rule]]\naction = \"deny\"\ndest = [{dests}]\nports = [{port}]\n")
}

/// 140,000 single addresses in one rule: twice what a policy trie gives one
/// configuration.
fn overflowing() -> String {
    let dests: Vec<String> = (0..140_000u32)
        .map(|i| format!("\"127.{}.{}.{}\"", 10 + (i >> 16), (i >> 8) & 255, i & 255))
        .collect();
    format!(
        "mode = \"enforce\"\n{NO_EXCEPTIONS}{}{}",
        deny("\"127.2.0.1\"", 80),
        deny(&dests.join(","), 80)
    )
}

fn errno(cg: &TestCgroup, dst: &str) -> i64 {
    let out = probe(cg, &["connect", dst]).unwrap();
    out["results"][0]["errno"].as_i64().unwrap_or(0)
}

/// The kernel's answer and `policy check`'s agree for `dst`, and are `expected`.
fn assert_verdict(d: &Daemon, cg: &TestCgroup, dst: &str, expected: i64) {
    let got = errno(cg, dst);
    assert_eq!(got, expected, "connect to {dst}");
    let (code, out, err) = d.tracectl(&["--json", "policy", "check", "--cgroup", &cg.rel, "--dest", dst]);
    let denied = expected == EPERM;
    assert_eq!(code, i32::from(denied), "exit status 1 for deny: {err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    let verdict = if denied { "deny" } else { "allow" };
    assert_eq!(
        v["decisions"][0]["decision"]["verdict"], verdict,
        "policy check {dst}: {out}"
    );
}

#[test]
fn an_overflowing_reload_changes_nothing_and_is_reported_on_every_path() {
    let cg = TestCgroup::new("overflow");
    let valid = |addr: &str| {
        format!(
            "mode = \"enforce\"\n{NO_EXCEPTIONS}{}",
            deny(&format!("\"{addr}\""), 80)
        )
    };
    let mut d = Daemon::start(&cg, &valid("127.2.0.1")).unwrap();
    assert_verdict(&d, &cg, "127.2.0.1:80", EPERM);

    d.config.write(&overflowing());
    let logged = d.wait_log("reload (configuration files changed)", WAIT).unwrap();
    let message = logged["message"].as_str().unwrap();
    assert!(
        message.contains("kernel map policy_v4 holds at most 65,536") && message.contains("stays in force"),
        "{message}"
    );
    d.signal(Signal::SIGHUP);
    let logged = d.wait_log("reload (SIGHUP)", WAIT).unwrap();
    assert!(
        logged["message"].as_str().unwrap().contains("policy_v4"),
        "{logged}"
    );
    let (code, _, err) = d.tracectl(&["reload"]);
    assert_eq!(code, 1);
    assert!(err.contains("rule 2") && err.contains("policy_v4"), "{err}");
    let s = d.stats();
    assert_eq!(s["reload_failures"], 3, "{s}");
    assert!(
        s["last_reload_error"].as_str().unwrap().contains("policy_v4"),
        "{s}"
    );
    assert_verdict(&d, &cg, "127.10.0.5:80", REFUSED);

    // Valid reloads flip through both generations; what the kernel does is
    // exactly what `policy check` says, address by address.
    for addr in ["127.2.0.2", "127.2.0.3", "127.2.0.4"] {
        d.config.write(&valid(addr));
        let (code, out, err) = d.tracectl(&["reload"]);
        assert_eq!(code, 0, "{out}{err}");
    }
    for i in 0..8 {
        let dst = format!("127.2.0.{i}:80");
        assert_verdict(&d, &cg, &dst, if i == 4 { EPERM } else { REFUSED });
    }
    for dst in ["127.10.0.1:80", "127.10.1.7:80", "127.11.2.0:80"] {
        assert_verdict(&d, &cg, dst, REFUSED);
    }
    assert!(d.stats()["last_reload_error"].is_null());
}

/// 65,536 watched addresses fill the IPv4 watch trie of one configuration.
fn full_watch_list() -> String {
    let mut s = String::from("trace = \"watched\"\n");
    for i in 0..65_536u32 {
        s.push_str(&format!(
            "[[host]]\nname = \"10.{}.{}.{}\"\n",
            i >> 16,
            (i >> 8) & 255,
            i & 255
        ));
    }
    s
}

#[test]
fn an_add_host_that_does_not_fit_is_neither_applied_nor_kept() {
    let cg = TestCgroup::new("addfull");
    let mut d = Daemon::start(&cg, &full_watch_list()).unwrap();
    for runtime in [false, true] {
        let mut args = vec!["add-host", "10.200.0.1"];
        if runtime {
            args.push("--runtime");
        }
        let (code, _, err) = d.tracectl(&args);
        assert_eq!(code, 2, "a refused request is a usage error: {err}");
        assert!(err.contains("watch_v4 holds at most 65,536"), "{err}");
    }
    let state = d.config.dir().join("state/hosts.toml");
    assert!(
        !std::fs::read_to_string(&state)
            .unwrap_or_default()
            .contains("10.200.0.1"),
        "a refused host is not persisted"
    );
    // Refused before any reload: the running configuration never failed.
    let s = d.stats();
    assert_eq!(s["reload_failures"], 0, "{s}");
    assert!(s["last_reload_error"].is_null(), "{s}");
    // A refused --runtime add does not linger and break later reloads.
    d.config
        .write(&full_watch_list().replace("\"watched\"", "\"all\""));
    let (code, out, err) = d.tracectl(&["reload"]);
    assert_eq!(code, 0, "{out}{err}");

    d.stop().unwrap();
    let (cfg, socket, pin_dir) = d.crash();
    let d = Daemon::start_with(&cg, cfg, socket, pin_dir).unwrap();
    let (code, out, err) = d.tracectl(&["--json", "hosts"]);
    assert_eq!(code, 0, "{err}");
    let hosts: Value = serde_json::from_str(&out).unwrap();
    let hosts = hosts["hosts"].as_array().unwrap();
    assert_eq!(hosts.len(), 65_536);
    assert!(hosts.iter().all(|h| h["name"] != "10.200.0.1"));
}

#[test]
fn a_failed_reload_keeps_resolved_addresses_in_force() {
    let dns = Dnsmasq::start("127.0.0.5 api.test\n", 3600);
    let cg = TestCgroup::new("keepaddr");
    let dns_conf = format!("[dns]\nnameservers = [\"127.0.0.1:{}\"]\n", dns.port);
    let config = |extra: &str| {
        format!(
            "mode = \"enforce\"\n{NO_EXCEPTIONS}[[host]]\nname = \"api.test\"\n{}{extra}{dns_conf}",
            deny("\"api.test\"", 81)
        )
    };
    let mut d = Daemon::start(&cg, &config("")).unwrap();
    d.wait_log("watch list updated from DNS", WAIT).unwrap();
    assert_verdict(&d, &cg, "127.0.0.5:81", EPERM);

    // A configuration without the name, refused: the name's addresses stay.
    d.config.write(&overflowing());
    d.wait_log("reload (configuration files changed)", WAIT).unwrap();
    let (code, out, err) = d.tracectl(&["--json", "hosts"]);
    assert_eq!(code, 0, "{err}");
    let hosts: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(hosts["hosts"][0]["addresses"][0], "127.0.0.5", "{out}");
    assert_verdict(&d, &cg, "127.0.0.5:81", EPERM);

    // The next change that applies still enforces the hostname rule at once
    // (the answer's TTL is an hour: no new lookup comes to the rescue).
    d.config.write(&config(&deny("\"127.2.0.9\"", 80)));
    let (code, out, err) = d.tracectl(&["reload"]);
    assert_eq!(code, 0, "{out}{err}");
    assert_verdict(&d, &cg, "127.0.0.5:81", EPERM);
    assert_verdict(&d, &cg, "127.2.0.9:80", EPERM);
}

/// Opens `n` connections to `socket` as `user` and, after a moment, reports
/// what each got: nothing (held open, idle) or the refusal sent at once.
const HOLDER: &str = r#"
import json, select, socket, sys, time
path, n = sys.argv[1], int(sys.argv[2])
socks = []
for _ in range(n):
    s = socket.socket(socket.AF_UNIX)
    s.connect(path)
    socks.append(s)
time.sleep(1)
refused = []
for s in socks:
    if select.select([s], [], [], 0)[0]:
        data = s.recv(65536).rstrip(b"\0")
        refused.append(json.loads(data) if data else None)
print(json.dumps({"held": n - len(refused), "refused": refused}), flush=True)
sys.stdin.read()
"#;

#[test]
fn idle_member_connections_cannot_lock_out_root() {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};
    let group = connectracer_tests::TestGroup::ensure("connectracer").unwrap();
    let member = connectracer_tests::TestUser::create(
        &format!("ctidle{}", std::process::id() % 100_000),
        &[&group.name],
    )
    .unwrap();
    let cg = TestCgroup::new("idle");
    let d = Daemon::start(&cg, "trace = \"watched\"\n").unwrap();
    let socket = d.socket.clone();
    let mut holder = Command::new("setpriv")
        .args([
            format!("--reuid={}", member.uid),
            format!("--regid={}", member.gid),
            "--init-groups".into(),
        ])
        .args(["/usr/bin/python3", "-c", HOLDER])
        .arg(&socket)
        .arg("200")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(holder.stdout.as_mut().unwrap())
        .read_line(&mut line)
        .unwrap();
    let report: Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}"));
    assert_eq!(report["held"], 32, "{report}");
    let refused = report["refused"].as_array().unwrap();
    assert_eq!(refused.len(), 168);
    let reason = refused[0]["parameters"]["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("already holds 32 control connections"),
        "{report}"
    );

    // Root (and anyone else) is still answered while they sit there.
    for _ in 0..3 {
        let (code, _, err) = d.tracectl(&["stats"]);
        assert_eq!(code, 0, "{err}");
    }
    let _ = holder.kill();
    let _ = holder.wait();
}

#[test]
fn clients_asking_for_the_whole_table_and_not_reading_stay_bounded() {
    use std::io::Write;
    let cg = TestCgroup::new("flood");
    let mut d = Daemon::start(
        &cg,
        "trace = \"all\"\n[log]\nevents = false\n[table]\nmax_closed = 100000\nclosed_retention = \"1h\"\n",
    )
    .unwrap();
    let port = connectracer_tests::closed_port("127.0.0.1:0").port();
    let dst = format!("127.0.0.1:{port}");
    for _ in 0..3 {
        probe(&cg, &["flood", &dst, "10000"]).unwrap();
    }
    // Connections reach the table through the ring buffer: wait for them.
    let deadline = std::time::Instant::now() + WAIT;
    while d.stats()["table_closed"].as_u64().unwrap_or(0) < 30_000 {
        assert!(std::time::Instant::now() < deadline, "{}", d.stats());
        std::thread::sleep(Duration::from_millis(200));
    }
    let rss = |pid: u32| -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
        line.split_whitespace().nth(1).unwrap().parse::<u64>().unwrap() / 1024
    };
    let before = rss(d.pid());
    let call = b"{\"method\":\"org.connectracer.Tracer.Connections\",\"parameters\":{\"limit\":100000}}\0";
    let clients: Vec<std::os::unix::net::UnixStream> = (0..64)
        .map(|_| {
            let mut s = std::os::unix::net::UnixStream::connect(&d.socket).unwrap();
            s.write_all(call).unwrap();
            s
        })
        .collect();
    let mut peak = before;
    for _ in 0..40 {
        std::thread::sleep(Duration::from_millis(250));
        peak = peak.max(rss(d.pid()));
    }
    let (code, _, err) = d.tracectl(&["stats"]);
    assert_eq!(code, 0, "root is answered during the flood: {err}");
    drop(clients);
    eprintln!("RSS before {before} MiB, peak {peak} MiB with 64 unread 30,000-row answers");
    // Unbounded, 64 answers of 30,000 rows each came to well over a GiB.
    assert!(peak < before + 400, "RSS grew from {before} to {peak} MiB");
    d.stop().unwrap();
}

#[test]
fn a_start_that_fails_leaves_nothing_attached_pinned_or_bound() {
    use std::process::Command;
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let cg = TestCgroup::new("failstart");
    let tag = format!("failstart-{}", std::process::id());
    let cfg = connectracer_tests::ConfigDir::new(&tag, "trace = \"all\"\n");
    // After the test drop-in that turns metrics off.
    cfg.write_dropin(
        "50-metrics.toml",
        &format!("[metrics]\nlisten = \"127.0.0.1:{port}\"\n"),
    );
    let socket = std::env::temp_dir().join(format!("connectracer-{tag}.sock"));
    let pin_dir = std::path::PathBuf::from(format!("/sys/fs/bpf/connectracer-{tag}"));
    let daemon = |extra: &[&str]| {
        let out = connectracer_tests::daemon_command(&cg, &cfg, &socket, &pin_dir)
            .args(extra)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, err) = daemon(&["--check-config"]);
    assert_eq!(code, Some(78), "{err}");
    assert!(
        err.contains(&format!("metrics.listen: cannot bind 127.0.0.1:{port}")),
        "{err}"
    );

    let (code, err) = daemon(&["--foreground"]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("metrics"), "{err}");
    assert!(!socket.exists(), "control socket left behind");
    let pins: Vec<_> = std::fs::read_dir(&pin_dir)
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(pins.is_empty(), "pins left behind: {pins:?}");
    let attached = Command::new("bpftool")
        .args(["cgroup", "show"])
        .arg(&cg.path)
        .output()
        .unwrap();
    let attached = String::from_utf8_lossy(&attached.stdout);
    assert!(attached.trim().is_empty(), "programs left attached: {attached}");
    drop(taken);
}

#[test]
fn drops_are_logged_and_a_restart_says_what_happened_while_down() {
    let cg = TestCgroup::new("drops");
    let config = format!(
        "trace = \"all\"\nmode = \"enforce\"\n{NO_EXCEPTIONS}{}[log]\nevents = false\n[bpf]\nring_buffer_size = \"64KiB\"\nwakeup_threshold = 4096\n",
        deny("\"127.2.0.1\"", 80)
    );
    let mut d = Daemon::start(&cg, &config).unwrap();
    let port = connectracer_tests::closed_port("127.0.0.1:0").port();
    let dst = format!("127.0.0.1:{port}");

    // Nobody reads while the daemon is stopped: the small ring overflows.
    d.signal(Signal::SIGSTOP);
    probe(&cg, &["flood", &dst, "20000"]).unwrap();
    d.signal(Signal::SIGCONT);
    let warning = d
        .wait_log("ring buffer full", WAIT)
        .unwrap_or_else(|e| panic!("{e}: {}", d.stats()));
    let dropped = warning["dropped"].as_u64().unwrap();
    assert!(dropped > 0, "{warning}");
    assert_eq!(
        d.stats()["kernel"]["drops"].as_u64().unwrap(),
        dropped,
        "{warning}"
    );

    // Down (killed; the pinned programs go on): connects, denials, drops.
    let (cfg, socket, pin_dir) = d.crash();
    probe(&cg, &["flood", &dst, "5000"]).unwrap();
    for _ in 0..10 {
        assert_eq!(errno(&cg, "127.2.0.1:80"), EPERM);
    }
    let mut d = Daemon::start_with(&cg, cfg, socket, pin_dir).unwrap();
    let report = d.wait_log("while no daemon was reading", WAIT).unwrap();
    let message = report["message"].as_str().unwrap();
    assert!(message.contains("10 connects denied"), "{message}");
    assert!(report["dropped"].as_u64().unwrap() > 0, "{report}");
    d.stop().unwrap();
}
