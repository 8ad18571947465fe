//! What the owner does on its timers: metrics, counters saved for the
//! next instance, the sd_notify status, and drops reported.

use super::*;

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

    /// The sd_notify status line, and the kernel counters saved for the
    /// next instance's downtime report.
    pub(super) async fn refresh_status(&mut self) {
        let reply = self.kernel.stats();
        if let Ok(k) = self.kernel_reply(reply).await {
            self.drops = k.drops;
            if let Err(e) = crate::downtime::Snapshot::of(&k).save(&self.snapshot_file) {
                debug!("saving {}: {e}", self.snapshot_file.display());
            }
        }
        service::status(&self.summary());
    }

    /// At start: what the kernel counted while no instance was reading
    /// (pinned counters adopted from the previous one), once.
    pub(super) async fn report_downtime(&mut self) {
        let reply = self.kernel.stats();
        let Ok(k) = self.kernel_reply(reply).await else {
            return;
        };
        self.drops = k.drops;
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

    /// Gauges and kernel-side counters, refreshed every second. The
    /// kernel counters come from the pinned stats map, so they continue
    /// across restarts.
    pub(super) async fn update_metrics(&mut self) {
        let reply = self.kernel.stats();
        let mut kernel_events = None;
        if let Ok(k) = self.kernel_reply(reply).await {
            self.drops = k.drops;
            kernel_events = Some(k.events);
            if let Some(n) = self.drop_warnings.check(k.drops, Instant::now()) {
                warn!(
                    dropped = n,
                    total = k.drops,
                    "ring buffer full: {n} events lost since the last warning ({} in all); raise [bpf] ring_buffer_size or trace fewer connections",
                    k.drops
                );
            }
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
        }
        let (pipe, table, processes) = self.pipeline.stats();
        self.status.send_if_modified(|s| {
            let new = connectracer_proto::dbus::Status {
                mode: self.config.trace.as_str().to_string(),
                config_epoch: self.epoch,
                events: kernel_events.unwrap_or(s.events),
                drops: self.drops,
                connections: pipe.connections,
            };
            let changed = *s != new;
            *s = new;
            changed
        });
        metrics::counter!("connectracer_events_read_total").absolute(pipe.records);
        metrics::gauge!("connectracer_connection_table_entries", "state" => "open").set(table.open as f64);
        metrics::gauge!("connectracer_connection_table_entries", "state" => "closed")
            .set(table.closed as f64);
        metrics::gauge!("connectracer_process_cache_entries").set(processes as f64);
        metrics::counter!("connectracer_config_reloads_total").absolute(self.reload.reloads);
        metrics::counter!("connectracer_config_reload_failures_total").absolute(self.reload.failures);
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

    /// Saves the per-label counters (every textfile interval and at stop).
    pub(super) fn save_counters(&mut self) {
        let path = self.counters_file.clone();
        if let Some(m) = self.pipeline.metrics() {
            if let Err(e) = m.save_counters(&path) {
                warn!("saving counters to {}: {e}", path.display());
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

    pub(super) fn summary(&self) -> String {
        service::summary(
            self.config.trace == crate::config::TraceMode::All,
            self.config.hosts.len(),
            self.addresses,
            self.drops,
            self.reload.last_error.is_some(),
        )
    }
}
