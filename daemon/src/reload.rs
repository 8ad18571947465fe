//! Where reloads come from (besides SIGHUP and the control socket): changes
//! under the configuration directory, watched with inotify. Editors save by
//! writing a temporary file and renaming it over the original, and drop-ins
//! come and go, so the whole directory tree is watched rather than the
//! files, and bursts are debounced into one reload.

use std::path::{Path, PathBuf};
use std::time::Duration;

use notify::{RecommendedWatcher, RecursiveMode, Watcher};
use tokio::sync::mpsc;

use crate::added_hosts::AddedHosts;
use crate::cli::{Args, LogFormatArg, TraceArg};
use crate::config::{Config, ConfigErrors, LogFormat, TraceMode};
use crate::sandbox::Sandboxes;

/// Quiet time after the last change before reloading.
pub const DEBOUNCE: Duration = Duration::from_millis(200);

/// The files a configuration is read from, and the command-line options
/// that override them (on every reload too).
#[derive(Debug)]
pub struct ConfigSource {
    /// `None`: the default location, where a missing main file means defaults.
    pub path: Option<PathBuf>,
    /// Hosts added with tracectl, merged after /etc's files.
    pub added: AddedHosts,
    /// Sandboxes of `tracectl run`, merged last.
    pub sandboxes: Sandboxes,
    pub cgroup: Option<PathBuf>,
    pub trace: Option<TraceMode>,
    pub log_format: Option<LogFormat>,
}

impl ConfigSource {
    pub fn from_args(args: &Args) -> Self {
        Self {
            path: args.config.clone(),
            added: AddedHosts::new(&args.state_dir),
            sandboxes: Sandboxes::open(&args.state_dir),
            cgroup: args.cgroup.clone(),
            trace: args.trace.map(|t| match t {
                TraceArg::Watched => TraceMode::Watched,
                TraceArg::All => TraceMode::All,
            }),
            log_format: args.log_format.map(|f| match f {
                LogFormatArg::Text => LogFormat::Text,
                LogFormatArg::Json => LogFormat::Json,
            }),
        }
    }

    pub fn main(&self) -> &Path {
        self.path
            .as_deref()
            .unwrap_or(Path::new(crate::config::DEFAULT_CONFIG_PATH))
    }

    pub fn load(&self) -> Result<Config, ConfigErrors> {
        self.job().run()
    }

    /// What a load needs, owned: it can run on another thread while the
    /// state owner goes on (a large configuration takes a while to parse).
    pub fn job(&self) -> LoadJob {
        let (mut added, sandboxes) = self.sandboxes.sources();
        added.splice(0..0, self.added.sources());
        LoadJob {
            path: self.path.clone(),
            added,
            sandboxes,
            cgroup: self.cgroup.clone(),
            trace: self.trace,
            log_format: self.log_format,
        }
    }
}

/// One load of the configuration, detached from the daemon's state.
#[derive(Debug)]
pub struct LoadJob {
    path: Option<PathBuf>,
    /// Added hosts' and sandboxes' sources, after /etc's.
    added: Vec<(PathBuf, String)>,
    /// The sandboxes' cgroups: their scopes only narrow the policy.
    sandboxes: std::collections::BTreeSet<String>,
    cgroup: Option<PathBuf>,
    trace: Option<TraceMode>,
    log_format: Option<LogFormat>,
}

impl LoadJob {
    pub fn run(self) -> Result<Config, ConfigErrors> {
        let mut sources = crate::config::read_sources(self.path.as_deref())?;
        sources.extend(self.added);
        let mut config = crate::ruleset::check_files(&sources)?;
        config.policy.sandboxes = self.sandboxes;
        if let Some(cg) = self.cgroup {
            config.cgroup = Some(cg);
        }
        if let Some(t) = self.trace {
            config.trace = t;
        }
        if let Some(f) = self.log_format {
            config.log.format = f;
        }
        Ok(config)
    }
}

/// Settings that only take effect when the daemon restarts: what the
/// programs were loaded and attached with.
pub fn restart_only_changes(old: &Config, new: &Config) -> Vec<String> {
    let mut changed = Vec::new();
    if old.cgroup != new.cgroup {
        changed.push("cgroup".to_string());
    }
    if old.metrics.listen != new.metrics.listen {
        changed.push("metrics.listen".to_string());
    }
    // keep_pinned_on_stop is read at stop time: reloadable.
    let loaded = |c: &Config| {
        (
            c.bpf.ring_buffer_size,
            c.bpf.wakeup_threshold,
            c.bpf.udp_dedup_entries,
            c.bpf.dns_answers,
        )
    };
    if loaded(old) != loaded(new) {
        changed.push("bpf".to_string());
    }
    // NVML is loaded (or not) and its thread started once.
    if old.gpu != new.gpu {
        changed.push("gpu".to_string());
    }
    changed
}

/// Keeps the running values of restart-only settings in `new`.
pub fn keep_restart_only(old: &Config, new: &mut Config) {
    new.cgroup.clone_from(&old.cgroup);
    new.metrics.listen = old.metrics.listen;
    new.gpu = old.gpu.clone();
    new.bpf = crate::config::BpfConfig {
        keep_pinned_on_stop: new.bpf.keep_pinned_on_stop,
        ..old.bpf.clone()
    };
}

/// Watches the configuration directory; each change to the main file or a
/// drop-in sends `()` (callers debounce). The returned watcher stops when
/// dropped.
pub fn watch(main: &Path, tx: mpsc::UnboundedSender<()>) -> notify::Result<RecommendedWatcher> {
    // Events name paths under the watched directory as given; resolved once
    // so that a relative --config compares equal to them.
    let dir = main
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let dir = dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf());
    let main = dir.join(main.file_name().unwrap_or_default());
    let mut watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        if let Ok(ev) = res {
            if completes_a_change(&ev.kind) && ev.paths.iter().any(|p| is_config_file(&main, p)) {
                let _ = tx.send(());
            }
        }
    })?;
    watcher.watch(&dir, RecursiveMode::Recursive)?;
    Ok(watcher)
}

/// A file written in place (`cp`, `>`) is complete only when its writer
/// closes it: reloading on the writes themselves could read it half
/// written (an empty file is a valid configuration). Renames, creations and
/// removals are complete as they happen.
fn completes_a_change(kind: &notify::EventKind) -> bool {
    use notify::event::{AccessKind, AccessMode, ModifyKind};
    use notify::EventKind;
    match kind {
        EventKind::Access(AccessKind::Close(AccessMode::Write))
        | EventKind::Create(_)
        | EventKind::Remove(_)
        | EventKind::Modify(ModifyKind::Name(_) | ModifyKind::Any) => true,
        EventKind::Modify(ModifyKind::Metadata(_) | ModifyKind::Data(_) | ModifyKind::Other)
        | EventKind::Access(_)
        | EventKind::Any
        | EventKind::Other => false,
    }
}

/// The main file, `conf.d/` itself (created or removed whole) and
/// `conf.d/*.toml`; editors' temporary files and anything else that lives
/// next to them (a state directory, backups) are not configuration.
fn is_config_file(main: &Path, p: &Path) -> bool {
    let dir = main.parent().unwrap_or(Path::new("/"));
    let dropins = dir.join(crate::config::DROPIN_DIR);
    p == main || p == dropins || (p.parent() == Some(&dropins) && p.extension().is_some_and(|e| e == "toml"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_configuration_files_count() {
        let main = Path::new("/etc/connectracer/connectracer.toml");
        assert!(is_config_file(main, main));
        assert!(is_config_file(main, Path::new("/etc/connectracer/conf.d")));
        assert!(is_config_file(
            main,
            Path::new("/etc/connectracer/conf.d/50-x.toml")
        ));
        assert!(!is_config_file(
            main,
            Path::new("/etc/connectracer/conf.d/.50-x.toml.swp")
        ));
        assert!(!is_config_file(
            main,
            Path::new("/etc/connectracer/state/metrics-counters.prom")
        ));
        assert!(!is_config_file(
            main,
            Path::new("/etc/connectracer/connectracer.toml~")
        ));
    }

    #[test]
    fn in_place_writes_count_when_closed() {
        use notify::event::{AccessKind, AccessMode, DataChange, ModifyKind, RenameMode};
        use notify::EventKind;
        assert!(!completes_a_change(&EventKind::Modify(ModifyKind::Data(
            DataChange::Any
        ))));
        assert!(completes_a_change(&EventKind::Access(AccessKind::Close(
            AccessMode::Write
        ))));
        assert!(completes_a_change(&EventKind::Modify(ModifyKind::Name(
            RenameMode::To
        ))));
        assert!(!completes_a_change(&EventKind::Access(AccessKind::Open(
            AccessMode::Any
        ))));
    }

    #[test]
    fn restart_only_settings_are_named_and_kept() {
        let old = Config::default();
        let mut new = Config::default();
        new.bpf.ring_buffer_size = 8 << 20;
        new.cgroup = Some("/system.slice".into());
        new.trace = crate::config::TraceMode::All;
        new.gpu.enabled = crate::config::GpuMode::Off;
        assert_eq!(restart_only_changes(&old, &new), ["cgroup", "bpf", "gpu"]);
        keep_restart_only(&old, &mut new);
        assert_eq!(new.bpf, old.bpf);
        assert_eq!(new.gpu, old.gpu, "NVML is loaded, or not, once");
        assert_eq!(new.cgroup, None);
        assert_eq!(
            new.trace,
            crate::config::TraceMode::All,
            "reloadable settings are not touched"
        );
    }
}
