//! The daemon's life: preflight, attach, run the event pipeline until told
//! to stop, drain, detach.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::mpsc;
use tracing::{info, warn};

use crate::attribution::Attributor;
use crate::bpf::tracer::{resolve_cgroup_dir, TracerOptions};
use crate::config::{Config, TraceMode};
use crate::control::{self, query, Answer, Method, Request};
use crate::event_log::EventLog;
use crate::kernel::KernelHandle;
use crate::pipeline::Pipeline;
use crate::sys::{mounts, preflight};
use crate::table::{ConnTable, TableLimits};
use crate::watchlist;
use connectracer_proto::varlink::{to_parameters, CallError, Stats, StatsReply, VersionReply};

/// Batches of records in flight between the kernel thread and the pipeline;
/// when full, the kernel thread waits and the ring buffer absorbs the burst.
const RECORD_QUEUE: usize = 64;
const HOUSEKEEPING: Duration = Duration::from_secs(1);
const MAX_PROCESSES: usize = 65536;

pub async fn run(config: Config, control_socket: &Path) -> anyhow::Result<()> {
    let started = Instant::now();
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
    let entries = watchlist::build(&config.hosts).context("building the watch list")?;
    let opts = TracerOptions {
        trace_all: config.trace == TraceMode::All,
        ring_buffer_size: config.bpf.ring_buffer_size,
        wakeup_threshold: config.bpf.wakeup_threshold,
        udp_dedup_entries: config.bpf.udp_dedup_entries,
        cgroup_is_root: cgroup_dir == mount,
        cgroup_dir: cgroup_dir.clone(),
    };

    let (tx, mut rx) = mpsc::channel(RECORD_QUEUE);
    let mut kernel = KernelHandle::spawn(opts, entries, tx).context("loading BPF programs")?;
    info!(
        cgroup = %cgroup_dir.display(),
        trace = ?config.trace,
        hosts = config.hosts.len(),
        ring_buffer = config.bpf.ring_buffer_size,
        "tracing outbound connections"
    );

    let mut attributor = Attributor::new(&mount, MAX_PROCESSES, config.table.process_retention);
    attributor.processes.scan();
    let table = ConnTable::new(TableLimits {
        max_open: config.table.max_open,
        max_closed: config.table.max_closed,
        closed_retention: config.table.closed_retention,
    });
    let log = EventLog::new(config.log.format, config.log.events);
    let mut pipeline = Pipeline::new(attributor, table, log, &config.hosts);

    let listener = control::server::bind(control_socket).context("control socket")?;
    let (ctl_tx, mut ctl_rx) = mpsc::channel(256);
    let server = tokio::spawn(control::server::serve(listener, ctl_tx));
    info!(socket = %control_socket.display(), "control socket listening");

    let mut sigterm = signal(SignalKind::terminate()).context("installing SIGTERM handler")?;
    let mut sigint = signal(SignalKind::interrupt()).context("installing SIGINT handler")?;
    let mut sighup = signal(SignalKind::hangup()).context("installing SIGHUP handler")?;
    let mut tick = tokio::time::interval(HOUSEKEEPING);
    loop {
        tokio::select! {
            Some(batch) = rx.recv() => batch.into_iter().for_each(|rec| pipeline.handle(rec)),
            Some(req) = ctl_rx.recv() => {
                let answer = answer(&req, &pipeline, &kernel, started).await;
                let _ = req.reply.send(answer);
            }
            _ = tick.tick() => pipeline.housekeeping(Instant::now()),
            _ = sigterm.recv() => break,
            _ = sigint.recv() => break,
            _ = sighup.recv() => warn!("SIGHUP: this version cannot reload its configuration; restart to apply changes"),
        }
    }

    info!("stopping: draining events and detaching");
    server.abort();
    let _ = std::fs::remove_file(control_socket);
    let final_stats = kernel.shutdown();
    while let Some(batch) = rx.recv().await {
        batch.into_iter().for_each(|rec| pipeline.handle(rec));
    }
    kernel.join();
    let (pipe, table, processes) = pipeline.stats();
    match final_stats.await {
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
            decode_errors = kernel.decode_errors(),
            table_open = table.open,
            table_closed = table.closed,
            processes,
            "final counters"
        ),
        Ok(Err(e)) => warn!("reading final kernel counters: {e}"),
        Err(_) => warn!("kernel thread ended without final counters"),
    }
    Ok(())
}

async fn answer(req: &Request, pipeline: &Pipeline, kernel: &KernelHandle, started: Instant) -> Answer {
    let table = pipeline.table();
    match &req.method {
        Method::GetVersion => Ok(to_parameters(&VersionReply {
            version: env!("CARGO_PKG_VERSION").to_string(),
            kernel: nix::sys::utsname::uname()
                .map(|u| u.release().to_string_lossy().into_owned())
                .unwrap_or_default(),
        })),
        Method::GetStats => {
            let kernel_counters = kernel
                .stats()
                .await
                .map_err(|reason| CallError::InvalidArgument {
                    field: "kernel".into(),
                    reason,
                })?;
            let (pipe, t, processes) = pipeline.stats();
            Ok(to_parameters(&StatsReply {
                stats: Stats {
                    kernel: kernel_counters,
                    records: pipe.records,
                    connections: pipe.connections,
                    orphan_state_events: pipe.orphan_state_events,
                    decode_errors: kernel.decode_errors(),
                    table_open: t.open as u64,
                    table_closed: t.closed as u64,
                    evicted_open: t.evicted_open,
                    evicted_closed: t.evicted_closed,
                    processes: processes as u64,
                    uptime_seconds: started.elapsed().as_secs_f64(),
                },
            }))
        }
        Method::Who(p) => query::who(table, &req.caller, p),
        Method::Ps(p) => query::ps(table, &req.caller, p),
        Method::Connections(p) => query::connections(table, &req.caller, p),
    }
}

/// Loads the configuration and applies command-line overrides.
pub fn configure(args: &crate::cli::Args) -> Result<Config, crate::config::ConfigErrors> {
    let mut config = crate::config::load(args.config.as_deref())?;
    if let Some(cg) = &args.cgroup {
        config.cgroup = Some(cg.clone());
    }
    if let Some(t) = args.trace {
        config.trace = match t {
            crate::cli::TraceArg::Watched => TraceMode::Watched,
            crate::cli::TraceArg::All => TraceMode::All,
        };
    }
    if let Some(f) = args.log_format {
        config.log.format = match f {
            crate::cli::LogFormatArg::Text => crate::config::LogFormat::Text,
            crate::cli::LogFormatArg::Json => crate::config::LogFormat::Json,
        };
    }
    Ok(config)
}

/// Where --check-config says the configuration came from.
pub fn config_source(args: &crate::cli::Args) -> &Path {
    args.config
        .as_deref()
        .unwrap_or(Path::new(crate::config::DEFAULT_CONFIG_PATH))
}
