//! The watched destinations laid out for the kernel's watch tries, one
//! entry per distinct prefix (see `lpm` for why entries carry the rules of
//! the prefixes covering them).

use std::collections::HashMap;

use ipnet::IpNet;

use super::lpm::{Flat, Prefixes};
use crate::bpf::layout::{LpmEntry, PortRule, MAX_RULES};
use crate::config::{HostTarget, WatchedHost};
use crate::policy::Resolved;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{net} needs {needed} port rules counting those of the wider prefixes that cover it; the kernel holds at most {MAX_RULES}: merge port ranges or watch fewer overlapping prefixes")]
pub struct TooManyRules {
    /// Index into the host list of the first host on that prefix.
    pub host_index: usize,
    pub net: IpNet,
    pub needed: usize,
}

fn own_rules(h: &WatchedHost) -> Vec<PortRule> {
    h.ports
        .bounds()
        .into_iter()
        .map(|(lo, hi)| PortRule {
            lo,
            hi,
            host_id: h.id,
        })
        .collect()
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
    use std::collections::BTreeSet;

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
