//! The destinations each unit, cgroup and user reached, remembered for
//! `tracectl policy suggest`: one entry per (cgroup and uid, name, address,
//! port, protocol) with a count and first/last seen, bounded, and saved in
//! the state directory across restarts (see `saved`).
//!
//! Recorded by the owner on the event path: one hash update per new
//! connection, no I/O. Kept per cgroup and uid rather than per scope kind,
//! so one entry answers for the unit, the cgroup (and its ancestors) and
//! the user alike.

pub mod saved;

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{SystemTime, UNIX_EPOCH};

use connectracer_proto::api::{SeenDestination, SuggestParams, SuggestReply};
use connectracer_proto::{Connection, Protocol, Verdict};
use serde::{Deserialize, Serialize};

/// Entries remembered, all scopes together: at ~150 bytes each, ~2.5 MiB.
/// Past it the least recently seen eighth is forgotten (see `make_room`)
/// and counted in `dropped`.
pub const MAX_ENTRIES: usize = 16_384;
/// Distinct (cgroup, unit, uid) scopes remembered; scopes whose entries
/// are all forgotten are forgotten too.
const MAX_SCOPES: usize = 4_096;
/// The cgroup-id cache is only a shortcut to `by_path`: cleared when
/// cgroup churn (containers coming and going) fills it.
const MAX_CACHED_IDS: usize = 8_192;

/// Who connected: a cgroup (below the cgroup2 mount), its unit, a uid.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Scope {
    pub cgroup: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unit: Option<String>,
    pub uid: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
struct Dest {
    scope: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    name: Option<String>,
    address: IpAddr,
    port: u16,
    protocol: Protocol,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
struct Seen {
    count: u64,
    first_seen_ms: u64,
    last_seen_ms: u64,
}

#[derive(Debug, Default)]
pub struct EgressSeen {
    scopes: Vec<Scope>,
    by_path: HashMap<Scope, u32>,
    /// (cgroup id, uid) to scope, so that a known cgroup costs no string
    /// building per connection.
    by_id: HashMap<(u64, u32), u32>,
    entries: HashMap<Dest, Seen>,
    dropped: u64,
    /// Changed since the last save.
    dirty: bool,
}

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis().try_into().unwrap_or(u64::MAX))
}

impl EgressSeen {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    /// A new connection (or first datagram). Refused ones are left out: a
    /// suggestion allows what ran, not what the policy already stopped.
    pub fn record(&mut self, c: &Connection) {
        if c.verdict == Verdict::Deny {
            return;
        }
        let Some(scope) = self.scope_or_room(c) else {
            self.dropped += 1;
            return;
        };
        let at = unix_ms(c.started);
        let mut key = Dest {
            scope,
            name: c.dns_name.clone(),
            address: c.dst.ip(),
            port: c.dst.port(),
            protocol: c.protocol,
        };
        self.dirty = true;
        if let Some(seen) = self.entries.get_mut(&key) {
            seen.count += 1;
            seen.first_seen_ms = seen.first_seen_ms.min(at);
            seen.last_seen_ms = seen.last_seen_ms.max(at);
            return;
        }
        if self.entries.len() >= MAX_ENTRIES {
            self.make_room();
            // Scopes were renumbered.
            let Some(scope) = self.scope_or_room(c) else {
                self.dropped += 1;
                return;
            };
            key.scope = scope;
        }
        let seen = Seen {
            count: 1,
            first_seen_ms: at,
            last_seen_ms: at,
        };
        self.entries.insert(key, seen);
    }

    /// The connection's scope, making room for it when the scopes are full.
    fn scope_or_room(&mut self, c: &Connection) -> Option<u32> {
        if let Some(i) = self.scope_of(c) {
            return Some(i);
        }
        self.make_room();
        self.scope_of(c)
    }

    /// Forgets the least recently seen eighth of the entries (counted in
    /// `dropped`) and the scopes left without any: a sort of the store once
    /// per MAX_ENTRIES / 8 new destinations at most, so what a long-running
    /// host reaches now is kept over what it reached once long ago.
    fn make_room(&mut self) {
        let mut all: Vec<(Dest, Seen)> = self.entries.drain().collect();
        all.sort_unstable_by_key(|(_, s)| s.last_seen_ms);
        let forget = (all.len() / 8).max(1).min(all.len());
        self.dropped += forget as u64;
        let old = std::mem::take(&mut self.scopes);
        self.by_path.clear();
        self.by_id.clear();
        let mut renumbered: HashMap<u32, u32> = HashMap::new();
        for (mut d, s) in all.into_iter().skip(forget) {
            let i = match renumbered.get(&d.scope) {
                Some(i) => *i,
                None => {
                    let i = self.scopes.len() as u32;
                    let scope = old[d.scope as usize].clone();
                    self.by_path.insert(scope.clone(), i);
                    self.scopes.push(scope);
                    renumbered.insert(d.scope, i);
                    i
                }
            };
            d.scope = i;
            self.entries.insert(d, s);
        }
    }

    fn scope_of(&mut self, c: &Connection) -> Option<u32> {
        let p = &c.process;
        if let Some(i) = self.by_id.get(&(p.cgroup_id, p.uid)) {
            return Some(*i);
        }
        let scope = Scope {
            cgroup: p.cgroup.clone().unwrap_or_default(),
            unit: p.unit.clone(),
            uid: p.uid,
        };
        let i = self.intern(scope)?;
        if self.by_id.len() >= MAX_CACHED_IDS {
            self.by_id.clear();
        }
        self.by_id.insert((p.cgroup_id, p.uid), i);
        Some(i)
    }

    fn intern(&mut self, scope: Scope) -> Option<u32> {
        if let Some(i) = self.by_path.get(&scope) {
            return Some(*i);
        }
        if self.scopes.len() >= MAX_SCOPES {
            return None;
        }
        let i = u32::try_from(self.scopes.len()).ok()?;
        self.scopes.push(scope.clone());
        self.by_path.insert(scope, i);
        Some(i)
    }

    /// The cgroups (below the mount) that reached destinations remembered.
    pub fn cgroups(&self) -> impl Iterator<Item = &str> {
        self.scopes.iter().map(|s| s.cgroup.as_str())
    }

    /// The destinations of one unit, cgroup subtree or uid, merged across
    /// the cgroups and users that reached them.
    pub fn suggest(&self, q: &SuggestParams, now: SystemTime) -> SuggestReply {
        let cgroup = q.cgroup.as_deref().map(|c| c.trim_end_matches('/'));
        let wanted = |s: &Scope| match (&q.unit, cgroup, q.uid) {
            (Some(u), _, _) => s.unit.as_deref() == Some(u.as_str()),
            (_, Some(c), _) => {
                c.is_empty() || s.cgroup == c || s.cgroup.strip_prefix(c).is_some_and(|r| r.starts_with('/'))
            }
            (_, _, Some(uid)) => s.uid == uid,
            _ => false,
        };
        self.suggest_by(q.since_ms, now, wanted)
    }

    /// The destinations of the scopes `wanted` picks (last seen within
    /// `since_ms` when given), merged across them.
    pub fn suggest_by(
        &self,
        since_ms: Option<u64>,
        now: SystemTime,
        wanted: impl Fn(&Scope) -> bool,
    ) -> SuggestReply {
        let since = since_ms.map(|ms| unix_ms(now).saturating_sub(ms)).unwrap_or(0);
        let mut merged: HashMap<(Option<&str>, IpAddr, u16, Protocol), Seen> = HashMap::new();
        for (d, seen) in &self.entries {
            if seen.last_seen_ms < since || !wanted(&self.scopes[d.scope as usize]) {
                continue;
            }
            let m = merged
                .entry((d.name.as_deref(), d.address, d.port, d.protocol))
                .or_insert(Seen {
                    count: 0,
                    first_seen_ms: u64::MAX,
                    last_seen_ms: 0,
                });
            m.count += seen.count;
            m.first_seen_ms = m.first_seen_ms.min(seen.first_seen_ms);
            m.last_seen_ms = m.last_seen_ms.max(seen.last_seen_ms);
        }
        let mut destinations: Vec<SeenDestination> = merged
            .into_iter()
            .map(|((name, address, port, protocol), s)| SeenDestination {
                name: name.map(str::to_string),
                address,
                port,
                protocol,
                count: s.count,
                first_seen_ms: s.first_seen_ms,
                last_seen_ms: s.last_seen_ms,
            })
            .collect();
        destinations.sort_by(|a, b| {
            (&a.name, a.address, a.port, a.protocol as u8).cmp(&(
                &b.name,
                b.address,
                b.port,
                b.protocol as u8,
            ))
        });
        SuggestReply {
            destinations,
            dropped: self.dropped,
            capacity: MAX_ENTRIES as u64,
            container: None,
        }
    }
}

#[cfg(test)]
mod tests;
