//! The daemon's life: preflight, attach, serve; reload on SIGHUP, file
//! changes and control requests through one path; drain and detach on stop.

mod answer;
mod apply;
mod by_container;
mod profile;
mod sandbox_profile;
mod sandboxes;
mod start;
mod upkeep;

use apply::{environment, log_policy, ruleset, start_cgroup_watch};

use std::path::{Path, PathBuf};

use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use std::collections::HashMap;

use connectracer_proto::api::{
    AddHostParams, Answer, CallError, HostInfo, HostsReply, Operation, ReloadReply, Stats, StatsReply,
    SuggestParams, SuggestReply, VersionReply,
};
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, error, info, warn};

use crate::added_hosts::AddedHost;
use crate::attribution::Attributor;
use crate::bpf::event::Record;
use crate::bpf::layout::Ruleset;
use crate::bpf::tracer::{resolve_cgroup_dir, TracerOptions};
use crate::config::{Config, HostTarget};
use crate::control::{self, query, Outcome, Request};
use crate::dns::{DnsUpdate, DnsWatcher};
use crate::kernel::KernelHandle;
use crate::metrics::Metrics;
use crate::pipeline::Pipeline;
use crate::policy::scopes::{self as policy_scopes, Identities};
use crate::policy::{Environment, Resolved};
use crate::reload::{self, ConfigSource};
use crate::service;
use crate::sinks::{human_duration, Sinks};
use crate::sys::{mounts, preflight, privileges};
use crate::table::{ConnTable, TableLimits};

/// Batches of records in flight between the kernel thread and the pipeline;
/// when full, the kernel thread waits and the ring buffer absorbs the burst.
const RECORD_QUEUE: usize = 64;
const HOUSEKEEPING: Duration = Duration::from_secs(1);
const MAX_PROCESSES: usize = 65536;
/// How often the kernel counters are saved for the next instance's
/// downtime report.
const STATUS_REFRESH: Duration = Duration::from_secs(10);
/// How long the sinks' writers get to finish their queues at stop.
const SINK_DRAIN: Duration = Duration::from_secs(3);
/// Per-label counters saved for the next instance, in the state directory.
const COUNTERS_FILE: &str = "metrics-counters.prom";

/// What one reload did, or why it changed nothing.
#[derive(Debug, Default)]
struct ReloadState {
    reloads: u64,
    failures: u64,
    last_error: Option<String>,
}

/// The one owner of the daemon's state; everything else sends it requests.
struct Daemon {
    source: ConfigSource,
    /// Counters and state published for readers that must not wait on the
    /// owner: metrics, the sd_notify status, the D-Bus properties.
    snapshot: crate::snapshot::Publisher,
    config: Config,
    resolved: Resolved,
    kernel: KernelHandle,
    records: mpsc::Receiver<Vec<Record>>,
    /// None when DNS could not start (the error is logged and in status).
    dns: Option<DnsWatcher>,
    dns_updates: mpsc::Receiver<DnsUpdate>,
    pipeline: Pipeline,
    epoch: u32,
    /// Prefixes in the kernel watch list now.
    addresses: usize,
    drop_warnings: crate::count_warning::CountWarning,
    /// Kernel counters as last read, for the next instance's downtime report.
    snapshot_file: PathBuf,
    reload: ReloadState,
    started: Instant,
    counters_file: PathBuf,
    /// cgroup2 mount and the directory the programs are attached to.
    mount: PathBuf,
    cgroup_dir: PathBuf,
    /// New cgroup directories, while the policy selects by cgroup.
    cgroup_tx: mpsc::UnboundedSender<PathBuf>,
    cgroup_rx: mpsc::UnboundedReceiver<PathBuf>,
    cgroup_watcher: Option<notify::RecommendedWatcher>,
    /// NVML polls, and the last one attributed.
    gpu: crate::gpu::Telemetry,
    /// Sandbox requests from the transports, and from the tasks that watch
    /// sandboxes empty.
    sandbox_tx: mpsc::Sender<control::sandbox::Command>,
    sandbox_rx: mpsc::Receiver<control::sandbox::Command>,
    /// Stops and removes sandboxes' cgroups (scopes or the daemon's own).
    placer: std::sync::Arc<crate::sandbox::placer::Placer>,
    /// Sandboxes placed by this instance whose caller is still connected.
    attached: std::collections::HashSet<String>,
    /// Sandboxes being removed, and whom to tell why once they are.
    finishing: HashMap<String, (oneshot::Sender<String>, &'static str)>,
    /// What the container runtimes' workers answer.
    container_tx: mpsc::UnboundedSender<crate::containers::Answer>,
    container_rx: mpsc::UnboundedReceiver<crate::containers::Answer>,
    /// Syscall profiles being looked up or recorded.
    profiles: profile::Profiles,
    /// Suggestions for a container, while it is looked for.
    container_queries: by_container::ContainerQueries,
    /// Writes the destinations remembered for `policy suggest`; None
    /// where its thread could not start.
    egress_saver: Option<crate::egress::saved::Saver>,
}

impl std::fmt::Debug for Daemon {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Daemon")
            .field("epoch", &self.epoch)
            .finish_non_exhaustive()
    }
}

fn table_limits(c: &Config) -> TableLimits {
    TableLimits {
        max_open: c.table.max_open,
        max_closed: c.table.max_closed,
        closed_retention: c.table.closed_retention,
    }
}

/// Paths the daemon uses besides its configuration.
#[derive(Debug, Clone)]
pub struct Paths {
    pub control_socket: PathBuf,
    pub pin_dir: Option<PathBuf>,
    pub state_dir: PathBuf,
    /// Event lines go to the journal, with structured fields.
    pub journal: bool,
}

impl Paths {
    /// The sandbox socket (`tracectl run`), beside the control socket.
    pub fn sandbox_socket(&self) -> PathBuf {
        connectracer_proto::varlink::sandbox_socket_for(&self.control_socket)
    }
}

/// Signal streams, installed before anything else so that a SIGHUP or
/// SIGTERM during start-up is queued rather than fatal.
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> anyhow::Result<Self> {
        Ok(Self {
            term: signal(SignalKind::terminate()).context("installing SIGTERM handler")?,
            int: signal(SignalKind::interrupt()).context("installing SIGINT handler")?,
            hup: signal(SignalKind::hangup()).context("installing SIGHUP handler")?,
        })
    }
}

pub async fn run(source: ConfigSource, config: Config, paths: &Paths) -> anyhow::Result<()> {
    let signals = Signals::install()?;
    let control_socket = paths.control_socket.as_path();
    let (mount, cgroup_dir) = start::attach_point(&config)?;
    // Before anything is bound or attached: `enabled = true` without NVML
    // fails the start here. NVML opens the device files it needs now,
    // while every capability is still held.
    let gpu = crate::gpu::Telemetry::start(&config.gpu, &mount, crate::gpu::open_nvml)?;
    let resolved = Resolved::new();
    let (tx, rx) = mpsc::channel(RECORD_QUEUE);
    // Watching before the tree is walked: a cgroup created in between is
    // then reported rather than missed.
    let (cgroup_tx, cgroup_rx) = mpsc::unbounded_channel();
    let cgroup_watcher = start_cgroup_watch(&config.policy, &cgroup_dir, &cgroup_tx, None);
    let ids = policy_scopes::discover(&config.policy, &mount, &cgroup_dir);
    let dns = policy_scopes::dns_servers(&config.dns.nameservers);
    let initial = ruleset(1, &config, &environment(&resolved, &dns), &ids)
        .map_err(|errors| anyhow::anyhow!("{}", errors.join("; ")))
        .context("laying out the configuration for the kernel")?;
    let addresses = initial.watch.len();
    // Everything that can fail for reasons of its own (a socket in use, a
    // port taken) is done before the programs are attached: a start that
    // fails leaves nothing attached, pinned or bound behind it.
    let listener = control::server::bind(control_socket).context("control socket")?;
    let _socket_file = RemoveOnDrop(control_socket.to_path_buf());
    let sandbox_socket = paths.sandbox_socket();
    let sandbox_listener = control::server::bind_sandbox(&sandbox_socket).context("sandbox socket")?;
    let _sandbox_file = RemoveOnDrop(sandbox_socket.clone());
    let mut metrics = start::metrics(&config)?;
    let opts = start::tracer_options(&config, paths, &mount, &cgroup_dir);
    let kernel = KernelHandle::spawn(opts, initial, tx).context("loading BPF programs")?;
    start::log_attached(&kernel, &config, &cgroup_dir);
    let counters_file = paths.state_dir.join(COUNTERS_FILE);
    let (container_tx, container_rx) = mpsc::unbounded_channel();
    let mut pipeline = start::pipeline(&config, &mount, paths, &container_tx);

    let (ctl_tx, ctl_rx) = mpsc::channel(256);
    // The owner publishes its counters here every second; metrics, the
    // sd_notify status (from `serve`) and the D-Bus properties read them
    // instead of asking it.
    let (snapshot_tx, snapshot_rx) = tokio::sync::watch::channel(crate::snapshot::Snapshot::default());
    let dbus = crate::dbus::spawn(ctl_tx.clone(), pipeline.watchers(), snapshot_rx);
    let (sandbox_tx, sandbox_rx) = mpsc::channel(64);
    let placer = std::sync::Arc::new(crate::sandbox::placer::Placer::choose(&mount, &cgroup_dir));
    info!("sandboxes of tracectl run go in {}", placer.describe());
    let owner = control::server::Owner {
        requests: ctl_tx,
        sandboxes: sandbox_tx.clone(),
        placer: placer.clone(),
        watchers: pipeline.watchers(),
    };
    let server = tokio::spawn(control::server::serve(
        listener,
        owner.clone(),
        control::server::Surface::Control,
    ));
    let sandbox_server = tokio::spawn(control::server::serve(
        sandbox_listener,
        owner,
        control::server::Surface::Sandbox,
    ));
    info!(socket = %control_socket.display(), sandbox = %sandbox_socket.display(), "control socket listening");
    start::restore_counters(&mut metrics, paths, &counters_file);
    pipeline.set_metrics(metrics);
    let egress_saver = start::restore_egress(&mut pipeline, paths);
    // Everything that needs privileges is done: programs attached, pins
    // adopted, /proc scanned, the control socket bound and chowned.
    match privileges::drop_to_steady_state() {
        Ok(kept) => info!(kept = ?kept, "dropped all other capabilities"),
        Err(e) => warn!("{:#}", anyhow::Error::from(e)),
    }
    let (dns_tx, dns_updates) = mpsc::channel(256);
    let dns = start::dns(&config, dns_tx);
    let mut daemon = Daemon {
        source,
        snapshot: snapshot_tx,
        config,
        resolved,
        kernel,
        records: rx,
        dns,
        dns_updates,
        pipeline,
        epoch: 1,
        addresses,
        drop_warnings: crate::count_warning::CountWarning::new(0),
        snapshot_file: paths.state_dir.join(crate::downtime::SNAPSHOT_FILE),
        reload: ReloadState::default(),
        started: Instant::now(),
        counters_file,
        mount,
        cgroup_dir,
        cgroup_tx,
        cgroup_rx,
        cgroup_watcher,
        gpu,
        sandbox_tx,
        sandbox_rx,
        placer,
        attached: std::collections::HashSet::new(),
        finishing: HashMap::new(),
        container_tx,
        container_rx,
        profiles: profile::Profiles::new(),
        container_queries: by_container::ContainerQueries::new(),
        egress_saver,
    };
    let result = daemon.serve(ctl_rx, signals).await;
    server.abort();
    sandbox_server.abort();
    dbus.abort();
    result
}

/// The control socket's file, removed however `run` ends.
struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

impl Daemon {
    pub(super) async fn serve(
        &mut self,
        mut requests: mpsc::Receiver<Request>,
        signals: Signals,
    ) -> anyhow::Result<()> {
        let Signals {
            term: mut sigterm,
            int: mut sigint,
            hup: mut sighup,
        } = signals;
        let (fs_tx, mut fs_rx) = mpsc::unbounded_channel();
        // Kept alive for as long as the loop runs.
        let _watcher = self.watch_config_dir(fs_tx);
        let mut tick = tokio::time::interval(HOUSEKEEPING);
        let mut status_tick = tokio::time::interval(STATUS_REFRESH);
        let mut textfile_tick = tokio::time::interval(self.config.metrics.textfile_interval);
        // Pinged from this loop, so a stuck loop stops the pings.
        let watchdog = service::watchdog_interval();
        let mut watchdog_tick = tokio::time::interval(watchdog.unwrap_or(Duration::from_secs(3600)));
        self.report_downtime().await;
        let ready = self.summary();
        service::ready(&ready);
        // Started after READY=1, and stopped before STOPPING=1: a STATUS=
        // line never comes before the one READY=1 carries, nor after
        // "stopping".
        let followers = tokio::spawn(crate::snapshot::follow(self.snapshot.subscribe(), ready));
        let debounce = tokio::time::sleep(Duration::MAX);
        tokio::pin!(debounce);
        let mut pending_fs_reload = false;
        loop {
            let next_profile = self.profiles.next_deadline();
            let profile_due_some = next_profile.is_some();
            let profile_due = next_profile.unwrap_or_else(tokio::time::Instant::now);
            tokio::select! {
                Some(batch) = self.records.recv() => self.pipeline.handle_batch(batch),
                Some(req) = requests.recv() => match &req.op {
                    Operation::Profile(_) => self.begin_profile(req),
                    Operation::PolicySuggest(p) if p.container.is_some() => self.begin_suggest_container(req),
                    _ => {
                        let answer = self.answer(&req).await;
                        let _ = req.reply.send(answer);
                    }
                },
                Some(r) = self.profiles.resolved.recv() => self.on_profile_resolved(r).await,
                Some(f) = self.container_queries.found.recv() => self.on_suggest_found(f),
                () = tokio::time::sleep_until(profile_due), if profile_due_some => self.finish_profiles().await,
                _ = tick.tick() => {
                    self.housekeeping().await;
                    self.save_egress();
                    self.sandbox_upkeep().await;
                    self.sandbox_profile_upkeep().await;
                    if self.profiles.abandoned() {
                        self.finish_profiles().await;
                    }
                }
                Some(cmd) = self.sandbox_rx.recv() => self.on_sandbox(cmd).await,
                _ = textfile_tick.tick() => {
                    self.save_counters();
                    self.write_textfile();
                }
                Some(update) = self.dns_updates.recv() => self.on_dns(update).await,
                Some(dir) = self.cgroup_rx.recv() => self.on_new_cgroup(&dir),
                Some(sample) = self.gpu.next() => self.on_gpu(&sample),
                Some(answer) = self.container_rx.recv() => self.on_container_answer(answer),
                _ = watchdog_tick.tick(), if watchdog.is_some() => service::watchdog(),
                _ = status_tick.tick() => self.refresh_status().await,
                Some(()) = fs_rx.recv() => {
                    pending_fs_reload = true;
                    debounce.as_mut().reset(tokio::time::Instant::now() + reload::DEBOUNCE);
                }
                () = &mut debounce, if pending_fs_reload => {
                    pending_fs_reload = false;
                    let _ = self.reload("configuration files changed").await;
                }
                _ = sighup.recv() => {
                    // logrotate's postrotate: files reopen, and the
                    // configuration is read again as always.
                    self.pipeline.sinks().reopen();
                    let _ = self.reload("SIGHUP").await;
                }
                _ = sigterm.recv() => break,
                _ = sigint.recv() => break,
            }
        }
        followers.abort();
        self.shutdown().await;
        Ok(())
    }

    /// A GPU poll: its processes attributed like connections, its metrics
    /// rendered for the next scrape.
    fn on_gpu(&mut self, sample: &crate::gpu::sample::Sample) {
        let attributor = self.pipeline.attributor();
        self.gpu.apply(sample, &mut |pid, host| {
            attributor.attribute_pid(pid, host.uid, host.cgroup.as_deref(), host.cgroup_id)
        });
        let gpu = &self.gpu;
        if let Some(m) = self.pipeline.metrics() {
            m.set_extra(|budget| gpu.exposition(budget));
        }
    }

    /// File changes under the configuration directory go to `tx`; None
    /// (and a warning) where they cannot be watched.
    fn watch_config_dir(&self, tx: mpsc::UnboundedSender<()>) -> Option<notify::RecommendedWatcher> {
        match reload::watch(self.source.main(), tx) {
            Ok(w) => Some(w),
            Err(e) => {
                let dir = self.source.main().parent().unwrap_or(Path::new("/"));
                warn!(
                    "not watching {} for changes ({e}); reload with SIGHUP",
                    dir.display()
                );
                None
            }
        }
    }

    /// Waits for a reply from the kernel thread while still taking records:
    /// the thread may itself be waiting for room in the record queue.
    pub(super) async fn kernel_reply<T>(
        &mut self,
        reply: oneshot::Receiver<Result<T, String>>,
    ) -> Result<T, String> {
        tokio::pin!(reply);
        loop {
            tokio::select! {
                r = &mut reply => return r.map_err(|_| "the kernel thread is gone".to_string())?,
                Some(batch) = self.records.recv() => self.pipeline.handle_batch(batch),
            }
        }
    }

    pub(super) async fn shutdown(&mut self) {
        service::stopping();
        self.save_counters();
        if let Some(path) = &self.config.metrics.textfile {
            if self.config.metrics.remove_textfile_on_stop {
                let _ = std::fs::remove_file(path);
            }
        }
        // A sandbox must not outlive its enforcement: with sandboxes in
        // force the programs stay attached and pinned for the next start.
        let sandboxes = self.source.sandboxes.live().len();
        let keep = self.config.bpf.keep_pinned_on_stop || sandboxes > 0;
        if sandboxes > 0 && !self.config.bpf.keep_pinned_on_stop {
            warn!("stopping with {sandboxes} sandboxes in force: the programs stay attached and pinned so that they stay confined; the next start takes over");
        }
        info!("stopping: draining events and detaching");
        let final_stats = self.kernel.shutdown(keep);
        while let Some(batch) = self.records.recv().await {
            self.pipeline.handle_batch(batch);
        }
        self.kernel.join();
        if let Some(saver) = self.egress_saver.take() {
            saver.finish(self.pipeline.egress().snapshot());
        }
        // A stalled sink (a stdout nobody reads) must not hold up the stop.
        for s in self.pipeline.sinks().shutdown(Instant::now() + SINK_DRAIN) {
            info!(
                sink = %s.name,
                events = s.events,
                written = s.written,
                lost = s.lost,
                "event sink {}: {} lines written, {} lost",
                s.name,
                s.written,
                s.lost
            );
        }
        let (pipe, table, processes) = self.pipeline.stats();
        let final_stats = final_stats.await;
        if let Ok(Ok(k)) = &final_stats {
            let _ = crate::downtime::Snapshot::of(k).save(&self.snapshot_file);
        }
        match final_stats {
            Ok(Ok(k)) => info!(
                connects = k.connects,
                sendmsg_new = k.sendmsg_new,
                sendmsg_dup = k.sendmsg_dup,
                unwatched = k.unwatched,
                kernel_events = k.events,
                dropped = k.drops,
                dropped_per_cpu = ?k.drops_per_cpu,
                proc_events = k.proc_events,
                records = pipe.records,
                connections = pipe.connections,
                orphan_state_events = pipe.orphan_state_events,
                decode_errors = self.kernel.decode_errors(),
                table_open = table.open,
                table_closed = table.closed,
                processes,
                "final counters"
            ),
            Ok(Err(e)) => warn!("reading final kernel counters: {e}"),
            Err(_) => warn!("kernel thread ended without final counters"),
        }
    }
}
