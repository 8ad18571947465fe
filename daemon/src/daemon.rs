//! The daemon's life: preflight, attach, serve; reload on SIGHUP, file
//! changes and control requests through one path; drain and detach on stop.

use std::path::{Path, PathBuf};

use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use std::collections::HashMap;

use connectracer_proto::varlink::{
    to_parameters, AddHostParams, CallError, HostInfo, HostsReply, ReloadReply, Stats, StatsReply,
    VersionReply,
};
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, error, info, warn};

use crate::added_hosts::AddedHost;
use crate::attribution::Attributor;
use crate::bpf::event::Record;
use crate::bpf::tracer::{resolve_cgroup_dir, Ruleset, TracerOptions};
use crate::config::{Config, HostTarget, TraceMode};
use crate::control::{self, query, Answer, Method, Request};
use crate::dns::{DnsUpdate, DnsWatcher};
use crate::kernel::KernelHandle;
use crate::metrics::{record_process, Metrics};
use crate::pipeline::Pipeline;
use crate::policy::scopes::{self as policy_scopes, Identities};
use crate::policy::Environment;
use crate::reload::{self, ConfigSource};
use crate::service;
use crate::sinks::{human_duration, Sinks};
use crate::sys::{mounts, preflight, privileges};
use crate::table::{ConnTable, TableLimits};
use crate::watchlist::{self, Resolved};

/// Batches of records in flight between the kernel thread and the pipeline;
/// when full, the kernel thread waits and the ring buffer absorbs the burst.
const RECORD_QUEUE: usize = 64;
const HOUSEKEEPING: Duration = Duration::from_secs(1);
const MAX_PROCESSES: usize = 65536;
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
    /// Kernel drop count when last read, for the status line.
    drops: u64,
    drop_warnings: crate::downtime::DropWarnings,
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

/// The kernel's view of a configuration, or every reason it cannot be
/// held: a prefix with more port rules than an entry carries, or more
/// entries than a map holds. Nothing is left out silently: what is in force
/// is always exactly what `policy show` and `hosts` report.
fn ruleset(epoch: u32, c: &Config, env: &Environment<'_>, ids: &Identities) -> Result<Ruleset, Vec<String>> {
    let mut errors = Vec::new();
    let (watch, too_many) = watchlist::build(&c.hosts, env.resolved);
    for e in too_many {
        errors.push(format!(
            "watch list: {} (host `{}`)",
            e, c.hosts[e.host_index].name
        ));
    }
    let (policy, too_many) = crate::policy::compile::compile(&c.policy, env, ids);
    errors.extend(too_many.into_iter().map(|e| format!("policy: {e}")));
    errors.extend(
        crate::capacity::check(&watch, &policy)
            .iter()
            .map(ToString::to_string),
    );
    if !errors.is_empty() {
        return Err(errors);
    }
    for (path, id) in &ids.exes {
        if id.is_none() {
            warn!(
                "policy: executable {} does not exist; its rules apply once it does and the configuration is reloaded",
                path.display()
            );
        }
    }
    Ok(Ruleset {
        epoch,
        trace_all: c.trace == TraceMode::All,
        watch,
        policy,
    })
}

/// The policy's view of names and DNS servers, borrowed for one apply or
/// query; `dns` holds the servers (read from resolv.conf unless configured).
fn environment<'a>(resolved: &'a Resolved, dns: &'a [std::net::IpAddr]) -> Environment<'a> {
    Environment {
        resolved,
        dns_servers: dns,
    }
}

/// Follows cgroup creation only while some scope selects by cgroup; keeps
/// a running watcher when it is still needed.
fn start_cgroup_watch(
    policy: &crate::policy::Policy,
    dir: &Path,
    tx: &mpsc::UnboundedSender<PathBuf>,
    running: Option<notify::RecommendedWatcher>,
) -> Option<notify::RecommendedWatcher> {
    let needed = policy.is_active()
        && policy.scopes().iter().any(|s| {
            s.selector
                .as_ref()
                .is_some_and(crate::policy::Selector::is_cgroup_based)
        });
    if !needed {
        return None;
    }
    if running.is_some() {
        return running;
    }
    match policy_scopes::watch_cgroups(dir, tx.clone()) {
        Ok(w) => Some(w),
        Err(e) => {
            warn!(
                "policy: not watching {} for new cgroups ({e}); units started later join their scope at the next reload",
                dir.display()
            );
            None
        }
    }
}

/// The distinct labels in use, for the reload log line: a few names, not
/// one entry per host (10,000 hosts made that line 60 KB).
fn labels_in(c: &Config) -> Vec<&str> {
    let mut labels: Vec<&str> = c.hosts.iter().filter_map(|h| h.label.as_deref()).collect();
    labels.sort_unstable();
    labels.dedup();
    labels.truncate(20);
    labels
}

fn log_policy(c: &Config) {
    let p = &c.policy;
    if p.is_active() {
        info!(
            mode = p.mode.as_str(),
            default = p.default.as_str(),
            rules = p.rules.len(),
            scopes = p.scopes.len(),
            allow_loopback = p.allow_loopback,
            allow_dns = p.allow_dns,
            "egress policy in force"
        );
    } else {
        info!("no egress policy configured: every connection is allowed");
    }
}

fn state_error(e: crate::added_hosts::AddedHostsError) -> CallError {
    CallError::InvalidArgument {
        field: "state".into(),
        reason: format!("{:#}", anyhow::Error::from(e)),
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
    preflight::check()?;
    if mounts::ensure_bpffs()? {
        info!("mounted bpffs at {}", mounts::BPFFS);
    }
    let mount = mounts::cgroup2_mount()?;
    let cgroup_dir = resolve_cgroup_dir(&mount, config.cgroup.as_deref());
    if !cgroup_dir.join("cgroup.procs").exists() {
        bail!(
            "{} is not a cgroup v2 directory (cgroup2 is mounted at {})",
            cgroup_dir.display(),
            mount.display()
        );
    }
    let opts = TracerOptions {
        ring_buffer_size: config.bpf.ring_buffer_size,
        wakeup_threshold: config.bpf.wakeup_threshold,
        udp_dedup_entries: config.bpf.udp_dedup_entries,
        cgroup_is_root: cgroup_dir == mount,
        cgroup_dir: cgroup_dir.clone(),
        pin_dir: paths.pin_dir.clone(),
    };
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
    let metrics = Metrics::install(
        config.metrics.listen,
        config.metrics.max_series_per_metric,
        config.metrics.http_detail,
    )
    .context("metrics")?;
    if let Some(addr) = config.metrics.listen {
        info!(%addr, "serving Prometheus metrics on /metrics");
    }
    let kernel = KernelHandle::spawn(opts, initial, tx).context("loading BPF programs")?;
    let a = &kernel.adoption;
    if !a.maps.is_empty() || !a.links.is_empty() {
        info!(maps = ?a.maps, links = ?a.links, "re-adopted pinned state of an earlier instance");
    }
    for d in &a.discarded {
        warn!("pinned state not reused: {d}");
    }
    info!(
        cgroup = %cgroup_dir.display(),
        trace = ?config.trace,
        hosts = config.hosts.len(),
        ring_buffer = config.bpf.ring_buffer_size,
        "tracing outbound connections"
    );
    log_policy(&config);

    let mut attributor = Attributor::new(&mount, MAX_PROCESSES, config.table.process_retention);
    attributor.processes.scan();
    let mut pipeline = Pipeline::new(
        attributor,
        ConnTable::new(table_limits(&config)),
        Sinks::new(&config.log, paths.journal),
    );
    // The kernel thread put the first configuration in force as epoch 1.
    pipeline.set_hosts(1, &config.hosts);

    let (ctl_tx, ctl_rx) = mpsc::channel(256);
    let dbus = crate::dbus::spawn(ctl_tx.clone(), pipeline.watchers());
    let server = tokio::spawn(control::server::serve(listener, ctl_tx, pipeline.watchers()));
    info!(socket = %control_socket.display(), "control socket listening");

    let counters_file = paths.state_dir.join(COUNTERS_FILE);
    let mut metrics = metrics;
    if let Err(e) = std::fs::create_dir_all(&paths.state_dir) {
        warn!("state directory {}: {e}", paths.state_dir.display());
    }
    let restored = metrics.restore_counters(&counters_file);
    if restored > 0 {
        info!(
            series = restored,
            "continued connection counters of the previous instance"
        );
    }
    pipeline.set_metrics(metrics);
    // Everything that needs privileges is done: programs attached, pins
    // adopted, /proc scanned, the control socket bound and chowned.
    match privileges::drop_to_steady_state() {
        Ok(kept) => info!(kept = ?kept, "dropped all other capabilities"),
        Err(e) => warn!("{:#}", anyhow::Error::from(e)),
    }
    let (dns_tx, dns_updates) = mpsc::channel(256);
    let dns = match DnsWatcher::spawn(config.dns.clone(), config.hostnames(), dns_tx) {
        Ok(w) => Some(w),
        Err(e) => {
            error!("DNS watcher: {e}; hostnames will not be resolved until a reload fixes it");
            None
        }
    };
    let mut daemon = Daemon {
        source,
        config,
        resolved,
        kernel,
        records: rx,
        dns,
        dns_updates,
        pipeline,
        epoch: 1,
        addresses,
        drops: 0,
        drop_warnings: crate::downtime::DropWarnings::new(0),
        snapshot_file: paths.state_dir.join(crate::downtime::SNAPSHOT_FILE),
        reload: ReloadState::default(),
        started: Instant::now(),
        counters_file,
        mount,
        cgroup_dir,
        cgroup_tx,
        cgroup_rx,
        cgroup_watcher,
    };
    let result = daemon.serve(ctl_rx, signals).await;
    server.abort();
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
    async fn serve(&mut self, mut requests: mpsc::Receiver<Request>, signals: Signals) -> anyhow::Result<()> {
        let Signals {
            term: mut sigterm,
            int: mut sigint,
            hup: mut sighup,
        } = signals;
        let (fs_tx, mut fs_rx) = mpsc::unbounded_channel();
        let config_dir = self
            .source
            .main()
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("/"));
        // Kept alive for as long as the loop runs.
        let _watcher = match reload::watch(self.source.main(), fs_tx) {
            Ok(w) => Some(w),
            Err(e) => {
                warn!(
                    "not watching {} for changes ({e}); reload with SIGHUP",
                    config_dir.display()
                );
                None
            }
        };
        let mut tick = tokio::time::interval(HOUSEKEEPING);
        let mut status_tick = tokio::time::interval(STATUS_REFRESH);
        let mut textfile_tick = tokio::time::interval(self.config.metrics.textfile_interval);
        // Pinged from this loop, so a stuck loop stops the pings.
        let watchdog = service::watchdog_interval();
        let mut watchdog_tick = tokio::time::interval(watchdog.unwrap_or(Duration::from_secs(3600)));
        self.report_downtime().await;
        service::ready(&self.summary());
        let debounce = tokio::time::sleep(Duration::MAX);
        tokio::pin!(debounce);
        let mut pending_fs_reload = false;
        loop {
            tokio::select! {
                Some(batch) = self.records.recv() => self.pipeline.handle_batch(batch),
                Some(req) = requests.recv() => {
                    let answer = self.answer(&req).await;
                    let _ = req.reply.send(answer);
                }
                _ = tick.tick() => {
                    self.pipeline.housekeeping(Instant::now());
                    self.pipeline.sinks().upkeep(Instant::now());
                    self.update_metrics().await;
                    if let Some(m) = self.pipeline.metrics() {
                        m.upkeep();
                    }
                }
                _ = textfile_tick.tick() => {
                    self.save_counters();
                    self.write_textfile();
                }
                Some(update) = self.dns_updates.recv() => self.on_dns(update).await,
                Some(dir) = self.cgroup_rx.recv() => self.on_new_cgroup(&dir),
                _ = watchdog_tick.tick(), if watchdog.is_some() => service::watchdog(),
                _ = status_tick.tick() => {
                    let reply = self.kernel.stats();
                    if let Ok(k) = self.kernel_reply(reply).await {
                        self.drops = k.drops;
                        if let Err(e) = crate::downtime::Snapshot::of(&k).save(&self.snapshot_file) {
                            debug!("saving {}: {e}", self.snapshot_file.display());
                        }
                    }
                    service::status(&self.summary());
                }
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
        self.shutdown().await;
        Ok(())
    }

    /// Waits for a reply from the kernel thread while still taking records:
    /// the thread may itself be waiting for room in the record queue.
    async fn kernel_reply<T>(&mut self, reply: oneshot::Receiver<Result<T, String>>) -> Result<T, String> {
        tokio::pin!(reply);
        loop {
            tokio::select! {
                r = &mut reply => return r.map_err(|_| "the kernel thread is gone".to_string())?,
                Some(batch) = self.records.recv() => self.pipeline.handle_batch(batch),
            }
        }
    }

    /// At start: what the kernel counted while no instance was reading
    /// (pinned counters adopted from the previous one), once.
    async fn report_downtime(&mut self) {
        let reply = self.kernel.stats();
        let Ok(k) = self.kernel_reply(reply).await else {
            return;
        };
        self.drops = k.drops;
        let adopted = self.kernel.adoption.maps.contains(&"stats");
        // Fresh counters count only this start's drops: the next warning
        // reports them. Adopted ones are reported below, up to now.
        self.drop_warnings = crate::downtime::DropWarnings::new(if adopted { k.drops } else { 0 });
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
    async fn update_metrics(&mut self) {
        let reply = self.kernel.stats();
        if let Ok(k) = self.kernel_reply(reply).await {
            self.drops = k.drops;
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
        metrics::counter!("connectracer_events_read_total").absolute(pipe.records);
        metrics::gauge!("connectracer_connection_table_entries", "state" => "open").set(table.open as f64);
        metrics::gauge!("connectracer_connection_table_entries", "state" => "closed")
            .set(table.closed as f64);
        metrics::gauge!("connectracer_process_cache_entries").set(processes as f64);
        metrics::counter!("connectracer_config_reloads_total").absolute(self.reload.reloads);
        metrics::counter!("connectracer_config_reload_failures_total").absolute(self.reload.failures);
        if let Some(dns) = &self.dns {
            let now = std::time::SystemTime::now();
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
                    let age = now.duration_since(t).unwrap_or_default().as_secs_f64();
                    metrics::gauge!("connectracer_dns_seconds_since_success", "host" => name).set(age);
                }
            }
        }
        record_process();
    }

    /// Saves the per-label counters (every textfile interval and at stop).
    fn save_counters(&mut self) {
        let path = self.counters_file.clone();
        if let Some(m) = self.pipeline.metrics() {
            if let Err(e) = m.save_counters(&path) {
                warn!("saving counters to {}: {e}", path.display());
            }
        }
    }

    fn write_textfile(&mut self) {
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

    fn summary(&self) -> String {
        service::summary(
            self.config.hosts.len(),
            self.addresses,
            self.drops,
            self.reload.last_error.is_some(),
        )
    }

    /// The one reload path: SIGHUP, file changes and control requests all
    /// end here, bracketed by RELOADING=1 and READY=1.
    async fn reload(&mut self, trigger: &str) -> Result<ReloadReply, CallError> {
        service::reloading();
        let result = self.reload_config(trigger).await;
        service::ready(&self.summary());
        result
    }

    /// Every failed apply, whatever asked for it (SIGHUP, a file change,
    /// tracectl reload, add-host, remove-host, a DNS update), is reported the
    /// same way: logged, counted, and kept as `last_reload_error`.
    fn reload_failed(&mut self, trigger: &str, e: &CallError) {
        let reason = match e {
            CallError::ConfigInvalid { errors } => errors.join("; "),
            CallError::InvalidArgument { reason, .. } => reason.clone(),
            other => format!("{other:?}"),
        };
        self.reload.failures += 1;
        error!(
            trigger,
            "reload ({trigger}): {reason}; the running configuration stays in force"
        );
        self.reload.last_error = Some(reason);
    }

    /// An invalid configuration, or one the kernel cannot hold, changes nothing.
    async fn reload_config(&mut self, trigger: &str) -> Result<ReloadReply, CallError> {
        self.reload.reloads += 1;
        let started = Instant::now();
        let mut new = match self.load_config().await {
            Ok(c) => c,
            Err(errors) => {
                self.reload.failures += 1;
                let lines: Vec<String> = errors.0.iter().map(ToString::to_string).collect();
                error!(
                    trigger,
                    "reload ({trigger}): {errors}; the running configuration stays in force"
                );
                self.reload.last_error = Some(lines.join("; "));
                return Err(CallError::ConfigInvalid { errors: lines });
            }
        };
        let loaded = Instant::now();
        let needs_restart = reload::restart_only_changes(&self.config, &new);
        if !needs_restart.is_empty() {
            warn!(
                "reload ({trigger}): {} changed; that takes effect at restart",
                needs_restart.join(", ")
            );
        }
        reload::keep_restart_only(&self.config, &mut new);
        if new == self.config {
            self.reload.last_error = None;
            info!("reload ({trigger}): configuration unchanged");
            return Ok(ReloadReply {
                epoch: self.epoch,
                needs_restart,
            });
        }
        let resolved = self.resolved_for(&new);
        if let Err(e) = self.apply(new, resolved).await {
            self.reload_failed(trigger, &e);
            return Err(e);
        }
        self.reload.last_error = None;
        info!(
            epoch = self.epoch,
            trigger,
            trace = ?self.config.trace,
            hosts = self.config.hosts.len(),
            rules = self.config.policy.rules.len(),
            labels = ?labels_in(&self.config),
            load = %human_duration(loaded.duration_since(started)),
            apply = %human_duration(loaded.elapsed()),
            "configuration applied"
        );
        Ok(ReloadReply {
            epoch: self.epoch,
            needs_restart,
        })
    }

    /// Parses the configuration on a blocking thread while records keep
    /// being taken (a 50 MB file must not stall the ring buffer's reader);
    /// the memory a refused large file took is handed back to the system.
    async fn load_config(&mut self) -> Result<Config, crate::config::ConfigErrors> {
        let job = self.source.job();
        let load = tokio::task::spawn_blocking(move || job.run());
        tokio::pin!(load);
        let result = loop {
            tokio::select! {
                r = &mut load => break r,
                Some(batch) = self.records.recv() => self.pipeline.handle_batch(batch),
            }
        };
        let result = result.unwrap_or_else(|e| {
            Err(crate::config::ConfigErrors(vec![crate::config::ConfigError {
                file: self.source.main().to_path_buf(),
                line: 0,
                column: 0,
                key: String::new(),
                message: format!("loading the configuration failed: {e}"),
            }]))
        });
        if result.is_err() {
            crate::sys::memory::give_back();
        }
        result
    }

    /// The resolved addresses a configuration keeps: those of names it still
    /// follows (forgotten names' addresses leave with its switch).
    fn resolved_for(&self, new: &Config) -> Resolved {
        let names = new.hostnames();
        let mut resolved = self.resolved.clone();
        resolved.retain(|name, _| names.contains(name));
        resolved
    }

    /// A hostname's addresses changed: the kernel watch list follows, by the
    /// same atomic switch as a reload. Updates queued meanwhile are folded
    /// into one switch. An update the kernel cannot hold keeps the previous
    /// addresses in force (and in `tracectl hosts`).
    async fn on_dns(&mut self, first: DnsUpdate) {
        let mut resolved = self.resolved.clone();
        let mut names = Vec::new();
        let mut update = Some(first);
        while let Some(u) = update {
            names.push(u.name.clone());
            if u.addresses.is_empty() {
                resolved.remove(&u.name);
            } else {
                resolved.insert(u.name, u.addresses);
            }
            update = self.dns_updates.try_recv().ok();
        }
        names.sort_unstable();
        names.dedup();
        let config = self.config.clone();
        match self.apply(config, resolved).await {
            Ok(()) => info!(
                epoch = self.epoch,
                addresses = self.addresses,
                "watch list updated from DNS"
            ),
            Err(e) => {
                let trigger = format!(
                    "DNS update for {}; their previous addresses stay in force",
                    names.join(", ")
                );
                self.reload_failed(&trigger, &e);
            }
        }
    }

    /// Puts a validated configuration with these resolved names in force,
    /// kernel side first; nothing of the daemon's state changes unless the
    /// kernel took it.
    async fn apply(&mut self, new: Config, resolved: Resolved) -> Result<(), CallError> {
        let epoch = self.epoch + 1;
        let ids = policy_scopes::discover(&new.policy, &self.mount, &self.cgroup_dir);
        let dns = policy_scopes::dns_servers(&new.dns.nameservers);
        let rules = ruleset(epoch, &new, &environment(&resolved, &dns), &ids)
            .map_err(|errors| CallError::ConfigInvalid { errors })?;
        let addresses = rules.watch.len();
        // Records of the new epoch may arrive while the reply is awaited:
        // the pipeline must already know the epoch's host names. The epoch
        // in force stays current until the kernel has switched.
        self.pipeline.stage_hosts(epoch, &new.hosts);
        let reply = self.kernel.apply(rules);
        if let Err(reason) = self.kernel_reply(reply).await {
            self.pipeline.drop_hosts(epoch);
            return Err(CallError::InvalidArgument {
                field: "kernel".into(),
                reason,
            });
        }
        self.pipeline.commit_hosts(epoch);
        self.resolved = resolved;
        self.addresses = addresses;
        self.epoch = epoch;
        self.cgroup_watcher = start_cgroup_watch(
            &new.policy,
            &self.cgroup_dir,
            &self.cgroup_tx,
            self.cgroup_watcher.take(),
        );
        self.after_apply(new).await;
        Ok(())
    }

    /// What follows a configuration once the kernel holds it.
    async fn after_apply(&mut self, new: Config) {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        metrics::gauge!("connectracer_config_last_reload_success_timestamp_seconds").set(now.as_secs_f64());
        if let Some(m) = self.pipeline.metrics() {
            m.set_max_series(new.metrics.max_series_per_metric);
            m.set_http_detail(new.metrics.http_detail);
        }
        self.pipeline.set_limits(table_limits(&new));
        self.pipeline.set_log(&new.log);
        let names = new.hostnames();
        if let Some(dns) = &self.dns {
            if new.dns != self.config.dns {
                if let Err(e) = dns.set_config(new.dns.clone()).await {
                    error!("DNS settings: {e}");
                }
            }
            if names != self.config.hostnames() {
                dns.set_hosts(names).await;
            }
        }
        let policy_changed = new.policy != self.config.policy;
        self.config = new;
        if policy_changed {
            log_policy(&self.config);
        }
    }

    fn on_new_cgroup(&mut self, dir: &Path) {
        use std::os::unix::fs::MetadataExt;
        let Some(rel) = policy_scopes::relative_cgroup_path(&self.mount, dir) else {
            return;
        };
        let Some(scope) = crate::policy::compile::scope_for_new_cgroup(&self.config.policy, &rel) else {
            return;
        };
        match std::fs::metadata(dir) {
            Ok(m) if m.is_dir() => {
                self.kernel.add_cgroup_scope(m.ino(), scope);
                info!(cgroup = %rel, scope, "policy: new cgroup joins its scope");
            }
            _ => {}
        }
    }

    async fn answer(&mut self, req: &Request) -> Answer {
        let caller = &req.caller;
        match &req.method {
            Method::GetVersion => Ok(to_parameters(&VersionReply {
                version: env!("CARGO_PKG_VERSION").to_string(),
                kernel: nix::sys::utsname::uname()
                    .map(|u| u.release().to_string_lossy().into_owned())
                    .unwrap_or_default(),
            })),
            Method::GetStats => self.stats().await,
            Method::Who(p) => query::who(self.pipeline.table(), caller, p, &self.resolved),
            Method::Ps(p) => query::ps(self.pipeline.table(), caller, p),
            Method::Connections(p) => query::connections(self.pipeline.table(), caller, p),
            Method::Reload if !caller.privileged => Err(CallError::AccessDenied {
                reason: "reloading needs root or membership in group connectracer".into(),
            }),
            Method::Reload => {
                let trigger = format!("control request from uid {}", caller.uid);
                self.reload(&trigger).await.map(|r| to_parameters(&r))
            }
            Method::AddHost(_) | Method::RemoveHost(_) if !caller.privileged => {
                Err(CallError::AccessDenied {
                    reason: "changing watched hosts needs root or membership in group connectracer".into(),
                })
            }
            Method::AddHost(p) => self.add_host(p, caller.uid).await.map(|r| to_parameters(&r)),
            Method::RemoveHost(p) => self
                .remove_host(&p.name, caller.uid)
                .await
                .map(|r| to_parameters(&r)),
            Method::Hosts => Ok(to_parameters(&HostsReply {
                hosts: self.hosts().await,
            })),
            Method::PolicyShow | Method::PolicyCheck(_) if !caller.privileged => {
                Err(CallError::AccessDenied {
                    reason: "reading the egress policy needs root or membership in group connectracer".into(),
                })
            }
            Method::PolicyShow => {
                let dns = policy_scopes::dns_servers(&self.config.dns.nameservers);
                let env = environment(&self.resolved, &dns);
                Ok(to_parameters(&crate::policy::explain::show(
                    &self.config.policy,
                    &env,
                )))
            }
            Method::PolicyCheck(p) => {
                let dns = policy_scopes::dns_servers(&self.config.dns.nameservers);
                let env = environment(&self.resolved, &dns);
                crate::policy::explain::check(&self.config.policy, &env, p, &self.mount)
                    .map(|r| to_parameters(&r))
            }
        }
    }

    /// Adds a host through the reload path. The host is written to the
    /// state directory only once the kernel holds it: a host the
    /// configuration or the kernel refuses leaves no trace.
    async fn add_host(&mut self, p: &AddHostParams, uid: u32) -> Result<ReloadReply, CallError> {
        let host = AddedHost {
            name: p.name.clone(),
            ports: p
                .ports
                .iter()
                .map(|port| {
                    port.parse::<i64>()
                        .map_or_else(|_| toml::Value::String(port.clone()), toml::Value::Integer)
                })
                .collect(),
            label: p.label.clone(),
        };
        self.source
            .added
            .stage_add(host, p.runtime)
            .map_err(state_error)?;
        let result = self.reload(&format!("add-host {} by uid {uid}", p.name)).await;
        self.settle_added(result).map_err(|e| match e {
            CallError::ConfigInvalid { errors } => CallError::InvalidArgument {
                field: "name".into(),
                reason: errors.join("; "),
            },
            other => other,
        })
    }

    /// Commits the staged change to the added hosts if its reload applied
    /// it, drops it otherwise.
    fn settle_added(&mut self, result: Result<ReloadReply, CallError>) -> Result<ReloadReply, CallError> {
        match result {
            Ok(reply) => {
                self.source.added.commit().map_err(|e| {
                    let e = state_error(e);
                    error!("{e:?}; the change is in force until restart only");
                    e
                })?;
                Ok(reply)
            }
            Err(e) => {
                self.source.added.discard();
                Err(e)
            }
        }
    }

    async fn remove_host(&mut self, name: &str, uid: u32) -> Result<ReloadReply, CallError> {
        let removed = self.source.added.stage_remove(name).map_err(state_error)?;
        if removed == 0 {
            if let Some(h) = self.config.hosts.iter().find(|h| h.name == name) {
                return Err(CallError::InvalidArgument {
                    field: "name".into(),
                    reason: format!("`{name}` is configured in {}: edit that file", h.origin.display()),
                });
            }
            return Err(CallError::HostNotFound {
                name: name.to_string(),
            });
        }
        let result = self.reload(&format!("remove-host {name} by uid {uid}")).await;
        self.settle_added(result)
    }

    async fn hosts(&mut self) -> Vec<HostInfo> {
        let dns: HashMap<String, crate::dns::HostStatus> = match &self.dns {
            Some(d) => d
                .status()
                .await
                .into_iter()
                .map(|s| (s.name.clone(), s))
                .collect(),
            None => HashMap::new(),
        };
        self.config
            .hosts
            .iter()
            .map(|h| {
                let ports = h
                    .ports
                    .0
                    .iter()
                    .map(|r| {
                        if r.start() == r.end() {
                            r.start().to_string()
                        } else {
                            format!("{}-{}", r.start(), r.end())
                        }
                    })
                    .collect();
                let (kind, addresses, status) = match &h.target {
                    HostTarget::Net(n) if n.prefix_len() == n.max_prefix_len() => {
                        ("address", vec![n.addr().to_string()], None)
                    }
                    HostTarget::Net(n) => ("cidr", vec![n.to_string()], None),
                    HostTarget::Name(name) => (
                        "hostname",
                        self.resolved
                            .get(name)
                            .into_iter()
                            .flatten()
                            .map(ToString::to_string)
                            .collect(),
                        dns.get(name),
                    ),
                };
                HostInfo {
                    id: h.id,
                    name: h.name.clone(),
                    kind: kind.to_string(),
                    ports,
                    label: h.label.clone(),
                    source: h.origin.display().to_string(),
                    addresses,
                    ttl_seconds: status.and_then(|s| s.ttl_seconds),
                    consecutive_failures: status.map(|s| s.consecutive_failures),
                    last_error: status.and_then(|s| s.last_error.clone()),
                }
            })
            .collect()
    }

    async fn stats(&mut self) -> Answer {
        let reply = self.kernel.stats();
        let kernel = self
            .kernel_reply(reply)
            .await
            .map_err(|reason| CallError::InvalidArgument {
                field: "kernel".into(),
                reason,
            })?;
        let (pipe, t, processes) = self.pipeline.stats();
        Ok(to_parameters(&StatsReply {
            stats: Stats {
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
            },
        }))
    }

    async fn shutdown(&mut self) {
        service::stopping();
        self.save_counters();
        if let Some(path) = &self.config.metrics.textfile {
            if self.config.metrics.remove_textfile_on_stop {
                let _ = std::fs::remove_file(path);
            }
        }
        info!("stopping: draining events and detaching");
        let final_stats = self.kernel.shutdown(self.config.bpf.keep_pinned_on_stop);
        while let Some(batch) = self.records.recv().await {
            self.pipeline.handle_batch(batch);
        }
        self.kernel.join();
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
