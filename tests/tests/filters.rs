//! The filters `who`, `connections` and `watch` share, each against real
//! connections from a unit, a container, another user and executable, and
//! one the policy denies; and watch's line and its notice when a filter
//! matches nothing.

use std::collections::BTreeSet;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use connectracer_tests::{
    bin_path, closed_port, connection_pids, probe, probe_as, tcp_server, Daemon, TestCgroup,
};
use serde_json::Value;

const CONTAINER: &str = "9f1c2b3a5d6e7f8091a2b3c4d5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f708";
const NOBODY: u32 = 65534;

/// The pids of the connections a tracectl JSON answer lists.
fn pids(d: &Daemon, args: &[&str]) -> BTreeSet<u64> {
    let mut a = vec!["--json"];
    a.extend(args);
    let (code, out, err) = d.tracectl(&a);
    assert_eq!(code, 0, "{args:?}: {err}");
    connection_pids(&serde_json::from_str(&out).unwrap())
        .into_iter()
        .collect()
}

struct Scene {
    /// From unit ux-web.service: a TCP exchange with the server.
    unit: u64,
    /// From a Docker-named container cgroup: a refused connect.
    container: u64,
    /// A copy of the probe named ct-filter-probe, as nobody, to the server.
    other: u64,
    /// A connect the policy denies.
    denied: u64,
    /// The unit's and the container's cgroups, kept while the daemon is
    /// asked: a connection whose cgroup is gone has no path to name it by.
    _cgroups: [TestCgroup; 2],
}

fn scene(cg: &TestCgroup, server: &str, refused: &str) -> Scene {
    let copy = std::env::temp_dir().join(format!("ct-filter-probe-{}", std::process::id()));
    std::fs::copy(bin_path("ct-probe"), &copy).unwrap();
    let cgroups = [
        cg.child("ux-web.service"),
        cg.child(&format!("docker-{CONTAINER}.scope")),
    ];
    let unit = probe(&cgroups[0], &["tcp", server, "3", "5"]).unwrap();
    let container = probe(&cgroups[1], &["connect", refused]).unwrap();
    let out = cg
        .command_as(&copy, Some(NOBODY))
        .args(["tcp", server, "3", "5"])
        .output()
        .unwrap();
    let _ = std::fs::remove_file(&copy);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let other: Value = serde_json::from_slice(&out.stdout).unwrap();
    let denied = probe_as(cg, &["connect", "127.0.0.3:9"], None).unwrap();
    let pid = |v: &Value| v["pid"].as_u64().unwrap();
    Scene {
        unit: pid(&unit),
        container: pid(&container),
        other: pid(&other),
        denied: pid(&denied),
        _cgroups: cgroups,
    }
}

fn config(server_port: u16) -> String {
    format!(
        "trace = \"all\"\n[policy]\nallow_loopback = false\n[[rule]]\naction = \"deny\"\ndest = \"127.0.0.3\"\n\
         [[host]]\nname = \"127.0.0.1\"\nports = [{server_port}]\nlabel = \"web\"\n"
    )
}

#[test]
fn each_filter_keeps_exactly_its_connections() {
    let server = tcp_server("127.0.0.1:0", 3, 5);
    let refused = closed_port("127.0.0.2:0").to_string();
    // A slice: systemd-style names below it are units.
    let cg = TestCgroup::new("filters.slice");
    let mut d = Daemon::start(&cg, &config(server.port())).unwrap();
    let s = scene(&cg, &server.to_string(), &refused);
    d.wait_for(Duration::from_secs(5), |seen| {
        seen.iter()
            .any(|e| e["event"] == "closed" && e["process"]["pid"] == s.other)
    })
    .unwrap();
    let set = |p: &[u64]| p.iter().copied().collect::<BTreeSet<u64>>();
    let port = server.port().to_string();
    let uid = NOBODY.to_string();
    let cases: Vec<(Vec<&str>, BTreeSet<u64>)> = vec![
        (vec!["--unit", "ux-web.*"], set(&[s.unit])),
        (vec!["--container", &CONTAINER[..12]], set(&[s.container])),
        (vec!["--comm", "ct-filter*"], set(&[s.other])),
        (vec!["--exe", "*/ct-filter-probe-*"], set(&[s.other])),
        (vec!["--user", "nobody"], set(&[s.other])),
        (vec!["--user", &uid], set(&[s.other])),
        (vec!["--dest", "127.0.0.2/31"], set(&[s.container, s.denied])),
        (vec!["--port", &port], set(&[s.unit, s.other])),
        (vec!["--verdict", "deny"], set(&[s.denied])),
        (vec!["--name", "127.0.0.*"], set(&[s.unit, s.other])),
        (
            vec!["--comm", "ct-probe", "--dest", "127.0.0.0/30"],
            set(&[s.unit, s.container, s.denied]),
        ),
    ];
    for (filter, want) in &cases {
        let mut args = vec!["connections"];
        args.extend(filter);
        assert_eq!(&pids(&d, &args), want, "connections {filter:?}");
    }
    // who: a destination, narrowed by the same filters; a label for its host.
    assert_eq!(pids(&d, &["who", "web"]), set(&[s.unit, s.other]));
    assert_eq!(pids(&d, &["who", "web", "--user", "nobody"]), set(&[s.other]));
    assert_eq!(
        pids(&d, &["who", &server.to_string(), "--unit", "ux-web.service"]),
        set(&[s.unit])
    );
    assert_eq!(
        pids(&d, &["who", &refused, "--verdict", "allow"]),
        set(&[s.container])
    );
}

fn watch(d: &Daemon, args: &[&str]) -> Child {
    Command::new(bin_path("tracectl"))
        .arg("--socket")
        .arg(&d.socket)
        .arg("watch")
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Lines a watcher printed within `for_`.
fn lines_of(mut child: Child, for_: Duration) -> (Vec<String>, String) {
    std::thread::sleep(for_);
    child.kill().unwrap();
    let out = child.wait_with_output().unwrap();
    let lines = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect();
    (lines, String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn watch_filters_in_the_daemon_and_says_when_nothing_matched() {
    let server = tcp_server("127.0.0.1:0", 3, 5);
    let refused = closed_port("127.0.0.2:0").to_string();
    let cg = TestCgroup::new("watch-filters.slice");
    let d = Daemon::start(&cg, &config(server.port())).unwrap();
    let by_user = watch(&d, &["-o", "jsonl", "--user", "nobody"]);
    let failed = watch(&d, &["-o", "jsonl", "--event", "failed"]);
    let text = watch(&d, &["--unit", "ux-web.service", "--event", "closed"]);
    let nothing = watch(&d, &["--unit", "no-such.service"]);
    std::thread::sleep(Duration::from_millis(300));
    let started = Instant::now();
    let s = scene(&cg, &server.to_string(), &refused);
    let rest = Duration::from_millis(2500).saturating_sub(started.elapsed());

    let (lines, _) = lines_of(by_user, rest);
    let events: Vec<Value> = lines.iter().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert!(!events.is_empty());
    for e in &events {
        assert_eq!(e["event"]["connection"]["process"]["pid"], s.other, "{e}");
    }
    let (lines, _) = lines_of(failed, Duration::ZERO);
    let kinds: BTreeSet<(String, u64)> = lines
        .iter()
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap();
            let ev = &v["event"];
            (
                ev["kind"].as_str().unwrap().to_string(),
                ev["connection"]["process"]["pid"].as_u64().unwrap(),
            )
        })
        .collect();
    assert!(kinds.contains(&("failed".into(), s.container)), "{kinds:?}");
    assert!(kinds.iter().all(|(k, _)| k == "failed"), "{kinds:?}");

    // The text line: time, kind, protocol, local → remote, who, where, what.
    let (lines, err) = lines_of(text, Duration::ZERO);
    assert_eq!(lines.len(), 1, "{lines:?}");
    let (time, line) = lines[0].split_once(' ').unwrap();
    assert_eq!(time.len(), "12:34:56.789".len(), "{time}");
    let words: Vec<&str> = line.split_whitespace().collect();
    assert_eq!((words[0], words[1], words[3]), ("closed", "tcp", "→"), "{line}");
    let expected = format!(
        "{} pid={} comm=ct-probe user=root unit=ux-web.service host=web verdict=allow",
        server, s.unit
    );
    assert!(line.contains(&expected), "{line}");
    assert!(
        line.contains(" duration=") && line.ends_with(" sent=3 received=5"),
        "{line}"
    );
    assert!(err.is_empty(), "a filter that matched says nothing: {err}");

    let (lines, err) = lines_of(nothing, Duration::ZERO);
    assert!(lines.is_empty(), "{lines:?}");
    assert_eq!(
        err,
        "tracectl: no event has matched the filter in 2s; still watching\n"
    );
    let _ = d;
}
