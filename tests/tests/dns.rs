//! Watched hostnames against a real DNS server on loopback: the kernel
//! watch list follows the records, keeps old addresses for the grace
//! period, and keeps the last known ones when DNS fails.

use std::time::Duration;

use connectracer_tests::{
    closed_port, http_get_raw, probe, wait_until, ConfigDir, Daemon, Dnsmasq, TestCgroup,
};
use serde_json::Value;

/// Connects once and says whether the connection was traced (and how).
fn traced(d: &mut Daemon, cg: &TestCgroup, dst: &str) -> Option<Value> {
    let pid = probe(cg, &["connect", dst]).unwrap()["pid"].as_u64().unwrap();
    d.wait_for(Duration::from_secs(2), |s| {
        s.iter()
            .any(|e| e["event"] == "failed" && e["process"]["pid"] == pid)
    })
    .ok()?;
    d.events("connect", Some(pid)).next().cloned()
}

#[test]
fn watched_hostname_follows_dns_with_grace_and_survives_a_dead_server() {
    let mut dns = Dnsmasq::start("127.0.0.5 api.test\n", 1);
    let cg = TestCgroup::new("dns");
    let port = closed_port("127.0.0.1:0").port();
    let config = format!(
        "trace = \"watched\"\n[[host]]\nname = \"api.test\"\nports = [{port}]\nlabel = \"api\"\n[[host]]\nname = \"nxdomain.test\"\n\
         [dns]\nnameservers = [\"127.0.0.1:{}\"]\nmin_ttl = \"1s\"\nmax_ttl = \"1s\"\nretry_min = \"1s\"\nretry_max = \"2s\"\ngrace = \"3s\"\n",
        dns.port
    );
    let metrics_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let cfg = ConfigDir::new(&format!("dns-{}", std::process::id()), &config);
    cfg.write_dropin(
        "99-metrics.toml",
        &format!("[metrics]\nlisten = \"127.0.0.1:{metrics_port}\"\n"),
    );
    let socket = std::env::temp_dir().join(format!("connectracer-dns-{}.sock", std::process::id()));
    let pin_dir = format!("/sys/fs/bpf/connectracer-dns-{}", std::process::id()).into();
    let mut d = Daemon::start_with(&cg, cfg, socket, pin_dir).unwrap();
    d.wait_log("watch list updated from DNS", Duration::from_secs(10))
        .unwrap();
    let first = format!("127.0.0.5:{port}");
    let e = traced(&mut d, &cg, &first).expect("the resolved address is watched");
    assert_eq!(
        (e["host"].as_str(), e["label"].as_str()),
        (Some("api.test"), Some("api"))
    );
    // `who` by the hostname finds it, through the addresses the daemon
    // resolved; a name it does not follow is refused with what to do.
    let (code, out, err) = d.tracectl(&["--json", "who", &format!("api.test:{port}")]);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert!(
        v["connections"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["dst"] == format!("127.0.0.5:{port}").as_str()),
        "{out}"
    );
    let (code, _, err) = d.tracectl(&["who", "unknown.test"]);
    assert_eq!(code, 2, "a usage error");
    assert!(
        err.contains("add it with `tracectl add-host unknown.test`"),
        "{err}"
    );

    // The record moves: the new address is watched within a TTL or two.
    dns.set_records("127.0.0.6 api.test\n");
    let second = format!("127.0.0.6:{port}");
    wait_until("the new address to be traced", Duration::from_secs(6), || {
        traced(&mut d, &cg, &second).is_some()
    });
    // The old one stays for the grace period (3 s), then goes.
    assert!(
        traced(&mut d, &cg, &first).is_some(),
        "old address dropped before its grace period"
    );
    wait_until("the old address to go", Duration::from_secs(8), || {
        traced(&mut d, &cg, &first).is_none()
    });

    // The server dies: the last known address stays watched.
    dns.stop();
    std::thread::sleep(Duration::from_secs(4));
    assert!(
        traced(&mut d, &cg, &second).is_some(),
        "a DNS failure emptied the watch list"
    );
    // An unrelated destination is still not traced.
    assert!(traced(&mut d, &cg, &format!("127.0.0.7:{port}")).is_none());

    // Lookups and failures per host are counted.
    let metrics = http_get_raw(metrics_port, "/metrics").unwrap_or_default();
    let value = |name: &str, host: &str| {
        metrics
            .lines()
            .find(|l| l.starts_with(&format!("{name}{{host=\"{host}\"}}")))
            .and_then(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
    };
    assert!(
        value("connectracer_dns_lookups_total", "api.test").unwrap_or(0.0) >= 3.0,
        "{metrics}"
    );
    assert!(
        value("connectracer_dns_failures_total", "nxdomain.test").unwrap_or(0.0) >= 1.0,
        "{metrics}"
    );
    assert_eq!(
        value("connectracer_dns_addresses", "api.test"),
        Some(1.0),
        "{metrics}"
    );
}
