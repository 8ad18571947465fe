//! Prometheus metrics: one recorder, served on HTTP /metrics and written to
//! a node_exporter textfile, with a cardinality budget per metric so that a
//! burst of distinct processes or destinations cannot grow memory.

use std::collections::HashSet;

// Looked up for every connection event; SipHash showed in profiles.
type HashMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;
use std::net::SocketAddr;
use std::path::Path;

use metrics::{counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

use std::sync::Arc;

use connectracer_proto::Connection;

use crate::config::ConnectionLabels;

mod connections;
mod exposition;
#[cfg(test)]
mod packaging;
mod process;
mod saved;

pub use exposition::render;

/// Value label sets collapse into once a metric's budget is spent.
const OTHER: &str = "other";

#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error("setting up the Prometheus exporter")]
    Build(#[source] metrics_exporter_prometheus::BuildError),
    #[error("binding the /metrics listener on {addr}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("installing the metrics recorder")]
    Install(#[source] metrics::SetRecorderError<metrics_exporter_prometheus::PrometheusRecorder>),
}

/// Distinct label sets seen per metric, up to a cap.
#[derive(Debug)]
pub struct Budget {
    max: usize,
    seen: HashMap<&'static str, HashSet<Vec<String>>>,
}

impl Budget {
    pub fn new(max: usize) -> Self {
        Self {
            max,
            seen: HashMap::default(),
        }
    }

    pub fn set_max(&mut self, max: usize) {
        self.max = max;
    }

    /// The label values to record under: `values` if the set is known or
    /// there is room, else every value replaced by "other" (counted).
    pub fn admit(&mut self, metric: &'static str, values: Vec<String>) -> Vec<String> {
        let seen = self.seen.entry(metric).or_default();
        if seen.contains(&values) {
            return values;
        }
        if seen.len() < self.max {
            seen.insert(values.clone());
            return values;
        }
        counter!("connectracer_series_overflow_total", "metric" => metric).increment(1);
        vec![OTHER.to_string(); values.len()]
    }
}

const CONNECTIONS: &str = "connectracer_connections_total";
const NAMED: &str = "connectracer_connections_named_total";
const DURATION: &str = "connectracer_connection_duration_seconds";
const SENT: &str = "connectracer_connection_sent_bytes";
const RECEIVED: &str = "connectracer_connection_received_bytes";
const VERDICTS: &str = "connectracer_policy_verdicts_total";

/// A closed TCP connection's duration and byte counts, into its host's histograms.
fn record_closed(h: &ClosedHistograms, c: &Connection) {
    if let Some(ns) = c.duration_ns {
        h.duration.record(ns as f64 / 1e9);
    }
    if let (Some(tx), Some(rx)) = (c.bytes_sent, c.bytes_received) {
        h.sent.record(tx as f64);
        h.received.record(rx as f64);
    }
}

fn describe() {
    describe_connections();
    describe_kernel_and_pipeline();
    describe_daemon();
}

/// What connections did, and what the policy said of them.
fn describe_connections() {
    describe_counter!(
        NAMED,
        "New connections by whose DNS answer named them (process, cgroup, host) or none"
    );
    describe_counter!(
        "connectracer_connection_outcomes_total",
        "Connections by protocol and outcome, with no label that names a process (served on HTTP)"
    );
    describe_counter!(
        "connectracer_dns_lookups_total",
        "DNS lookups of a watched hostname (answered or failed)"
    );
    describe_counter!(
        "connectracer_dns_failures_total",
        "DNS lookups of a watched hostname that failed"
    );
    describe_gauge!(
        "connectracer_ring_buffer_fill_ratio",
        "Share of the ring buffer written and not yet read (0 to 1)"
    );
    describe_counter!(
        CONNECTIONS,
        "Outbound connections by watched host, protocol, outcome, systemd unit and container (and destination port and comm where [metrics] connection_labels asks)"
    );
    describe_counter!(
        VERDICTS,
        "Connections the egress policy refused (deny) or would refuse in audit mode (would_deny), by rule (0: a default or IPv6 blocking) and systemd unit"
    );
    describe_counter!(
        "connectracer_kernel_denied_total",
        "connect()/sendmsg() calls refused by the egress policy in the kernel (every datagram counted)"
    );
    describe_counter!(
        "connectracer_kernel_would_deny_total",
        "connect()/sendmsg() calls the policy would refuse, let through in audit mode"
    );
    describe_histogram!(DURATION, "Duration of closed TCP connections, per watched host");
    describe_histogram!(
        SENT,
        "Payload bytes sent by closed TCP connections, per watched host"
    );
    describe_histogram!(
        RECEIVED,
        "Payload bytes received by closed TCP connections, per watched host"
    );
}

/// The kernel programs' and the event path's own counters.
fn describe_kernel_and_pipeline() {
    describe_counter!(
        "connectracer_series_overflow_total",
        "Label sets folded into \"other\" because the metric's series budget was spent"
    );
    describe_counter!(
        "connectracer_kernel_connects_total",
        "connect() calls seen by the kernel programs (TCP and UDP)"
    );
    describe_counter!(
        "connectracer_kernel_unwatched_total",
        "Connections counted but not traced because no watched destination matched"
    );
    describe_counter!(
        "connectracer_events_submitted_total",
        "Records the kernel programs put in the ring buffer"
    );
    describe_counter!(
        "connectracer_events_dropped_total",
        "Records lost because the ring buffer was full"
    );
    describe_counter!(
        "connectracer_events_read_total",
        "Records the daemon read from the ring buffer"
    );
    describe_gauge!(
        "connectracer_connection_table_entries",
        "Connections in the daemon's table, by state (open, closed)"
    );
    describe_gauge!(
        "connectracer_process_cache_entries",
        "Processes in the daemon's process cache"
    );
}

/// Reloads, DNS, sinks and the daemon process.
fn describe_daemon() {
    describe_counter!(
        "connectracer_config_reloads_total",
        "Configuration reloads attempted"
    );
    describe_counter!(
        "connectracer_config_reload_failures_total",
        "Configuration reloads that found errors and changed nothing"
    );
    describe_gauge!(
        "connectracer_config_last_reload_success_timestamp_seconds",
        "Unix time of the last configuration put in force"
    );
    describe_gauge!(
        "connectracer_dns_addresses",
        "Addresses currently watched for a hostname (grace period included)"
    );
    describe_gauge!(
        "connectracer_dns_consecutive_failures",
        "Failed lookups of a hostname since its last success"
    );
    describe_gauge!(
        "connectracer_dns_last_success_timestamp_seconds",
        "Unix time of a hostname's last successful lookup"
    );
    describe_gauge!(
        "connectracer_build_info",
        "Version, git commit and kernel of the running daemon"
    );
    describe_counter!(
        "connectracer_event_lines_written_total",
        "Event lines an event sink wrote"
    );
    describe_counter!(
        "connectracer_event_lines_lost_total",
        "Event lines an event sink lost: its queue was full or writing failed"
    );
    describe_gauge!(
        "connectracer_event_lines_queued",
        "Event lines waiting for an event sink's writer"
    );
}

/// The metrics side of the daemon: the recorder's handle and the budget.
#[derive(Debug)]
pub struct Metrics {
    handle: PrometheusHandle,
    budget: Budget,
    /// The per-process counter and the aggregate one, per key.
    counters: HashMap<connections::ConnKey, (metrics::Counter, metrics::Counter)>,
    /// connections_named_total by source: process, cgroup, host, none.
    named: [metrics::Counter; 4],
    /// Histogram handles per host label, for closed connections.
    closed: HashMap<Option<String>, ClosedHistograms>,
    /// Whether HTTP serves the per-process families (see metrics_http).
    http_detail: Arc<std::sync::atomic::AtomicBool>,
    /// The opt-in labels of `connections_total`.
    labels: ConnectionLabels,
    /// Families rendered elsewhere (GPU telemetry), served with the rest.
    extra: Arc<std::sync::RwLock<String>>,
}

/// Duration, sent and received of one host label, looked up once; an
/// entry over the label budget keeps counting its overflow per event.
#[derive(Debug)]
struct ClosedHistograms {
    duration: metrics::Histogram,
    sent: metrics::Histogram,
    received: metrics::Histogram,
    overflow: Option<metrics::Counter>,
}

impl Metrics {
    /// Installs the global recorder; with `listen`, also serves /metrics.
    /// Must run inside the tokio runtime.
    pub fn install(
        listen: Option<SocketAddr>,
        max_series: usize,
        http_detail: bool,
        labels: ConnectionLabels,
    ) -> Result<Self, MetricsError> {
        let buckets_seconds = [0.001, 0.01, 0.1, 0.5, 1.0, 5.0, 30.0, 120.0, 600.0, 3600.0];
        let buckets_bytes = [
            64.0,
            1024.0,
            16384.0,
            262_144.0,
            4_194_304.0,
            67_108_864.0,
            1_073_741_824.0,
        ];
        let builder = PrometheusBuilder::new()
            .set_buckets_for_metric(
                metrics_exporter_prometheus::Matcher::Full(DURATION.into()),
                &buckets_seconds,
            )
            .and_then(|b| {
                b.set_buckets_for_metric(
                    metrics_exporter_prometheus::Matcher::Suffix("_bytes".into()),
                    &buckets_bytes,
                )
            })
            .map_err(MetricsError::Build)?;
        let recorder = builder.build_recorder();
        let handle = recorder.handle();
        let detail = Arc::new(std::sync::atomic::AtomicBool::new(http_detail));
        let extra = Arc::new(std::sync::RwLock::new(String::new()));
        if let Some(addr) = listen {
            let (served, more) = (handle.clone(), extra.clone());
            let text = move || render(&served, &more.read().unwrap_or_else(|e| e.into_inner()));
            crate::metrics_http::spawn(addr, Arc::new(text), detail.clone())
                .map_err(|source| MetricsError::Bind { addr, source })?;
        }
        metrics::set_global_recorder(recorder).map_err(MetricsError::Install)?;
        describe();
        let kernel = nix::sys::utsname::uname()
            .map(|u| u.release().to_string_lossy().into_owned())
            .unwrap_or_default();
        gauge!(
            "connectracer_build_info",
            "version" => env!("CARGO_PKG_VERSION"),
            "commit" => env!("CONNECTRACER_GIT_COMMIT"),
            "kernel" => kernel
        )
        .set(1.0);
        Ok(Self {
            handle,
            budget: Budget::new(max_series),
            counters: HashMap::default(),
            closed: HashMap::default(),
            named: ["process", "cgroup", "host", "none"].map(|s| counter!(NAMED, "source" => s)),
            http_detail: detail,
            labels,
            extra,
        })
    }

    /// `metrics.connection_labels`, reloadable: label sets recorded from
    /// now on carry the new labels; series already exported keep theirs
    /// until the next start.
    pub fn set_connection_labels(&mut self, labels: ConnectionLabels) {
        if labels != self.labels {
            self.labels = labels;
            self.counters.clear();
        }
    }

    /// `metrics.http_detail`, reloadable.
    pub fn set_http_detail(&self, on: bool) {
        self.http_detail.store(on, std::sync::atomic::Ordering::Relaxed);
    }

    pub fn set_max_series(&mut self, max: usize) {
        self.budget.set_max(max);
    }

    /// The policy refused a connection, or would have in audit mode.
    /// A new connection, by where its name came from (see answers.rs).
    pub fn named(&mut self, source: Option<connectracer_proto::NameSource>) {
        use connectracer_proto::NameSource as S;
        let i = match source {
            Some(S::Process) => 0,
            Some(S::Cgroup) => 1,
            Some(S::Host) => 2,
            None => 3,
        };
        self.named[i].increment(1);
    }

    pub fn policy_verdict(&mut self, c: &Connection) {
        if c.verdict == connectracer_proto::Verdict::Deny {
            self.connection(c, "denied");
        }
        let values = vec![
            c.verdict.as_str().to_string(),
            c.policy_rule.unwrap_or(0).to_string(),
            c.process.unit.clone().unwrap_or_default(),
        ];
        let v = self.budget.admit(VERDICTS, values);
        let labels: Vec<metrics::Label> = ["verdict", "rule", "unit"]
            .iter()
            .zip(v)
            .map(|(k, v)| metrics::Label::new(*k, v))
            .collect();
        counter!(VERDICTS, labels).increment(1);
    }

    /// A TCP connection closed: its duration and byte counts.
    pub fn closed(&mut self, c: &Connection) {
        // One lookup for a host seen before; admit() counted a new one's overflow.
        if let Some(h) = self.closed.get(&c.host) {
            if let Some(o) = &h.overflow {
                o.increment(1);
            }
            record_closed(h, c);
            return;
        }
        let h = self.closed_histograms(c.host.clone().unwrap_or_default());
        record_closed(&h, c);
        if self.closed.len() >= connections::MAX_CACHED_COUNTERS {
            self.closed.clear();
        }
        self.closed.insert(c.host.clone(), h);
    }

    fn closed_histograms(&mut self, host: String) -> ClosedHistograms {
        let admitted = self.budget.admit(DURATION, vec![host.clone()]).remove(0);
        let overflow =
            (admitted != host).then(|| counter!("connectracer_series_overflow_total", "metric" => DURATION));
        ClosedHistograms {
            duration: histogram!(DURATION, "host" => admitted.clone()),
            sent: histogram!(SENT, "host" => admitted.clone()),
            received: histogram!(RECEIVED, "host" => admitted),
            overflow,
        }
    }

    /// The exposition: families in a stable order, process metrics included.
    pub fn render(&self) -> String {
        render(
            &self.handle,
            &self.extra.read().unwrap_or_else(|e| e.into_inner()),
        )
    }

    /// Replaces the families rendered outside the recorder with what
    /// `text` renders under this registry's series budget.
    pub fn set_extra(&mut self, text: impl FnOnce(&mut Budget) -> String) {
        let text = text(&mut self.budget);
        *self.extra.write().unwrap_or_else(|e| e.into_inner()) = text;
    }

    /// Saves the per-label connection counters, which live only in this
    /// process, so that the next instance continues them instead of
    /// starting from zero.
    pub fn save_counters(&self, path: &Path) -> std::io::Result<()> {
        saved::save(&self.render(), CONNECTIONS, path)
    }

    /// Continues the counters a previous instance saved; returns how many
    /// label sets were restored. Sets saved with other label names (the
    /// opt-in labels changed) are left behind rather than exported beside
    /// the new ones.
    pub fn restore_counters(&mut self, path: &Path) -> usize {
        let names = self.connection_label_names();
        let mut restored = 0;
        for (labels, value) in saved::load(path, CONNECTIONS) {
            if !labels.iter().map(|(k, _)| k.as_str()).eq(names.iter().copied()) {
                continue;
            }
            let values: Vec<String> = labels.iter().map(|(_, v)| v.clone()).collect();
            if self.budget.admit(CONNECTIONS, values.clone()) != values {
                continue;
            }
            let labels: Vec<metrics::Label> = labels
                .into_iter()
                .map(|(k, v)| metrics::Label::new(k, v))
                .collect();
            counter!(CONNECTIONS, labels).absolute(value);
            restored += 1;
        }
        restored
    }

    /// Folds the histogram samples recorded since the last call into their
    /// buckets. The recorder keeps every raw sample until then: with no
    /// scraper and no textfile, 1,000,000 connections held some 20 MiB of
    /// them. Called every second.
    pub fn upkeep(&self) {
        self.handle.run_upkeep();
    }

    /// Writes the exposition for node_exporter's textfile collector:
    /// temp file and rename in the same directory, so a scrape never sees a
    /// half-written file.
    pub fn write_textfile(&self, path: &Path) -> std::io::Result<()> {
        self.handle.run_upkeep();
        crate::sys::state_file::replace(path, self.render())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 100,000 distinct label sets through the budget into a real
    /// recorder: the series stay at the cap and the rest is counted as
    /// overflow. (Memory is the benchmark's to measure: this process runs
    /// other tests in its threads.)
    #[test]
    fn a_burst_of_distinct_labels_stays_within_the_budget() {
        let recorder = PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        let mut budget = Budget::new(1000);
        metrics::with_local_recorder(&recorder, || {
            for i in 0..100_000u32 {
                let v = budget.admit(CONNECTIONS, vec![format!("comm-{i}"), "443".into()]);
                counter!(CONNECTIONS, "comm" => v[0].clone(), "port" => v[1].clone()).increment(1);
            }
        });
        let text = handle.render();
        let series = text.lines().filter(|l| l.starts_with(CONNECTIONS)).count();
        assert_eq!(series, 1001, "1000 admitted label sets plus \"other\"");
        assert!(text.contains(&format!("{CONNECTIONS}{{comm=\"other\",port=\"other\"}} 99000")));
        assert!(text
            .contains("connectracer_series_overflow_total{metric=\"connectracer_connections_total\"} 99000"));
    }

    #[test]
    fn known_label_sets_are_always_admitted() {
        let mut b = Budget::new(1);
        assert_eq!(b.admit("m", vec!["a".into()]), ["a"]);
        assert_eq!(b.admit("m", vec!["b".into()]), ["other"]);
        assert_eq!(b.admit("m", vec!["a".into()]), ["a"]);
        assert_eq!(b.admit("n", vec!["b".into()]), ["b"], "budgets are per metric");
    }
}
