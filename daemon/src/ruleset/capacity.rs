//! How many kernel entries one configuration needs, against what the maps
//! hold. Validation, `--check-config` and every apply path (reload, add-host,
//! DNS update) run this before a single kernel write: a configuration that
//! does not fit is refused whole, never written halfway.

use std::collections::HashMap;

use ipnet::IpNet;

use crate::bpf::layout::{CompiledPolicy, LpmEntry};
use crate::bpf::types::{ct_capacity, ct_dns_capacity};

/// Entries of one family's watch trie: each generation has its own.
pub const WATCH_ENTRIES: usize = ct_capacity::CT_WATCH_ENTRIES.0 as usize;
/// Entries one configuration may use in a policy trie (per family) or the
/// scope map: both generations share those maps, so each gets half, and
/// the next configuration always fits beside the one in force.
pub const POLICY_ENTRIES: usize = ct_capacity::CT_POLICY_ENTRIES.0 as usize / 2;
pub const SCOPE_ENTRIES: usize = ct_capacity::CT_SCOPE_ENTRIES.0 as usize / 2;
/// Hostnames, and (scope, hostname) rule sets, likewise halved.
pub const NAME_ENTRIES: usize = ct_dns_capacity::CT_DNS_NAME_ENTRIES.0 as usize / 2;

/// Where an overflow comes from, for the error's location.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Culprit {
    /// Index of the first watched host that no longer fits.
    Host(usize),
    /// The policy rule with the most entries in that map (1-based id).
    Rule(u32),
    /// Scopes: cgroups, users and executables selected.
    Scopes,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{what}, but kernel map {map} holds at most {} per configuration{hint}", group(*.limit))]
pub struct Overflow {
    pub map: &'static str,
    pub what: String,
    pub needed: usize,
    pub limit: usize,
    pub hint: String,
    pub culprit: Culprit,
}

fn group(n: usize) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn watch_overflow(watch: &[LpmEntry], v4: bool) -> Option<Overflow> {
    let family: Vec<&LpmEntry> = watch
        .iter()
        .filter(|e| matches!(e.net, IpNet::V4(_)) == v4)
        .collect();
    if family.len() <= WATCH_ENTRIES {
        return None;
    }
    let first_host = family[WATCH_ENTRIES]
        .rules
        .first()
        .map_or(0, |r| r.host_id as usize);
    Some(Overflow {
        map: if v4 { "watch_v4" } else { "watch_v6" },
        what: format!(
            "watched hosts: {} {} prefixes",
            group(family.len()),
            if v4 { "IPv4" } else { "IPv6" }
        ),
        needed: family.len(),
        limit: WATCH_ENTRIES,
        hint: "; watch CIDRs instead of single addresses".into(),
        culprit: Culprit::Host(first_host.saturating_sub(1)),
    })
}

fn policy_overflow(policy: &CompiledPolicy, v4: bool) -> Option<Overflow> {
    let family: Vec<_> = policy
        .entries
        .iter()
        .filter(|e| matches!(e.net, IpNet::V4(_)) == v4)
        .collect();
    if family.len() <= POLICY_ENTRIES {
        return None;
    }
    let mut per_rule: HashMap<u32, usize> = HashMap::new();
    for e in &family {
        for r in e.rules.iter().filter(|r| r.rule_id != 0) {
            *per_rule.entry(r.rule_id).or_default() += 1;
        }
    }
    let (rule, most) = per_rule
        .into_iter()
        .max_by_key(|(id, n)| (*n, std::cmp::Reverse(*id)))
        .unwrap_or((0, 0));
    Some(Overflow {
        map: if v4 { "policy_v4" } else { "policy_v6" },
        what: format!(
            "policy destinations: {} {} prefixes (rule {rule} alone {})",
            group(family.len()),
            if v4 { "IPv4" } else { "IPv6" },
            group(most)
        ),
        needed: family.len(),
        limit: POLICY_ENTRIES,
        hint: format!(
            " ({} shared by the configuration in force and the next); use CIDRs instead of single addresses",
            group(ct_capacity::CT_POLICY_ENTRIES.0 as usize)
        ),
        culprit: Culprit::Rule(rule),
    })
}

/// Every map the configuration would overflow.
pub fn check(watch: &[LpmEntry], policy: &CompiledPolicy) -> Vec<Overflow> {
    let mut out: Vec<Overflow> = [true, false]
        .into_iter()
        .filter_map(|v4| watch_overflow(watch, v4))
        .collect();
    out.extend(
        [true, false]
            .into_iter()
            .filter_map(|v4| policy_overflow(policy, v4)),
    );
    if policy.scopes.len() > SCOPE_ENTRIES {
        out.push(Overflow {
            map: "policy_scopes",
            what: "policy scopes: the cgroups, users and executables selected".into(),
            needed: policy.scopes.len(),
            limit: SCOPE_ENTRIES,
            hint: "; select a parent cgroup or slice instead of many units".into(),
            culprit: Culprit::Scopes,
        });
    }
    // dns_names holds one entry per distinct name, dns_rules one per
    // (scope, name): the second is never the smaller.
    if policy.names.len() > NAME_ENTRIES {
        out.push(Overflow {
            map: "dns_rules",
            what: format!(
                "hostname rules: {} (scope, hostname) pairs",
                group(policy.names.len())
            ),
            needed: policy.names.len(),
            limit: NAME_ENTRIES,
            hint: "; name fewer hosts per scope".into(),
            culprit: Culprit::Rule(
                policy
                    .names
                    .get(NAME_ENTRIES)
                    .and_then(|n| n.rules.first())
                    .map_or(0, |r| r.rule_id),
            ),
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bpf::layout::{KernelRule, PolicyEntry, PortRule};

    fn v4(i: usize) -> IpNet {
        IpNet::from(std::net::IpAddr::from(std::net::Ipv4Addr::from(
            0x0a00_0000 + i as u32,
        )))
    }

    #[test]
    fn watch_list_at_capacity_fits_one_more_does_not() {
        let mut watch: Vec<LpmEntry> = (0..WATCH_ENTRIES)
            .map(|i| LpmEntry {
                net: v4(i),
                rules: vec![PortRule {
                    lo: 0,
                    hi: 65535,
                    host_id: i as u32 + 1,
                }],
            })
            .collect();
        assert!(check(&watch, &CompiledPolicy::default()).is_empty());
        watch.push(LpmEntry {
            net: v4(WATCH_ENTRIES),
            rules: vec![PortRule {
                lo: 0,
                hi: 65535,
                host_id: WATCH_ENTRIES as u32 + 1,
            }],
        });
        let o = check(&watch, &CompiledPolicy::default());
        assert_eq!(o.len(), 1);
        assert_eq!(o[0].map, "watch_v4");
        assert_eq!(o[0].culprit, Culprit::Host(WATCH_ENTRIES));
        assert!(o[0].to_string().contains("65,537 IPv4 prefixes"), "{}", o[0]);
    }

    #[test]
    fn policy_overflow_names_the_largest_rule() {
        let entry = |i: usize, rule_id: u32| PolicyEntry {
            scope: 1,
            net: v4(i),
            rules: vec![KernelRule {
                lo: 80,
                hi: 80,
                protocol: 0,
                verdict: 2,
                rule_id,
            }],
            own: 1,
        };
        let mut p = CompiledPolicy {
            entries: (0..=POLICY_ENTRIES).map(|i| entry(i, 2)).collect(),
            ..Default::default()
        };
        p.entries.push(entry(POLICY_ENTRIES + 1, 1));
        let o = check(&[], &p);
        assert_eq!(o.len(), 1);
        assert_eq!(o[0].map, "policy_v4");
        assert_eq!(o[0].culprit, Culprit::Rule(2));
        p.entries.truncate(POLICY_ENTRIES);
        assert!(check(&[], &p).is_empty());
    }
}
