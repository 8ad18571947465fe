//! `tracectl policy suggest` against the real kernel: a unit reaches two
//! loopback listeners (one by a name dnsmasq answers), the suggestion
//! survives a daemon crash, and applied as a conf.d drop-in in enforce mode
//! it lets the unit reach those two and refuses it a third. The systemd
//! drop-in goes through `systemd-analyze verify` (no PID-1 systemd here).

use std::path::PathBuf;
use std::time::Duration;

use connectracer_tests::{probe, tcp_server, ConfigDir, Daemon, Dnsmasq, TestCgroup};
use serde_json::Value;

fn restart(d: Daemon, cg: &TestCgroup) -> Daemon {
    let (cfg, socket, pin_dir): (ConfigDir, PathBuf, PathBuf) = d.crash();
    Daemon::start_with(cg, cfg, socket, pin_dir).unwrap()
}

/// Connects from `cg` to `dst`: the errno, None when it connected.
fn connect(cg: &TestCgroup, dst: &str) -> Option<i64> {
    let out = probe(cg, &["connect", dst]).unwrap();
    out["results"][0]["errno"].as_i64()
}

/// Looks `name` up at `resolver` and connects to it on `port`.
fn resolve_connect(cg: &TestCgroup, resolver: &str, name: &str, port: u16) -> bool {
    let out = probe(cg, &["resolve", resolver, name, &port.to_string()]).unwrap();
    out["ok"] == true
}

fn suggest(d: &Daemon, format: &str) -> String {
    let (rc, out, err) = d.tracectl(&["policy", "suggest", "--unit", "app.service", "--format", format]);
    assert_eq!(rc, 0, "{err}");
    out
}

fn verify_dropin(dropin: &str) {
    connectracer_tests::verify_unit_with("app.service", "/bin/true", dropin);
}

#[test]
fn a_suggestion_applied_allows_what_the_unit_reached_and_refuses_the_rest() {
    let dns = Dnsmasq::start("127.0.0.6 b.test\n", 60);
    let resolver = format!("127.0.0.1:{}", dns.port);
    let a = tcp_server("127.0.0.5:0", 0, 0);
    let b = tcp_server("127.0.0.6:0", 0, 0);
    let c = tcp_server("127.0.0.7:0", 0, 0);
    let cg = TestCgroup::new("suggest.slice");
    let app = cg.child("app.service");
    // Enforce from the start, loopback not exempt: nothing is refused until
    // the suggestion adds its scope.
    let config = format!(
        "trace = \"all\"\nmode = \"enforce\"\n[policy]\nallow_loopback = false\n\
         [dns]\nnameservers = [\"{resolver}\"]\n"
    );
    let id = std::process::id();
    let cfg = ConfigDir::new(&format!("suggest-{id}"), &config);
    let socket = std::env::temp_dir().join(format!("connectracer-suggest-{id}.sock"));
    let pin_dir: PathBuf = format!("/sys/fs/bpf/connectracer-suggest-{id}").into();
    let mut d = Daemon::start_with(&cg, cfg, socket, pin_dir).unwrap();
    assert_eq!(connect(&app, &a.to_string()), None);
    // Reached before the suggestion, refused after it: a third destination
    // is not remembered (a connect refused by policy never is), so it is
    // reached from the slice, not the unit.
    assert_eq!(connect(&cg, &c.to_string()), None);
    assert!(resolve_connect(&app, &resolver, "b.test", b.port()));
    d.wait_for(Duration::from_secs(5), |s| {
        s.iter()
            .any(|e| e["event"] == "connect" && e["dns_name"] == "b.test")
    })
    .unwrap();
    // Saved once a second when changed: then a crash loses nothing.
    std::thread::sleep(Duration::from_millis(2500));
    let d = restart(d, &cg);
    let json: Value = serde_json::from_str(&suggest(&d, "json")).unwrap();
    let mut seen: Vec<(Value, Value, Value, Value)> = json["destinations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| {
            (
                x["name"].clone(),
                x["address"].clone(),
                x["port"].clone(),
                x["protocol"].clone(),
            )
        })
        .collect();
    seen.sort_by_key(|s| s.1.to_string());
    assert_eq!(
        seen,
        [
            (Value::Null, "127.0.0.1".into(), dns.port.into(), "udp".into()),
            (Value::Null, "127.0.0.5".into(), a.port().into(), "tcp".into()),
            ("b.test".into(), "127.0.0.6".into(), b.port().into(), "tcp".into()),
        ],
        "{json}"
    );
    assert_eq!(json["dropped"], 0);

    let toml = suggest(&d, "toml");
    assert!(toml.contains("dest = [\"b.test\"]"), "{toml}");
    d.config.write_dropin("suggested.toml", &toml);
    let (rc, _, err) = d.tracectl(&["reload"]);
    assert_eq!(rc, 0, "{err}\n{toml}");
    assert_eq!(connect(&app, &a.to_string()), None, "{toml}");
    assert!(resolve_connect(&app, &resolver, "b.test", b.port()), "{toml}");
    assert_eq!(connect(&app, &c.to_string()), Some(libc::EPERM.into()), "{toml}");
    // The scope is the unit's: its slice still reaches the third.
    assert_eq!(connect(&cg, &c.to_string()), None);

    let dropin = suggest(&d, "systemd");
    let allow = dropin
        .lines()
        .find_map(|l| l.strip_prefix("IPAddressAllow="))
        .unwrap_or_else(|| panic!("no IPAddressAllow= in {dropin}"));
    assert_eq!(allow, "127.0.0.1/32 127.0.0.5/32 127.0.0.6/32", "{dropin}");
    assert!(dropin.contains("\nIPAddressDeny=any\n"), "{dropin}");
    verify_dropin(&dropin);
    drop(d);
    drop(dns);
}

#[test]
fn nothing_seen_is_an_error_not_a_deny_all() {
    let cg = TestCgroup::new("suggest-empty.slice");
    let d = Daemon::start(&cg, "trace = \"all\"\n").unwrap();
    let (rc, _, err) = d.tracectl(&["policy", "suggest", "--unit", "never.service"]);
    assert_eq!(rc, 1, "{err}");
    assert!(
        err.contains("no connections seen for unit never.service"),
        "{err}"
    );
    let (rc, _, err) = d.tracectl(&["policy", "suggest", "--user", "no-such-user-here"]);
    assert_eq!(rc, 2, "{err}");
}
