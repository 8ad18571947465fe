//! Lays the watched destinations out the way the kernel's LPM tries need
//! them. An LPM lookup returns only the longest matching prefix, so each
//! prefix's entry also carries the port rules of every shorter prefix that
//! covers it, most specific first: `10.0.0.0/8` on 443 and `10.1.0.0/16` on
//! 80 must both match inside 10.1/16.

use std::collections::{BTreeSet, HashMap};
use std::net::IpAddr;

use ipnet::IpNet;

use crate::config::{HostTarget, WatchedHost};

/// What DNS currently says for each watched hostname.
pub type Resolved = HashMap<String, BTreeSet<IpAddr>>;

/// Port rules one kernel entry holds (`CT_MAX_PORT_RULES` in connectracer.h).
pub const MAX_RULES: usize = 16;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortRule {
    pub lo: u16,
    pub hi: u16,
    pub host_id: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LpmEntry {
    pub net: IpNet,
    pub rules: Vec<PortRule>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{net} needs {needed} port rules counting those of the wider prefixes that cover it; the kernel holds at most {MAX_RULES}: merge port ranges or watch fewer overlapping prefixes")]
pub struct TooManyRules {
    /// Index into the host list of the first host on that prefix.
    pub host_index: usize,
    pub net: IpNet,
    pub needed: usize,
}

fn own_rules(h: &WatchedHost) -> Vec<PortRule> {
    if h.ports.is_any() {
        return vec![PortRule {
            lo: 0,
            hi: u16::MAX,
            host_id: h.id,
        }];
    }
    h.ports
        .0
        .iter()
        .map(|r| PortRule {
            lo: *r.start(),
            hi: *r.end(),
            host_id: h.id,
        })
        .collect()
}

/// Prefixes of an LPM trie (per scope), each with its own rules, in
/// first-seen order. An LPM lookup returns only the longest matching
/// prefix, so `flatten` gives each entry the rules of the wider prefixes of
/// its scope that cover it, most specific first. The watch list (one scope)
/// and the policy (per-scope tries) are both laid out by it.
#[derive(Debug)]
pub struct Prefixes<S, R> {
    order: Vec<(S, IpNet)>,
    own: HashMap<(S, IpNet), Vec<R>>,
}

/// A flattened entry, or one that needs more rules than an entry holds.
#[derive(Debug)]
pub enum Flat<S, R> {
    Entry {
        scope: S,
        net: IpNet,
        rules: Vec<R>,
    },
    TooMany {
        scope: S,
        net: IpNet,
        needed: usize,
        first_own: Option<R>,
    },
}

impl<S: Copy + Eq + std::hash::Hash, R: Clone> Default for Prefixes<S, R> {
    fn default() -> Self {
        Self {
            order: Vec::new(),
            own: HashMap::new(),
        }
    }
}

impl<S: Copy + Eq + std::hash::Hash, R: Clone> Prefixes<S, R> {
    /// Adds rules to (scope, net); returns whether the prefix is new.
    pub fn add(&mut self, scope: S, net: IpNet, rules: impl IntoIterator<Item = R>) -> bool {
        let mut new = false;
        self.own
            .entry((scope, net))
            .or_insert_with(|| {
                new = true;
                self.order.push((scope, net));
                Vec::new()
            })
            .extend(rules);
        new
    }

    pub fn flatten(self) -> Vec<Flat<S, R>> {
        let lengths = prefix_lengths(self.own.keys().map(|(_, n)| n));
        let mut out = Vec::with_capacity(self.order.len());
        for (scope, net) in &self.order {
            let own = &self.own[&(*scope, *net)];
            let mut rules = own.clone();
            // Walk the covering prefixes from the next shorter one up to /0,
            // only at lengths some entry has: 10,000 single addresses cost
            // no lookups at all, and never more than 128 each.
            for &len in lengths(net).iter().rev() {
                let Ok(wider) = IpNet::new(net.addr(), len) else {
                    continue;
                };
                if let Some(r) = self.own.get(&(*scope, wider.trunc())) {
                    rules.extend_from_slice(r);
                }
            }
            out.push(if rules.len() > MAX_RULES {
                Flat::TooMany {
                    scope: *scope,
                    net: *net,
                    needed: rules.len(),
                    first_own: own.first().cloned(),
                }
            } else {
                Flat::Entry {
                    scope: *scope,
                    net: *net,
                    rules,
                }
            });
        }
        out
    }
}

/// One entry per distinct prefix, in first-seen order. A hostname stands
/// for its resolved addresses. Prefixes that would need more rules than the
/// kernel holds are reported (and the configuration refused).
pub fn build(hosts: &[WatchedHost], resolved: &Resolved) -> (Vec<LpmEntry>, Vec<TooManyRules>) {
    let mut prefixes: Prefixes<(), PortRule> = Prefixes::default();
    let mut first_host: HashMap<IpNet, usize> = HashMap::new();
    for (i, h) in hosts.iter().enumerate() {
        let nets: Vec<IpNet> = match &h.target {
            HostTarget::Net(n) => vec![*n],
            HostTarget::Name(name) => resolved
                .get(name)
                .into_iter()
                .flatten()
                .map(|ip| IpNet::from(ip.to_canonical()))
                .collect(),
        };
        for net in nets {
            if prefixes.add((), net, own_rules(h)) {
                first_host.insert(net, i);
            }
        }
    }
    let mut out = Vec::new();
    let mut errors = Vec::new();
    for flat in prefixes.flatten() {
        match flat {
            Flat::Entry { net, rules, .. } => out.push(LpmEntry { net, rules }),
            Flat::TooMany { net, needed, .. } => errors.push(TooManyRules {
                host_index: first_host[&net],
                net,
                needed,
            }),
        }
    }
    (out, errors)
}

/// Per family, the prefix lengths present, ascending; the returned closure
/// gives those shorter than a net's own, in the net's family.
pub fn prefix_lengths<'a>(nets: impl Iterator<Item = &'a IpNet>) -> impl Fn(&IpNet) -> Vec<u8> {
    let (mut v4, mut v6) = (BTreeSet::new(), BTreeSet::new());
    for n in nets {
        match n {
            IpNet::V4(_) => v4.insert(n.prefix_len()),
            IpNet::V6(_) => v6.insert(n.prefix_len()),
        };
    }
    move |net: &IpNet| {
        let set = if net.addr().is_ipv4() { &v4 } else { &v6 };
        set.range(..net.prefix_len()).copied().collect()
    }
}

/// The reference lookup the kernel's must agree with: longest prefix, then
/// the first rule whose ports match.
pub fn lookup(entries: &[LpmEntry], addr: std::net::IpAddr, port: u16) -> Option<u32> {
    entries
        .iter()
        .filter(|e| e.net.contains(&addr))
        .max_by_key(|e| e.net.prefix_len())
        .and_then(|e| e.rules.iter().find(|r| (r.lo..=r.hi).contains(&port)))
        .map(|r| r.host_id)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::PortSet;

    fn host(id: u32, net: &str, ports: &[(u16, u16)]) -> WatchedHost {
        WatchedHost {
            id,
            name: net.into(),
            target: HostTarget::Net(net.parse().unwrap()),
            ports: PortSet(ports.iter().map(|(a, b)| *a..=*b).collect()),
            label: None,
            origin: "test.toml".into(),
        }
    }

    #[test]
    fn inherits_rules_of_covering_prefixes() {
        let hosts = [
            host(1, "10.0.0.0/8", &[(443, 443)]),
            host(2, "10.1.0.0/16", &[(80, 80)]),
        ];
        let (e, errs) = build(&hosts, &Resolved::new());
        assert!(errs.is_empty());
        let ip = "10.1.2.3".parse().unwrap();
        assert_eq!(lookup(&e, ip, 80), Some(2));
        assert_eq!(lookup(&e, ip, 443), Some(1));
        assert_eq!(lookup(&e, ip, 22), None);
        assert_eq!(lookup(&e, "10.2.0.1".parse().unwrap(), 443), Some(1));
        assert_eq!(lookup(&e, "10.2.0.1".parse().unwrap(), 80), None);
        let inner = e.iter().find(|x| x.net.prefix_len() == 16).unwrap();
        assert_eq!(
            inner.rules.iter().map(|r| r.host_id).collect::<Vec<_>>(),
            vec![2, 1]
        );
    }

    #[test]
    fn zero_prefix_covers_everything_of_its_family() {
        let hosts = [host(1, "0.0.0.0/0", &[]), host(2, "::/0", &[(53, 53)])];
        let (e, _) = build(&hosts, &Resolved::new());
        assert_eq!(lookup(&e, "192.0.2.1".parse().unwrap(), 1), Some(1));
        assert_eq!(lookup(&e, "2001:db8::1".parse().unwrap(), 53), Some(2));
        assert_eq!(lookup(&e, "2001:db8::1".parse().unwrap(), 54), None);
    }

    #[test]
    fn rejects_more_rules_than_the_kernel_holds() {
        let ports: Vec<(u16, u16)> = (1..=10).map(|p| (p, p)).collect();
        let hosts = [host(1, "10.0.0.0/8", &ports), host(2, "10.1.0.0/16", &ports)];
        let (entries, errs) = build(&hosts, &Resolved::new());
        assert_eq!(errs.len(), 1);
        assert_eq!(errs[0].host_index, 1);
        assert_eq!(errs[0].needed, 20);
        // The prefix that fits is still there.
        assert_eq!(entries.len(), 1);
    }

    #[test]
    fn hostnames_stand_for_their_addresses() {
        let mut h = host(1, "10.0.0.0/8", &[(443, 443)]);
        h.target = HostTarget::Name("api.example.com".into());
        let hosts = [h, host(2, "10.0.0.0/8", &[(80, 80)])];
        let resolved = Resolved::from([(
            "api.example.com".to_string(),
            BTreeSet::from(["10.1.1.1".parse().unwrap(), "2001:db8::5".parse().unwrap()]),
        )]);
        let (e, _) = build(&hosts, &resolved);
        assert_eq!(lookup(&e, "10.1.1.1".parse().unwrap(), 443), Some(1));
        assert_eq!(
            lookup(&e, "10.1.1.1".parse().unwrap(), 80),
            Some(2),
            "inherits the /8's rules"
        );
        assert_eq!(lookup(&e, "2001:db8::5".parse().unwrap(), 443), Some(1));
        assert_eq!(lookup(&e, "10.1.1.2".parse().unwrap(), 443), None);
        assert_eq!(
            build(&hosts[..1], &Resolved::new()).0,
            vec![],
            "unresolved: nothing to match"
        );
    }
}
