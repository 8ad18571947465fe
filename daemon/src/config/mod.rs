//! Configuration: parsed in two stages, raw serde types (`raw`) and then a
//! validated model (this module), collecting every error with its file, line
//! and key so one run of `--check-config` reports them all.

mod raw;
mod validate;

use std::fmt;
use std::net::IpAddr;
use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::IpNet;

pub use validate::parse_config;

/// Where the daemon looks when `--config` is not given.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/connectracer/connectracer.toml";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TraceMode {
    /// Only connections to watched destinations produce events; the rest are counted.
    Watched,
    /// Every connection produces an event.
    All,
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
    pub bpf: BpfConfig,
    pub table: TableConfig,
    pub log: LogConfig,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchedHost {
    /// 1-based, stable for one loaded config; 0 means "not watched" in the kernel.
    pub id: u32,
    /// As written in the config.
    pub name: String,
    pub net: IpNet,
    pub ports: PortSet,
    pub label: Option<String>,
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
    /// (socket, destination) pairs remembered to report each unconnected
    /// UDP destination once (least recently used forgotten beyond that).
    pub udp_dedup_entries: u32,
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
    /// One log line per connection event.
    pub events: bool,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            trace: TraceMode::Watched,
            cgroup: None,
            hosts: Vec::new(),
            bpf: BpfConfig {
                ring_buffer_size: 4 << 20,
                wakeup_threshold: 16 << 10,
                udp_dedup_entries: 65536,
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
            },
        }
    }
}

impl WatchedHost {
    /// Whether this entry covers `addr:port`; the kernel's LPM lookup is the
    /// fast path, this is the reference it is tested against.
    pub fn matches(&self, addr: IpAddr, port: u16) -> bool {
        self.net.contains(&addr) && self.ports.contains(port)
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

/// Loads the configuration file. A missing file at the default location
/// means built-in defaults; a missing file the user named is an error.
pub fn load(path: Option<&Path>) -> Result<Config, ConfigErrors> {
    let (path, explicit) = match path {
        Some(p) => (p, true),
        None => (Path::new(DEFAULT_CONFIG_PATH), false),
    };
    match std::fs::read_to_string(path) {
        Ok(text) => parse_config(path, &text),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !explicit => Ok(Config::default()),
        Err(e) => Err(ConfigErrors(vec![ConfigError {
            file: path.to_path_buf(),
            line: 0,
            column: 0,
            key: String::new(),
            message: format!("cannot read file: {e}"),
        }])),
    }
}
