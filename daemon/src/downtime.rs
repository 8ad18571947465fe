//! What the kernel counted while nobody was reading: a start that adopts
//! the pinned counters of an earlier instance says what happened between
//! that instance's last snapshot and now.

use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::bpf::stats::KernelStats;

/// In the state directory; rewritten at every status refresh and at stop.
pub const SNAPSHOT_FILE: &str = "kernel-counters.json";

/// The kernel counters as last read, and when.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    pub unix_seconds: u64,
    pub events: u64,
    pub drops: u64,
    pub denied: u64,
    pub would_deny: u64,
    pub connects: u64,
}

impl Snapshot {
    pub fn of(k: &KernelStats) -> Self {
        Self {
            unix_seconds: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default()
                .as_secs(),
            events: k.events,
            drops: k.drops,
            denied: k.denied,
            would_deny: k.would_deny,
            connects: k.connects,
        }
    }

    pub fn save(&self, path: &Path) -> std::io::Result<()> {
        let json = serde_json::to_vec(self).map_err(std::io::Error::other)?;
        crate::sys::state_file::replace(path, json)
    }

    pub fn load(path: &Path) -> Option<Self> {
        serde_json::from_slice(&std::fs::read(path).ok()?).ok()
    }

    /// What changed since `self` was taken, as a log message, if anything
    /// went unseen. Counters that went backwards mean the pinned map is not
    /// the one the snapshot was taken from.
    pub fn since(&self, now: &KernelStats) -> Option<String> {
        if now.events < self.events || now.drops < self.drops {
            return None;
        }
        let dropped = now.drops - self.drops;
        let connects = now.connects.saturating_sub(self.connects);
        if dropped == 0 && connects == 0 {
            return None;
        }
        let ago = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs()
            .saturating_sub(self.unix_seconds);
        Some(format!(
            "while no daemon was reading (last snapshot {ago} s ago): {connects} connects, {} events queued, {dropped} events dropped with the ring buffer full, {} connects denied, {} would have been denied",
            now.events - self.events,
            now.denied.saturating_sub(self.denied),
            now.would_deny.saturating_sub(self.would_deny),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn downtime_is_the_difference() {
        let then = KernelStats {
            events: 100,
            drops: 2,
            connects: 50,
            ..Default::default()
        };
        let s = Snapshot::of(&then);
        assert_eq!(s.since(&then), None);
        let now = KernelStats {
            events: 150,
            drops: 12,
            connects: 80,
            denied: 10,
            ..Default::default()
        };
        let m = s.since(&now).unwrap();
        assert!(
            m.contains("30 connects, 50 events queued, 10 events dropped")
                && m.contains("10 connects denied"),
            "{m}"
        );
        let other_map = KernelStats::default();
        assert_eq!(s.since(&other_map), None);
    }
}
