//! What the owner does on its timers: metrics, counters saved for the
//! next instance, the sd_notify status, and drops reported.

use super::*;
use crate::snapshot::Snapshot;
use connectracer_proto::api::KernelCounters;

impl Daemon {
    /// Every second: expiry in the table and caches, sinks, metrics.
    pub(super) async fn housekeeping(&mut self) {
        self.pipeline.housekeeping(Instant::now());
        self.pipeline.sinks().upkeep(Instant::now());
        self.update_metrics().await;
        if let Some(m) = self.pipeline.metrics() {
            m.upkeep();
        }
    }

    /// The kernel counters saved for the next instance's downtime report
    /// (the sd_notify status follows the published snapshot).
    pub(super) async fn refresh_status(&mut self) {
        let reply = self.kernel.stats();
        if let Ok(k) = self.kernel_reply(reply).await {
            if let Err(e) = crate::downtime::Snapshot::of(&k).save(&self.snapshot_file) {
                debug!("saving {}: {e}", self.snapshot_file.display());
            }
        }
    }

    /// At start: what the kernel counted while no instance was reading
    /// (pinned counters adopted from the previous one), once.
    pub(super) async fn report_downtime(&mut self) {
        let reply = self.kernel.stats();
        let Ok(k) = self.kernel_reply(reply).await else {
            return;
        };
        self.publish(Some(k.clone()));
        let adopted = self.kernel.adoption.maps.contains(&"stats");
        // Fresh counters count only this start's drops: the next warning
        // reports them. Adopted ones are reported below, up to now.
        self.drop_warnings = crate::count_warning::CountWarning::new(if adopted { k.drops } else { 0 });
        let prev = crate::downtime::Snapshot::load(&self.snapshot_file).filter(|_| adopted);
        // From now on a crash is reported against this start, not an older one.
        if let Err(e) = crate::downtime::Snapshot::of(&k).save(&self.snapshot_file) {
            warn!("saving {}: {e}", self.snapshot_file.display());
        }
        if let Some((message, lost)) = prev.and_then(|p| Some((p.since(&k)?, k.drops - p.drops))) {
            if lost > 0 {
                warn!(dropped = lost, "{message}");
            } else {
                info!("{message}");
            }
        }
    }

    /// The snapshot, the drop warning and the DNS gauges, refreshed every
    /// second.
    pub(super) async fn update_metrics(&mut self) {
        let reply = self.kernel.stats();
        let kernel = self.kernel_reply(reply).await.ok();
        if let Some(k) = &kernel {
            if let Some(n) = self.drop_warnings.check(k.drops, Instant::now()) {
                warn!(
                    dropped = n,
                    total = k.drops,
                    "ring buffer full: {n} events lost since the last warning ({} in all); raise [bpf] ring_buffer_size or trace fewer connections",
                    k.drops
                );
            }
        }
        self.publish(kernel);
        if let Some(dns) = &self.dns {
            for h in dns.status().await {
                let name = h.name.clone();
                metrics::gauge!("connectracer_dns_addresses", "host" => name.clone())
                    .set(h.addresses.len() as f64);
                metrics::counter!("connectracer_dns_lookups_total", "host" => name.clone())
                    .absolute(h.lookups);
                metrics::counter!("connectracer_dns_failures_total", "host" => name.clone())
                    .absolute(h.failures);
                metrics::gauge!("connectracer_dns_consecutive_failures", "host" => name.clone())
                    .set(f64::from(h.consecutive_failures));
                if let Some(t) = h.last_success {
                    // A timestamp, not an age: Prometheus computes `time() - x`
                    // itself, and the value stays right between our updates.
                    let unix = t
                        .duration_since(std::time::UNIX_EPOCH)
                        .unwrap_or_default()
                        .as_secs_f64();
                    metrics::gauge!("connectracer_dns_last_success_timestamp_seconds", "host" => name)
                        .set(unix);
                }
            }
        }
    }

    /// What `tracectl stats` shows: the kernel counters given and the
    /// owner's own, now.
    pub(super) fn collect_stats(&mut self, kernel: KernelCounters) -> Stats {
        let (pipe, t, processes) = self.pipeline.stats();
        Stats {
            kernel,
            records: pipe.records,
            connections: pipe.connections,
            orphan_state_events: pipe.orphan_state_events,
            decode_errors: self.kernel.decode_errors(),
            table_open: t.open as u64,
            table_closed: t.closed as u64,
            evicted_open: t.evicted_open,
            evicted_closed: t.evicted_closed,
            processes: processes as u64,
            uptime_seconds: self.started.elapsed().as_secs_f64(),
            config_epoch: self.epoch,
            reloads: self.reload.reloads,
            reload_failures: self.reload.failures,
            last_reload_error: self.reload.last_error.clone(),
            trace_mode: self.config.trace.as_str().to_string(),
            sinks: self.pipeline.sinks().stats(),
        }
    }

    /// Publishes the snapshot, with the kernel counters just read or, when
    /// none could be, those published last.
    pub(super) fn publish(&mut self, kernel: Option<KernelCounters>) {
        let kernel = kernel.unwrap_or_else(|| self.snapshot.borrow().stats.kernel.clone());
        let new = Snapshot {
            stats: self.collect_stats(kernel),
            hosts: self.config.hosts.len(),
            addresses: self.addresses,
        };
        self.snapshot.send_replace(new);
    }

    /// Saves the per-label counters (every textfile interval and at stop).
    pub(super) fn save_counters(&mut self) {
        let path = self.counters_file.clone();
        if let Some(m) = self.pipeline.metrics() {
            if let Err(e) = m.save_counters(&path) {
                warn!("saving counters to {}: {e}", path.display());
            }
        }
    }

    /// Hands the remembered destinations to their writer thread when they
    /// changed (every second: a crash loses at most that much).
    pub(super) fn save_egress(&mut self) {
        let Some(saver) = &self.egress_saver else {
            return;
        };
        let egress = self.pipeline.egress();
        if let Some(bytes) = egress.snapshot() {
            if !saver.offer(bytes) {
                egress.unsaved();
            }
        }
    }

    pub(super) fn write_textfile(&mut self) {
        let Some(path) = self.config.metrics.textfile.clone() else {
            return;
        };
        // No node_exporter textfile directory: nothing to feed.
        if !path.parent().is_some_and(Path::exists) {
            return;
        }
        if let Some(m) = self.pipeline.metrics() {
            if let Err(e) = m.write_textfile(&path) {
                warn!("writing {}: {e}", path.display());
            }
        }
    }

    /// The status line, from a snapshot published now (after a reload, the
    /// new epoch's).
    pub(super) fn summary(&mut self) -> String {
        self.publish(None);
        self.snapshot.borrow().summary()
    }
}
