//! Egress policy against the real kernel: processes in test cgroups connect
//! and send, and get EPERM exactly where the policy says; `tracectl policy
//! check` must agree with what the kernel did. Runs as root.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use connectracer_tests::{
    bin_path, http_get_raw, probe, probe_as, wait_until, ConfigDir, Daemon, Dnsmasq, TestCgroup,
};
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(15);
const EPERM: i64 = 1;
const REFUSED: i64 = 111;
/// Loopback is a built-in exception; these tests need it judged by rules.
const NO_EXCEPTIONS: &str = "[policy]\nallow_loopback = false\n";

/// errno of each connect (0: connected), in order.
fn connects(cg: &TestCgroup, uid: Option<u32>, dsts: &[&str]) -> Vec<i64> {
    let mut args = vec!["connect"];
    args.extend_from_slice(dsts);
    let out = probe_as(cg, &args, uid).unwrap();
    out["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["errno"].as_i64().unwrap_or(0))
        .collect()
}

/// What `tracectl policy check` says for a cgroup (or uid) and destination.
fn check(d: &Daemon, subject: &[&str], dest: &str) -> Value {
    let mut args = vec!["--json", "policy", "check", "--dest", dest];
    args.extend_from_slice(subject);
    let (code, out, err) = d.tracectl(&args);
    let v: Value = serde_json::from_str(&out).unwrap();
    let decision = v["decisions"][0]["decision"].clone();
    // Exit status 1 says deny, as the man page's EXIT STATUS documents.
    let expected = if decision["verdict"] == "deny" { 1 } else { 0 };
    assert_eq!(code, expected, "policy check {subject:?} {dest}: {err} {out}");
    decision
}

/// Each row: connect from `cg` (as `uid`), expect `errno`, and the daemon's
/// explanation must give the same verdict.
fn assert_rows(d: &Daemon, rows: &[(&TestCgroup, Option<u32>, &str, i64)]) {
    for (cg, uid, dst, errno) in rows {
        let got = connects(cg, *uid, &[dst])[0];
        assert_eq!(got, *errno, "connect to {dst} from {} as {uid:?}", cg.rel);
        let uid_s = uid.map(|u| u.to_string());
        let subject: Vec<&str> = match &uid_s {
            Some(u) => vec!["--uid", u],
            None => vec!["--cgroup", &cg.rel],
        };
        let decision = check(d, &subject, dst);
        let expected = if *errno == EPERM { "deny" } else { "allow" };
        assert_eq!(
            decision["verdict"], expected,
            "policy check for {dst} from {}: {decision}",
            cg.rel
        );
    }
}

#[test]
fn enforce_refuses_tcp_v4_v6_v4_mapped_and_udp_sendto() {
    let cg = TestCgroup::new("deny");
    let mut d = Daemon::start(
        &cg,
        &format!(
            "mode = \"enforce\"\n{NO_EXCEPTIONS}\n[[rule]]\naction = \"deny\"\ndest = [\"127.0.0.2\", \"::1\"]\nports = [9, \"8000-8100\"]\n"
        ),
    )
    .unwrap();
    let got = connects(
        &cg,
        None,
        &[
            "127.0.0.2:9",
            "127.0.0.3:9",
            "127.0.0.2:8050",
            "127.0.0.2:8101",
            "[::1]:9",
            "[::1]:10",
            "[::ffff:127.0.0.2]:9",
        ],
    );
    assert_eq!(got, [EPERM, REFUSED, EPERM, REFUSED, EPERM, REFUSED, EPERM]);

    let udp = probe(&cg, &["udp", "3", "127.0.0.2:9", "127.0.0.3:9"]).unwrap();
    assert_eq!(
        udp["denied"],
        serde_json::json!(["127.0.0.2:9", "127.0.0.2:9", "127.0.0.2:9"])
    );
    let udp_pid = udp["pid"].as_u64().unwrap();

    d.wait_for(WAIT, |seen| {
        seen.iter().filter(|e| e["event"] == "denied").count() >= 5
    })
    .unwrap();
    let denied: Vec<&Value> = d.events("denied", None).collect();
    assert_eq!(
        denied.len(),
        5,
        "4 TCP connects and one (socket, destination) of UDP: {denied:?}"
    );
    for e in &denied {
        assert_eq!(e["verdict"], "deny", "{e}");
        assert_eq!(e["policy_rule"], 1, "{e}");
        assert_eq!(e["state"], "failed", "{e}");
        assert_eq!(e["fail_reason"], "denied", "{e}");
        assert_eq!(e["process"]["comm"], "ct-probe", "{e}");
        assert_eq!(e["process"]["cgroup"], cg.rel.as_str(), "{e}");
    }
    let udp_denied: Vec<&&Value> = denied.iter().filter(|e| e["process"]["pid"] == udp_pid).collect();
    assert_eq!(udp_denied.len(), 1);
    assert_eq!(udp_denied[0]["protocol"], "udp");
    assert_eq!(udp_denied[0]["dst"], "127.0.0.2:9");
    let mapped = denied
        .iter()
        .filter(|e| e["dst"] == "127.0.0.2:9" && e["protocol"] == "tcp")
        .count();
    assert_eq!(mapped, 2, "the v4-mapped connect is reported as IPv4");

    let k = &d.stats()["kernel"];
    assert_eq!(
        k["denied"], 7,
        "every refused call counts, each datagram too: {k}"
    );
    assert_eq!(k["would_deny"], 0);

    let decision = check(&d, &["--cgroup", &cg.rel], "127.0.0.2:8050");
    assert_eq!(decision["verdict"], "deny");
    assert_eq!(decision["rule"], 1);
    assert_eq!(decision["scope"], "global");
    d.stop().unwrap();
}

#[test]
fn audit_reports_would_deny_counts_and_lets_through() {
    let cg = TestCgroup::new("audit");
    let cfg = ConfigDir::new(
        "policy-audit",
        &format!("mode = \"audit\"\n{NO_EXCEPTIONS}\n[[rule]]\naction = \"deny\"\ndest = \"127.0.0.2\"\n"),
    );
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    cfg.write_dropin(
        "50-metrics.toml",
        &format!("[metrics]\nlisten = \"127.0.0.1:{port}\"\nhttp_detail = true\n"),
    );
    let socket = std::env::temp_dir().join(format!("connectracer-test-audit-{}.sock", std::process::id()));
    let pins = format!("/sys/fs/bpf/connectracer-test-audit-{}", std::process::id());
    let mut d = Daemon::start_with(&cg, cfg, socket, pins.into()).unwrap();

    assert_eq!(
        connects(&cg, None, &["127.0.0.2:9", "127.0.0.3:9"]),
        [REFUSED, REFUSED]
    );
    d.wait_for(WAIT, |seen| seen.iter().any(|e| e["verdict"] == "would_deny"))
        .unwrap();
    let audited: Vec<&Value> = d.seen.iter().filter(|e| e["verdict"] == "would_deny").collect();
    assert_eq!(audited[0]["event"], "connect", "audit lets the connect proceed");
    assert_eq!(audited[0]["dst"], "127.0.0.2:9");
    assert_eq!(audited[0]["policy_rule"], 1);
    assert!(d.events("denied", None).next().is_none());
    let k = &d.stats()["kernel"];
    assert_eq!(
        (k["denied"].as_u64(), k["would_deny"].as_u64()),
        (Some(0), Some(1)),
        "{k}"
    );

    let mut body = String::new();
    wait_until("the verdict metric", WAIT, || {
        body = http_get_raw(port, "/metrics").unwrap_or_default();
        body.contains("connectracer_policy_verdicts_total{")
    });
    let line = body
        .lines()
        .find(|l| l.starts_with("connectracer_policy_verdicts_total{"))
        .unwrap();
    assert!(
        line.contains("verdict=\"would_deny\"") && line.contains("rule=\"1\""),
        "{line}"
    );
    assert!(line.ends_with(" 1"), "{line}");
    wait_until("kernel counter", WAIT, || {
        http_get_raw(port, "/metrics")
            .unwrap_or_default()
            .lines()
            .any(|l| l == "connectracer_kernel_would_deny_total 1")
    });
    d.stop().unwrap();
}

/// A unit's default deny with one allowed port; units that start after the
/// policy is applied join their scope; sub-cgroups inherit; the parent does not.
#[test]
fn unit_scope_defaults_port_ranges_and_units_started_later() {
    let cg = TestCgroup::new("scope");
    let early = cg.child("backup-a.service");
    let mut d = Daemon::start(
        &cg,
        &format!(
            "{NO_EXCEPTIONS}\n[[scope]]\nunit = \"backup*.service\"\ndefault = \"deny\"\n\n[[rule]]\naction = \"allow\"\nunit = \"backup*.service\"\ndest = \"127.0.0.5\"\nports = [\"443-445\"]\n"
        ),
    )
    .unwrap();
    let late = cg.child("backup-b.service");
    d.wait_log("policy: new cgroup joins its scope", WAIT).unwrap();
    let worker = early.child("worker");
    assert_rows(
        &d,
        &[
            (&early, None, "127.0.0.5:443", REFUSED),
            (&early, None, "127.0.0.5:445", REFUSED),
            (&early, None, "127.0.0.5:446", EPERM),
            (&early, None, "127.0.0.6:80", EPERM),
            (&late, None, "127.0.0.5:444", REFUSED),
            (&late, None, "127.0.0.6:80", EPERM),
            (&worker, None, "127.0.0.6:80", EPERM),
            (&cg, None, "127.0.0.6:80", REFUSED),
        ],
    );
    d.stop().unwrap();
    drop(worker);
}

#[test]
fn user_scope_and_precedence_over_cgroup() {
    let cg = TestCgroup::new("uid");
    let unit = cg.child("app.service");
    let mut d = Daemon::start(
        &cg,
        &format!(
            "{NO_EXCEPTIONS}\n[[scope]]\nuser = 65534\ndefault = \"deny\"\n\n[[rule]]\naction = \"allow\"\nuser = 65534\ndest = \"127.0.0.9\"\n\n[[scope]]\nunit = \"app.service\"\ndefault = \"allow\"\n\n[[rule]]\naction = \"deny\"\ndest = \"127.0.0.8\"\n"
        ),
    )
    .unwrap();
    let nobody = Some(65534);
    assert_rows(
        &d,
        &[
            (&cg, nobody, "127.0.0.3:9", EPERM),
            (&cg, nobody, "127.0.0.9:9", REFUSED),
            (&cg, None, "127.0.0.3:9", REFUSED),
            (&cg, None, "127.0.0.8:9", EPERM),
            // The unit's default allow comes before the global deny rule...
            (&unit, None, "127.0.0.8:9", REFUSED),
        ],
    );
    // ...and the user scope before the unit's.
    assert_eq!(connects(&unit, nobody, &["127.0.0.3:9"]), [EPERM]);
    d.stop().unwrap();
}

#[test]
fn hostname_rule_follows_dns() {
    let cg = TestCgroup::new("dnsrule");
    let dns = Dnsmasq::start("127.0.0.7 blocked.test\n", 1);
    let mut d = Daemon::start(
        &cg,
        &format!(
            "{NO_EXCEPTIONS}\n[[rule]]\naction = \"deny\"\ndest = \"blocked.test\"\n\n[dns]\nnameservers = [\"127.0.0.1:{}\"]\nmin_ttl = \"1s\"\nmax_ttl = \"1s\"\ngrace = \"1s\"\n",
            dns.port
        ),
    )
    .unwrap();
    wait_until("the name's first address to be denied", WAIT, || {
        connects(&cg, None, &["127.0.0.7:9"]) == [EPERM]
    });
    assert_eq!(connects(&cg, None, &["127.0.0.8:9"]), [REFUSED]);
    dns.set_records("127.0.0.8 blocked.test\n");
    wait_until("the new address to be denied", WAIT, || {
        connects(&cg, None, &["127.0.0.8:9"]) == [EPERM]
    });
    // The old address is kept for the grace period, then released.
    wait_until("the old address to be released", WAIT, || {
        connects(&cg, None, &["127.0.0.7:9"]) == [REFUSED]
    });
    let (code, out, _) = d.tracectl(&["policy", "show"]);
    assert_eq!(code, 0);
    assert!(out.contains("blocked.test [global] = 127.0.0.8"), "{out}");
    d.stop().unwrap();
}

#[test]
fn reload_turning_deny_into_allow_applies_to_the_next_connect() {
    let cg = TestCgroup::new("reload");
    let rule = |action: &str| {
        format!("{NO_EXCEPTIONS}default = \"allow\"\n[[rule]]\naction = \"{action}\"\ndest = \"127.0.0.2\"\n")
    };
    let mut d = Daemon::start(&cg, &rule("deny")).unwrap();
    assert_eq!(connects(&cg, None, &["127.0.0.2:9"]), [EPERM]);
    d.config.write(&rule("allow"));
    let (code, _, err) = d.tracectl(&["reload"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(connects(&cg, None, &["127.0.0.2:9"]), [REFUSED]);
    d.config.write(&rule("deny"));
    let (code, _, err) = d.tracectl(&["reload"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(connects(&cg, None, &["127.0.0.2:9"]), [EPERM]);
    d.stop().unwrap();
}

#[test]
fn enforcement_survives_kill_9_and_a_clean_stop_removes_it() {
    let cg = TestCgroup::new("crash");
    let d = Daemon::start(
        &cg,
        &format!("{NO_EXCEPTIONS}\n[[rule]]\naction = \"deny\"\ndest = \"127.0.0.2\"\n"),
    )
    .unwrap();
    assert_eq!(connects(&cg, None, &["127.0.0.2:9"]), [EPERM]);
    let (cfg, socket, pins) = d.crash();
    assert_eq!(
        connects(&cg, None, &["127.0.0.2:9", "127.0.0.3:9"]),
        [EPERM, REFUSED],
        "pinned programs keep enforcing with no daemon"
    );
    let mut d = Daemon::start_with(&cg, cfg, socket, pins).unwrap();
    assert_eq!(connects(&cg, None, &["127.0.0.2:9"]), [EPERM]);
    d.stop().unwrap();
    assert_eq!(
        connects(&cg, None, &["127.0.0.2:9"]),
        [REFUSED],
        "a clean stop detaches"
    );
}

/// Two network namespaces joined by a veth pair: a test host with real
/// (non-loopback) IPv4 and IPv6 addresses.
struct VethHost {
    client: String,
    server: String,
}

impl VethHost {
    fn new(tag: &str) -> Self {
        let client = format!("ctc-{}-{tag}", std::process::id());
        let server = format!("cts-{}-{tag}", std::process::id());
        let h = Self { client, server };
        let (c, s) = (h.client.as_str(), h.server.as_str());
        for args in [
            vec!["netns", "add", c],
            vec!["netns", "add", s],
            vec![
                "-n", c, "link", "add", "vc", "type", "veth", "peer", "name", "vs", "netns", s,
            ],
            vec!["-n", c, "addr", "add", "10.231.0.1/24", "dev", "vc"],
            vec!["-n", s, "addr", "add", "10.231.0.2/24", "dev", "vs"],
            vec!["-n", c, "addr", "add", "fd42:231::1/64", "dev", "vc", "nodad"],
            vec!["-n", s, "addr", "add", "fd42:231::2/64", "dev", "vs", "nodad"],
            vec!["-n", c, "link", "set", "vc", "up"],
            vec!["-n", s, "link", "set", "vs", "up"],
            vec!["-n", c, "link", "set", "lo", "up"],
        ] {
            let st = Command::new("ip").args(&args).status().expect("running ip");
            assert!(st.success(), "ip {args:?}");
        }
        h
    }

    /// errno of each connect made from the client namespace, inside `cg`.
    fn connects(&self, cg: &TestCgroup, dsts: &[&str]) -> Vec<i64> {
        let out = cg
            .command(Path::new("/usr/sbin/ip"))
            .args(["netns", "exec", &self.client])
            .arg(bin_path("ct-probe"))
            .arg("connect")
            .args(dsts)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        v["results"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["errno"].as_i64().unwrap_or(0))
            .collect()
    }
}

impl Drop for VethHost {
    fn drop(&mut self) {
        for ns in [&self.client, &self.server] {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

#[test]
fn veth_host_ipv6_blocking_and_cidr_rules() {
    let cg = TestCgroup::new("veth");
    let host = VethHost::new("v");
    let mut d = Daemon::start(
        &cg,
        &format!(
            "[[scope]]\ncgroup = \"{}\"\nblock_ipv6 = true\n\n[[rule]]\naction = \"deny\"\ndest = \"10.231.0.0/24\"\nports = [80]\nprotocol = \"tcp\"\n",
            cg.rel
        ),
    )
    .unwrap();
    // Nothing listens in the server namespace: an allowed connect is refused by its RST.
    assert_eq!(
        host.connects(
            &cg,
            &[
                "10.231.0.2:9",
                "10.231.0.2:80",
                "[fd42:231::2]:9",
                "[::ffff:10.231.0.2]:9"
            ]
        ),
        [REFUSED, EPERM, EPERM, REFUSED]
    );
    let decision = check(&d, &["--cgroup", &cg.rel], "[fd42:231::2]:9");
    assert_eq!(decision["verdict"], "deny");
    assert!(
        decision["reason"]
            .as_str()
            .unwrap()
            .contains("IPv6 egress is blocked"),
        "{decision}"
    );
    d.stop().unwrap();
}

#[test]
fn policy_show_lists_the_merged_rules() {
    let cg = TestCgroup::new("show");
    let d = Daemon::start(
        &cg,
        "mode = \"audit\"\n[[rule]]\naction = \"deny\"\ndest = [\"203.0.113.0/24\", \"2001:db8::/32\"]\nports = [443, \"8000-8100\"]\nprotocol = \"tcp\"\nunit = \"backup.service\"\n",
    )
    .unwrap();
    d.config.write_dropin(
        "10-more.toml",
        "[[rule]]\naction = \"allow\"\ndest = \"203.0.113.9\"\n",
    );
    let (code, _, err) = d.tracectl(&["reload"]);
    assert_eq!(code, 0, "{err}");
    let (code, out, err) = d.tracectl(&["--json", "policy", "show"]);
    assert_eq!(code, 0, "{err}");
    let v: Value = serde_json::from_str::<Value>(&out).unwrap()["policy"].clone();
    assert_eq!(v["active"], true);
    assert_eq!(v["mode"], "audit");
    assert_eq!(
        v["rules"][0]["dest"],
        serde_json::json!(["203.0.113.0/24", "2001:db8::/32"])
    );
    assert_eq!(v["rules"][0]["ports"], serde_json::json!(["443", "8000-8100"]));
    assert_eq!(v["rules"][0]["scope"], "unit backup.service");
    assert_eq!(v["rules"][1]["id"], 2);
    assert!(
        v["rules"][1]["origin"]
            .as_str()
            .unwrap()
            .ends_with("10-more.toml:2"),
        "{v}"
    );
    assert_eq!(
        v["scopes"].as_array().unwrap().last().unwrap()["selector"],
        "global"
    );
    assert!(v["exceptions"][0].as_str().unwrap().starts_with("127.0.0.0/8"));
}

/// Container and executable scopes: a cgroup named the way Docker names
/// them, and the probe binary by inode (a copy of it is another file).
#[test]
fn container_and_exe_scopes() {
    let cg = TestCgroup::new("ctr");
    let id = "4f1c2b3a5d6e7f8091a2b3c4d5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f708";
    let container = cg.child(&format!("docker-{id}.scope"));
    let copy = std::env::temp_dir().join(format!("ct-probe-copy-{}", std::process::id()));
    std::fs::copy(bin_path("ct-probe"), &copy).unwrap();
    let mut d = Daemon::start(
        &cg,
        &format!(
            "{NO_EXCEPTIONS}\n[[scope]]\ncontainer = \"{}\"\ndefault = \"deny\"\n\n[[rule]]\naction = \"deny\"\nexe = \"{}\"\ndest = \"127.0.0.4\"\n",
            &id[..12],
            bin_path("ct-probe").display()
        ),
    )
    .unwrap();
    assert_eq!(
        connects(&container, None, &["127.0.0.3:9"]),
        [EPERM],
        "the container's default"
    );
    assert_eq!(
        connects(&cg, None, &["127.0.0.3:9"]),
        [REFUSED],
        "outside the container"
    );
    assert_eq!(
        connects(&cg, None, &["127.0.0.4:9"]),
        [EPERM],
        "the probe binary's rule"
    );
    let out = cg
        .command(&copy)
        .args(["connect", "127.0.0.4:9"])
        .output()
        .unwrap();
    let _ = std::fs::remove_file(&copy);
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["results"][0]["errno"], REFUSED, "a copy is another executable");
    let decision = check(
        &d,
        &["--exe", bin_path("ct-probe").to_str().unwrap()],
        "127.0.0.4:9",
    );
    assert_eq!(decision["verdict"], "deny");
    assert_eq!(decision["rule"], 1);
    d.stop().unwrap();
}
