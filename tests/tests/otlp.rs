//! The OTLP event sink against an independent receiver: the reference
//! Python gRPC stack serving the LogsService generated from the OTLP protos
//! (tests/otlp/receiver.py; grpcio and opentelemetry-proto from
//! scripts/install-deps), or Python's http.server decoding OTLP/HTTP
//! protobuf. Every event a test process causes must arrive once, with the
//! conventional attributes, checked field by field against the same event
//! on the stdout JSON sink; with the receiver down, lines wait in the queue
//! up to its bound and the rest are counted as lost, and the queue drains
//! once it is up. Runs as root.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime};

use connectracer_tests::{closed_port, free_port, probe, repo_root, tcp_server, Daemon, TestCgroup};
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(30);

/// tests/otlp/receiver.py, printing each record it receives as JSON.
struct Receiver {
    child: Child,
    lines: mpsc::Receiver<Value>,
    port: u16,
    records: Vec<Value>,
}

impl Receiver {
    fn start(protocol: &str, port: u16) -> Self {
        let mut child = Command::new("python3")
            .arg(repo_root().join("tests/otlp/receiver.py"))
            .args(["--protocol", protocol, "--port", &port.to_string()])
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3 (grpcio and opentelemetry-proto: scripts/install-deps)");
        let out = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                let v: Value =
                    serde_json::from_str(&line).unwrap_or_else(|e| panic!("receiver: {e}: {line}"));
                if tx.send(v).is_err() {
                    return;
                }
            }
        });
        let first = lines
            .recv_timeout(WAIT)
            .expect("the receiver never said it listens");
        let port = first["listening"].as_u64().expect("{\"listening\": PORT}") as u16;
        Self {
            child,
            lines,
            port,
            records: Vec::new(),
        }
    }

    fn endpoint(&self, protocol: &str) -> String {
        match protocol {
            "grpc" => format!("http://127.0.0.1:{}", self.port),
            _ => format!("http://127.0.0.1:{}/v1/logs", self.port),
        }
    }

    /// Collects records until `done` holds over all received so far.
    fn wait_for(&mut self, done: impl Fn(&[Value]) -> bool) {
        let deadline = Instant::now() + WAIT;
        while !done(&self.records) {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(v) => self.records.push(v),
                Err(_) => panic!("receiver: timed out with {} records", self.records.len()),
            }
        }
    }

    /// Whatever else arrives within `quiet`.
    fn drain(&mut self, quiet: Duration) {
        while let Ok(v) = self.lines.recv_timeout(quiet) {
            self.records.push(v);
        }
    }

    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.stop();
    }
}

fn n(v: &Value, k: &str) -> u64 {
    v[k].as_u64().unwrap_or_else(|| panic!("no {k} in {v}"))
}

/// A diagnostic line, read already (lines come in any order) or to come.
fn log_line(d: &mut Daemon, message: &str) -> Value {
    match d.logged(message) {
        Some(l) => l.clone(),
        None => d.wait_log(message, WAIT).unwrap(),
    }
}

fn attr<'a>(r: &'a Value, k: &str) -> &'a Value {
    &r["attributes"][k]
}

fn of_pid(records: &[Value], pid: u64) -> Vec<&Value> {
    records
        .iter()
        .filter(|r| *attr(r, "process.pid") == pid)
        .collect()
}

/// The JSON line's RFC 3339 timestamp (microseconds) in nanoseconds.
fn nanos(stamp: &Value) -> u64 {
    let t = humantime::parse_rfc3339(stamp.as_str().unwrap()).unwrap();
    t.duration_since(SystemTime::UNIX_EPOCH).unwrap().as_nanos() as u64
}

/// One OTLP record against the same event as the JSON sink wrote it.
fn check_record(r: &Value, e: &Value) {
    let p = &e["process"];
    let dst: std::net::SocketAddr = e["dst"].as_str().unwrap().parse().unwrap();
    let a = |k: &str| attr(r, k).clone();
    let expect = |k: &str, want: Value| assert_eq!(a(k), want, "{k} of {e}\nrecord {r}");
    expect("connectracer.event", e["event"].clone());
    expect("connectracer.connection_id", e["id"].clone());
    expect("connectracer.socket_cookie", e["cookie"].clone());
    expect("connectracer.state", e["state"].clone());
    expect("connectracer.verdict", e["verdict"].clone());
    expect("connectracer.fail_reason", e["fail_reason"].clone());
    expect("connectracer.config_epoch", e["config_epoch"].clone());
    expect("network.transport", e["protocol"].clone());
    expect(
        "network.type",
        (if dst.is_ipv4() { "ipv4" } else { "ipv6" }).into(),
    );
    expect("network.peer.address", dst.ip().to_string().into());
    expect("network.peer.port", dst.port().into());
    // The name the process looked up (none here, unless the host's DNS
    // answers named a loopback address), else the address.
    let server = [&e["dns_name"], &e["host"]]
        .into_iter()
        .find(|v| v.is_string())
        .cloned();
    expect(
        "server.address",
        server.unwrap_or_else(|| dst.ip().to_string().into()),
    );
    expect("server.port", dst.port().into());
    match e["src"].as_str() {
        Some(src) => {
            let src: std::net::SocketAddr = src.parse().unwrap();
            expect("network.local.address", src.ip().to_string().into());
            expect("network.local.port", src.port().into());
        }
        None => expect("network.local.address", Value::Null),
    }
    expect("process.pid", p["pid"].clone());
    expect("process.parent_pid", p["ppid"].clone());
    expect("thread.id", p["tid"].clone());
    expect("thread.name", p["comm"].clone());
    expect("process.executable.path", p["exe"].clone());
    expect("process.command_args", p["argv"].clone());
    expect("process.command", p["argv"][0].clone());
    expect("process.user.id", p["uid"].clone());
    expect("process.user.name", p["user"].clone());
    expect("connectracer.cgroup", p["cgroup"].clone());
    expect("connectracer.cgroup_id", p["cgroup_id"].clone());
    assert_eq!(
        r["time_unix_nano"].as_u64().unwrap() / 1000,
        nanos(&e["timestamp"]) / 1000,
        "{r}"
    );
    let warn = e["event"] == "failed" || e["event"] == "denied";
    assert_eq!(r["severity_text"], if warn { "WARN" } else { "INFO" }, "{r}");
    assert_eq!(
        r["event_name"],
        format!("connectracer.{}", e["event"].as_str().unwrap())
    );
    let body = r["body"].as_str().unwrap();
    assert!(
        body.starts_with(&format!("{} tcp ", e["event"].as_str().unwrap())),
        "{body}"
    );
    let host = nix::sys::utsname::uname().unwrap();
    assert_eq!(r["resource"]["service.name"], "connectracerd", "{r}");
    assert_eq!(
        r["resource"]["host.name"],
        host.nodename().to_str().unwrap(),
        "{r}"
    );
    assert_eq!(r["scope"]["name"], "connectracer", "{r}");
}

/// Connections to a server (connect, established, closed) and refused ones
/// over IPv6 (connect, failed): every event of the probes arrives once.
fn every_event_arrives_with_its_attributes(protocol: &str) {
    let cg = TestCgroup::new(&format!("otlp-{}", protocol.replace('/', "-")));
    let mut rx = Receiver::start(if protocol == "grpc" { "grpc" } else { "http" }, 0);
    let config = format!(
        "trace = \"all\"\n[[event_sink]]\ntype = \"stdout\"\nformat = \"json\"\n\
         [[event_sink]]\ntype = \"otlp\"\nendpoint = \"{}\"\nprotocol = \"{protocol}\"\n\
         headers = {{ x-tenant = \"tests\" }}\n",
        rx.endpoint(protocol)
    );
    let mut d = Daemon::start(&cg, &config).unwrap();
    let server = tcp_server("127.0.0.1:0", 0, 0);
    let connects = 40usize;
    let flood = probe(&cg, &["flood", &server.to_string(), &connects.to_string()]).unwrap();
    let refused = closed_port("[::1]:0").to_string();
    let v6 = probe(&cg, &["connect", &refused, &refused]).unwrap();
    let pids = [flood["pid"].as_u64().unwrap(), v6["pid"].as_u64().unwrap()];
    let count = |seen: &[Value], pid: u64, kind: &str| {
        seen.iter()
            .filter(|e| e["process"]["pid"] == pid && e["event"] == kind)
            .count()
    };
    d.wait_for(WAIT, |seen| {
        count(seen, pids[0], "closed") == connects && count(seen, pids[1], "failed") == 2
    })
    .unwrap();
    let events: Vec<Value> = d
        .seen
        .iter()
        .filter(|e| pids.contains(&e["process"]["pid"].as_u64().unwrap()))
        .cloned()
        .collect();
    assert_eq!(events.len(), 3 * connects + 4, "{events:?}");
    let s = d.wait_sink("otlp", |s| {
        n(s, "queued") == 0 && n(s, "written") + n(s, "lost") == n(s, "events")
    });
    let total = n(&s, "events");
    assert_eq!(
        (n(&s, "written"), n(&s, "lost"), n(&s, "errors")),
        (total, 0, 0),
        "{s}"
    );
    assert_eq!(
        n(&d.sink_stats("stdout"), "events"),
        total,
        "both sinks take every event"
    );
    rx.wait_for(|r| pids.iter().map(|&p| of_pid(r, p).len()).sum::<usize>() >= events.len());
    rx.drain(Duration::from_millis(500));
    let mut by_key: BTreeMap<(String, u64), &Value> = BTreeMap::new();
    for r in pids.iter().flat_map(|&p| of_pid(&rx.records, p)) {
        let key = (
            attr(r, "connectracer.event").as_str().unwrap().to_string(),
            attr(r, "connectracer.connection_id").as_u64().unwrap(),
        );
        assert!(by_key.insert(key, r).is_none(), "received twice: {r}");
    }
    assert_eq!(by_key.len(), events.len(), "one record per event");
    for e in &events {
        let key = (
            e["event"].as_str().unwrap().to_string(),
            e["id"].as_u64().unwrap(),
        );
        let r = by_key.get(&key).unwrap_or_else(|| panic!("no record for {e}"));
        check_record(r, e);
    }
    assert_eq!(
        rx.records.len() as u64,
        total,
        "the receiver got exactly the lines counted written"
    );
}

#[test]
fn grpc_receiver_gets_every_event_with_the_conventional_attributes() {
    every_event_arrives_with_its_attributes("grpc");
}

#[test]
fn http_protobuf_receiver_gets_every_event_with_the_conventional_attributes() {
    every_event_arrives_with_its_attributes("http/protobuf");
}

/// The receiver is down: the first `bound` lines wait in the queue, the
/// rest are lost, and stats say so exactly; once it is up, the queued
/// lines arrive, and no more.
#[test]
fn a_receiver_down_then_up_gets_the_queued_lines_and_the_rest_are_lost() {
    let cg = TestCgroup::new("otlp-down");
    let port = free_port();
    let bound = 150u64;
    let config = format!(
        "trace = \"all\"\n[[event_sink]]\ntype = \"otlp\"\nendpoint = \"http://127.0.0.1:{port}\"\n\
         timeout = \"1s\"\nqueue = {bound}\n"
    );
    let mut d = Daemon::start(&cg, &config).unwrap();
    let dst = closed_port("127.0.0.1:0").to_string();
    let connects = 200u64;
    let out = probe(&cg, &["flood", &dst, &connects.to_string()]).unwrap();
    let pid = out["pid"].as_u64().unwrap();
    // A connect and a refusal per attempt.
    let events = 2 * connects;
    // The writer's first failed send can come after the last event is counted.
    let s = d.wait_sink("otlp", |s| n(s, "events") == events && n(s, "errors") > 0);
    assert_eq!(
        (n(&s, "written"), n(&s, "queued"), n(&s, "lost")),
        (0, bound, events - bound),
        "while the receiver is down: {s}"
    );
    assert!(n(&s, "errors") > 0, "{s}");
    assert!(
        s["last_error"].as_str().unwrap().contains(&port.to_string()),
        "{s}"
    );
    let logged = log_line(&mut d, "event sink otlp: ");
    let m = logged["message"].as_str().unwrap();
    assert!(m.contains("stay queued"), "{m}");
    log_line(&mut d, "event sink otlp lost");
    let mut rx = Receiver::start("grpc", port);
    let s = d.wait_sink("otlp", |s| n(s, "queued") == 0);
    assert_eq!(
        (n(&s, "events"), n(&s, "written"), n(&s, "lost")),
        (events, bound, events - bound),
        "once the receiver is up: {s}"
    );
    assert_eq!(s["last_error"], Value::Null, "{s}");
    log_line(&mut d, "event sink otlp writes again");
    rx.wait_for(|r| of_pid(r, pid).len() as u64 >= bound);
    rx.drain(Duration::from_millis(500));
    let got = of_pid(&rx.records, pid);
    assert_eq!(got.len() as u64, bound, "exactly the queued lines arrive");
    // The oldest lines were kept: the first connects, in order.
    let ids: Vec<u64> = got
        .iter()
        .filter(|r| *attr(r, "connectracer.event") == "connect")
        .map(|r| attr(r, "connectracer.connection_id").as_u64().unwrap())
        .collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "{ids:?}");
    // The same counters over the varlink API (GetStats), which tracectl
    // stats printed: events = written + lost + queued.
    let (code, out, err) = d.tracectl(&["stats"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("otlp"), "{out}");
    let st = d.sink_stats("otlp");
    assert_eq!(
        n(&st, "events"),
        n(&st, "written") + n(&st, "lost") + n(&st, "queued"),
        "{st}"
    );
}
