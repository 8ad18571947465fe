//! Rules that can never decide anything: every connection they would match
//! is decided first by a built-in exception or by an earlier rule. Such a
//! rule is almost always a mistake (a deny of 127.0.0.0/8 under the default
//! `allow_loopback`), and nothing else says so: `policy show` lists it as
//! active. They are warnings, not errors: the policy in force is still
//! exactly what the file says.
//!
//! Only whole rules are reported, and only where the precedence in
//! `Policy::judge` makes the shadowing certain whatever DNS answers.

use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;

use ipnet::IpNet;

use crate::config::policy::{Dest, Policy, Rule, Selector};
use crate::config::PortSet;

/// One rule that never decides, and what decides instead.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shadowed {
    pub rule: u32,
    /// `file:line` of the shadowed rule.
    pub origin: String,
    pub by: ShadowedBy,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ShadowedBy {
    /// A built-in exception, by its `[policy]` key.
    Exception { key: &'static str, what: String },
    /// An earlier rule of the same scope.
    Rule { id: u32, origin: String },
}

impl fmt::Display for Shadowed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "rule {} ({}) can never match: ", self.rule, self.origin)?;
        match &self.by {
            ShadowedBy::Exception { key, what } => write!(
                f,
                "the built-in exception `{key}` ({what}) allows all of its destinations first; \
                 set `{key} = false` under [policy] if the rule should decide"
            ),
            ShadowedBy::Rule { id, origin } => write!(
                f,
                "rule {id} ({origin}) comes first for the same callers and covers \
                 all of its destinations, ports and protocols"
            ),
        }
    }
}

/// The shadowed rules of a loaded configuration, with the nameservers it
/// configures as the DNS exception's servers.
pub fn in_config(c: &crate::config::Config) -> Vec<Shadowed> {
    let servers: Vec<IpAddr> = c.dns.nameservers.iter().map(|s| s.ip()).collect();
    shadowed_rules(&c.policy, &servers)
}

/// Every rule of `policy` that can never match. `dns_servers` are the
/// servers the `allow_dns` exception lets through, where known (the
/// configured `[dns] nameservers`); the system resolver's are not.
pub fn shadowed_rules(policy: &Policy, dns_servers: &[IpAddr]) -> Vec<Shadowed> {
    if !policy.is_active() {
        return Vec::new();
    }
    // Earlier rules by (selector, destination), so that 10,000 rules cost
    // 10,000 lookups rather than 50 million comparisons.
    let mut earlier: HashMap<(&Option<Selector>, &Dest), Vec<&Rule>> = HashMap::new();
    let mut out = Vec::new();
    for rule in &policy.rules {
        let by = exception_covering(policy, rule, dns_servers).or_else(|| rule_covering(&earlier, rule));
        if let Some(by) = by {
            out.push(Shadowed {
                rule: rule.id,
                origin: rule.origin.clone(),
                by,
            });
        }
        for d in &rule.dest {
            earlier.entry((&rule.selector, d)).or_default().push(rule);
        }
    }
    out
}

fn exception_covering(policy: &Policy, rule: &Rule, dns_servers: &[IpAddr]) -> Option<ShadowedBy> {
    let nets = |r: &Rule| -> Option<Vec<IpNet>> {
        r.dest
            .iter()
            .map(|d| match d {
                Dest::Net(n) => Some(*n),
                Dest::Any | Dest::Name(_) => None,
            })
            .collect()
    };
    let nets = nets(rule).filter(|n| !n.is_empty())?;
    if policy.allow_loopback {
        let loopback: [IpNet; 2] = [
            "127.0.0.0/8".parse().expect("literal"),
            "::1/128".parse().expect("literal"),
        ];
        if nets.iter().all(|n| loopback.iter().any(|l| l.contains(n))) {
            return Some(ShadowedBy::Exception {
                key: "allow_loopback",
                what: "127.0.0.0/8 and ::1, every port".into(),
            });
        }
    }
    let dns_port = PortSet(vec![53..=53]);
    if policy.allow_dns && !dns_servers.is_empty() && ports_cover(&dns_port, &rule.ports) {
        let servers: Vec<IpNet> = dns_servers
            .iter()
            .map(|ip| IpNet::from(ip.to_canonical()))
            .collect();
        if nets.iter().all(|n| servers.iter().any(|s| s.contains(n))) {
            let list: Vec<String> = dns_servers.iter().map(ToString::to_string).collect();
            return Some(ShadowedBy::Exception {
                key: "allow_dns",
                what: format!("port 53 of {}", list.join(", ")),
            });
        }
    }
    None
}

/// An earlier rule with the same selector that is tried before `rule` for
/// every destination of it and matches wherever `rule` would. Rules are
/// tried by longest matching prefix, so a wider earlier rule does not
/// shadow a narrower later one: only the same destination (or `any` for a
/// /0) is tried first.
fn rule_covering(
    earlier: &HashMap<(&Option<Selector>, &Dest), Vec<&Rule>>,
    rule: &Rule,
) -> Option<ShadowedBy> {
    let first = rule.dest.first()?;
    let mut candidates: Vec<&Rule> = earlier.get(&(&rule.selector, first)).cloned().unwrap_or_default();
    if matches!(first, Dest::Net(n) if n.prefix_len() == 0) {
        candidates.extend(earlier.get(&(&rule.selector, &Dest::Any)).into_iter().flatten());
    }
    candidates.sort_by_key(|r| r.id);
    candidates
        .into_iter()
        .find(|a| covers(a, rule))
        .map(|a| ShadowedBy::Rule {
            id: a.id,
            origin: a.origin.clone(),
        })
}

fn covers(a: &Rule, b: &Rule) -> bool {
    let dest_covered = |d: &Dest| {
        a.dest
            .iter()
            .any(|x| x == d || (matches!(x, Dest::Any) && matches!(d, Dest::Net(n) if n.prefix_len() == 0)))
    };
    b.dest.iter().all(dest_covered)
        && ports_cover(&a.ports, &b.ports)
        && (a.protocol.is_none() || a.protocol == b.protocol)
}

/// Whether every port of `b` is in `a`.
fn ports_cover(a: &PortSet, b: &PortSet) -> bool {
    if a.is_any() {
        return true;
    }
    if b.is_any() {
        return false;
    }
    b.0.iter().all(|r| {
        // Walk the range through a's ranges; they may overlap or touch.
        let mut next = u32::from(*r.start());
        while next <= u32::from(*r.end()) {
            let Some(end) =
                a.0.iter()
                    .filter(|x| u32::from(*x.start()) <= next && next <= u32::from(*x.end()))
                    .map(|x| u32::from(*x.end()))
                    .max()
            else {
                return false;
            };
            next = end + 1;
        }
        true
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::tests::policy;

    fn warnings(text: &str, dns: &[&str]) -> Vec<String> {
        let dns: Vec<IpAddr> = dns.iter().map(|s| s.parse().unwrap()).collect();
        shadowed_rules(&policy(text), &dns)
            .iter()
            .map(ToString::to_string)
            .collect()
    }

    const FILE: &str = "/etc/connectracer/connectracer.toml";

    #[test]
    fn loopback_exception_shadows_a_loopback_deny() {
        let w = warnings(
            "[[rule]]\naction = \"deny\"\ndest = [\"127.0.0.0/8\", \"::1\"]\n",
            &[],
        );
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(
            w[0].starts_with(&format!(
                "rule 1 ({FILE}:2) can never match: the built-in exception `allow_loopback`"
            )),
            "{w:?}"
        );
        // Turned off, or only partly loopback: the rule decides.
        assert!(warnings(
            "[policy]\nallow_loopback = false\n[[rule]]\naction = \"deny\"\ndest = \"127.0.0.0/8\"\n",
            &[]
        )
        .is_empty());
        assert!(warnings(
            "[[rule]]\naction = \"deny\"\ndest = [\"127.0.0.1\", \"10.0.0.1\"]\n",
            &[]
        )
        .is_empty());
        assert!(warnings("[[rule]]\naction = \"deny\"\ndest = \"any\"\n", &[]).is_empty());
    }

    #[test]
    fn dns_exception_shadows_port_53_of_a_configured_server() {
        let rule = "[[rule]]\naction = \"deny\"\ndest = \"10.0.0.53\"\nports = [53]\n";
        let w = warnings(rule, &["10.0.0.53"]);
        assert_eq!(w.len(), 1);
        assert!(w[0].contains("`allow_dns` (port 53 of 10.0.0.53)"), "{w:?}");
        assert!(warnings(rule, &[]).is_empty(), "servers unknown: no claim");
        let wider = "[[rule]]\naction = \"deny\"\ndest = \"10.0.0.53\"\nports = [\"50-60\"]\n";
        assert!(warnings(wider, &["10.0.0.53"]).is_empty());
    }

    #[test]
    fn an_earlier_rule_of_the_same_scope_with_more_ports_shadows() {
        let text = r#"
[[rule]]
action = "allow"
dest = ["203.0.113.0/24", "198.51.100.0/24"]
ports = ["400-450", 443, "451-500"]

[[rule]]
action = "deny"
dest = "203.0.113.0/24"
ports = ["420-499"]
protocol = "tcp"
"#;
        let w = warnings(text, &[]);
        assert_eq!(
            w,
            [format!(
                "rule 2 ({FILE}:8) can never match: rule 1 ({FILE}:3) comes first for the same callers \
                 and covers all of its destinations, ports and protocols"
            )]
        );
    }

    #[test]
    fn narrower_later_rules_and_other_scopes_are_not_shadowed() {
        // Longest prefix first: the /16 is tried before the earlier /8.
        let nested = "[[rule]]\naction = \"deny\"\ndest = \"10.0.0.0/8\"\n[[rule]]\naction = \"allow\"\ndest = \"10.1.0.0/16\"\n";
        assert!(warnings(nested, &[]).is_empty());
        let scoped = "[[rule]]\naction = \"deny\"\ndest = \"10.0.0.0/8\"\n[[rule]]\naction = \"allow\"\ndest = \"10.0.0.0/8\"\nunit = \"a.service\"\n";
        assert!(warnings(scoped, &[]).is_empty());
        let fewer_ports = "[[rule]]\naction = \"deny\"\ndest = \"10.0.0.0/8\"\nports = [443]\n[[rule]]\naction = \"allow\"\ndest = \"10.0.0.0/8\"\n";
        assert!(warnings(fewer_ports, &[]).is_empty());
        let udp_only = "[[rule]]\naction = \"deny\"\ndest = \"10.0.0.0/8\"\nprotocol = \"udp\"\n[[rule]]\naction = \"allow\"\ndest = \"10.0.0.0/8\"\nprotocol = \"tcp\"\n";
        assert!(warnings(udp_only, &[]).is_empty());
    }

    #[test]
    fn any_covers_a_zero_prefix_and_names_cover_themselves() {
        let any = "[[rule]]\naction = \"deny\"\ndest = \"any\"\n[[rule]]\naction = \"allow\"\ndest = \"0.0.0.0/0\"\n";
        assert_eq!(warnings(any, &[]).len(), 1);
        let v4_only = "[[rule]]\naction = \"deny\"\ndest = \"0.0.0.0/0\"\n[[rule]]\naction = \"allow\"\ndest = \"any\"\n";
        assert!(warnings(v4_only, &[]).is_empty());
        let names = "[[rule]]\naction = \"deny\"\ndest = \"a.example.com\"\n[[rule]]\naction = \"allow\"\ndest = \"a.example.com\"\nports = [443]\n";
        assert_eq!(warnings(names, &[]).len(), 1);
    }
}
