//! The control socket against the running daemon: tracectl queries, the raw
//! varlink protocol, and who may connect.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::process::{Command, Stdio};
use std::time::Duration;

use connectracer_tests::{bin_path, hold, tcp_server, Daemon, TestCgroup};
use serde_json::{json, Value};

#[test]
fn who_ps_and_connections_find_an_open_connection() {
    let cg = TestCgroup::new("who");
    let mut d = Daemon::start(&cg, "trace = \"all\"\n").unwrap();
    let server = tcp_server("127.0.0.1:0", 1, 1);
    let (mut child, pid, local) = hold(&cg, &server.to_string(), None);
    d.wait_for(Duration::from_secs(15), |s| {
        s.iter()
            .any(|e| e["event"] == "established" && e["process"]["pid"] == pid)
    })
    .unwrap();
    let lport = local.rsplit(':').next().unwrap();

    let (code, out, err) = d.tracectl(&["--json", "who", "--local-port", lport]);
    assert_eq!(code, 0, "{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    let conns = v["connections"].as_array().unwrap();
    assert_eq!(conns.len(), 1, "{out}");
    assert_eq!(conns[0]["process"]["pid"], pid);
    assert_eq!(conns[0]["process"]["exe"], bin_path("ct-probe").to_str().unwrap());
    assert_eq!(conns[0]["src"], local.as_str());
    assert_eq!(conns[0]["state"], "established");

    let (code, out, _) = d.tracectl(&["--json", "who", &server.to_string()]);
    assert_eq!(code, 0);
    let v: Value = serde_json::from_str(&out).unwrap();
    assert!(v["connections"]
        .as_array()
        .unwrap()
        .iter()
        .any(|c| c["process"]["pid"] == pid));

    let (code, out, _) = d.tracectl(&["ps", &pid.to_string()]);
    assert_eq!(code, 0);
    let mut lines = out.lines();
    assert!(lines.next().unwrap().starts_with("PID"), "{out}");
    let row = lines.next().unwrap();
    assert!(
        row.starts_with(&format!("{pid} ")) && row.contains("ct-probe") && row.contains(&local),
        "{out}"
    );

    let (code, out, _) = d.tracectl(&[
        "--json",
        "connections",
        "--state",
        "established",
        "--protocol",
        "tcp",
    ]);
    assert_eq!(code, 0);
    let v: Value = serde_json::from_str(&out).unwrap();
    assert!(v["connections"]
        .as_array()
        .unwrap()
        .iter()
        .all(|c| c["state"] == "established"));

    let (code, out, _) = d.tracectl(&["--json", "stats"]);
    assert_eq!(code, 0);
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["stats"]["kernel"]["connects"], 1);
    assert_eq!(v["stats"]["table_open"], 1);

    // Usage errors: exit 2, naming the argument.
    let (code, _, err) = d.tracectl(&["who", "not an address"]);
    assert_eq!(code, 2);
    assert_eq!(
        err,
        "tracectl: invalid value for ADDRESS[:PORT]: `not an address` is not an IP address or ADDRESS:PORT\n"
    );
    let (code, _, err) = d.tracectl(&["who", "not-watched.example"]);
    assert_eq!(code, 2);
    assert_eq!(
        err,
        "tracectl: invalid value for ADDRESS[:PORT]: `not-watched.example` is not an IP address, a hostname connectracerd follows, or a name a traced connection resolved (add it with `tracectl add-host not-watched.example`)\n"
    );
    child.kill().unwrap();
    child.wait().unwrap();
}

#[test]
fn exit_codes_for_usage_denied_and_not_running() {
    let cg = TestCgroup::new("codes");
    let d = Daemon::start(&cg, "").unwrap();
    let (code, _, _) = d.tracectl(&["who"]);
    assert_eq!(code, 2, "usage error");
    let out = Command::new(bin_path("tracectl"))
        .args(["--socket", "/nonexistent/control.sock", "stats"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(4));
    // The socket is 0660 root:connectracer; nobody is in neither.
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(bin_path("tracectl"))
        .arg("--socket")
        .arg(&d.socket)
        .arg("stats")
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("permission denied"));
}

fn call(s: &mut UnixStream, msg: &[u8]) -> Value {
    s.write_all(msg).unwrap();
    s.write_all(b"\0").unwrap();
    read_reply(s)
}

fn read_reply(s: &mut UnixStream) -> Value {
    let mut buf = Vec::new();
    let mut byte = [0u8];
    loop {
        s.read_exact(&mut byte).unwrap();
        if byte[0] == 0 {
            break;
        }
        buf.push(byte[0]);
    }
    serde_json::from_slice(&buf).unwrap()
}

#[test]
fn raw_varlink_errors_are_typed_and_the_connection_survives() {
    let cg = TestCgroup::new("varlink");
    let d = Daemon::start(&cg, "").unwrap();
    let mut s = UnixStream::connect(&d.socket).unwrap();

    let info = call(&mut s, br#"{"method":"org.varlink.service.GetInfo"}"#);
    assert_eq!(
        info["parameters"]["interfaces"],
        json!(["org.varlink.service", "org.connectracer.Tracer"])
    );
    let desc = call(
        &mut s,
        br#"{"method":"org.varlink.service.GetInterfaceDescription","parameters":{"interface":"org.connectracer.Tracer"}}"#,
    );
    assert!(desc["parameters"]["description"]
        .as_str()
        .unwrap()
        .contains("method Who("));

    let bad = call(&mut s, b"{not json");
    assert_eq!(bad["error"], "org.connectracer.Tracer.InvalidArgument");
    assert_eq!(bad["parameters"]["field"], "message");
    let unknown = call(&mut s, br#"{"method":"org.connectracer.Tracer.Nope"}"#);
    assert_eq!(unknown["error"], "org.varlink.service.MethodNotFound");
    let iface = call(&mut s, br#"{"method":"com.example.Other.Get"}"#);
    assert_eq!(iface["error"], "org.varlink.service.InterfaceNotFound");
    let param = call(
        &mut s,
        br#"{"method":"org.connectracer.Tracer.Ps","parameters":{"pid":"x"}}"#,
    );
    assert_eq!(param["error"], "org.connectracer.Tracer.InvalidArgument");
    assert_eq!(param["parameters"]["field"], "parameters");
    // Still serving on the same connection after all that.
    let v = call(&mut s, br#"{"method":"org.connectracer.Tracer.GetVersion"}"#);
    assert_eq!(v["parameters"]["version"], env!("CARGO_PKG_VERSION"));

    // Oversized: refused with an error, then the connection is closed.
    let mut big = UnixStream::connect(&d.socket).unwrap();
    let huge = vec![b' '; 70 * 1024];
    // The daemon stops reading at the cap, so the rest of the write may fail.
    let _ = big.write_all(&huge);
    let reply = read_reply(&mut big);
    assert_eq!(reply["parameters"]["field"], "message");
    let mut rest = Vec::new();
    assert_eq!(big.read_to_end(&mut rest).unwrap(), 0);
    // ... and the daemon keeps serving others.
    let mut s2 = UnixStream::connect(&d.socket).unwrap();
    assert!(
        call(&mut s2, br#"{"method":"org.connectracer.Tracer.GetStats"}"#)["parameters"]["stats"].is_object()
    );
}

/// tracectl add-host watches a destination at once, persists it across a
/// restart (or not, with --runtime), lists it, and remove-host undoes it.
#[test]
fn add_host_persists_runtime_does_not_and_remove_undoes() {
    let cg = TestCgroup::new("addhost");
    let mut d = Daemon::start(&cg, "trace = \"watched\"\n[[host]]\nname = \"127.0.0.9\"\n").unwrap();
    let port = connectracer_tests::closed_port("127.0.0.1:0").port();
    let dst = format!("127.0.0.1:{port}");
    let other = format!("127.0.0.2:{port}");
    let traced = |d: &mut Daemon, dst: &str| -> Option<Value> {
        let pid = connectracer_tests::probe(&cg, &["connect", dst]).unwrap()["pid"]
            .as_u64()
            .unwrap();
        d.wait_for(Duration::from_secs(2), |s| {
            s.iter()
                .any(|e| e["event"] == "failed" && e["process"]["pid"] == pid)
        })
        .ok()?;
        d.events("connect", Some(pid)).next().cloned()
    };
    assert!(traced(&mut d, &dst).is_none());

    let p = port.to_string();
    let (code, out, err) = d.tracectl(&["add-host", "127.0.0.1", "--port", &p, "--label", "added"]);
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(traced(&mut d, &dst).unwrap()["label"], "added");
    let (code, _, err) = d.tracectl(&["add-host", "127.0.0.2", "--runtime"]);
    assert_eq!(code, 0, "{err}");
    assert!(traced(&mut d, &other).is_some());

    // Bad and duplicate hosts are refused with the reason; nothing changes.
    let (code, _, err) = d.tracectl(&["add-host", "10.0.0.1/99"]);
    assert_eq!(code, 2, "a usage error: {err}");
    assert!(err.starts_with("tracectl: invalid value for NAME: "), "{err}");
    assert!(
        err.contains("`10.0.0.1/99` is not an IP address, CIDR or hostname"),
        "{err}"
    );
    let (code, _, err) = d.tracectl(&["add-host", "127.0.0.1", "--port", &p, "--label", "again"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("already watched"), "{err}");

    let (code, out, _) = d.tracectl(&["--json", "hosts"]);
    assert_eq!(code, 0);
    let hosts: Value = serde_json::from_str(&out).unwrap();
    let names: Vec<(&str, &str)> = hosts["hosts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| (h["name"].as_str().unwrap(), h["kind"].as_str().unwrap()))
        .collect();
    assert_eq!(
        names,
        [
            ("127.0.0.9", "address"),
            ("127.0.0.1", "address"),
            ("127.0.0.2", "address")
        ]
    );
    assert!(hosts["hosts"][1]["source"]
        .as_str()
        .unwrap()
        .ends_with("hosts.toml"));
    assert_eq!(hosts["hosts"][2]["source"], "<tracectl add-host --runtime>");

    // Restart: the persisted host stays, the run-time one is gone.
    d.stop().unwrap();
    let (cfg, socket, pin_dir) = d.crash();
    let mut d = Daemon::start_with(&cg, cfg, socket, pin_dir).unwrap();
    assert_eq!(traced(&mut d, &dst).unwrap()["label"], "added");
    assert!(traced(&mut d, &other).is_none());

    // Only added hosts can be removed here.
    let (code, _, err) = d.tracectl(&["remove-host", "127.0.0.9"]);
    assert_eq!(code, 2, "NAME names a host this command cannot remove: {err}");
    assert!(
        err.contains("is configured in") && err.contains("connectracer.toml: edit that file"),
        "{err}"
    );
    let (code, _, err) = d.tracectl(&["remove-host", "192.0.2.1"]);
    assert_eq!(
        (code, err.as_str()),
        (1, "tracectl: no added host named `192.0.2.1`\n")
    );
    let (code, _, err) = d.tracectl(&["remove-host", "127.0.0.1"]);
    assert_eq!(code, 0, "{err}");
    assert!(traced(&mut d, &dst).is_none());
}

/// tracectl watch streams events as they happen, filtered by pid; a call
/// without "more" is refused.
#[test]
fn watch_streams_live_events_with_filters() {
    let cg = TestCgroup::new("watch");
    let d = Daemon::start(&cg, "trace = \"all\"\n").unwrap();
    let mut watcher = Command::new(bin_path("tracectl"))
        .arg("--socket")
        .arg(&d.socket)
        .args(["--json", "watch", "--host", "none-such"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut all = Command::new(bin_path("tracectl"))
        .arg("--socket")
        .arg(&d.socket)
        .args(["--json", "watch"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    // Give both streams a moment to subscribe.
    std::thread::sleep(Duration::from_millis(300));
    let dst = connectracer_tests::closed_port("127.0.0.1:0").to_string();
    let pid = connectracer_tests::probe(&cg, &["connect", &dst]).unwrap()["pid"]
        .as_u64()
        .unwrap();
    let mut lines = BufReader::new(all.stdout.take().unwrap()).lines();
    let mut kinds = Vec::new();
    while kinds.len() < 2 {
        let v: Value = serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
        let ev = &v["event"];
        if ev["connection"]["process"]["pid"] == pid {
            kinds.push(ev["kind"].as_str().unwrap().to_string());
            assert_eq!(ev["connection"]["dst"], dst.as_str());
            // The kernel's time of the event: a connect's is its start.
            if ev["kind"] == "connect" {
                assert_eq!(ev["time"], ev["connection"]["started"], "{ev}");
            }
        }
    }
    assert_eq!(kinds, ["connect", "failed"]);
    all.kill().unwrap();
    all.wait().unwrap();
    watcher.kill().unwrap();
    let filtered = watcher.wait_with_output().unwrap();
    assert!(filtered.stdout.is_empty(), "the host filter let events through");

    let mut s = UnixStream::connect(&d.socket).unwrap();
    let refused = call(&mut s, br#"{"method":"org.connectracer.Tracer.Watch"}"#);
    assert_eq!(refused["error"], "org.connectracer.Tracer.InvalidArgument");
    assert_eq!(refused["parameters"]["field"], "more");
}

/// A client that sends half a request and stalls holds up nobody: 100
/// concurrent clients all get their answers.
#[test]
fn a_hundred_clients_and_a_stalled_one_are_all_served() {
    let cg = TestCgroup::new("many");
    let d = Daemon::start(&cg, "").unwrap();
    let mut stalled = UnixStream::connect(&d.socket).unwrap();
    stalled.write_all(br#"{"method":"org.connectracer.Tra"#).unwrap();
    let clients: Vec<_> = (0..100)
        .map(|_| {
            let path = d.socket.clone();
            std::thread::spawn(move || {
                let mut s = UnixStream::connect(&path).unwrap();
                s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
                call(&mut s, br#"{"method":"org.connectracer.Tracer.GetStats"}"#)
            })
        })
        .collect();
    for c in clients {
        let reply = c.join().expect("a client got no answer in time");
        assert!(
            reply["parameters"]["stats"]["uptime_seconds"].is_number(),
            "{reply}"
        );
    }
    drop(stalled);
}

/// The `varlink` package from PyPI, an independent implementation, parses
/// the interface description, calls methods and follows a Watch stream.
#[test]
fn an_independent_varlink_client_works() {
    let cg = TestCgroup::new("pyvarlink");
    let d = Daemon::start(&cg, "trace = \"all\"\n").unwrap();
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("python/varlink_client.py");
    let mut py = Command::new("python3")
        .arg(&script)
        .arg(&d.socket)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3 (with `pip install varlink`, done by scripts/install-deps)");
    // A hung client must fail the test, not hang it.
    let py_pid = nix::unistd::Pid::from_raw(py.id() as i32);
    std::thread::spawn(move || {
        std::thread::sleep(Duration::from_secs(30));
        let _ = nix::sys::signal::kill(py_pid, nix::sys::signal::SIGKILL);
    });
    let mut lines = BufReader::new(py.stdout.take().unwrap()).lines();
    let mut next = || -> Value {
        let line = lines.next().and_then(Result::ok).unwrap_or_default();
        serde_json::from_str(&line).unwrap_or_else(|_| panic!("python client said {line:?}"))
    };
    assert_eq!(
        next()["interfaces"],
        json!(["org.varlink.service", "org.connectracer.Tracer"])
    );
    assert_eq!(next()["version"], env!("CARGO_PKG_VERSION"));
    assert!(next()["connections"].is_number());
    // The stream is open now: make an event for it.
    std::thread::sleep(Duration::from_millis(300));
    let dst = connectracer_tests::closed_port("127.0.0.1:0").to_string();
    let pid = connectracer_tests::probe(&cg, &["connect", &dst]).unwrap()["pid"]
        .as_u64()
        .unwrap();
    let ev = next();
    assert_eq!(
        (ev["event"].as_str(), ev["pid"].as_u64()),
        (Some("connect"), Some(pid))
    );
    let out = py.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

/// The real daemon's socket, byte for byte as systemd's `varlinkctl` speaks
/// it: a call with empty `parameters`, NUL-terminated, and the exact reply.
#[test]
fn the_socket_speaks_varlink_byte_for_byte() {
    let cg = TestCgroup::new("wire");
    let d = Daemon::start(&cg, "").unwrap();
    let mut s = UnixStream::connect(&d.socket).unwrap();
    let mut exchange = |call: &[u8]| -> Vec<u8> {
        s.write_all(call).unwrap();
        let mut out = Vec::new();
        let mut byte = [0u8];
        while out.last() != Some(&0) {
            s.read_exact(&mut byte).unwrap();
            out.push(byte[0]);
        }
        out
    };
    let info = exchange(b"{\"method\":\"org.varlink.service.GetInfo\",\"parameters\":{}}\0");
    let want = format!(
        "{{\"parameters\":{{\"vendor\":\"connectracer\",\"product\":\"connectracerd\",\"version\":\"{}\",\"url\":\"https://github.com/connectracer/connectracer\",\"interfaces\":[\"org.varlink.service\",\"org.connectracer.Tracer\"]}}}}\0",
        env!("CARGO_PKG_VERSION")
    );
    assert_eq!(String::from_utf8_lossy(&info), want);
    let denied = exchange(
        b"{\"method\":\"org.connectracer.Tracer.RemoveHost\",\"parameters\":{\"name\":\"192.0.2.1\"}}\0",
    );
    assert_eq!(
        String::from_utf8_lossy(&denied),
        "{\"error\":\"org.connectracer.Tracer.HostNotFound\",\"parameters\":{\"name\":\"192.0.2.1\"}}\0"
    );
}
