//! Configuration: parsed in two stages, raw serde types (`raw`) and then a
//! validated model (this module), collecting every error with its file, line
//! and key so one run of `--check-config` reports them all.

#[cfg(test)]
mod man_page;
mod raw;
pub mod sink;
mod validate;

use std::fmt;
use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::IpNet;

pub use sink::{FileSink, SinkConfig, SinkFilter, SinkKind};
pub use validate::{parse_config, parse_files};

/// Where the daemon looks when `--config` is not given.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/connectracer/connectracer.toml";
/// Drop-ins, next to the main file, merged in lexical order.
pub const DROPIN_DIR: &str = "conf.d";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TraceMode {
    /// Only connections to watched destinations produce events; the rest are counted.
    Watched,
    /// Every connection produces an event.
    All,
}

impl TraceMode {
    /// As written in the configuration's `trace` key.
    pub fn as_str(self) -> &'static str {
        match self {
            TraceMode::Watched => "watched",
            TraceMode::All => "all",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub trace: TraceMode,
    /// cgroup v2 directory to attach to; `None` means the cgroup2 root.
    pub cgroup: Option<PathBuf>,
    pub hosts: Vec<WatchedHost>,
    pub dns: crate::dns::DnsConfig,
    pub bpf: BpfConfig,
    pub metrics: MetricsConfig,
    pub table: TableConfig,
    pub log: LogConfig,
    pub policy: crate::policy::Policy,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchedHost {
    /// 1-based, stable for one loaded config; 0 means "not watched" in the kernel.
    pub id: u32,
    /// As written in the config.
    pub name: String,
    pub target: HostTarget,
    pub ports: PortSet,
    pub label: Option<String>,
    /// The file that declares it (or the run-time source of added hosts).
    pub origin: PathBuf,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum HostTarget {
    /// An address (as a /32 or /128) or a CIDR.
    Net(IpNet),
    /// A hostname, followed through DNS; lowercase, without a trailing dot.
    Name(String),
}

/// Destination ports a watch entry applies to; empty means every port.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PortSet(pub Vec<RangeInclusive<u16>>);

impl PortSet {
    pub fn is_any(&self) -> bool {
        self.0.is_empty()
    }

    pub fn contains(&self, port: u16) -> bool {
        self.is_any() || self.0.iter().any(|r| r.contains(&port))
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BpfConfig {
    /// Bytes; a power of two and a multiple of the page size.
    pub ring_buffer_size: u32,
    /// Pending bytes at which the kernel wakes the reader (0: every event).
    pub wakeup_threshold: u64,
    /// Leave programs attached and state pinned at a clean stop, so that
    /// tracing (and, later, enforcement) goes on with no daemon running.
    pub keep_pinned_on_stop: bool,
    /// (socket, destination) pairs remembered to report each unconnected
    /// UDP destination once (least recently used forgotten beyond that).
    pub udp_dedup_entries: u32,
}

/// Default HTTP listener of /metrics: loopback only.
pub const DEFAULT_METRICS_LISTEN: &str = "127.0.0.1:9717";
/// Debian's node_exporter textfile collector directory.
pub const DEFAULT_TEXTFILE: &str = "/var/lib/prometheus/node-exporter/connectracer.prom";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetricsConfig {
    /// HTTP /metrics listener; None: off.
    pub listen: Option<std::net::SocketAddr>,
    /// node_exporter textfile to write; None: off.
    pub textfile: Option<PathBuf>,
    pub textfile_interval: Duration,
    pub remove_textfile_on_stop: bool,
    /// Label sets per metric before new values collapse into "other".
    pub max_series_per_metric: usize,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableConfig {
    pub max_open: usize,
    pub max_closed: usize,
    pub closed_retention: Duration,
    /// How long an exited process stays in the cache for late events.
    pub process_retention: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogConfig {
    pub format: LogFormat,
    /// Event lines at all: false turns every sink off.
    pub events: bool,
    /// `[[event_sink]]` tables in file order; empty: the default sink
    /// (the journal under systemd, stdout otherwise).
    pub sinks: Vec<SinkConfig>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            trace: TraceMode::Watched,
            cgroup: None,
            hosts: Vec::new(),
            dns: crate::dns::DnsConfig::default(),
            bpf: BpfConfig {
                ring_buffer_size: 4 << 20,
                wakeup_threshold: 16 << 10,
                udp_dedup_entries: 65536,
                keep_pinned_on_stop: false,
            },
            metrics: MetricsConfig {
                listen: DEFAULT_METRICS_LISTEN.parse().ok(),
                textfile: Some(PathBuf::from(DEFAULT_TEXTFILE)),
                textfile_interval: Duration::from_secs(15),
                remove_textfile_on_stop: true,
                max_series_per_metric: 2000,
            },
            table: TableConfig {
                max_open: 65536,
                max_closed: 16384,
                closed_retention: Duration::from_secs(300),
                process_retention: Duration::from_secs(60),
            },
            log: LogConfig {
                format: LogFormat::Text,
                events: true,
                sinks: Vec::new(),
            },
            policy: crate::policy::Policy::default(),
        }
    }
}

impl WatchedHost {
    pub fn hostname(&self) -> Option<&str> {
        match &self.target {
            HostTarget::Name(n) => Some(n),
            HostTarget::Net(_) => None,
        }
    }
}

impl Config {
    /// Hostnames the DNS watcher must follow, deduplicated.
    pub fn hostnames(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .hosts
            .iter()
            .filter_map(|h| h.hostname().map(String::from))
            .chain(self.policy.hostnames())
            .collect();
        names.sort();
        names.dedup();
        names
    }
}

/// One problem in one place of one file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: PathBuf,
    pub line: usize,
    pub column: usize,
    /// Dotted key path, e.g. `host[2].ports[0]`; empty for syntax errors.
    pub key: String,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}: ", self.file.display(), self.line, self.column)?;
        if !self.key.is_empty() {
            write!(f, "{}: ", self.key)?;
        }
        f.write_str(&self.message)
    }
}

/// Every error found in a configuration; never empty.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.0.len();
        write!(f, "{n} error{} in configuration", if n == 1 { "" } else { "s" })?;
        for e in &self.0 {
            write!(f, "\n  {e}")?;
        }
        Ok(())
    }
}

/// The files that make up the configuration: the main file, then
/// `conf.d/*.toml` beside it in lexical order.
pub fn sources(main: &Path) -> Vec<PathBuf> {
    let mut files = vec![main.to_path_buf()];
    let dir = main.parent().unwrap_or(Path::new("/")).join(DROPIN_DIR);
    if let Ok(entries) = std::fs::read_dir(&dir) {
        let mut dropins: Vec<PathBuf> = entries
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "toml") && p.is_file())
            .collect();
        dropins.sort();
        files.extend(dropins);
    }
    files
}

/// Loads the main file and its drop-ins: later files' scalars win, lists
/// append. A missing main file at the default location means built-in
/// defaults (plus any drop-ins); a missing file the user named is an error.
pub fn load(path: Option<&Path>) -> Result<Config, ConfigErrors> {
    parse_files(&read_sources(path)?)
}

/// The texts `load` parses, for callers that add sources of their own.
pub fn read_sources(path: Option<&Path>) -> Result<Vec<(PathBuf, String)>, ConfigErrors> {
    let (main, explicit) = match path {
        Some(p) => (p, true),
        None => (Path::new(DEFAULT_CONFIG_PATH), false),
    };
    let mut texts = Vec::new();
    let mut errors = Vec::new();
    for file in sources(main) {
        match std::fs::read_to_string(&file) {
            Ok(text) => texts.push((file, text)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !explicit && file == main => {}
            Err(e) => errors.push(ConfigError {
                file: file.clone(),
                line: 0,
                column: 0,
                key: String::new(),
                message: format!("cannot read file: {e}"),
            }),
        }
    }
    if !errors.is_empty() {
        return Err(ConfigErrors(errors));
    }
    Ok(texts)
}
