//! `tracectl run` against the real daemon and kernel, the network side:
//! commands run as an unprivileged user created by the test, in a sandbox
//! below the test's cgroup, on loopback only.

use std::process::{Output, Stdio};
use std::time::Duration;

use connectracer_tests::sandbox::{lines, log_path, run, sandbox_dirs, stderr, tracectl_run, user, CONFIG};
use connectracer_tests::{bin_path, tcp_server, wait_until, Daemon, TestCgroup};
use serde_json::Value;

/// Only what was allowed, for TCP over IPv4, IPv6 and v4-mapped IPv6 and
/// for UDP, from the command, its child and its grandchild; every other
/// destination (loopback included) is EPERM. The JSON Lines trace has one
/// event per connection made or refused, and nothing else.
#[test]
fn only_allowed_destinations_for_the_command_and_its_descendants() {
    let cg = TestCgroup::new("sandbox-net");
    let d = Daemon::start(&cg, CONFIG).expect("daemon");
    let u = user("n");
    let ok4 = tcp_server("127.0.0.1:0", 0, 0);
    let no4 = tcp_server("127.0.0.1:0", 0, 0);
    let ok6 = tcp_server("[::1]:0", 0, 0);
    let no6 = tcp_server("[::1]:0", 0, 0);
    let udp_ok = std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let udp_no = std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let mapped = |a: std::net::SocketAddr| format!("[::ffff:127.0.0.1]:{}", a.port());
    let probe = bin_path("ct-probe").display().to_string();
    let script = format!(
        "{probe} connect {ok4} {no4} {ok6} {no6} {mok} {mno}; \
         sh -c '{probe} connect {no4} {ok4}; sh -c \"{probe} connect {ok6} {no6}\"'; \
         {probe} udp 2 {udp_ok} {udp_no}",
        mok = mapped(ok4),
        mno = mapped(no4),
    );
    let log = log_path("net");
    let allow4 = ok4.to_string();
    let allow6 = ok6.to_string();
    let allow_udp = format!("{udp_ok}/udp");
    let args = [
        "--allow-net",
        &allow4,
        "--allow-net",
        &allow6,
        "--allow-net",
        &allow_udp,
        "--log",
        log.to_str().unwrap(),
        "--",
        "sh",
        "-c",
        &script,
    ];
    let out = run(&d, &u, &args);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let results = lines(&out.stdout);
    assert_eq!(results.len(), 4, "{results:?}");
    let outcome = |r: &Value| -> Vec<(String, Option<i64>)> {
        r["results"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| (x["dst"].as_str().unwrap().to_string(), x["errno"].as_i64()))
            .collect()
    };
    let eperm = Some(i64::from(libc::EPERM));
    let s = |a: &dyn ToString| a.to_string();
    assert_eq!(
        outcome(&results[0]),
        vec![
            (s(&ok4), None),
            (s(&no4), eperm),
            (s(&ok6), None),
            (s(&no6), eperm),
            (mapped(ok4), None),
            (mapped(no4), eperm),
        ]
    );
    // The child and the grandchild are in the sandbox too.
    assert_eq!(outcome(&results[1]), vec![(s(&no4), eperm), (s(&ok4), None)]);
    assert_eq!(outcome(&results[2]), vec![(s(&ok6), None), (s(&no6), eperm)]);
    assert_eq!(
        results[3]["denied"],
        serde_json::json!([udp_no.to_string(), udp_no.to_string()]),
        "both datagrams to {udp_no}, none to {udp_ok}"
    );

    // One event per connection made (connect, send) or refused (denied).
    let trace = lines(&std::fs::read(&log).expect("the --log file"));
    let events: Vec<(String, u64, String)> = trace
        .iter()
        .filter_map(|v| {
            let e = &v["event"];
            let kind = e["kind"].as_str()?;
            matches!(kind, "connect" | "send" | "denied").then(|| {
                let c = &e["connection"];
                (
                    kind.to_string(),
                    c["process"]["pid"].as_u64().unwrap(),
                    c["dst"].as_str().unwrap().to_string(),
                )
            })
        })
        .collect();
    let mut expected = Vec::new();
    for r in &results[..3] {
        let pid = r["pid"].as_u64().unwrap();
        for x in r["results"].as_array().unwrap() {
            let kind = if x["errno"].as_i64() == eperm {
                "denied"
            } else {
                "connect"
            };
            // The kernel reports v4-mapped destinations as IPv4.
            let dst = x["dst"]
                .as_str()
                .unwrap()
                .replace("[::ffff:127.0.0.1]", "127.0.0.1");
            expected.push((kind.to_string(), pid, dst));
        }
    }
    let udp_pid = results[3]["pid"].as_u64().unwrap();
    expected.push(("send".into(), udp_pid, udp_ok.to_string()));
    expected.push(("denied".into(), udp_pid, udp_no.to_string()));
    let mut got = events.clone();
    got.sort();
    expected.sort();
    assert_eq!(got, expected, "trace: {trace:?}");
    let summary = trace.last().expect("a summary line");
    assert_eq!(
        summary["summary"]["reached"][format!("tcp {ok4}")],
        3,
        "{summary}"
    );
    assert_eq!(
        summary["summary"]["refused"][format!("tcp {no4}")],
        3,
        "{summary}"
    );
    wait_until("the sandbox removed", Duration::from_secs(5), || {
        sandbox_dirs(&cg).is_empty()
    });
}

/// tracectl exits with the command's status, 128+N for a signal.
#[test]
fn the_exit_status_is_the_commands() {
    let cg = TestCgroup::new("sandbox-exit");
    let d = Daemon::start(&cg, CONFIG).expect("daemon");
    let u = user("e");
    for (script, code) in [
        ("exit 0", 0),
        ("exit 3", 3),
        ("kill -TERM $$", 128 + 15),
        ("kill -KILL $$", 128 + 9),
    ] {
        let out = run(&d, &u, &["--", "sh", "-c", script]);
        assert_eq!(out.status.code(), Some(code), "{script}: {}", stderr(&out));
    }
    let out = run(&d, &u, &["--", "/nonexistent/command"]);
    assert_eq!(out.status.code(), Some(127), "{}", stderr(&out));
}

/// A hostname allowed through the daemon's DNS: once its record changes
/// and the TTL (and the grace) have passed, the new address is reachable
/// and the old one is not. Rules come from a --policy file here.
#[test]
fn a_hostname_follows_its_record_and_a_policy_file_gives_rules() {
    let dns = connectracer_tests::Dnsmasq::start("127.0.0.21 api.test\n", 1);
    let config = format!(
        "trace = \"watched\"\n[dns]\nnameservers = [\"127.0.0.1:{}\"]\nmin_ttl = \"1s\"\ngrace = \"1s\"\n",
        dns.port
    );
    let cg = TestCgroup::new("sandbox-names");
    let d = Daemon::start(&cg, &config).expect("daemon");
    let u = user("h");
    let old = std::net::TcpListener::bind("127.0.0.21:0").unwrap();
    let port = old.local_addr().unwrap().port();
    let new = std::net::TcpListener::bind(("127.0.0.22", port)).unwrap();
    let dir = log_path("names").with_file_name("");
    let policy = dir.join("policy.toml");
    std::fs::write(
        &policy,
        format!("[[rule]]\naction = \"allow\"\ndest = \"api.test\"\nports = [{port}]\nprotocol = \"tcp\"\n"),
    )
    .unwrap();
    let probe = bin_path("ct-probe").display().to_string();
    let round = |n: u32| {
        format!(
            "while [ ! -e {0}/go{n} ]; do sleep 0.05; done; {probe} connect 127.0.0.21:{port} 127.0.0.22:{port}",
            dir.display()
        )
    };
    let script = format!("{}; {}", round(1), round(2));
    let child = tracectl_run(
        &d,
        &u,
        &["--policy", policy.to_str().unwrap(), "--", "sh", "-c", &script],
    )
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    let show = || d.tracectl(&["--json", "policy", "show"]).1;
    wait_until("api.test resolved", Duration::from_secs(10), || {
        show().contains("127.0.0.21")
    });
    std::fs::write(dir.join("go1"), "").unwrap();
    dns.set_records("127.0.0.22 api.test\n");
    wait_until(
        "the new address in force, the old one gone",
        Duration::from_secs(15),
        || {
            let s = show();
            s.contains("127.0.0.22") && !s.contains("127.0.0.21")
        },
    );
    std::fs::write(dir.join("go2"), "").unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let eperm = Some(i64::from(libc::EPERM));
    let errnos: Vec<Vec<Option<i64>>> = lines(&out.stdout)
        .iter()
        .map(|r| {
            r["results"]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x["errno"].as_i64())
                .collect()
        })
        .collect();
    assert_eq!(
        errnos,
        vec![vec![None, eperm], vec![eperm, None]],
        "{}",
        stderr(&out)
    );
    drop((old, new));
    let _ = std::fs::remove_dir_all(&dir);
}

/// A sandbox only narrows: what it allows, the host's policy may still
/// refuse. With --audit it refuses nothing and reports what it would have.
#[test]
fn a_sandbox_cannot_widen_the_host_policy_and_audit_only_reports() {
    let ok = tcp_server("127.0.0.1:0", 0, 0);
    let host_denied = tcp_server("127.0.0.1:0", 0, 0);
    let other = tcp_server("127.0.0.1:0", 0, 0);
    let config = format!(
        "trace = \"watched\"\n[policy]\nallow_loopback = false\n\n[[rule]]\naction = \"deny\"\ndest = \"127.0.0.1\"\nports = [{}]\n",
        host_denied.port()
    );
    let cg = TestCgroup::new("sandbox-narrow");
    let d = Daemon::start(&cg, &config).expect("daemon");
    let u = user("w");
    let probe = bin_path("ct-probe").display().to_string();
    let script = format!("{probe} connect {ok} {host_denied} {other}");
    let (a, b) = (ok.to_string(), host_denied.to_string());
    let eperm = Some(i64::from(libc::EPERM));
    let errnos = |out: &Output| -> Vec<Option<i64>> {
        lines(&out.stdout)[0]["results"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x["errno"].as_i64())
            .collect()
    };
    let out = run(
        &d,
        &u,
        &["--allow-net", &a, "--allow-net", &b, "--", "sh", "-c", &script],
    );
    assert_eq!(errnos(&out), vec![None, eperm, eperm], "{}", stderr(&out));

    let log = log_path("audit");
    let out = run(
        &d,
        &u,
        &[
            "--audit",
            "--allow-net",
            &a,
            "--log",
            log.to_str().unwrap(),
            "--",
            "sh",
            "-c",
            &script,
        ],
    );
    // The host's deny still holds; the sandbox's would-be refusal does not.
    assert_eq!(errnos(&out), vec![None, eperm, None], "{}", stderr(&out));
    let verdicts: Vec<(String, String, String)> = lines(&std::fs::read(&log).unwrap())
        .iter()
        .filter_map(|v| {
            let e = &v["event"];
            let c = &e["connection"];
            matches!(e["kind"].as_str()?, "connect" | "denied").then(|| {
                (
                    e["kind"].as_str().unwrap().to_string(),
                    c["dst"].as_str().unwrap().to_string(),
                    c["verdict"].as_str().unwrap().to_string(),
                )
            })
        })
        .collect();
    assert_eq!(
        verdicts,
        vec![
            ("connect".to_string(), a.clone(), "allow".to_string()),
            ("denied".to_string(), b.clone(), "deny".to_string()),
            ("connect".to_string(), other.to_string(), "would_deny".to_string()),
        ]
    );
}

/// The addresses in the command's own DNS answers count for its hostname
/// rules as they arrive, though the daemon's own resolver knows nothing
/// of the name.
#[test]
fn a_hostname_is_allowed_by_the_answer_the_command_received() {
    let own = connectracer_tests::Dnsmasq::start("", 60);
    let theirs = connectracer_tests::Dnsmasq::start_on(
        "127.0.0.155",
        53,
        "127.0.0.31 ok.test\n127.0.0.32 other.test\n",
        60,
    );
    let ok = tcp_server("127.0.0.31:0", 0, 0);
    let other = tcp_server("127.0.0.32:0", 0, 0);
    let config = format!(
        "trace = \"watched\"\n[dns]\nnameservers = [\"127.0.0.1:{}\"]\n",
        own.port
    );
    let cg = TestCgroup::new("sandbox-answers");
    let d = Daemon::start(&cg, &config).expect("daemon");
    let u = user("d");
    let probe = bin_path("ct-probe").display().to_string();
    let script = format!(
        "{probe} resolve 127.0.0.155:53 ok.test {}; {probe} resolve 127.0.0.155:53 other.test {}",
        ok.port(),
        other.port()
    );
    let allow = format!("ok.test:{}", ok.port());
    let out = run(
        &d,
        &u,
        &[
            "--allow-net",
            &allow,
            "--allow-net",
            "127.0.0.155:53/udp",
            "--",
            "sh",
            "-c",
            &script,
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let results: Vec<(Value, Value)> = lines(&out.stdout)
        .iter()
        .map(|r| (r["dst"].clone(), r["ok"].clone()))
        .collect();
    assert_eq!(
        results,
        vec![
            (ok.to_string().into(), true.into()),
            (other.to_string().into(), false.into())
        ],
        "{}",
        stderr(&out)
    );
    let (_, show, _) = d.tracectl(&["--json", "policy", "show"]);
    assert!(
        !show.contains("127.0.0.31"),
        "the daemon resolved it itself: {show}"
    );
    drop(theirs);
}
