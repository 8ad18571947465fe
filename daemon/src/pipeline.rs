//! Kernel records in, attributed connections out: the process cache and the
//! connection table are updated here, and every connection event is logged.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use connectracer_proto::{ConnState, FailReason, Verdict};
use serde::Serialize;

use crate::answers::{AnswerStats, Answers};
use crate::attribution::Attributor;
use crate::bpf::event::{ConnKind, ConnRecord, Record};
use crate::config::LogConfig;
use crate::config::WatchedHost;
use crate::containers::{self, ContainerNames};
use crate::metrics::Metrics;
pub use crate::sinks::WatchEvent;
use crate::sinks::{EventKind, Sinks};
use crate::table::{ConnTable, Connection, Ending, TableLimits, TableStats};

#[derive(Debug, Default, Clone, Copy, Serialize)]
pub struct PipelineStats {
    pub records: u64,
    pub connections: u64,
    /// State changes for sockets the table no longer (or never) held.
    pub orphan_state_events: u64,
}

#[derive(Debug)]
pub struct Pipeline {
    attributor: Attributor,
    table: ConnTable,
    sinks: Sinks,
    /// Per configuration epoch, watched-host id to (name, label).
    hosts: crate::epochs::EpochHosts,
    /// The names processes resolved, from the DNS answers seen.
    answers: Answers,
    /// What container runtimes say about the containers seen.
    containers: ContainerNames,
    /// CLOCK_MONOTONIC to wall clock, for the kernel's timestamps.
    boot_wall: SystemTime,
    stats: PipelineStats,
    metrics: Option<Metrics>,
    /// Live subscribers (tracectl watch); events are cloned only when some
    /// are listening.
    watchers: tokio::sync::broadcast::Sender<Arc<WatchEvent>>,
}

/// Events buffered per watcher before it is told it missed some.
const WATCH_QUEUE: usize = 4096;

/// Hands an event to the sinks that take it and to watchers; a copy of
/// the connection is made only for those that take it.
fn emit(
    sinks: &mut Sinks,
    watchers: &tokio::sync::broadcast::Sender<Arc<WatchEvent>>,
    kind: EventKind,
    at: SystemTime,
    c: &Connection,
) {
    sinks.offer(kind, at, c);
    if watchers.receiver_count() > 0 {
        let _ = watchers.send(Arc::new(WatchEvent {
            kind,
            at,
            connection: c.clone(),
        }));
    }
}

/// A connection that opened while its container's lookup was pending
/// takes the names into its later events once they are known.
fn late_names(containers: &ContainerNames, c: &mut Connection) {
    if c.container.is_empty() && c.process.container_id.is_some() {
        if let Some(m) = containers.known(&c.process) {
            c.container = m;
        }
    }
}

/// Wall-clock time at which CLOCK_MONOTONIC was zero.
fn monotonic_epoch() -> SystemTime {
    let mono = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .map(|t| Duration::new(t.tv_sec() as u64, t.tv_nsec() as u32))
        .unwrap_or_default();
    SystemTime::now().checked_sub(mono).unwrap_or(UNIX_EPOCH)
}

impl Pipeline {
    pub fn new(attributor: Attributor, table: ConnTable, sinks: Sinks, containers: ContainerNames) -> Self {
        Self {
            attributor,
            table,
            sinks,
            hosts: crate::epochs::EpochHosts::default(),
            answers: Answers::new(Duration::from_secs(300)),
            containers,
            boot_wall: monotonic_epoch(),
            stats: PipelineStats::default(),
            metrics: None,
            watchers: tokio::sync::broadcast::channel(WATCH_QUEUE).0,
        }
    }

    pub fn containers(&mut self) -> &mut ContainerNames {
        &mut self.containers
    }

    pub fn on_container_answer(&mut self, a: containers::Answer) {
        self.containers.on_answer(a);
    }

    pub fn container_metas(
        &self,
    ) -> std::collections::HashMap<String, std::sync::Arc<connectracer_proto::ContainerMeta>> {
        self.containers.known_metas()
    }

    pub fn answer_stats(&self) -> AnswerStats {
        self.answers.stats()
    }

    pub fn answers(&self) -> &Answers {
        &self.answers
    }

    /// `[dns] grace`, reloadable: how long a name outlives its answer's TTL.
    pub fn set_name_grace(&mut self, grace: Duration) {
        self.answers.set_grace(grace);
    }

    pub fn stats(&self) -> (PipelineStats, TableStats, usize) {
        (self.stats, self.table.stats(), self.attributor.processes.len())
    }

    /// Records the host names of a newly applied configuration epoch.
    /// See `EpochHosts`: staged before the kernel switches, committed once
    /// it has, dropped if it refused.
    pub fn stage_hosts(&mut self, epoch: u32, hosts: &[WatchedHost]) {
        self.hosts.stage(epoch, hosts);
    }

    pub fn commit_hosts(&mut self, epoch: u32) {
        self.hosts.commit(epoch, Instant::now());
    }

    pub fn drop_hosts(&mut self, epoch: u32) {
        self.hosts.drop_epoch(epoch);
    }

    pub fn set_hosts(&mut self, epoch: u32, hosts: &[WatchedHost]) {
        self.stage_hosts(epoch, hosts);
        self.commit_hosts(epoch);
    }

    pub fn watchers(&self) -> tokio::sync::broadcast::Sender<Arc<WatchEvent>> {
        self.watchers.clone()
    }

    pub fn set_metrics(&mut self, metrics: Metrics) {
        self.metrics = Some(metrics);
    }

    /// For processes found by pid rather than by a record (GPU telemetry).
    pub fn attributor(&mut self) -> &mut Attributor {
        &mut self.attributor
    }

    pub fn metrics(&mut self) -> Option<&mut Metrics> {
        self.metrics.as_mut()
    }

    pub fn set_log(&mut self, log: &LogConfig) {
        self.sinks.configure(log);
    }

    pub fn sinks(&mut self) -> &mut Sinks {
        &mut self.sinks
    }

    pub fn set_limits(&mut self, limits: TableLimits) {
        self.table.set_limits(limits);
    }

    pub fn table(&self) -> &ConnTable {
        &self.table
    }

    pub fn handle_batch(&mut self, batch: Vec<Record>) {
        // One clock read per batch: a batch is drained within milliseconds,
        // and `now` only ages the caches and the closed connections.
        let now = Instant::now();
        for rec in batch {
            self.handle(rec, now);
        }
        self.sinks.flush();
    }

    fn handle(&mut self, rec: Record, now: Instant) {
        self.stats.records += 1;
        match rec {
            Record::Proc(p) => self.attributor.on_process(&p, now),
            Record::Dns(d) => {
                let at = self.kernel_time(d.ts_ns);
                let asker = self.attributor.cgroup(d.cgroup_id).map(|c| {
                    Arc::new(crate::answers::Asker {
                        cgroup: c.path.clone(),
                        unit: c.info.unit.clone(),
                        user_unit: c.info.user_unit.clone(),
                    })
                });
                self.answers.record(&d, now, at, asker);
            }
            Record::Conn(c) => match c.kind {
                ConnKind::Connect | ConnKind::Sendmsg => self.on_new(&c, now),
                ConnKind::Established => self.on_established(&c),
                ConnKind::Failed | ConnKind::Closed => self.on_end(&c, now),
            },
        }
    }

    /// Wall-clock time of a kernel (CLOCK_MONOTONIC) timestamp.
    fn kernel_time(&self, ts_ns: u64) -> SystemTime {
        self.boot_wall + Duration::from_nanos(ts_ns)
    }

    pub fn housekeeping(&mut self, now: Instant) {
        self.hosts.prune(now);
        self.answers.prune(now);
        self.attributor.prune(now);
        self.table.expire(now);
    }

    fn on_new(&mut self, c: &ConnRecord, now: Instant) {
        let process = self.attributor.attribute_shared(c);
        let container = self.containers.meta(&process, now);
        let named = self.answers.name_of(c.pid, c.cgroup_id, c.dst.ip(), now);
        if let Some(m) = &mut self.metrics {
            m.named(named.as_ref().map(|n| n.1));
        }
        let host_id = c.host_id.map(|h| h.get());
        let host = host_id.and_then(|id| self.hosts.get(c.epoch, id));
        let denied = c.verdict == Verdict::Deny;
        let conn = Connection {
            id: 0,
            cookie: c.cookie,
            protocol: c.protocol,
            // A refused connect or sendmsg never leaves the host: it is over
            // as soon as it is reported.
            state: if denied {
                ConnState::Failed
            } else {
                ConnState::Connecting
            },
            fail_reason: denied.then_some(FailReason::Denied),
            verdict: c.verdict,
            policy_rule: (c.policy_rule != 0).then_some(c.policy_rule),
            dst: c.dst,
            src: None,
            host_id,
            config_epoch: c.epoch,
            host: host.map(|h| h.0.clone()),
            label: host.and_then(|h| h.1.clone()),
            dns_source: named.as_ref().map(|n| n.1),
            dns_name: named.map(|n| n.0.to_string()),
            started: self.kernel_time(c.ts_ns),
            duration_ns: denied.then_some(0),
            bytes_sent: None,
            bytes_received: None,
            container,
            process,
        };
        self.stats.connections += 1;
        let kind = if denied {
            EventKind::Denied
        } else if c.kind == ConnKind::Sendmsg {
            EventKind::Send
        } else {
            EventKind::Connect
        };
        let at = conn.started;
        let conn = self.table.insert(conn);
        emit(&mut self.sinks, &self.watchers, kind, at, conn);
        if c.verdict != Verdict::Allow {
            if let Some(m) = &mut self.metrics {
                m.policy_verdict(conn);
            }
            if denied {
                return;
            }
        }
        // UDP has no handshake: its connect or first datagram is the outcome.
        if conn.protocol == connectracer_proto::Protocol::Udp {
            if let Some(m) = &mut self.metrics {
                m.connection(conn, "established");
            }
        }
    }

    fn on_established(&mut self, c: &ConnRecord) {
        let at = self.kernel_time(c.ts_ns);
        match self.table.established(c.cookie, c.src) {
            Some(conn) => {
                late_names(&self.containers, conn);
                emit(&mut self.sinks, &self.watchers, EventKind::Established, at, conn);
                if let Some(m) = &mut self.metrics {
                    m.connection(conn, "established");
                }
            }
            None => self.stats.orphan_state_events += 1,
        }
    }

    fn on_end(&mut self, c: &ConnRecord, now: Instant) {
        let failed = c.kind == ConnKind::Failed;
        let ending = Ending {
            state: if failed {
                ConnState::Failed
            } else {
                ConnState::Closed
            },
            fail_reason: failed.then(|| FailReason::from_errno(c.error)),
            duration_ns: c.duration_ns,
            src: Some(c.src).filter(|s: &SocketAddr| s.port() != 0),
            // Only TCP reports byte counts; UDP's would need per-packet hooks.
            bytes: (c.protocol == connectracer_proto::Protocol::Tcp && !failed)
                .then_some((c.bytes_sent, c.bytes_received)),
        };
        let ids = self.table.end(c.cookie, ending, now);
        if ids.is_empty() {
            self.stats.orphan_state_events += 1;
        }
        let kind = if failed {
            EventKind::Failed
        } else {
            EventKind::Closed
        };
        let at = self.kernel_time(c.ts_ns);
        for id in ids {
            if let Some(conn) = self.table.get_mut(id) {
                late_names(&self.containers, conn);
                emit(&mut self.sinks, &self.watchers, kind, at, conn);
                if let Some(m) = &mut self.metrics {
                    if failed {
                        m.connection(conn, "failed");
                    } else if conn.protocol == connectracer_proto::Protocol::Tcp {
                        m.closed(conn);
                    }
                }
            }
        }
    }
}
