//! The precedence table, row by row. The fixtures are shared with the
//! ruleset's tests, which check the compiled kernel layout against the
//! reference decision.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::path::Path;

use connectracer_proto::{Protocol, Verdict};

use super::*;
use crate::config::parse_config;

pub(crate) fn policy(text: &str) -> Policy {
    parse_config(Path::new("/etc/connectracer/connectracer.toml"), text)
        .unwrap_or_else(|e| panic!("{e}"))
        .policy
}

pub(crate) fn env() -> Environment<'static> {
    static NAMES: std::sync::LazyLock<Resolved> = std::sync::LazyLock::new(|| {
        let mut resolved = Resolved::new();
        resolved.insert(
            "s3.example.com".into(),
            BTreeSet::from(["192.0.2.10".parse().unwrap(), "2001:db8::10".parse().unwrap()]),
        );
        resolved.insert(
            "tracker.example.net".into(),
            BTreeSet::from(["198.51.100.7".parse::<IpAddr>().unwrap()]),
        );
        resolved
    });
    static DNS: std::sync::LazyLock<[IpAddr; 1]> =
        std::sync::LazyLock::new(|| ["10.0.0.53".parse().unwrap()]);
    Environment {
        resolved: &NAMES,
        dns_servers: &*DNS,
    }
}

pub(crate) fn unit(u: &str) -> Subject {
    Subject {
        cgroup: Some(format!("/system.slice/{u}")),
        ..Default::default()
    }
}

pub(crate) fn to(addr: &str, port: u16, protocol: Protocol) -> Target {
    Target {
        addr: addr.parse().unwrap(),
        port,
        protocol,
    }
}

pub(crate) const TCP: Protocol = Protocol::Tcp;
pub(crate) const UDP: Protocol = Protocol::Udp;

/// The shape the issue asks for, plus a scope default and exceptions.
pub(crate) const EXAMPLE: &str = r#"
mode = "enforce"
[[rule]]
action = "deny"
dest = ["203.0.113.0/24", "2001:db8::/32", "tracker.example.net"]
ports = [443, "8000-8100"]
protocol = "tcp"
unit = "backup.service"

[[rule]]
action = "allow"
dest = "s3.example.com"
ports = [443]
unit = "backup.service"

[[scope]]
unit = "backup.service"
default = "deny"

[[rule]]
action = "deny"
dest = "tracker.example.net"

[[rule]]
action = "allow"
dest = "203.0.113.64/26"
unit = "backup.service"
"#;

#[test]
fn precedence_table() {
    let p = policy(EXAMPLE);
    let e = env();
    let backup = unit("backup.service");
    let other = unit("web.service");
    let nobody = Subject::default();
    // (caller, destination, verdict, deciding rule, why)
    let rows: Vec<(&Subject, Target, Verdict, Option<u32>, &str)> = vec![
        // Built-in exceptions come before every scope, the unit's default deny included.
        (
            &backup,
            to("127.0.0.1", 5432, TCP),
            Verdict::Allow,
            None,
            "loopback",
        ),
        (&backup, to("::1", 5432, TCP), Verdict::Allow, None, "loopback v6"),
        (
            &backup,
            to("10.0.0.53", 53, UDP),
            Verdict::Allow,
            None,
            "DNS server on 53",
        ),
        (
            &backup,
            to("10.0.0.53", 80, TCP),
            Verdict::Deny,
            None,
            "DNS server, other port: unit default",
        ),
        // The unit's rules: longest prefix first.
        (
            &backup,
            to("203.0.113.5", 443, TCP),
            Verdict::Deny,
            Some(1),
            "CIDR deny on 443",
        ),
        (
            &backup,
            to("203.0.113.70", 443, TCP),
            Verdict::Allow,
            Some(4),
            "/26 allow beats /24 deny",
        ),
        (
            &backup,
            to("203.0.113.5", 8050, TCP),
            Verdict::Deny,
            Some(1),
            "port range",
        ),
        (
            &backup,
            to("203.0.113.5", 8050, UDP),
            Verdict::Deny,
            None,
            "protocol mismatch: unit default",
        ),
        (
            &backup,
            to("192.0.2.10", 443, TCP),
            Verdict::Allow,
            Some(2),
            "hostname allow",
        ),
        (
            &backup,
            to("2001:db8::10", 443, TCP),
            Verdict::Allow,
            Some(2),
            "hostname /128 beats /32 deny",
        ),
        (
            &backup,
            to("2001:db8::99", 443, TCP),
            Verdict::Deny,
            Some(1),
            "v6 CIDR deny",
        ),
        (
            &backup,
            to("::ffff:203.0.113.5", 443, TCP),
            Verdict::Deny,
            Some(1),
            "v4-mapped is IPv4",
        ),
        (
            &backup,
            to("192.0.2.10", 80, TCP),
            Verdict::Deny,
            None,
            "allowed name, other port: default",
        ),
        (
            &backup,
            to("198.51.100.7", 443, TCP),
            Verdict::Deny,
            Some(1),
            "unit rule before global",
        ),
        // The unit's default keeps global rules from being reached.
        (
            &backup,
            to("198.51.100.7", 80, TCP),
            Verdict::Deny,
            None,
            "unit default before global rule",
        ),
        // Other callers: only global rules and default.
        (
            &other,
            to("198.51.100.7", 80, TCP),
            Verdict::Deny,
            Some(3),
            "global hostname deny",
        ),
        (
            &other,
            to("203.0.113.5", 443, TCP),
            Verdict::Allow,
            None,
            "unit rules do not apply",
        ),
        (
            &nobody,
            to("8.8.8.8", 53, UDP),
            Verdict::Allow,
            None,
            "global default",
        ),
    ];
    for (who, t, verdict, rule, why) in rows {
        let d = p.judge(who, &t, &e);
        assert_eq!((d.verdict, d.rule), (verdict, rule), "{why}: {t:?} -> {d:?}");
    }
}

#[test]
fn scope_order_exe_user_deepest_cgroup_global() {
    let exe = std::env::current_exe().unwrap();
    let p = policy(&format!(
        r#"
[[scope]]
exe = "{}"
default = "allow"
[[scope]]
user = 4242
default = "deny"
[[scope]]
cgroup = "/a"
default = "allow"
[[scope]]
unit = "b.service"
default = "deny"
[[rule]]
action = "allow"
dest = "192.0.2.1"
cgroup = "/a"
[policy]
default = "deny"
"#,
        exe.display()
    ));
    let e = env();
    let t = to("192.0.2.9", 80, TCP);
    let deep = Some("/a/b.service".to_string());
    let cases = [
        (
            Subject {
                exe: Some(exe.clone()),
                uid: Some(4242),
                cgroup: deep.clone(),
            },
            Verdict::Allow,
            "exe first",
        ),
        (
            Subject {
                uid: Some(4242),
                cgroup: Some("/a".into()),
                ..Default::default()
            },
            Verdict::Deny,
            "user before cgroup",
        ),
        (
            Subject {
                cgroup: deep.clone(),
                ..Default::default()
            },
            Verdict::Deny,
            "deepest cgroup first",
        ),
        (
            Subject {
                cgroup: Some("/a/c".into()),
                ..Default::default()
            },
            Verdict::Allow,
            "ancestor cgroup",
        ),
        (
            Subject {
                uid: Some(1),
                ..Default::default()
            },
            Verdict::Deny,
            "global default",
        ),
    ];
    for (who, verdict, why) in cases {
        assert_eq!(p.judge(&who, &t, &e).verdict, verdict, "{why}");
    }
    // A scope without a say passes to the next: /a/b.service has a default,
    // so its rules-only ancestor is reached only from elsewhere below /a.
    let d = p.judge(
        &Subject {
            cgroup: Some("/a/c".into()),
            ..Default::default()
        },
        &to("192.0.2.1", 80, TCP),
        &e,
    );
    assert_eq!(d.rule, Some(1));
}

#[test]
fn audit_mode_per_scope_and_ipv6_blocking() {
    let p = policy(
        r#"
mode = "audit"
[[rule]]
action = "deny"
dest = "192.0.2.0/24"
[[scope]]
unit = "strict.service"
mode = "enforce"
block_ipv6 = true
[[rule]]
action = "deny"
dest = "192.0.2.0/24"
unit = "strict.service"
"#,
    );
    let e = env();
    let t = to("192.0.2.1", 80, TCP);
    assert_eq!(p.judge(&unit("x.service"), &t, &e).verdict, Verdict::WouldDeny);
    assert_eq!(p.judge(&unit("strict.service"), &t, &e).verdict, Verdict::Deny);
    let v6 = to("2001:db8::1", 80, TCP);
    assert_eq!(p.judge(&unit("strict.service"), &v6, &e).verdict, Verdict::Deny);
    assert_eq!(p.judge(&unit("x.service"), &v6, &e).verdict, Verdict::Allow);
    // v4-mapped is IPv4, not blocked as IPv6.
    let mapped = to("::ffff:198.51.100.1", 80, TCP);
    assert_eq!(
        p.judge(&unit("strict.service"), &mapped, &e).verdict,
        Verdict::Allow
    );
}

#[test]
fn exceptions_can_be_turned_off() {
    let p = policy("[policy]\ndefault = \"deny\"\nallow_loopback = false\nallow_dns = false\n");
    let e = env();
    assert_eq!(
        p.judge(&Subject::default(), &to("127.0.0.1", 80, TCP), &e)
            .verdict,
        Verdict::Deny
    );
    assert_eq!(
        p.judge(&Subject::default(), &to("10.0.0.53", 53, UDP), &e)
            .verdict,
        Verdict::Deny
    );
}

#[test]
fn rule_and_scope_errors_name_the_key() {
    let errors = |text: &str| -> Vec<String> {
        parse_config(Path::new("/etc/connectracer/connectracer.toml"), text)
            .unwrap_err()
            .0
            .iter()
            .map(ToString::to_string)
            .collect()
    };
    let f = "/etc/connectracer/connectracer.toml";
    assert_eq!(
        errors("mode = \"block\"\n"),
        [format!(
            "{f}:1:8: mode: unknown mode `block`; expected \"audit\" or \"enforce\""
        )]
    );
    assert_eq!(
        errors("[[rule]]\naction = \"drop\"\n"),
        [format!(
            "{f}:2:10: rule[0].action: unknown action `drop`; expected \"allow\" or \"deny\""
        )]
    );
    assert_eq!(
        errors("[[rule]]\naction = \"deny\"\nunit = \"a.service\"\nuser = 0\n"),
        [format!(
            "{f}:3:8: rule[0]: one selector per entry, found unit and user: write one entry per selector"
        )]
    );
    assert_eq!(
        errors("[[rule]]\naction = \"deny\"\ndest = [\"10.0.0.1/8\"]\n"),
        [format!(
            "{f}:3:8: rule[0].dest[0]: `10.0.0.1/8` has host bits set; did you mean `10.0.0.0/8`?"
        )]
    );
    assert_eq!(
        errors("[[rule]]\naction = \"deny\"\nuser = \"no-such-user-xyz\"\n"),
        [format!("{f}:3:8: rule[0].user: no user `no-such-user-xyz` on this system; give a uid to name one that does not exist yet")]
    );
    assert_eq!(
        errors("[[scope]]\nunit = \"a.service\"\n"),
        [format!("{f}:2:8: scope[0]: unit a.service: the scope sets nothing; give `default`, `mode` or `block_ipv6`")]
    );
    assert_eq!(
        errors("[[scope]]\ncontainer = \"abc\"\ndefault = \"deny\"\n"),
        [format!("{f}:2:13: scope[0].container: `abc` is too short to name one container: give at least 12 hex digits of the id")]
    );
    assert_eq!(
        errors("[[scope]]\ncgroup = \"/\"\ndefault = \"deny\"\n"),
        [format!(
            "{f}:2:10: scope[0].cgroup: `/` selects every process: write a global rule (no selector) instead"
        )]
    );
    assert_eq!(
        errors("[[rule]]\naction = \"deny\"\nprotocol = \"icmp\"\n"),
        [format!(
            "{f}:3:12: rule[0].protocol: unknown protocol `icmp`; expected \"tcp\", \"udp\" or \"any\""
        )]
    );
    let dup = errors("[[scope]]\nunit = \"a.service\"\ndefault = \"deny\"\n[[scope]]\nunit = \"a.service\"\nmode = \"audit\"\n");
    assert_eq!(
        dup,
        [format!(
            "{f}:5:8: scope[1]: unit a.service already has a [[scope]] table ({f}:2); merge them"
        )]
    );
}

#[test]
fn ancestors_deepest_first_without_the_root() {
    assert_eq!(ancestors("/a/b/c").collect::<Vec<_>>(), ["/a/b/c", "/a/b", "/a"]);
    assert_eq!(ancestors("/").count(), 0);
}

#[test]
fn container_selector_matches_the_container_cgroup_only() {
    let id = "3f4e5d6c7b8a9f0e1d2c3b4a5f6e7d8c9b0a1f2e3d4c5b6a7f8e9d0c1b2a3f4e";
    let sel = Selector::Container(id[..12].to_string());
    let path = format!("/system.slice/docker-{id}.scope");
    assert!(sel.matches_cgroup(&path));
    assert!(!sel.matches_cgroup(&format!("{path}/init")));
    assert!(!sel.matches_cgroup("/system.slice/docker-0000000000000000.scope"));
}
