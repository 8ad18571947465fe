//! What the owner publishes, every second and after each reload, for the
//! readers that must not wait on it: the metric gauges and counters, the
//! sd_notify `STATUS=` line and the D-Bus properties. One `watch` channel,
//! so they all show the same numbers and none of them holds up the owner.

use connectracer_proto::api::Stats;
use connectracer_proto::dbus::Status;
use tokio::sync::watch;

use crate::service;

/// The owner's counters and state at one moment.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Snapshot {
    /// What `tracectl stats` shows, as of the last kernel read.
    pub stats: Stats,
    /// Watched hosts configured.
    pub hosts: usize,
    /// Prefixes in the kernel watch list.
    pub addresses: usize,
}

pub type Publisher = watch::Sender<Snapshot>;

impl Snapshot {
    /// The D-Bus properties.
    pub fn status(&self) -> Status {
        Status {
            mode: self.stats.trace_mode.clone(),
            config_epoch: self.stats.config_epoch,
            events: self.stats.kernel.events,
            drops: self.stats.kernel.drops,
            connections: self.stats.connections,
        }
    }

    /// The sd_notify status line.
    pub fn summary(&self) -> String {
        service::summary(
            self.stats.trace_mode == "all",
            self.hosts,
            self.addresses,
            self.stats.kernel.drops,
            self.stats.last_reload_error.is_some(),
        )
    }
}

/// The metrics that mirror the snapshot. The kernel counters come from
/// the pinned stats map, so they continue across restarts.
pub fn record(s: &Snapshot) {
    let k = &s.stats.kernel;
    metrics::counter!("connectracer_kernel_connects_total").absolute(k.connects);
    metrics::counter!("connectracer_kernel_unwatched_total").absolute(k.unwatched);
    metrics::counter!("connectracer_events_submitted_total").absolute(k.events);
    metrics::counter!("connectracer_events_dropped_total").absolute(k.drops);
    metrics::counter!("connectracer_kernel_denied_total").absolute(k.denied);
    metrics::counter!("connectracer_kernel_would_deny_total").absolute(k.would_deny);
    if k.ring_size_bytes > 0 {
        metrics::gauge!("connectracer_ring_buffer_fill_ratio")
            .set(k.ring_pending_bytes as f64 / k.ring_size_bytes as f64);
    }
    metrics::counter!("connectracer_events_read_total").absolute(s.stats.records);
    metrics::gauge!("connectracer_connection_table_entries", "state" => "open")
        .set(s.stats.table_open as f64);
    metrics::gauge!("connectracer_connection_table_entries", "state" => "closed")
        .set(s.stats.table_closed as f64);
    metrics::gauge!("connectracer_process_cache_entries").set(s.stats.processes as f64);
    metrics::counter!("connectracer_config_reloads_total").absolute(s.stats.reloads);
    metrics::counter!("connectracer_config_reload_failures_total").absolute(s.stats.reload_failures);
}

/// Follows the published snapshots until the owner is gone: metrics on
/// each, `STATUS=` when its line changes from the one last sent (`sent`).
pub async fn follow(mut snapshots: watch::Receiver<Snapshot>, sent: String) {
    let mut line = sent;
    while snapshots.changed().await.is_ok() {
        let s = snapshots.borrow_and_update().clone();
        record(&s);
        let now = s.summary();
        if now != line {
            service::status(&now);
            line = now;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_readers_see_the_same_numbers() {
        let mut s = Snapshot {
            hosts: 2,
            addresses: 5,
            ..Default::default()
        };
        s.stats.kernel.drops = 3;
        s.stats.kernel.events = 40;
        s.stats.connections = 7;
        s.stats.config_epoch = 4;
        s.stats.trace_mode = "watched".into();
        assert_eq!(
            s.status(),
            Status {
                mode: "watched".into(),
                config_epoch: 4,
                events: 40,
                drops: 3,
                connections: 7
            }
        );
        assert_eq!(s.summary(), "tracing 2 hosts, 5 addresses, 3 drops");
        s.stats.last_reload_error = Some("bad".into());
        assert!(s.summary().ends_with("; last reload failed, see tracectl stats"));
    }
}
