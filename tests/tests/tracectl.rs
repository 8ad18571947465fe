//! tracectl as a Unix tool, against a real daemon: the text and JSON of
//! each command (times, pids and ports normalized), the one JSON envelope,
//! usage errors that exit 2 and name the argument, a closed pipe, labels
//! where hosts are.

use std::os::fd::OwnedFd;
use std::process::{Command, Stdio};

use connectracer_tests::{bin_path, hold, tcp_server, Daemon, TestCgroup};
use serde_json::Value;

fn json(out: &str) -> Value {
    serde_json::from_str(out).unwrap_or_else(|e| panic!("{e}: {out}"))
}

/// The one top-level key of a command's JSON.
fn envelope(d: &Daemon, args: &[&str]) -> String {
    let mut a = vec!["-o", "json"];
    a.extend(args);
    let (code, out, err) = d.tracectl(&a);
    assert!(code == 0 || (code == 1 && args[0] == "policy"), "{args:?}: {err}");
    let v = json(&out);
    let keys: Vec<&String> = v.as_object().unwrap().keys().collect();
    assert_eq!(keys.len(), 1, "{args:?}: {out}");
    keys[0].clone()
}

/// Columns collapsed to single spaces, and what changes from run to run
/// replaced: `(pattern, placeholder)` pairs applied in order.
fn normalized(text: &str, subs: &[(&str, &str)]) -> String {
    let mut t: String = text
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" ") + "\n")
        .collect();
    for (from, to) in subs {
        t = t.replace(from, to);
    }
    t
}

#[test]
fn every_command_prints_one_envelope_and_its_text() {
    let server = tcp_server("127.0.0.1:0", 0, 0);
    let cg = TestCgroup::new("ctl-snap");
    let config = format!(
        "trace = \"all\"\n[[host]]\nname = \"127.0.0.1\"\nports = [{}]\nlabel = \"web\"\n",
        server.port()
    );
    let d = Daemon::start(&cg, &config).unwrap();
    let (mut child, pid, local) = hold(&cg, &server.to_string(), None);
    let pid = pid.to_string();
    let lport = local.rsplit_once(':').unwrap().1.to_string();
    let sport = server.port().to_string();

    for (args, key) in [
        (vec!["who", "web"], "connections"),
        (vec!["ps", pid.as_str()], "connections"),
        (vec!["connections"], "connections"),
        (vec!["stats"], "stats"),
        (vec!["hosts"], "hosts"),
        (vec!["version"], "version"),
        (vec!["policy", "show"], "policy"),
        (vec!["policy", "check", "--dest", "127.0.0.1:1"], "decisions"),
        (vec!["reload"], "reload"),
    ] {
        assert_eq!(envelope(&d, &args), key, "{args:?}");
    }

    // A label stands for its host wherever a host is taken.
    let (code, out, err) = d.tracectl(&["who", "web"]);
    assert_eq!(code, 0, "{err}");
    let subs = [
        (pid.as_str(), "PID"),
        (lport.as_str(), "LPORT"),
        (sport.as_str(), "SPORT"),
    ];
    let text = normalized(&out, &subs);
    let (header, row) = text.split_once('\n').unwrap();
    assert_eq!(
        header,
        "PID COMM USER PROTO STATE LOCAL REMOTE HOST UNIT CONTAINER AGE"
    );
    let row = row.trim_end();
    let (row, age) = row.rsplit_once(' ').unwrap();
    assert!(age.ends_with('s'), "{age}");
    assert_eq!(
        row,
        "PID ct-probe root tcp established 127.0.0.1:LPORT 127.0.0.1:SPORT web - -"
    );

    let (code, wide, err) = d.tracectl(&["-o", "wide", "who", &format!("web:{sport}")]);
    assert_eq!(code, 0, "{err}");
    assert!(
        normalized(&wide, &subs).starts_with(
            "PID COMM USER PROTO STATE LOCAL REMOTE HOST UNIT CONTAINER AGE EXE NAME VERDICT RULE SENT RECEIVED DURATION CONTAINER_NAME IMAGE POD\n"
        ),
        "{wide}"
    );

    // JSON Lines: one object, one key, a line.
    let (code, out, _) = d.tracectl(&["-o", "jsonl", "who", "web"]);
    assert_eq!(code, 0);
    let lines: Vec<Value> = out.lines().map(json).collect();
    assert_eq!(lines.len(), 1, "{out}");
    assert_eq!(lines[0]["connection"]["process"]["pid"].to_string(), pid);

    let (code, out, _) = d.tracectl(&["hosts"]);
    assert_eq!(code, 0);
    let main = d.config.main();
    let hosts = normalized(
        &out,
        &[(sport.as_str(), "SPORT"), (main.to_str().unwrap(), "CONFIG")],
    );
    assert_eq!(
        hosts,
        "NAME KIND PORTS LABEL ADDRESSES TTL STATE SOURCE\n127.0.0.1 address SPORT web 127.0.0.1 - ok CONFIG\n"
    );

    let (code, out, _) = d.tracectl(&["policy", "show"]);
    assert_eq!(
        (code, out.as_str()),
        (0, "no egress policy configured: every connection is allowed\n")
    );
    let (code, out, _) = d.tracectl(&["policy", "check", "--uid", "0", "--dest", "127.0.0.1:1"]);
    assert_eq!(code, 0, "allowed: {out}");
    assert!(out.starts_with("127.0.0.1:1: allow by "), "{out}");
    assert!(out.lines().nth(1).unwrap().starts_with("  caller: "), "{out}");
    let (code, out, _) = d.tracectl(&["version"]);
    assert_eq!(code, 0);
    let v = env!("CARGO_PKG_VERSION");
    assert!(
        out.starts_with(&format!("tracectl {v}\nconnectracerd {v} on kernel ")),
        "{out}"
    );
    let (code, out, _) = d.tracectl(&["reload"]);
    assert_eq!(code, 0);
    assert!(
        out.starts_with("configuration epoch ") && out.ends_with(" in force\n"),
        "{out}"
    );
    let (code, out, _) = d.tracectl(&["stats"]);
    assert_eq!(code, 0);
    assert!(
        out.starts_with("uptime ") && out.contains("\nconnections traced "),
        "{out}"
    );
    child.kill().unwrap();
    child.wait().unwrap();
}

#[test]
fn usage_errors_exit_2_name_the_argument_and_are_no_failed_reloads() {
    let cg = TestCgroup::new("ctl-usage");
    let d = Daemon::start(&cg, "").unwrap();
    let (code, out, _) = d.tracectl(&["hosts"]);
    assert_eq!((code, out.as_str()), (0, "no hosts\n"));

    let (code, _, err) = d.tracectl(&["connections", "--dest", "10.0.0.0/99"]);
    assert_eq!(
        (code, err.as_str()),
        (
            2,
            "tracectl: invalid value for --dest: `10.0.0.0/99` is not an address or CIDR\n"
        )
    );
    let (code, _, err) = d.tracectl(&["add-host", "127.0.0.2", "--port", "0"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.starts_with("tracectl: invalid value for --port: "), "{err}");
    assert!(
        !err.contains("hosts.toml"),
        "the request's fault, not a file's: {err}"
    );
    let (code, _, err) = d.tracectl(&["connections", "--port", "0"]);
    assert_eq!(code, 2, "clap: {err}");
    assert!(err.contains("--port"), "{err}");
    assert_eq!(
        d.stats()["reload_failures"],
        0,
        "a refused request is no failed reload"
    );

    // A name that does not resolve is added, with a warning saying so.
    let (code, out, err) = d.tracectl(&["add-host", "nonexistent.invalid", "--runtime"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("watching nonexistent.invalid"), "{out}");
    assert!(
        err.starts_with("tracectl: warning: `nonexistent.invalid` does not resolve ("),
        "{err}"
    );
}

/// A reader that went away (`| head -1`) ends tracectl with status 0 and
/// nothing on stderr: no panic, no "Broken pipe".
#[test]
fn a_closed_pipe_ends_tracectl_quietly() {
    let server = tcp_server("127.0.0.1:0", 0, 0);
    let cg = TestCgroup::new("ctl-pipe");
    let d = Daemon::start(&cg, "trace = \"all\"\n").unwrap();
    let (mut child, _, _) = hold(&cg, &server.to_string(), None);
    for args in [
        vec!["connections"],
        vec!["-o", "json", "connections"],
        vec!["who", "127.0.0.1"],
        vec!["stats"],
        vec!["hosts"],
        vec!["top", "--once", "-d", "0.1"],
        vec!["completions", "bash"],
    ] {
        let (read, write): (OwnedFd, OwnedFd) = nix::unistd::pipe().unwrap();
        drop(read);
        let out = Command::new(bin_path("tracectl"))
            .arg("--socket")
            .arg(&d.socket)
            .args(&args)
            .stdout(Stdio::from(write))
            .stderr(Stdio::piped())
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!((out.status.code(), err.as_ref()), (Some(0), ""), "{args:?}");
    }
    child.kill().unwrap();
    child.wait().unwrap();
}
