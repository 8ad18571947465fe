//! The steps of a start that `run` wires together: where the programs
//! attach, what they are loaded with, and the parts built around them.

use super::*;

/// The cgroup2 mount and the directory the programs attach to, after the
/// checks that a start can fail early on (capabilities, bpffs).
pub(super) fn attach_point(config: &Config) -> anyhow::Result<(PathBuf, PathBuf)> {
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
    Ok((mount, cgroup_dir))
}

pub(super) fn tracer_options(
    config: &Config,
    paths: &Paths,
    mount: &Path,
    cgroup_dir: &Path,
) -> TracerOptions {
    TracerOptions {
        ring_buffer_size: config.bpf.ring_buffer_size,
        wakeup_threshold: config.bpf.wakeup_threshold,
        udp_dedup_entries: config.bpf.udp_dedup_entries,
        cgroup_is_root: cgroup_dir == mount,
        cgroup_depth: crate::sys::cgroup_tree::depth(mount, cgroup_dir),
        cgroup_dir: cgroup_dir.to_path_buf(),
        pin_dir: paths.pin_dir.clone(),
        dns_ports: dns_ports(config),
    }
}

/// Port 53, then the ports of the configured nameservers: the resolvers
/// whose answers name connections (see bpf/dns.bpf.h); none when off.
fn dns_ports(config: &Config) -> Vec<u16> {
    if !config.bpf.dns_answers {
        return Vec::new();
    }
    let mut ports = vec![53];
    for ns in &config.dns.nameservers {
        if !ports.contains(&ns.port()) {
            ports.push(ns.port());
        }
    }
    ports
}

/// The one metrics registry, its HTTP listener bound.
pub(super) fn metrics(config: &Config) -> anyhow::Result<Metrics> {
    let metrics = Metrics::install(
        config.metrics.listen,
        config.metrics.max_series_per_metric,
        config.metrics.http_detail,
        config.metrics.connection_labels,
    )
    .context("metrics")?;
    // The configuration read at start is in force from now: without this the
    // gauge was absent until the first reload, and an alert on its age had
    // nothing to compare.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    metrics::gauge!("connectracer_config_last_reload_success_timestamp_seconds").set(now.as_secs_f64());
    if let Some(addr) = config.metrics.listen {
        info!(%addr, "serving Prometheus metrics on /metrics");
    }
    Ok(metrics)
}

pub(super) fn log_attached(kernel: &KernelHandle, config: &Config, cgroup_dir: &Path) {
    let a = &kernel.adoption;
    if !a.maps.is_empty() || !a.links.is_empty() {
        info!(maps = ?a.maps, links = ?a.links, "re-adopted pinned state of an earlier instance");
    }
    for d in &a.discarded {
        warn!("pinned state not reused: {d}");
    }
    info!(
        cgroup = %cgroup_dir.display(),
        trace = config.trace.as_str(),
        hosts = config.hosts.len(),
        ring_buffer = config.bpf.ring_buffer_size,
        "tracing outbound connections"
    );
    log_policy(config);
}

/// The event path: attribution (with /proc scanned), the table, the sinks.
pub(super) fn pipeline(
    config: &Config,
    mount: &Path,
    paths: &Paths,
    container_answers: &mpsc::UnboundedSender<crate::containers::Answer>,
) -> Pipeline {
    let mut attributor = Attributor::new(mount, MAX_PROCESSES, config.table.process_retention);
    attributor.processes.scan();
    let mut containers = crate::containers::ContainerNames::new(mount);
    containers.configure(&config.containers, container_answers);
    let mut pipeline = Pipeline::new(
        attributor,
        ConnTable::new(table_limits(config)),
        Sinks::new(&config.log, paths.journal),
        containers,
    );
    // The kernel thread put the first configuration in force as epoch 1.
    pipeline.set_hosts(1, &config.hosts);
    pipeline.set_name_grace(config.dns.grace);
    pipeline
}

/// The metrics, continuing the previous instance's per-label counters.
pub(super) fn restore_counters(metrics: &mut Metrics, paths: &Paths, counters_file: &Path) {
    if let Err(e) = std::fs::create_dir_all(&paths.state_dir) {
        warn!("state directory {}: {e}", paths.state_dir.display());
    }
    let restored = metrics.restore_counters(counters_file);
    if restored > 0 {
        info!(
            series = restored,
            "continued connection counters of the previous instance"
        );
    }
}

/// None when DNS could not start: the error is logged and in status.
pub(super) fn dns(config: &Config, updates: mpsc::Sender<DnsUpdate>) -> Option<DnsWatcher> {
    match DnsWatcher::spawn(config.dns.clone(), config.hostnames(), updates) {
        Ok(w) => Some(w),
        Err(e) => {
            error!("DNS watcher: {e}; hostnames will not be resolved until a reload fixes it");
            None
        }
    }
}

/// The destinations a previous instance remembered, and the thread that
/// saves them from now on. A file that cannot be read is left where it is
/// (renamed aside, so the next save does not overwrite what may be wanted).
pub(super) fn restore_egress(pipeline: &mut Pipeline, paths: &Paths) -> Option<crate::egress::saved::Saver> {
    use crate::egress::{saved, EgressSeen};
    let path = paths.state_dir.join(saved::FILE);
    match EgressSeen::load(&path) {
        Ok(seen) => {
            if !seen.is_empty() {
                info!(
                    destinations = seen.len(),
                    dropped = seen.dropped(),
                    "restored destinations seen"
                );
            }
            *pipeline.egress() = seen;
        }
        Err(e) => {
            let aside = path.with_extension("json.bad");
            warn!("{e}; starting afresh, the file kept as {}", aside.display());
            let _ = std::fs::rename(&path, &aside);
        }
    }
    match saved::Saver::spawn(path) {
        Ok(s) => Some(s),
        Err(e) => {
            warn!("not saving destinations seen: {e}");
            None
        }
    }
}
