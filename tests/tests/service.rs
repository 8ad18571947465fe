//! The systemd notification protocol, against a real datagram listener
//! set as NOTIFY_SOCKET: READY ordering, RELOADING, STATUS, WATCHDOG, STOPPING.

use std::os::unix::net::{UnixDatagram, UnixStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use connectracer_tests::{bin_path, TestCgroup};

fn recv(sock: &UnixDatagram) -> Option<String> {
    let mut buf = [0u8; 4096];
    let n = sock.recv(&mut buf).ok()?;
    Some(String::from_utf8_lossy(&buf[..n]).into_owned())
}

#[test]
fn notify_protocol_ready_reload_status_watchdog_stopping() {
    let cg = TestCgroup::new("notify");
    let dir = std::env::temp_dir().join(format!("connectracer-notify-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let notify_path = dir.join("notify.sock");
    let control = dir.join("control.sock");
    let config = dir.join("connectracer.toml");
    const NO_METRICS: &str = "[metrics]\nlisten = \"off\"\ntextfile = \"off\"\n";
    let two_hosts = format!("[[host]]\nname = \"127.0.0.1\"\n[[host]]\nname = \"::1\"\n{NO_METRICS}");
    std::fs::write(&config, two_hosts).unwrap();
    let sock = UnixDatagram::bind(&notify_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(20))).unwrap();

    let mut child = Command::new(bin_path("connectracerd"))
        .args(["--foreground", "--log-format", "json", "--cgroup"])
        .arg(&cg.path)
        .arg("--config")
        .arg(&config)
        .arg("--control-socket")
        .arg(&control)
        .arg("--no-pin")
        .arg("--state-dir")
        .arg(dir.join("state"))
        .env("NOTIFY_SOCKET", &notify_path)
        .env("WATCHDOG_USEC", "400000")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);

    // READY=1 comes first, and only when the control socket already answers.
    let first = recv(&sock).unwrap();
    assert!(first.lines().any(|l| l == "READY=1"), "{first:?}");
    assert!(
        first.contains("STATUS=tracing 2 hosts, 2 addresses, 0 drops"),
        "{first:?}"
    );
    assert!(
        UnixStream::connect(&control).is_ok(),
        "READY=1 before the control socket listened"
    );

    // WATCHDOG=1 at about half of WATCHDOG_USEC.
    let start = Instant::now();
    let mut pings = 0;
    while start.elapsed() < Duration::from_millis(1100) {
        if recv(&sock).unwrap().trim_end() == "WATCHDOG=1" {
            pings += 1;
        }
    }
    assert!(
        (3..=8).contains(&pings),
        "{pings} watchdog pings in 1.1 s with a 0.4 s watchdog"
    );

    // A reload is bracketed by RELOADING=1 (with MONOTONIC_USEC) and READY=1.
    std::fs::write(&config, format!("[[host]]\nname = \"127.0.0.1\"\n{NO_METRICS}")).unwrap();
    nix::sys::signal::kill(pid, nix::sys::signal::SIGHUP).unwrap();
    let mut seen = Vec::new();
    let reloading = loop {
        let m = recv(&sock).unwrap();
        if m.starts_with("RELOADING=1") {
            break m;
        }
        seen.push(m);
    };
    assert!(reloading.contains("\nMONOTONIC_USEC="), "{reloading:?}");
    let ready = loop {
        let m = recv(&sock).unwrap();
        if m.starts_with("READY=1") {
            break m;
        }
    };
    assert!(
        ready.contains("STATUS=tracing 1 hosts, 1 addresses, 0 drops"),
        "{ready:?}"
    );

    nix::sys::signal::kill(pid, nix::sys::signal::SIGTERM).unwrap();
    let stopping = loop {
        let m = recv(&sock).unwrap();
        if m.starts_with("STOPPING=1") {
            break m;
        }
    };
    assert!(stopping.contains("STATUS=stopping"));
    assert!(child.wait().unwrap().success());
    let _ = std::fs::remove_dir_all(&dir);
}

/// After start-up the daemon keeps only CAP_DAC_READ_SEARCH, and still
/// reloads, answers and stops cleanly with it.
#[test]
fn runs_with_only_the_capabilities_it_still_needs() {
    let cg = TestCgroup::new("caps");
    let mut d = connectracer_tests::Daemon::start(&cg, "").unwrap();
    let kept = d
        .wait_log("dropped all other capabilities", Duration::from_secs(10))
        .unwrap();
    assert!(
        kept["kept"].as_str().unwrap().contains("open_by_handle_at"),
        "{kept}"
    );
    let status = std::fs::read_to_string(format!("/proc/{}/status", d.pid())).unwrap();
    let cap = |name: &str| {
        let v = status.lines().find_map(|l| l.strip_prefix(name)).unwrap().trim();
        u64::from_str_radix(v, 16).unwrap()
    };
    const CAP_DAC_READ_SEARCH: u64 = 1 << 2;
    assert_eq!(cap("CapEff:"), CAP_DAC_READ_SEARCH, "{status}");
    assert_eq!(cap("CapPrm:"), CAP_DAC_READ_SEARCH, "{status}");
    assert_eq!(cap("CapBnd:"), CAP_DAC_READ_SEARCH, "{status}");

    d.config.write("trace = \"all\"\n");
    d.signal(nix::sys::signal::Signal::SIGHUP);
    d.wait_log("configuration applied", Duration::from_secs(10))
        .unwrap();
    let pin_dir = d.pin_dir.clone();
    d.stop().unwrap();
    assert!(!pin_dir.exists(), "clean stop could not unpin without privileges");
}

/// Under systemd (JOURNAL_STREAM names our stderr) events and diagnostics
/// go to journald's native socket with structured fields. A private mount
/// namespace puts the test's own datagram socket where journald's would be.
#[test]
fn events_go_to_the_journal_with_fields_when_stderr_is_the_journal() {
    use std::os::fd::AsRawFd;

    let cg = TestCgroup::new("journal");
    let dir = std::env::temp_dir().join(format!("connectracer-journal-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let journal = UnixDatagram::bind(dir.join("socket")).unwrap();
    journal.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    std::fs::write(
        dir.join("connectracer.toml"),
        "trace = \"all\"\n[metrics]\nlisten = \"off\"\ntextfile = \"off\"\n",
    )
    .unwrap();

    let (_read_end, write_end) = nix::unistd::pipe().unwrap();
    let st = nix::sys::stat::fstat(write_end.as_raw_fd()).unwrap();
    let script = format!(
        "mount -t tmpfs tmpfs /run && mkdir -p /run/systemd/journal && mount --bind {dir} /run/systemd/journal && \
         exec {daemon} --foreground --no-pin --cgroup {cg} --config {dir}/connectracer.toml --control-socket {dir}/control.sock --state-dir {dir}/state",
        dir = dir.display(),
        daemon = bin_path("connectracerd").display(),
        cg = cg.path.display(),
    );
    let mut child = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c", &script])
        .env("JOURNAL_STREAM", format!("{}:{}", st.st_dev, st.st_ino))
        .stdout(Stdio::null())
        .stderr(Stdio::from(write_end))
        .spawn()
        .unwrap();
    let next = || {
        let mut buf = vec![0u8; 65536];
        let n = journal.recv(&mut buf).expect("journal entries from the daemon");
        parse_journal_entry(&buf[..n])
    };
    while next().get("MESSAGE").map(String::as_str) != Some("control socket listening") {}
    let out = connectracer_tests::probe(&cg, &["connect", "127.0.0.1:9"]).unwrap();
    let pid = out["pid"].as_u64().unwrap().to_string();
    let connect = loop {
        let e = next();
        if e.get("EVENT").map(String::as_str) == Some("connect") {
            break e;
        }
    };
    let exe = bin_path("ct-probe").display().to_string();
    for (field, want) in [
        ("PID", pid.as_str()),
        ("COMM", "ct-probe"),
        ("EXE", &exe),
        ("DEST", "127.0.0.1:9"),
    ] {
        assert_eq!(
            connect.get(field).map(String::as_str),
            Some(want),
            "{field} in {connect:?}"
        );
    }
    assert!(connect["MESSAGE"].starts_with(&format!(
        "{} connect tcp 127.0.0.1:9 pid={pid}",
        &connect["MESSAGE"][..24]
    )));
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::SIGTERM,
    )
    .unwrap();
    assert!(child.wait().unwrap().success());
    let _ = std::fs::remove_dir_all(&dir);
}

/// journald's native protocol: `NAME=value\n`, or `NAME\n` + 64-bit LE
/// length + bytes + `\n` for values that may hold newlines.
fn parse_journal_entry(mut b: &[u8]) -> std::collections::HashMap<String, String> {
    let mut out = std::collections::HashMap::new();
    while !b.is_empty() {
        let Some(end) = b.iter().position(|c| *c == b'\n' || *c == b'=') else {
            break;
        };
        let name = String::from_utf8_lossy(&b[..end]).into_owned();
        if b[end] == b'=' {
            let rest = &b[end + 1..];
            let nl = rest.iter().position(|c| *c == b'\n').unwrap_or(rest.len());
            out.insert(name, String::from_utf8_lossy(&rest[..nl]).into_owned());
            b = &rest[(nl + 1).min(rest.len())..];
        } else {
            let len = u64::from_le_bytes(b[end + 1..end + 9].try_into().unwrap()) as usize;
            let value = &b[end + 9..end + 9 + len];
            out.insert(name, String::from_utf8_lossy(value).into_owned());
            b = &b[(end + 10 + len).min(b.len())..];
        }
    }
    out
}
