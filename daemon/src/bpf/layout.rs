//! One configuration generation as the kernel's maps hold it (key bytes to
//! value bytes), and the transactional write that puts it there: the
//! daemon's record of each generation always equals what the map holds,
//! and a write that fails partway is undone, so the idle generation is
//! never left holding rules nobody reported.

use std::collections::HashMap;

use ipnet::IpNet;
use libbpf_rs::{MapCore, MapFlags};

use super::tracer::{Ruleset, TracerError};
use super::types::{
    ct_lpm_v4_key, ct_lpm_v6_key, ct_policy_rule, ct_policy_v4_key, ct_policy_v6_key, ct_policy_val,
    ct_port_rule, ct_scope_key, ct_scope_kind, ct_scope_val, ct_watch_val,
};
use crate::policy::compile::{CompiledPolicy, ScopeKey, ScopeVal};
use crate::watchlist::MAX_RULES;

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

pub(super) fn bytes<T: plain::Plain>(v: &T) -> &[u8] {
    // SAFETY: Plain types are integers and byte arrays without padding
    // the kernel would misread; every one here is generated from the header.
    unsafe { plain::as_bytes(v) }
}

pub(super) fn scope_key(gen: u32, k: ScopeKey) -> ct_scope_key {
    let (kind, id, dev) = match k {
        ScopeKey::Cgroup(id) => (ct_scope_kind::CT_SCOPE_KIND_CGROUP, id, 0),
        ScopeKey::Uid(uid) => (ct_scope_kind::CT_SCOPE_KIND_UID, u64::from(uid), 0),
        ScopeKey::Exe { ino, dev } => (ct_scope_kind::CT_SCOPE_KIND_EXE, ino, dev),
        ScopeKey::Scope(s) => (ct_scope_kind::CT_SCOPE_KIND_SCOPE, u64::from(s), 0),
    };
    ct_scope_key {
        gen,
        kind: kind.0,
        id,
        dev,
    }
}

pub(super) fn scope_val(v: ScopeVal) -> ct_scope_val {
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
}

/// Names in the order `Generation::iter_mut` yields the maps.
pub const MAP_NAMES: [&str; 5] = ["watch_v4", "watch_v6", "policy_v4", "policy_v6", "policy_scopes"];

impl Generation {
    fn parts_mut(&mut self) -> [&mut Entries; 5] {
        [
            &mut self.watch_v4,
            &mut self.watch_v6,
            &mut self.policy_v4,
            &mut self.policy_v6,
            &mut self.scopes,
        ]
    }

    pub fn parts(&self) -> [&Entries; 5] {
        [
            &self.watch_v4,
            &self.watch_v6,
            &self.policy_v4,
            &self.policy_v6,
            &self.scopes,
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
            let mut val = ct_policy_val {
                nrules: e.rules.len().min(MAX_RULES) as u32,
                ..Default::default()
            };
            for (slot, r) in val.rules.iter_mut().zip(&e.rules) {
                *slot = ct_policy_rule {
                    lo: r.lo,
                    hi: r.hi,
                    protocol: r.protocol,
                    verdict: r.verdict,
                    rule_id: r.rule_id,
                    ..Default::default()
                };
            }
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
    }
}

/// The maps of one generation. The policy maps are shared with the other
/// generation (its entries carry the other generation number), so their
/// room is what the other one leaves.
pub struct GenerationMaps<'a> {
    pub maps: [&'a dyn MapCore; 5],
    /// Whether the map at the same index is shared by both generations.
    pub shared: [bool; 5],
}

impl std::fmt::Debug for GenerationMaps<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GenerationMaps")
            .field("shared", &self.shared)
            .finish_non_exhaustive()
    }
}

/// Makes `map` hold `want` where it held `had`: deletes what went, then
/// writes what is new or changed. `had` follows every successful kernel
/// write, so on failure it still says exactly what the map holds.
fn sync_map(
    map: &dyn MapCore,
    name: &'static str,
    had: &mut Entries,
    want: &Entries,
) -> Result<(), TracerError> {
    let map_err = |source| TracerError::Map { map: name, source };
    let gone: Vec<Vec<u8>> = had.keys().filter(|k| !want.contains_key(*k)).cloned().collect();
    for k in gone {
        match map.delete(&k) {
            Ok(()) => {}
            Err(e) if e.kind() == libbpf_rs::ErrorKind::NotFound => {}
            Err(e) => return Err(map_err(e)),
        }
        had.remove(&k);
    }
    for (k, v) in want {
        if had.get(k) != Some(v) {
            map.update(k, v, MapFlags::ANY).map_err(map_err)?;
            had.insert(k.clone(), v.clone());
        }
    }
    Ok(())
}

/// Room check before the first write: `other` is what the generation in
/// force holds in the shared maps.
fn check_room(maps: &GenerationMaps<'_>, want: &Generation, other: &Generation) -> Result<(), TracerError> {
    for (i, (map, want)) in maps.maps.iter().zip(want.parts()).enumerate() {
        let in_use = if maps.shared[i] { other.parts()[i].len() } else { 0 };
        let limit = map.max_entries() as usize;
        if want.len() + in_use > limit {
            return Err(TracerError::Capacity {
                map: MAP_NAMES[i],
                needed: want.len(),
                in_use,
                limit,
            });
        }
    }
    Ok(())
}

/// Makes the maps hold `want` for the generation recorded in `had`, all or
/// nothing: a kernel write that fails undoes the ones before it, so the
/// generation holds again exactly what it held (and `had` says so even if
/// the undo itself failed).
pub fn write_generation(
    maps: &GenerationMaps<'_>,
    had: &mut Generation,
    want: &Generation,
    other: &Generation,
) -> Result<(), TracerError> {
    check_room(maps, want, other)?;
    let before = had.clone();
    let mut result = Ok(());
    for ((i, part), want) in had.parts_mut().into_iter().enumerate().zip(want.parts()) {
        result = sync_map(maps.maps[i], MAP_NAMES[i], part, want);
        if result.is_err() {
            break;
        }
    }
    if let Err(e) = result {
        // Deleting first frees the room the old entries need.
        for ((i, part), old) in had.parts_mut().into_iter().enumerate().zip(before.parts()) {
            if let Err(undo) = sync_map(maps.maps[i], MAP_NAMES[i], part, old) {
                tracing::error!(
                    "undoing a failed write to {}: {:#}; the idle generation is rebuilt at the next apply",
                    MAP_NAMES[i],
                    anyhow::Error::from(undo)
                );
            }
        }
        return Err(e);
    }
    Ok(())
}

#[cfg(test)]
mod tests;
