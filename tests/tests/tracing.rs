//! The real daemon against the real kernel: each test owns a cgroup, runs
//! clients inside it and asserts the exact events connectracerd reports.
//! Runs as root (CI does); nothing here is skipped.

use std::collections::BTreeSet;
use std::time::Duration;

use connectracer_tests::{bin_path, closed_port, probe, probe_as, tcp_server, Daemon, TestCgroup};
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(15);
const TRACE_ALL: &str = "trace = \"all\"\n";

fn pid_of(v: &Value) -> u64 {
    v["pid"].as_u64().expect("probe pid")
}

/// Connect, established and closed for one TCP connection, with full
/// attribution and exact byte counts.
fn assert_tcp_life(d: &mut Daemon, cg: &TestCgroup, pid: u64, dst: &str, uid: u64, user: &str) {
    d.wait_for(WAIT, |seen| {
        seen.iter()
            .any(|e| e["event"] == "closed" && e["process"]["pid"] == pid)
    })
    .unwrap();
    let connect: Vec<&Value> = d.events("connect", Some(pid)).collect();
    assert_eq!(connect.len(), 1, "one connect event for pid {pid}: {connect:?}");
    let c = connect[0];
    assert_eq!(c["dst"], dst);
    assert_eq!(c["protocol"], "tcp");
    let p = &c["process"];
    assert_eq!(p["comm"], "ct-probe");
    assert_eq!(p["exe"], bin_path("ct-probe").to_str().unwrap());
    assert_eq!(p["argv"][1], "tcp");
    assert_eq!(p["uid"], uid);
    assert_eq!(p["user"], user);
    assert_eq!(p["cgroup"], cg.rel.as_str());
    assert_eq!(p["ppid"], std::process::id());

    let est: Vec<&Value> = d.events("established", Some(pid)).collect();
    assert_eq!(est.len(), 1, "one established event");
    assert_eq!(est[0]["cookie"], c["cookie"]);
    let closed: Vec<&Value> = d.events("closed", Some(pid)).collect();
    assert_eq!(closed.len(), 1, "one closed event");
    let cl = closed[0];
    assert_eq!(cl["cookie"], c["cookie"]);
    assert_eq!(cl["dst"], dst);
    assert!(cl["duration_ns"].as_u64().unwrap() > 0);
    assert_eq!(cl["bytes_sent"], 1000, "{cl}");
    assert_eq!(cl["bytes_received"], 2345, "{cl}");
}

#[test]
fn tcp_ipv4_ipv6_and_v4_mapped_are_attributed_with_exact_bytes() {
    let cg = TestCgroup::new("tcp");
    let mut d = Daemon::start(&cg, TRACE_ALL).unwrap();
    let v4 = tcp_server("127.0.0.1:0", 1000, 2345);
    let v6 = tcp_server("[::1]:0", 1000, 2345);

    let out = probe(&cg, &["tcp", &v4.to_string(), "1000", "2345"]).unwrap();
    assert_tcp_life(&mut d, &cg, pid_of(&out), &v4.to_string(), 0, "root");
    let closed = d.events("closed", Some(pid_of(&out))).next().unwrap().clone();
    assert_eq!(closed["src"], out["local"], "local address reported");

    let out = probe(&cg, &["tcp", &v6.to_string(), "1000", "2345"]).unwrap();
    assert_tcp_life(&mut d, &cg, pid_of(&out), &v6.to_string(), 0, "root");

    // An AF_INET6 socket to ::ffff:127.0.0.1 goes through connect6 but is
    // an IPv4 connection: reported as the IPv4 address.
    let mapped = format!("[::ffff:127.0.0.1]:{}", v4.port());
    let out = probe_as(&cg, &["tcp", &mapped, "1000", "2345"], Some(65534)).unwrap();
    assert_tcp_life(&mut d, &cg, pid_of(&out), &v4.to_string(), 65534, "nobody");

    let counters = d.stop().unwrap();
    assert_eq!(counters["dropped"], 0);
    assert_eq!(counters["connects"], 3);
}

#[test]
fn refused_connect_is_reported_failed() {
    let cg = TestCgroup::new("refused");
    let mut d = Daemon::start(&cg, TRACE_ALL).unwrap();
    let dst = closed_port("127.0.0.1:0");
    let out = probe(&cg, &["connect", &dst.to_string()]).unwrap();
    assert_eq!(out["results"][0]["ok"], false);
    let pid = pid_of(&out);
    d.wait_for(WAIT, |s| {
        s.iter()
            .any(|e| e["event"] == "failed" && e["process"]["pid"] == pid)
    })
    .unwrap();
    let failed = d.events("failed", Some(pid)).next().unwrap();
    assert_eq!(failed["fail_reason"], "refused");
    assert_eq!(failed["state"], "failed");
    assert_eq!(failed["dst"], dst.to_string());
    assert_eq!(d.events("established", Some(pid)).count(), 0);
}

#[test]
fn udp_sendto_three_destinations_yields_three_events() {
    let cg = TestCgroup::new("udp");
    let mut d = Daemon::start(&cg, TRACE_ALL).unwrap();
    let sinks: Vec<std::net::UdpSocket> = (0..3)
        .map(|_| std::net::UdpSocket::bind("127.0.0.1:0").unwrap())
        .collect();
    let dsts: Vec<String> = sinks
        .iter()
        .map(|s| s.local_addr().unwrap().to_string())
        .collect();
    let mut args = vec!["udp", "100"];
    args.extend(dsts.iter().map(String::as_str));
    let out = probe(&cg, &args).unwrap();
    let pid = pid_of(&out);
    // The socket's release closes all three: once those arrive, every
    // earlier event of that process has been read.
    d.wait_for(WAIT, |s| {
        s.iter()
            .filter(|e| e["event"] == "closed" && e["process"]["pid"] == pid)
            .count()
            == 3
    })
    .unwrap();
    let sends: Vec<&Value> = d.events("send", Some(pid)).collect();
    assert_eq!(
        sends.len(),
        3,
        "one event per (socket, destination), not per datagram"
    );
    let got: BTreeSet<&str> = sends.iter().map(|e| e["dst"].as_str().unwrap()).collect();
    assert_eq!(got, dsts.iter().map(String::as_str).collect());
    assert!(sends
        .iter()
        .all(|e| e["protocol"] == "udp" && e["cookie"] == sends[0]["cookie"]));
    let counters = d.stop().unwrap();
    assert_eq!(counters["sendmsg_new"], 3);
    assert_eq!(counters["sendmsg_dup"], 297);
}

#[test]
fn two_hundred_short_lived_processes_are_all_attributed() {
    let cg = TestCgroup::new("procs");
    let mut d = Daemon::start(&cg, TRACE_ALL).unwrap();
    let dst = closed_port("127.0.0.1:0").to_string();
    let mut pids = BTreeSet::new();
    for i in 0..200 {
        // A per-process tag in argv proves argv is this process's own.
        let tag = format!("127.0.0.1:{}", 1 + i);
        let out = probe(&cg, &["connect", &dst, &tag]).unwrap();
        pids.insert(pid_of(&out));
    }
    d.wait_for(WAIT, |s| {
        s.iter()
            .filter(|e| e["event"] == "connect" && e["dst"] == dst)
            .count()
            >= 200
    })
    .unwrap();
    let exe = bin_path("ct-probe");
    let mut attributed = BTreeSet::new();
    for e in d.events("connect", None).filter(|e| e["dst"] == dst) {
        let p = &e["process"];
        assert_eq!(p["exe"], exe.to_str().unwrap(), "{e}");
        assert_eq!(p["argv"][0], exe.to_str().unwrap(), "{e}");
        assert_eq!(p["argv"][1], "connect");
        assert_eq!(p["argv"][2], dst.as_str());
        let tag = p["argv"][3].as_str().unwrap();
        let port: u64 = tag.rsplit(':').next().unwrap().parse().unwrap();
        assert!((1..=200).contains(&port));
        attributed.insert(p["pid"].as_u64().unwrap());
    }
    assert_eq!(attributed, pids);
}

#[test]
fn watched_cidrs_and_ports_match_exactly() {
    let cg = TestCgroup::new("watched");
    let (pa, pb, pc, pd, pe, pf, px) = (40001, 40002, 40003, 40004, 40005, 40006, 40007);
    let config = format!(
        r#"
trace = "watched"
[[host]]
name = "127.0.0.2/32"
ports = [{pa}]
label = "a"
[[host]]
name = "127.0.0.0/8"
ports = ["{pb}-{pb}"]
label = "b"
[[host]]
name = "0.0.0.0/0"
ports = [{pc}]
label = "c"
[[host]]
name = "::1/128"
ports = [{pd}]
label = "d"
[[host]]
name = "::/64"
ports = [{pe}]
label = "e"
[[host]]
name = "::/0"
ports = [{pf}]
label = "f"
"#
    );
    let mut d = Daemon::start(&cg, &config).unwrap();
    let v4 = |h: &str, p: u16| format!("{h}:{p}");
    let tries = [
        (v4("127.0.0.2", pa), Some(("a", v4("127.0.0.2", pa)))),
        (v4("127.0.0.1", pa), None),
        (v4("127.0.0.1", pb), Some(("b", v4("127.0.0.1", pb)))),
        (v4("127.0.0.2", pb), Some(("b", v4("127.0.0.2", pb)))),
        (v4("127.0.0.1", pc), Some(("c", v4("127.0.0.1", pc)))),
        (v4("127.0.0.1", px), None),
        (format!("[::1]:{pd}"), Some(("d", format!("[::1]:{pd}")))),
        (format!("[::1]:{pe}"), Some(("e", format!("[::1]:{pe}")))),
        (format!("[::1]:{pf}"), Some(("f", format!("[::1]:{pf}")))),
        (format!("[::1]:{px}"), None),
        // v4-mapped is IPv4: matched by the /8, never by the v6 prefixes.
        (
            format!("[::ffff:127.0.0.1]:{pb}"),
            Some(("b", v4("127.0.0.1", pb))),
        ),
        (format!("[::ffff:127.0.0.1]:{pe}"), None),
        (format!("[::ffff:127.0.0.1]:{pf}"), None),
    ];
    let args: Vec<&str> = std::iter::once("connect")
        .chain(tries.iter().map(|(a, _)| a.as_str()))
        .collect();
    let out = probe(&cg, &args).unwrap();
    let pid = pid_of(&out);
    let expected: Vec<(String, String)> = tries
        .iter()
        .filter_map(|(_, m)| m.as_ref().map(|(l, dst)| ((*l).to_string(), dst.clone())))
        .collect();
    // Every watched try is refused: its failed event is the last thing
    // each produces, so once all are in, nothing else is on its way.
    d.wait_for(WAIT, |s| {
        s.iter()
            .filter(|e| e["event"] == "failed" && e["process"]["pid"] == pid)
            .count()
            >= expected.len()
    })
    .unwrap();
    let got: Vec<(String, String)> = d
        .events("connect", Some(pid))
        .map(|e| {
            (
                e["label"].as_str().unwrap_or("-").to_string(),
                e["dst"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(got, expected);
    let counters = d.stop().unwrap();
    assert_eq!(counters["unwatched"], (tries.len() - expected.len()) as u64);
    assert_eq!(counters["connects"], tries.len() as u64);
}

#[test]
fn tiny_ring_buffer_counts_drops_and_never_blocks_the_client() {
    let cg = TestCgroup::new("drops");
    let config =
        "trace = \"all\"\n[bpf]\nring_buffer_size = \"4KiB\"\nwakeup_threshold = 0\n[log]\nevents = false\n";
    let mut d = Daemon::start(&cg, config).unwrap();
    let dst = closed_port("127.0.0.1:0").to_string();
    let n = 20_000u64;
    let out = probe(&cg, &["flood", &dst, &n.to_string()]).unwrap();
    assert_eq!(out["attempts"], n, "the client completed every connect");
    let c = d.stop().unwrap();
    assert_eq!(c["connects"], n);
    let dropped = c["dropped"].as_u64().unwrap();
    assert!(
        dropped > 0,
        "a 4 KiB ring flooded with {n} connects must drop: {c}"
    );
    let per_cpu: u64 = serde_json::from_str::<Vec<u64>>(c["dropped_per_cpu"].as_str().unwrap())
        .unwrap()
        .iter()
        .sum();
    assert_eq!(per_cpu, dropped);
    // Every reservation either reached the reader or was counted as lost:
    // a connect and a failed record per attempt, plus process records.
    let reserved = 2 * n + c["proc_events"].as_u64().unwrap_or(0);
    assert_eq!(c["kernel_events"].as_u64().unwrap() + dropped, reserved, "{c}");
    assert_eq!(
        c["records"], c["kernel_events"],
        "the reader lost nothing the kernel submitted"
    );
}

/// cgroup links are multi-attach: a second tracer (or systemd's own cgroup
/// programs) on the same cgroup neither replaces nor hides the first.
#[test]
fn two_tracers_on_one_cgroup_both_see_every_connection() {
    let cg = TestCgroup::new("multi");
    let mut first = Daemon::start(&cg, TRACE_ALL).unwrap();
    let mut second = Daemon::start(&cg, TRACE_ALL).unwrap();
    let dst = closed_port("127.0.0.1:0").to_string();
    let pid = pid_of(&probe(&cg, &["connect", &dst]).unwrap());
    for d in [&mut first, &mut second] {
        d.wait_for(WAIT, |s| {
            s.iter()
                .any(|e| e["event"] == "failed" && e["process"]["pid"] == pid)
        })
        .unwrap();
        assert_eq!(d.events("connect", Some(pid)).count(), 1);
    }
    // Stopping one detaches only its own programs.
    first.stop().unwrap();
    let pid = pid_of(&probe(&cg, &["connect", &dst]).unwrap());
    second
        .wait_for(WAIT, |s| {
            s.iter()
                .any(|e| e["event"] == "connect" && e["process"]["pid"] == pid)
        })
        .unwrap();
}

/// A unit whose process connects and exits, its cgroup removed at once (as
/// systemd does): the connection is still named by its cgroup and unit,
/// resolved when the process exec'd rather than when the connect record
/// is read, by which time the directory is gone.
#[test]
fn a_connection_keeps_its_unit_after_the_units_cgroup_is_removed() {
    let cg = TestCgroup::new("gone.slice");
    let mut d = Daemon::start(&cg, TRACE_ALL).unwrap();
    let dst = closed_port("127.0.0.1:0").to_string();
    let probe = bin_path("ct-probe");
    let mut pids = Vec::new();
    for i in 0..5 {
        let unit = cg.child(&format!("short-{i}.service"));
        // The shell's exec names the cgroup; the probe's connect comes 50 ms later.
        let script = format!("sleep 0.05; exec {} connect {dst}", probe.display());
        let out = unit
            .command(std::path::Path::new("/bin/sh"))
            .args(["-c", &script])
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        pids.push((pid_of(&v), unit.rel.clone(), format!("short-{i}.service")));
        // Removed before the daemon drains the ring (every 10 ms).
        drop(unit);
    }
    d.wait_for(WAIT, |s| {
        s.iter()
            .filter(|e| e["event"] == "connect" && e["dst"] == dst)
            .count()
            >= 5
    })
    .unwrap();
    for (pid, rel, unit) in pids {
        let e = d.events("connect", Some(pid)).next().unwrap();
        assert_eq!(e["process"]["cgroup"], rel.as_str(), "{e}");
        assert_eq!(e["process"]["unit"], unit.as_str(), "{e}");
    }
}
