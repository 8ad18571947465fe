//! Which watched host an event's host id names: ids change between
//! configuration epochs, and events carry the epoch they were judged in.
//! An epoch's names are staged before the kernel switches to it (its
//! records may arrive while the switch is being answered), made current
//! once the kernel took it, dropped if it refused; superseded epochs are
//! kept a while for records still in flight.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::config::WatchedHost;

/// Host id to (name, label).
pub type HostNames = HashMap<u32, (String, Option<String>)>;

/// How long a superseded epoch's names are kept for records of it still
/// in flight (the ring buffer and the queue can lag behind reloads).
pub const RETENTION: Duration = Duration::from_secs(60);

#[derive(Debug, Default)]
pub struct EpochHosts {
    /// With the time each epoch was superseded, None while current.
    epochs: BTreeMap<u32, (Arc<HostNames>, Option<Instant>)>,
}

impl EpochHosts {
    pub fn stage(&mut self, epoch: u32, hosts: &[WatchedHost]) {
        let names = hosts
            .iter()
            .map(|h| (h.id, (h.name.clone(), h.label.clone())))
            .collect();
        self.epochs.insert(epoch, (Arc::new(names), None));
    }

    /// The kernel is on `epoch`: every other one is superseded.
    pub fn commit(&mut self, epoch: u32, now: Instant) {
        for (e, (_, superseded)) in &mut self.epochs {
            if *e != epoch {
                superseded.get_or_insert(now);
            }
        }
    }

    /// The kernel refused `epoch`: no record carries it.
    pub fn drop_epoch(&mut self, epoch: u32) {
        self.epochs.remove(&epoch);
    }

    pub fn prune(&mut self, now: Instant) {
        self.epochs
            .retain(|_, (_, superseded)| superseded.is_none_or(|t| now.duration_since(t) < RETENTION));
    }

    pub fn get(&self, epoch: u32, host_id: u32) -> Option<&(String, Option<String>)> {
        self.epochs.get(&epoch)?.0.get(&host_id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hosts(name: &str) -> Vec<WatchedHost> {
        crate::config::parse_files(&[(
            "/etc/connectracer/connectracer.toml".into(),
            format!("[[host]]\nname = \"{name}\"\nlabel = \"l\"\n"),
        )])
        .unwrap()
        .hosts
    }

    #[test]
    fn a_refused_epoch_leaves_the_one_in_force_current() {
        let mut e = EpochHosts::default();
        let t0 = Instant::now();
        e.stage(1, &hosts("10.0.0.1"));
        e.commit(1, t0);
        // Epoch 2 is staged, the kernel refuses it.
        e.stage(2, &hosts("10.0.0.2"));
        e.drop_epoch(2);
        e.prune(t0 + RETENTION + Duration::from_secs(1));
        assert_eq!(e.get(1, 1).map(|h| h.0.as_str()), Some("10.0.0.1"));
        assert!(e.get(2, 1).is_none());
        // A taken epoch supersedes the old one, which goes after the retention.
        e.stage(3, &hosts("10.0.0.3"));
        e.commit(3, t0);
        e.prune(t0 + Duration::from_secs(1));
        assert!(e.get(1, 1).is_some(), "kept for records in flight");
        e.prune(t0 + RETENTION + Duration::from_secs(1));
        assert!(e.get(1, 1).is_none());
        assert_eq!(e.get(3, 1).map(|h| h.0.as_str()), Some("10.0.0.3"));
    }
}
