//! DNS correlation against a real resolver (dnsmasq on loopback): each
//! connection carries the name its own process looked up, from the answer
//! the kernel copied for the querying socket.

use std::time::Duration;

use connectracer_tests::{
    connection_pids, free_port, metric, probe, tcp_server, ConfigDir, Daemon, Dnsmasq, TestCgroup,
};
use serde_json::Value;

fn config(dns: &Dnsmasq, grace: &str) -> String {
    format!(
        "trace = \"all\"\n[dns]\nnameservers = [\"127.0.0.1:{}\"]\ngrace = \"{grace}\"\n",
        dns.port
    )
}

/// The connect event of `pid`'s connection, once logged.
fn connect_of(d: &mut Daemon, pid: u64) -> Value {
    d.wait_for(Duration::from_secs(5), |s| {
        s.iter()
            .any(|e| e["event"] == "connect" && e["process"]["pid"] == pid)
    })
    .unwrap_or_else(|e| panic!("no connect of pid {pid}: {e}"));
    d.events("connect", Some(pid)).next().cloned().unwrap()
}

fn resolve(cg: &TestCgroup, dns: &Dnsmasq, name: &str, port: u16, forged: Option<&str>) -> u64 {
    let resolver = format!("127.0.0.1:{}", dns.port);
    let port = port.to_string();
    let mut args = vec!["resolve", resolver.as_str(), name, port.as_str()];
    args.extend(forged);
    let out = probe(cg, &args).unwrap();
    assert_eq!(out["ok"], true, "{out}");
    out["pid"].as_u64().unwrap()
}

#[test]
fn two_processes_resolving_one_address_each_get_their_own_name() {
    let dns = Dnsmasq::start("127.0.0.9 one.test\n127.0.0.9 two.test\n", 60);
    let server = tcp_server("127.0.0.9:0", 0, 0);
    // A slice: the unit below it (lookups by unit, at the end) is a unit.
    let cg = TestCgroup::new("names.slice");
    let cfg = ConfigDir::new(&format!("names-{}", std::process::id()), &config(&dns, "5s"));
    let metrics_port = free_port();
    cfg.write_dropin(
        "99-metrics.toml",
        &format!("[metrics]\nlisten = \"127.0.0.1:{metrics_port}\"\n"),
    );
    let socket = std::env::temp_dir().join(format!("connectracer-names-{}.sock", std::process::id()));
    let pin_dir = format!("/sys/fs/bpf/connectracer-names-{}", std::process::id()).into();
    let mut d = Daemon::start_with(&cg, cfg, socket, pin_dir).unwrap();

    let a = resolve(&cg, &dns, "one.test", server.port(), None);
    let b = resolve(&cg, &dns, "Two.Test", server.port(), None);
    for (pid, name) in [(a, "one.test"), (b, "two.test")] {
        let e = connect_of(&mut d, pid);
        assert_eq!(e["dst"], server.to_string());
        assert_eq!(
            (&e["dns_name"], &e["dns_source"]),
            (&name.into(), &"process".into()),
            "{e}"
        );
    }
    // Through the control socket too.
    let (rc, out, err) = d.tracectl(&["--json", "connections"]);
    assert_eq!(rc, 0, "{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    let names: Vec<(u64, &str)> = v["connections"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|c| Some((c["process"]["pid"].as_u64()?, c["dns_name"].as_str()?)))
        .collect();
    assert!(
        names.contains(&(a, "one.test")) && names.contains(&(b, "two.test")),
        "{out}"
    );
    // Any name a process resolved is a destination `who` and `--name` know.
    let pids = |args: &[&str]| -> Vec<u64> {
        let (rc, out, err) = d.tracectl(args);
        assert_eq!(rc, 0, "{args:?}: {err}");
        let mut pids = connection_pids(&serde_json::from_str(&out).unwrap());
        pids.sort_unstable();
        pids
    };
    assert_eq!(pids(&["--json", "who", "one.test"]), [a]);
    assert_eq!(
        pids(&["--json", "who", &format!("two.test:{}", server.port())]),
        [b]
    );
    let mut both = vec![a, b];
    both.sort_unstable();
    assert_eq!(pids(&["--json", "connections", "--name", "*.test"]), both);
    assert!(pids(&["--json", "connections", "--name", "three.*"]).is_empty());
    let named = |source: &str| {
        metric(
            metrics_port,
            &format!("connectracer_connections_named_total{{source=\"{source}\"}}"),
        )
    };
    assert_eq!(named("process"), Some(2));
    assert_eq!(named("host"), Some(0));
    // tracectl dns: the answers themselves, per process.
    let (rc, out, err) = d.tracectl(&["--json", "dns", "--pid", &a.to_string()]);
    assert_eq!(rc, 0, "{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    let answers = v["answers"].as_array().unwrap();
    assert_eq!(answers.len(), 1, "{out}");
    let ans = &answers[0];
    assert_eq!(
        (&ans["pid"], &ans["name"]),
        (&a.into(), &"one.test".into()),
        "{ans}"
    );
    assert_eq!(ans["addresses"], serde_json::json!(["127.0.0.9"]));
    assert_eq!(ans["resolver"], format!("127.0.0.1:{}", dns.port));
    assert_eq!(ans["ttl_seconds"], 60);
    let (rc, out, _) = d.tracectl(&["dns"]);
    assert_eq!(rc, 0);
    assert!(
        out.starts_with("TIME") && out.contains("two.test") && out.contains("one.test"),
        "{out}"
    ); // By the unit that asked: a lookup from a unit's cgroup.
    let unit = cg.child("lookup-unit.service");
    let asked = resolve(&unit, &dns, "one.test", server.port(), None);
    // Its connect is read after its answer: both are in by then.
    connect_of(&mut d, asked);
    let by_unit = |glob: &str| {
        let (rc, out, err) = d.tracectl(&["--json", "dns", "--unit", glob]);
        assert_eq!(rc, 0, "{err}");
        serde_json::from_str::<Value>(&out).unwrap()["answers"].clone()
    };
    let answers = by_unit("lookup-*.service");
    assert_eq!(answers.as_array().map(Vec::len), Some(1), "{answers}");
    assert_eq!(answers[0]["unit"], "lookup-unit.service");
    assert!(answers[0]["cgroup"]
        .as_str()
        .unwrap()
        .ends_with("/lookup-unit.service"));
    assert_eq!(by_unit("other-*.service"), serde_json::json!([]));
    let (rc, _, err) = d.tracectl(&["dns", "--unit", "[x"]);
    assert_eq!(rc, 2, "{err}");
    assert!(err.contains("unit") && err.contains("glob"), "{err}");
    drop(unit);
}

#[test]
fn a_forged_answer_from_another_port_names_nothing() {
    let dns = Dnsmasq::start("127.0.0.9 real.test\n", 60);
    let server = tcp_server("127.0.0.77:0", 0, 0);
    let cg = TestCgroup::new("forged");
    let mut d = Daemon::start(&cg, &config(&dns, "5s")).unwrap();
    let pid = resolve(&cg, &dns, "real.test", server.port(), Some("127.0.0.77"));
    let e = connect_of(&mut d, pid);
    assert_eq!(e["dst"], server.to_string());
    assert!(e.get("dns_name").is_none(), "a forged answer named it: {e}");
}

#[test]
fn names_expire_with_the_ttl_and_grace() {
    let dns = Dnsmasq::start("127.0.0.9 short.test\n", 1);
    let server = tcp_server("127.0.0.9:0", 0, 0);
    let cg = TestCgroup::new("ttl");
    let mut d = Daemon::start(&cg, &config(&dns, "1s")).unwrap();
    let pid = resolve(&cg, &dns, "short.test", server.port(), None);
    assert_eq!(connect_of(&mut d, pid)["dns_name"], "short.test");
    // Another process, no lookup of its own: the host-wide answer names it
    // while it lives, nothing once TTL (1 s) + grace (1 s) are over.
    let dst = server.to_string();
    let other = probe(&cg, &["connect", &dst]).unwrap()["pid"].as_u64().unwrap();
    let e = connect_of(&mut d, other);
    assert_eq!(
        (&e["dns_name"], &e["dns_source"]),
        (&"short.test".into(), &"cgroup".into()),
        "{e}"
    );
    std::thread::sleep(Duration::from_millis(2500));
    let late = probe(&cg, &["connect", &dst]).unwrap()["pid"].as_u64().unwrap();
    assert!(connect_of(&mut d, late).get("dns_name").is_none());
}

#[test]
fn with_dns_answers_off_nothing_is_named() {
    let dns = Dnsmasq::start("127.0.0.9 off.test\n", 60);
    let server = tcp_server("127.0.0.9:0", 0, 0);
    let cg = TestCgroup::new("names-off");
    let config = format!("{}[bpf]\ndns_answers = false\n", config(&dns, "5s"));
    let mut d = Daemon::start(&cg, &config).unwrap();
    let pid = resolve(&cg, &dns, "off.test", server.port(), None);
    assert!(connect_of(&mut d, pid).get("dns_name").is_none());
}

/// Runs `script` with sh in the test cgroup, in a private mount namespace
/// whose /etc/resolv.conf names `resolver` (port 53), so that libc's
/// resolver and dig query the test's dnsmasq.
fn with_resolver(cg: &TestCgroup, resolver: &str, script: &str) -> String {
    let conf = std::env::temp_dir().join(format!("connectracer-resolv-{}.conf", std::process::id()));
    std::fs::write(
        &conf,
        format!("nameserver {resolver}\noptions attempts:1 timeout:2\n"),
    )
    .unwrap();
    let full = format!("mount --bind {} /etc/resolv.conf && {script}", conf.display());
    let out = cg
        .command(std::path::Path::new("/usr/bin/unshare"))
        .args(["-m", "--propagation", "private", "sh", "-c", &full])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{script}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn libc_getaddrinfo_and_dig_answers_name_connections() {
    // libc's resolver only speaks to port 53: dnsmasq on port 53 of a
    // loopback address nothing else uses.
    let dns = Dnsmasq::start_on(
        "127.0.0.153",
        53,
        "127.0.0.9 libc.test\n127.0.0.9 dig.test\n127.0.0.10 tcp.test\n",
        60,
    );
    let server = tcp_server("127.0.0.9:0", 0, 0);
    let cg = TestCgroup::new("names-libc");
    let mut d = Daemon::start(&cg, "trace = \"all\"\n").unwrap();
    // getaddrinfo (A and AAAA queries in flight together on one socket),
    // then a connect, in one process.
    let py = format!(
        "/usr/bin/python3 -c 'import os, socket; s = socket.create_connection((\"libc.test\", {})); print(os.getpid())'",
        server.port()
    );
    let pid: u64 = with_resolver(&cg, "127.0.0.153", &py).trim().parse().unwrap();
    // Its first connect is libc's, to the resolver.
    let dst = server.to_string();
    d.wait_for(Duration::from_secs(5), |s| {
        s.iter()
            .any(|e| e["event"] == "connect" && e["process"]["pid"] == pid && e["dst"] == dst.as_str())
    })
    .unwrap();
    let e = d
        .events("connect", Some(pid))
        .find(|e| e["dst"] == dst.as_str())
        .cloned()
        .unwrap();
    assert_eq!(
        (&e["dns_name"], &e["dns_source"]),
        (&"libc.test".into(), &"process".into()),
        "{e}"
    );
    // dig only looks up; a later connect from the same cgroup to what it
    // got is named from the cgroup's answers.
    let got = with_resolver(&cg, "127.0.0.153", "/usr/bin/dig +short +tries=1 dig.test");
    assert_eq!(got.trim(), "127.0.0.9");
    // Over TCP too (one segment each way on loopback).
    let got = with_resolver(&cg, "127.0.0.153", "/usr/bin/dig +tcp +short +tries=1 tcp.test");
    assert_eq!(got.trim(), "127.0.0.10");
    let tcp_server_b = tcp_server("127.0.0.10:0", 0, 0);
    let third = probe(&cg, &["connect", &tcp_server_b.to_string()]).unwrap()["pid"]
        .as_u64()
        .unwrap();
    let e = connect_of(&mut d, third);
    assert_eq!(
        (&e["dns_name"], &e["dns_source"]),
        (&"tcp.test".into(), &"cgroup".into()),
        "{e}"
    );
    drop(dns);
    let other = probe(&cg, &["connect", &server.to_string()]).unwrap()["pid"]
        .as_u64()
        .unwrap();
    let e = connect_of(&mut d, other);
    // The last answer for 127.0.0.9 in this cgroup was dig's.
    assert_eq!(
        (&e["dns_name"], &e["dns_source"]),
        (&"dig.test".into(), &"cgroup".into()),
        "{e}"
    );
}
