//! The encoding, byte by byte, as connectracer.h lays the maps out: no
//! kernel needed.

use super::*;

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_ne_bytes(b[at..at + 4].try_into().unwrap())
}

fn one(entries: &Entries) -> (&[u8], &[u8]) {
    assert_eq!(entries.len(), 1, "{entries:?}");
    let (k, v) = entries.iter().next().unwrap();
    (k, v)
}

#[test]
fn port_rule_capacity_matches_the_header() {
    assert_eq!(ct_watch_val::default().rules.len(), MAX_RULES);
    assert_eq!(ct_policy_val::default().rules.len(), MAX_RULES);
}

#[test]
fn watch_entries_are_keyed_by_family_prefix_and_network() {
    let rule = |host_id| PortRule {
        lo: 80,
        hi: 443,
        host_id,
    };
    let r = Ruleset {
        watch: vec![
            LpmEntry {
                net: "10.1.2.0/24".parse().unwrap(),
                rules: vec![rule(7), rule(3)],
            },
            LpmEntry {
                net: "2001:db8::/32".parse().unwrap(),
                rules: vec![rule(9)],
            },
        ],
        ..Default::default()
    };
    let g = Generation::of(1, &r);
    let (k, v) = one(&g.watch_v4);
    assert_eq!(k.len(), 8);
    assert_eq!(u32_at(k, 0), 24);
    assert_eq!(&k[4..], [10, 1, 2, 0]);
    assert_eq!(u32_at(v, 0), 2, "nrules");
    // Rules follow the count and its padding: lo, hi (u16), host id (u32).
    assert_eq!(u16::from_ne_bytes([v[8], v[9]]), 80);
    assert_eq!(u16::from_ne_bytes([v[10], v[11]]), 443);
    assert_eq!(u32_at(v, 12), 7);
    assert_eq!(u32_at(v, 20), 3);
    let (k, _) = one(&g.watch_v6);
    assert_eq!(u32_at(k, 0), 32);
    assert_eq!(&k[4..8], [0x20, 0x01, 0x0d, 0xb8]);
    assert!(g.policy_v4.is_empty() && g.scopes.is_empty());
}

#[test]
fn policy_keys_lead_with_generation_and_scope() {
    let policy = CompiledPolicy {
        flags: 1,
        entries: vec![PolicyEntry {
            scope: 0x0102_0304,
            net: "192.0.2.0/25".parse().unwrap(),
            rules: vec![KernelRule {
                lo: 53,
                hi: 53,
                protocol: 17,
                verdict: 2,
                rule_id: 5,
            }],
            own: 1,
        }],
        scopes: vec![(
            ScopeKey::Uid(1000),
            ScopeVal {
                scope: 4,
                default_verdict: 3,
                ipv6_verdict: 0,
            },
        )],
        ..Default::default()
    };
    let g = Generation::of(
        1,
        &Ruleset {
            policy,
            ..Default::default()
        },
    );
    let (k, v) = one(&g.policy_v4);
    // The trie matches the 32 bits of generation and scope, then the network.
    assert_eq!(u32_at(k, 0), 32 + 25);
    assert_eq!(
        &k[4..8],
        [0x01, 0x02, 0x03, 0x04],
        "generation over the scope's top byte"
    );
    assert_eq!(&k[8..], [192, 0, 2, 0]);
    assert_eq!(u32_at(v, 0), 1);
    assert_eq!(u16::from_ne_bytes([v[4], v[5]]), 1, "own rules");
    assert_eq!(v[6], 25, "the prefix length");
    assert_eq!(u16::from_ne_bytes([v[8], v[9]]), 53);
    assert_eq!(u16::from_ne_bytes([v[10], v[11]]), 53);
    assert_eq!([v[12], v[13]], [17, 2], "protocol, verdict");
    assert_eq!(u32_at(v, 16), 5);
    let (k, v) = one(&g.scopes);
    assert_eq!(u32_at(k, 0), 1, "generation");
    assert_eq!(u32_at(k, 4), ct_scope_kind::CT_SCOPE_KIND_UID.0);
    assert_eq!(u64::from_ne_bytes(k[8..16].try_into().unwrap()), 1000);
    assert_eq!(u32_at(v, 0), 4);
}

#[test]
fn more_rules_than_an_entry_holds_are_cut_at_the_count() {
    let rules = vec![
        PortRule {
            lo: 1,
            hi: 1,
            host_id: 1,
        };
        MAX_RULES + 3
    ];
    let r = Ruleset {
        watch: vec![LpmEntry {
            net: "10.0.0.0/8".parse().unwrap(),
            rules,
        }],
        ..Default::default()
    };
    let g = Generation::of(0, &r);
    let (_, v) = one(&g.watch_v4);
    assert_eq!(u32_at(v, 0) as usize, MAX_RULES);
    assert_eq!(v.len(), std::mem::size_of::<ct_watch_val>());
}

#[test]
fn hostname_rules_are_keyed_by_generation_scope_and_name_hash() {
    let rule = KernelRule {
        lo: 443,
        hi: 443,
        protocol: 6,
        verdict: 2,
        rule_id: 9,
    };
    let policy = CompiledPolicy {
        names: vec![NameRules {
            scope: 7,
            hash: 0x1122_3344_5566_7788,
            rules: vec![rule],
        }],
        name_grace_s: 30,
        ..Default::default()
    };
    let g = Generation::of(
        1,
        &Ruleset {
            policy,
            ..Default::default()
        },
    );
    let (k, v) = one(&g.dns_names);
    assert_eq!(u32_at(k, 0), 1, "generation");
    assert_eq!(
        u64::from_ne_bytes(k[8..16].try_into().unwrap()),
        0x1122_3344_5566_7788
    );
    assert_eq!(u32_at(v, 0), 30, "grace");
    let (k, v) = one(&g.dns_rules);
    assert_eq!((u32_at(k, 0), u32_at(k, 4)), (1, 7), "generation, scope");
    assert_eq!(
        u64::from_ne_bytes(k[8..16].try_into().unwrap()),
        0x1122_3344_5566_7788
    );
    assert_eq!(u32_at(v, 0), 1);
    assert_eq!(u16::from_ne_bytes([v[4], v[5]]), 1, "all own");
    assert_eq!(u32_at(v, 16), 9);
}
