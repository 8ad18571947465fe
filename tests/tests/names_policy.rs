//! Hostname rules judged from the answers the kernel saw, and the answers
//! that take more than one record to name a connection: CNAME chains,
//! AAAA, fifty addresses. dnsmasq is the resolver, on loopback.

use std::path::PathBuf;
use std::time::Duration;

use connectracer_tests::{probe, tcp_server, ConfigDir, Daemon, Dnsmasq, TestCgroup};
use serde_json::Value;

/// The connect (or denied) event of `pid`'s TCP connection, once logged.
fn connect_of(d: &mut Daemon, pid: u64) -> Value {
    let tcp = |e: &&Value| {
        (e["event"] == "connect" || e["event"] == "denied")
            && e["process"]["pid"] == pid
            && e["protocol"] == "tcp"
    };
    d.wait_for(Duration::from_secs(5), |s| s.iter().any(|e| tcp(&e)))
        .unwrap_or_else(|e| panic!("no connect of pid {pid}: {e}"));
    d.seen.iter().find(tcp).cloned().unwrap()
}

/// Looks `name` up at `resolver` (no libc) and connects to the first
/// address on `port`: (pid, connected).
fn resolve(cg: &TestCgroup, resolver: &str, name: &str, port: u16) -> (u64, bool) {
    let port = port.to_string();
    let out = probe(cg, &["resolve", resolver, name, &port]).unwrap();
    (out["pid"].as_u64().unwrap(), out["ok"] == true)
}

fn restart(d: Daemon, cg: &TestCgroup) -> Daemon {
    let (cfg, socket, pin_dir): (ConfigDir, PathBuf, PathBuf) = d.crash();
    Daemon::start_with(cg, cfg, socket, pin_dir).unwrap()
}

#[test]
fn a_hostname_rule_judges_the_first_connect_by_the_answer_the_kernel_saw() {
    // The daemon's own resolver knows none of the names: whatever it
    // denies, it learnt from the answers its processes received.
    let own = Dnsmasq::start("", 60);
    let theirs = Dnsmasq::start_on(
        "127.0.0.154",
        53,
        "127.0.0.9 ok.test\n127.0.0.10 blocked.test\n",
        60,
    );
    let ok = tcp_server("127.0.0.9:0", 0, 0);
    let blocked = tcp_server("127.0.0.10:0", 0, 0);
    let cg = TestCgroup::new("names-policy");
    let config = format!(
        "trace = \"all\"\nmode = \"enforce\"\n[policy]\nallow_loopback = false\n\
         [dns]\nnameservers = [\"127.0.0.1:{}\"]\n\n\
         [[rule]]\naction = \"deny\"\ndest = [\"Blocked.Test\"]\n",
        own.port
    );
    let id = std::process::id();
    let cfg = ConfigDir::new(&format!("names-policy-{id}"), &config);
    let socket = std::env::temp_dir().join(format!("connectracer-names-policy-{id}.sock"));
    let pin_dir = format!("/sys/fs/bpf/connectracer-names-policy-{id}").into();
    let d = Daemon::start_with(&cg, cfg, socket, pin_dir).unwrap();
    // A restart before the answer: the rules in force come from the new
    // instance, which never resolved blocked.test.
    let mut d = restart(d, &cg);
    let (pid, connected) = resolve(&cg, "127.0.0.154:53", "blocked.test", blocked.port());
    assert!(!connected, "the first connect after the answer went through");
    let e = connect_of(&mut d, pid);
    assert_eq!(
        (&e["verdict"], &e["policy_rule"], &e["dns_name"]),
        (&"deny".into(), &1.into(), &"blocked.test".into()),
        "{e}"
    );
    let (pid, connected) = resolve(&cg, "127.0.0.154:53", "ok.test", ok.port());
    assert!(connected);
    assert_eq!(connect_of(&mut d, pid)["verdict"], "allow");
    // The daemon itself still has no address for the name.
    let (rc, out, err) = d.tracectl(&["--json", "policy", "show"]);
    assert_eq!(rc, 0, "{err}");
    assert!(!out.contains("127.0.0.10"), "{out}");
    // What the kernel saw outlives the daemon (pinned, like the links):
    // after another restart, a connect with no lookup of its own is refused.
    let d = restart(d, &cg);
    let out = probe(&cg, &["connect", &blocked.to_string()]).unwrap();
    assert_eq!(out["results"][0]["errno"], libc::EPERM, "{out}");
    drop(d);
    drop(theirs);
}

#[test]
fn a_forged_answer_unlocks_nothing() {
    // TCP only to what allowed.test resolves to (UDP on loopback for the
    // lookup and the forger); a second local socket answers first with
    // another address: the kernel ignores it (wrong port), so the connect
    // to the forged address stays refused.
    let dns = Dnsmasq::start("127.0.0.9 allowed.test\n", 60);
    let real = tcp_server("127.0.0.9:0", 0, 0);
    let fake = tcp_server("127.0.0.78:0", 0, 0);
    assert_ne!(real.port(), 0);
    let cg = TestCgroup::new("names-forged-policy");
    let config = format!(
        "trace = \"all\"\nmode = \"enforce\"\n[policy]\ndefault = \"deny\"\nallow_loopback = false\n\
         [dns]\nnameservers = [\"127.0.0.1:{}\"]\n\n[[rule]]\naction = \"allow\"\ndest = [\"allowed.test\"]\n\n\
         [[rule]]\naction = \"allow\"\ndest = [\"127.0.0.0/8\"]\nprotocol = \"udp\"\n",
        dns.port
    );
    let mut d = Daemon::start(&cg, &config).unwrap();
    let resolver = format!("127.0.0.1:{}", dns.port);
    let port = fake.port().to_string();
    let out = probe(&cg, &["resolve", &resolver, "allowed.test", &port, "127.0.0.78"]).unwrap();
    assert_eq!(out["ok"], false, "a forged answer opened {out}");
    let e = connect_of(&mut d, out["pid"].as_u64().unwrap());
    assert_eq!(e["verdict"], "deny", "{e}");
    assert!(e.get("dns_name").is_none(), "{e}");
}

#[test]
fn cname_chains_aaaa_and_fifty_records_name_connections() {
    let mut many = String::new();
    for i in 1..=50 {
        many.push_str(&format!("127.0.1.{i} many.test\n"));
    }
    let dns = Dnsmasq::start_with(
        "127.0.0.1",
        connectracer_tests::free_port(),
        &format!("127.0.0.9 target.test\n::1 six.test\n{many}"),
        60,
        &["--cname=alias.test,target.test"],
    );
    let resolver = format!("127.0.0.1:{}", dns.port);
    let v4 = tcp_server("127.0.0.9:0", 0, 0);
    let v6 = tcp_server("[::1]:0", 0, 0);
    let wide = tcp_server("0.0.0.0:0", 0, 0);
    let cg = TestCgroup::new("names-records");
    let config = format!("trace = \"all\"\n[dns]\nnameservers = [\"{resolver}\"]\n");
    let mut d = Daemon::start(&cg, &config).unwrap();
    for (name, port, want) in [
        ("alias.test", v4.port(), "alias.test"),
        ("aaaa:six.test", v6.port(), "six.test"),
        ("many.test", wide.port(), "many.test"),
    ] {
        let (pid, connected) = resolve(&cg, &resolver, name, port);
        assert!(connected, "{name}");
        let e = connect_of(&mut d, pid);
        assert_eq!(
            (&e["dns_name"], &e["dns_source"]),
            (&want.into(), &"process".into()),
            "{name}: {e}"
        );
        if name == "many.test" {
            let (rc, out, err) = d.tracectl(&["--json", "dns", "--pid", &pid.to_string()]);
            assert_eq!(rc, 0, "{err}");
            let v: Value = serde_json::from_str(&out).unwrap();
            let addrs = v["answers"][0]["addresses"].as_array().unwrap();
            assert_eq!(addrs.len(), 50, "{out}");
        }
    }
}
