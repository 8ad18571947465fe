//! The kernel's layout of one configuration: what the ruleset stage
//! produces and the tracer writes (LPM entries with their port rules,
//! policy entries, scope keys), and its encoding as the maps' key and value
//! bytes. Pure: nothing here touches the kernel, so its tests need no root.

use std::collections::HashMap;

use ipnet::IpNet;

use super::types::{
    ct_dns_name_key, ct_dns_name_val, ct_dns_rule_key, ct_lpm_v4_key, ct_lpm_v6_key, ct_policy_rule,
    ct_policy_v4_key, ct_policy_v6_key, ct_policy_val, ct_port_rule, ct_scope_key, ct_scope_kind,
    ct_scope_val, ct_watch_val,
};

/// Port rules one kernel entry holds (`CT_MAX_PORT_RULES` in connectracer.h).
pub const MAX_RULES: usize = 16;

/// What one configuration generation holds in the kernel.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Ruleset {
    /// Carried by every event judged against this ruleset; assigned by the
    /// caller so that it can know it before the switch.
    pub epoch: u32,
    pub trace_all: bool,
    pub watch: Vec<LpmEntry>,
    pub policy: CompiledPolicy,
}

/// A watched port range on one prefix, and the host it reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortRule {
    pub lo: u16,
    pub hi: u16,
    pub host_id: u32,
}

/// One watch-trie entry: its own rules, then those of the wider prefixes
/// covering it (an LPM lookup returns only the longest match).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LpmEntry {
    pub net: IpNet,
    pub rules: Vec<PortRule>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KernelRule {
    pub lo: u16,
    pub hi: u16,
    /// IP protocol number, 0 for both.
    pub protocol: u8,
    /// `ct_verdict` with the scope's mode applied.
    pub verdict: u8,
    pub rule_id: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyEntry {
    pub scope: u32,
    pub net: IpNet,
    pub rules: Vec<KernelRule>,
    /// The first `own` of `rules` are the prefix's own.
    pub own: usize,
}

/// A scope's rules for one hostname, for connects to addresses the kernel
/// saw in answers for it (see `ruleset::names`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NameRules {
    pub scope: u32,
    /// `ruleset::names::name_hash` of the name.
    pub hash: u64,
    pub rules: Vec<KernelRule>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ScopeKey {
    Cgroup(u64),
    Uid(u32),
    Exe {
        ino: u64,
        dev: u64,
    },
    /// The scope's own settings.
    Scope(u32),
    /// A sandbox's cgroup (`tracectl run`), asked before everything else.
    Sandbox(u64),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ScopeVal {
    pub scope: u32,
    /// `ct_verdict` + 1; 0: no default.
    pub default_verdict: u8,
    pub ipv6_verdict: u8,
}

/// The policy laid out for the kernel: per-scope LPM entries and the map
/// from kernel-visible identities to scopes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CompiledPolicy {
    /// `ct_policy_flag` bits.
    pub flags: u8,
    pub entries: Vec<PolicyEntry>,
    pub scopes: Vec<(ScopeKey, ScopeVal)>,
    pub names: Vec<NameRules>,
    /// Seconds an address seen in an answer stays past its TTL.
    pub name_grace_s: u32,
}

// SAFETY: plain integer/byte-array structs generated from connectracer.h.
unsafe impl plain::Plain for ct_lpm_v4_key {}
// SAFETY: as above.
unsafe impl plain::Plain for ct_lpm_v6_key {}
// SAFETY: as above.
unsafe impl plain::Plain for ct_watch_val {}
// SAFETY: as above.
unsafe impl plain::Plain for ct_policy_v4_key {}
// SAFETY: as above.
unsafe impl plain::Plain for ct_policy_v6_key {}
// SAFETY: as above.
unsafe impl plain::Plain for ct_policy_val {}
// SAFETY: as above.
unsafe impl plain::Plain for ct_scope_key {}
// SAFETY: as above.
unsafe impl plain::Plain for ct_scope_val {}
// SAFETY: as above.
unsafe impl plain::Plain for ct_dns_name_key {}
// SAFETY: as above.
unsafe impl plain::Plain for ct_dns_name_val {}
// SAFETY: as above.
unsafe impl plain::Plain for ct_dns_rule_key {}

pub fn bytes<T: plain::Plain>(v: &T) -> &[u8] {
    // SAFETY: Plain types are integers and byte arrays without padding
    // the kernel would misread; every one here is generated from the header.
    unsafe { plain::as_bytes(v) }
}

pub fn scope_key(gen: u32, k: ScopeKey) -> ct_scope_key {
    let (kind, id, dev) = match k {
        ScopeKey::Cgroup(id) => (ct_scope_kind::CT_SCOPE_KIND_CGROUP, id, 0),
        ScopeKey::Uid(uid) => (ct_scope_kind::CT_SCOPE_KIND_UID, u64::from(uid), 0),
        ScopeKey::Exe { ino, dev } => (ct_scope_kind::CT_SCOPE_KIND_EXE, ino, dev),
        ScopeKey::Scope(s) => (ct_scope_kind::CT_SCOPE_KIND_SCOPE, u64::from(s), 0),
        ScopeKey::Sandbox(id) => (ct_scope_kind::CT_SCOPE_KIND_SANDBOX, id, 0),
    };
    ct_scope_key {
        gen,
        kind: kind.0,
        id,
        dev,
    }
}

pub fn scope_val(v: ScopeVal) -> ct_scope_val {
    ct_scope_val {
        scope: v.scope,
        default_verdict: v.default_verdict,
        ipv6_verdict: v.ipv6_verdict,
        ..Default::default()
    }
}

/// Generation in the top byte, scope below, big-endian: the LPM prefix's first 32 bits.
fn scope_tag(gen: u32, scope: u32) -> [u8; 4] {
    ((gen << 24) | (scope & 0x00ff_ffff)).to_be_bytes()
}

pub type Entries = HashMap<Vec<u8>, Vec<u8>>;

/// The maps one generation owns entries in, in the order they are written.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Generation {
    pub watch_v4: Entries,
    pub watch_v6: Entries,
    pub policy_v4: Entries,
    pub policy_v6: Entries,
    pub scopes: Entries,
    pub dns_names: Entries,
    pub dns_rules: Entries,
}

/// Maps a generation writes.
pub const MAPS: usize = 7;

/// Names in the order `Generation::parts` yields the maps.
pub const MAP_NAMES: [&str; MAPS] = [
    "watch_v4",
    "watch_v6",
    "policy_v4",
    "policy_v6",
    "policy_scopes",
    "dns_names",
    "dns_rules",
];

impl Generation {
    pub(super) fn parts_mut(&mut self) -> [&mut Entries; MAPS] {
        [
            &mut self.watch_v4,
            &mut self.watch_v6,
            &mut self.policy_v4,
            &mut self.policy_v6,
            &mut self.scopes,
            &mut self.dns_names,
            &mut self.dns_rules,
        ]
    }

    pub fn parts(&self) -> [&Entries; MAPS] {
        [
            &self.watch_v4,
            &self.watch_v6,
            &self.policy_v4,
            &self.policy_v6,
            &self.scopes,
            &self.dns_names,
            &self.dns_rules,
        ]
    }

    /// What generation `gen` must hold to put `r` in force.
    pub fn of(gen: u32, r: &Ruleset) -> Self {
        let mut g = Self::default();
        for e in &r.watch {
            let mut val = ct_watch_val {
                nrules: e.rules.len().min(MAX_RULES) as u32,
                ..Default::default()
            };
            for (slot, rule) in val.rules.iter_mut().zip(&e.rules) {
                *slot = ct_port_rule {
                    lo: rule.lo,
                    hi: rule.hi,
                    host_id: rule.host_id,
                };
            }
            let val = bytes(&val).to_vec();
            match e.net {
                IpNet::V4(n) => {
                    let key = ct_lpm_v4_key {
                        prefixlen: u32::from(n.prefix_len()),
                        addr: n.network().octets(),
                    };
                    g.watch_v4.insert(bytes(&key).to_vec(), val);
                }
                IpNet::V6(n) => {
                    let key = ct_lpm_v6_key {
                        prefixlen: u32::from(n.prefix_len()),
                        addr: n.network().octets(),
                    };
                    g.watch_v6.insert(bytes(&key).to_vec(), val);
                }
            }
        }
        g.add_policy(gen, &r.policy);
        g
    }

    fn add_policy(&mut self, gen: u32, p: &CompiledPolicy) {
        for e in &p.entries {
            let mut val = policy_val(&e.rules);
            val.nown = e.own.min(MAX_RULES) as u16;
            val.plen = e.net.prefix_len();
            let scope = scope_tag(gen, e.scope);
            let val = bytes(&val).to_vec();
            match e.net {
                IpNet::V4(n) => {
                    let key = ct_policy_v4_key {
                        prefixlen: 32 + u32::from(n.prefix_len()),
                        scope,
                        addr: n.network().octets(),
                    };
                    self.policy_v4.insert(bytes(&key).to_vec(), val);
                }
                IpNet::V6(n) => {
                    let key = ct_policy_v6_key {
                        prefixlen: 32 + u32::from(n.prefix_len()),
                        scope,
                        addr: n.network().octets(),
                    };
                    self.policy_v6.insert(bytes(&key).to_vec(), val);
                }
            }
        }
        for (k, v) in &p.scopes {
            self.scopes.insert(
                bytes(&scope_key(gen, *k)).to_vec(),
                bytes(&scope_val(*v)).to_vec(),
            );
        }
        self.add_names(gen, p);
    }

    fn add_names(&mut self, gen: u32, p: &CompiledPolicy) {
        let grace = ct_dns_name_val {
            grace_s: p.name_grace_s,
            ..Default::default()
        };
        for n in &p.names {
            let name = ct_dns_name_key {
                gen,
                hash: n.hash,
                ..Default::default()
            };
            self.dns_names
                .insert(bytes(&name).to_vec(), bytes(&grace).to_vec());
            let mut val = policy_val(&n.rules);
            val.nown = val.nrules as u16;
            let key = ct_dns_rule_key {
                gen,
                scope: n.scope,
                hash: n.hash,
            };
            self.dns_rules.insert(bytes(&key).to_vec(), bytes(&val).to_vec());
        }
    }
}

fn policy_val(rules: &[KernelRule]) -> ct_policy_val {
    let mut val = ct_policy_val {
        nrules: rules.len().min(MAX_RULES) as u32,
        ..Default::default()
    };
    for (slot, r) in val.rules.iter_mut().zip(rules) {
        *slot = ct_policy_rule {
            lo: r.lo,
            hi: r.hi,
            protocol: r.protocol,
            verdict: r.verdict,
            rule_id: r.rule_id,
            ..Default::default()
        };
    }
    val
}

#[cfg(test)]
mod tests;
