//! Hot reload against the running daemon: file edits (rename-saves,
//! drop-ins), SIGHUP, the control request, invalid configurations, and the
//! atomic switch under a hammer of connects.

use std::collections::HashMap;
use std::time::Duration;

use connectracer_tests::{bin_path, closed_port, probe, Daemon, TestCgroup};
use nix::sys::signal::Signal;
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(15);

fn watched(addr: &str, port: u16, label: &str) -> String {
    format!("[[host]]\nname = \"{addr}\"\nports = [{port}]\nlabel = \"{label}\"\n")
}

/// Connects once to `dst` from the cgroup and returns the connect event.
fn connect_event(d: &mut Daemon, cg: &TestCgroup, dst: &str) -> Option<Value> {
    let pid = probe(cg, &["connect", dst]).unwrap()["pid"].as_u64().unwrap();
    // The refused connect's failed event is last; if it does not come, the
    // connection was not traced.
    let got = d.wait_for(Duration::from_secs(2), |s| {
        s.iter()
            .any(|e| e["event"] == "failed" && e["process"]["pid"] == pid)
    });
    got.ok()?;
    d.events("connect", Some(pid)).next().cloned()
}

/// tracectl's exit code and everything it printed.
fn tracectl(d: &Daemon, args: &[&str]) -> (i32, String) {
    let (code, out, err) = d.tracectl(args);
    (code, out + &err)
}

/// A reload that puts a rule in force which can never match says so, and
/// the log names the trace mode as the configuration writes it.
#[test]
fn a_shadowed_rule_is_named_at_reload() {
    let cg = TestCgroup::new("reload-shadow");
    let mut d = Daemon::start(&cg, "trace = \"all\"\n").unwrap();
    d.config
        .write("trace = \"all\"\n[[rule]]\naction = \"deny\"\ndest = [\"127.0.0.1\", \"::1\"]\n");
    // Not the file watcher, which may not be watching yet this early.
    d.signal(Signal::SIGHUP);
    let shadowed = d.wait_log("rule 1 (", WAIT).unwrap();
    let message = shadowed["message"].as_str().unwrap();
    let file = d.config.main();
    assert!(
        message.starts_with(&format!(
            "rule 1 ({}:3) can never match: the built-in exception `allow_loopback`",
            file.display()
        )),
        "{message}"
    );
    assert_eq!(shadowed["level"], "WARN");
    let applied = d.wait_log("configuration applied", WAIT).unwrap();
    assert_eq!(applied["trace"], "all", "not Rust's Debug spelling: {applied}");
}

#[test]
fn edits_dropins_sighup_and_control_requests_all_reload() {
    let cg = TestCgroup::new("reload");
    let port = closed_port("127.0.0.1:0").port();
    let dst = format!("127.0.0.1:{port}");
    let mut d = Daemon::start(&cg, &watched("127.0.0.1", port, "first")).unwrap();
    assert_eq!(connect_event(&mut d, &cg, &dst).unwrap()["label"], "first");

    // An editor's rename-save is picked up by the file watcher.
    d.config.write(&watched("127.0.0.1", port, "second"));
    let applied = d.wait_log("configuration applied", WAIT).unwrap();
    assert_eq!(applied["trigger"], "configuration files changed");
    assert_eq!(connect_event(&mut d, &cg, &dst).unwrap()["label"], "second");

    // An invalid edit changes nothing and says why, in the log and in stats.
    d.config.write("trace = \"sometimes\"\n");
    let failed = d
        .wait_log(
            "reload (configuration files changed): 1 error in configuration",
            WAIT,
        )
        .unwrap();
    assert!(failed["message"]
        .as_str()
        .unwrap()
        .contains("the running configuration stays in force"));
    let (code, out) = tracectl(&d, &["--json", "stats"]);
    assert_eq!(code, 0, "{out}");
    let stats: Value = serde_json::from_str(&out).unwrap();
    let err = stats["stats"]["last_reload_error"].as_str().unwrap();
    assert!(
        err.contains("connectracer.toml:1:9: trace: unknown trace mode `sometimes`"),
        "{err}"
    );
    assert_eq!(
        connect_event(&mut d, &cg, &dst).unwrap()["label"],
        "second",
        "old configuration still in force"
    );

    // A drop-in appears: lists append.
    d.config.write(&watched("127.0.0.1", port, "second"));
    d.wait_log("configuration applied", WAIT).ok();
    let dropins = d.config.dir().join("conf.d");
    std::fs::create_dir_all(&dropins).unwrap();
    let other = closed_port("127.0.0.1:0").port();
    std::fs::write(
        dropins.join("50-more.toml"),
        watched("127.0.0.1", other, "dropin"),
    )
    .unwrap();
    d.wait_log("configuration applied", WAIT).unwrap();
    assert_eq!(
        connect_event(&mut d, &cg, &format!("127.0.0.1:{other}")).unwrap()["label"],
        "dropin"
    );
    // ... and goes away.
    std::fs::remove_file(dropins.join("50-more.toml")).unwrap();
    d.wait_log("configuration applied", WAIT).unwrap();
    assert!(
        connect_event(&mut d, &cg, &format!("127.0.0.1:{other}")).is_none(),
        "no longer watched"
    );

    // SIGHUP reloads at once, before the watcher's debounce.
    d.config.write(&watched("127.0.0.1", port, "hup"));
    d.signal(Signal::SIGHUP);
    let applied = d.wait_log("configuration applied", WAIT).unwrap();
    assert_eq!(applied["trigger"], "SIGHUP");

    // The control request reloads too, and reports the epoch.
    d.config.write(&watched("127.0.0.1", port, "control"));
    let (code, out) = tracectl(&d, &["--json", "reload"]);
    assert_eq!(code, 0, "{out}");
    let reply = serde_json::from_str::<Value>(&out).unwrap()["reload"].clone();
    assert!(reply["epoch"].as_u64().unwrap() >= 5, "{reply}");
    assert_eq!(connect_event(&mut d, &cg, &dst).unwrap()["label"], "control");

    // A restart-only setting is reported, not applied.
    d.config.write(&format!(
        "{}[bpf]\nring_buffer_size = \"8MiB\"\n",
        watched("127.0.0.1", port, "control")
    ));
    let (code, out) = tracectl(&d, &["--json", "reload"]);
    assert_eq!(code, 0, "{out}");
    let reply = serde_json::from_str::<Value>(&out).unwrap()["reload"].clone();
    assert_eq!(reply["needs_restart"], serde_json::json!(["bpf"]));

    // An invalid configuration over the control socket: a typed error.
    d.config.write("[[host]]\nname = \"10.0.0.1/40\"\n");
    let (code, out) = tracectl(&d, &["reload"]);
    assert_eq!(code, 1);
    assert!(
        out.contains("the new configuration is invalid; the running one stays in force"),
        "{out}"
    );
    assert!(
        out.contains("host[0].name: `10.0.0.1/40` is not an IP address, CIDR or hostname"),
        "{out}"
    );
}

/// Connects run flat out while the configuration flips between two
/// versions that disagree on everything: trace mode, host ids and labels.
/// Every event carries the epoch it was judged in; it must agree with
/// that epoch's configuration in every respect.
#[test]
fn reloads_are_atomic_under_a_hammer_of_connects() {
    let cg = TestCgroup::new("hammer");
    let port = closed_port("127.0.0.1:0").port();
    // A: trace all; 127.0.0.1 is host 2 "a". B: trace watched; 127.0.0.1 is host 1 "b".
    let a = format!(
        "trace = \"all\"\n{}{}",
        watched("127.0.0.9", port, "decoy"),
        watched("127.0.0.1", port, "a")
    );
    let b = format!("trace = \"watched\"\n{}", watched("127.0.0.1", port, "b"));
    let mut d = Daemon::start(&cg, &a).unwrap();

    let watched_dst = format!("127.0.0.1:{port}");
    let unwatched_dst = format!("127.0.0.2:{port}");
    let n = 20_000;
    let mut client = cg
        .command(&bin_path("ct-probe"))
        .args(["alternate", &watched_dst, &unwatched_dst, &n.to_string()])
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();

    // epoch -> which configuration it holds
    let mut epochs: HashMap<u64, &str> = HashMap::from([(1, "a")]);
    let mut flips = 0;
    while client.try_wait().unwrap().is_none() {
        let (text, name) = if flips % 2 == 0 { (&b, "b") } else { (&a, "a") };
        d.config.write(text);
        d.signal(Signal::SIGHUP);
        let applied = d.wait_log("configuration applied", WAIT).unwrap();
        epochs.insert(applied["epoch"].as_u64().unwrap(), name);
        flips += 1;
    }
    assert!(client.wait().unwrap().success());
    let counters = d.stop().unwrap();
    assert!(
        flips >= 4,
        "the client finished before the configuration flipped enough ({flips})"
    );
    assert_eq!(counters["dropped"], 0);

    let connects: Vec<&Value> = d.seen.iter().filter(|e| e["event"] == "connect").collect();
    let mut per_config: HashMap<&str, usize> = HashMap::new();
    for e in &connects {
        let epoch = e["config_epoch"].as_u64().unwrap();
        let config = *epochs
            .get(&epoch)
            .unwrap_or_else(|| panic!("event from unknown epoch {epoch}: {e}"));
        *per_config.entry(config).or_default() += 1;
        let dst = e["dst"].as_str().unwrap();
        match (config, dst == watched_dst) {
            ("a", true) => assert_eq!(e["label"], "a", "{e}"),
            ("b", true) => assert_eq!(e["label"], "b", "{e}"),
            ("a", false) => assert!(e["host_id"].is_null(), "{e}"),
            // Under B only the watched destination is traced.
            (_, false) => panic!("unwatched connect traced in a trace=watched epoch: {e}"),
            _ => unreachable!(),
        }
    }
    // Both configurations judged a real share of the connections.
    assert!(
        per_config.get("a").copied().unwrap_or(0) > 50 && per_config.get("b").copied().unwrap_or(0) > 50,
        "{per_config:?}"
    );
    // Nothing lost: every watched connect is there, whatever the epoch.
    assert_eq!(
        connects
            .iter()
            .filter(|e| e["dst"] == watched_dst.as_str())
            .count(),
        n
    );
}

/// kill -9 while a client keeps connecting; the next instance re-adopts the
/// pinned links and maps: tracing never stopped, counters continue, and
/// what happened while no daemon ran is still reported.
#[test]
fn a_crashed_daemon_is_replaced_without_losing_tracing_or_counters() {
    let cg = TestCgroup::new("restart");
    let dst = closed_port("127.0.0.1:0").to_string();
    let d = Daemon::start(&cg, "trace = \"all\"\n").unwrap();
    for _ in 0..5 {
        probe(&cg, &["connect", &dst]).unwrap();
    }
    let (code, out) = tracectl(&d, &["--json", "stats"]);
    assert_eq!(code, 0, "{out}");
    let before: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(before["stats"]["kernel"]["connects"], 5);
    assert!(d.pin_dir.join("link_connect4").exists());

    let (cfg, socket, pin_dir) = d.crash();
    // No daemon now: the pinned programs keep tracing into the pinned ring.
    let during = probe(&cg, &["connect", &dst]).unwrap()["pid"].as_u64().unwrap();

    let mut d = Daemon::start_with(&cg, cfg, socket, pin_dir).unwrap();
    let adopted = d
        .logged("re-adopted pinned state of an earlier instance")
        .cloned();
    let adopted = adopted.expect("the new instance did not say it re-adopted");
    assert_eq!(
        adopted["maps"], "[\"events\", \"stats\", \"socks\", \"dgrams\", \"dns_addrs\"]",
        "{adopted}"
    );
    d.wait_for(WAIT, |s| {
        s.iter()
            .any(|e| e["event"] == "connect" && e["process"]["pid"] == during)
    })
    .unwrap();
    let after = probe(&cg, &["connect", &dst]).unwrap()["pid"].as_u64().unwrap();
    d.wait_for(WAIT, |s| {
        s.iter()
            .any(|e| e["event"] == "failed" && e["process"]["pid"] == after)
    })
    .unwrap();
    let counters = d.stop().unwrap();
    assert_eq!(
        counters["connects"], 7,
        "kernel counters continued across the crash: {counters}"
    );
    assert_eq!(counters["dropped"], 0);
    // A clean stop detaches and unpins.
    assert!(
        !d.pin_dir.exists(),
        "{} left behind by a clean stop",
        d.pin_dir.display()
    );
    let untraced = probe(&cg, &["connect", &dst]).unwrap();
    assert_eq!(untraced["results"][0]["ok"], false);
}
