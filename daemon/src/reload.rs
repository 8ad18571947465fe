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
    pub cgroup: Option<PathBuf>,
    pub trace: Option<TraceMode>,
    pub log_format: Option<LogFormat>,
}

impl ConfigSource {
    pub fn from_args(args: &Args) -> Self {
        Self {
            path: args.config.clone(),
            added: AddedHosts::new(&args.state_dir),
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
        let mut sources = crate::config::read_sources(self.path.as_deref())?;
        sources.extend(self.added.sources());
        let mut config = crate::config::parse_files(&sources)?;
        if let Some(cg) = &self.cgroup {
            config.cgroup = Some(cg.clone());
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
        )
    };
    if loaded(old) != loaded(new) {
        changed.push("bpf".to_string());
    }
    changed
}

/// Keeps the running values of restart-only settings in `new`.
pub fn keep_restart_only(old: &Config, new: &mut Config) {
    new.cgroup.clone_from(&old.cgroup);
    new.metrics.listen = old.metrics.listen;
    new.bpf = crate::config::BpfConfig {
        keep_pinned_on_stop: new.bpf.keep_pinned_on_stop,
        ..old.bpf.clone()
    };
}

/// Watches the configuration directory; each change sends `()` (callers
/// debounce). The returned watcher stops when dropped.
pub fn watch(dir: &Path, tx: mpsc::UnboundedSender<()>) -> notify::Result<RecommendedWatcher> {
    let mut watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        if let Ok(ev) = res {
            // Reads (access events) change nothing.
            if !matches!(ev.kind, notify::EventKind::Access(_)) {
                let _ = tx.send(());
            }
        }
    })?;
    watcher.watch(dir, RecursiveMode::Recursive)?;
    Ok(watcher)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restart_only_settings_are_named_and_kept() {
        let old = Config::default();
        let mut new = Config::default();
        new.bpf.ring_buffer_size = 8 << 20;
        new.cgroup = Some("/system.slice".into());
        new.trace = crate::config::TraceMode::All;
        assert_eq!(restart_only_changes(&old, &new), ["cgroup", "bpf"]);
        keep_restart_only(&old, &mut new);
        assert_eq!(new.bpf, old.bpf);
        assert_eq!(new.cgroup, None);
        assert_eq!(
            new.trace,
            crate::config::TraceMode::All,
            "reloadable settings are not touched"
        );
    }
}
