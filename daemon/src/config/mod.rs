//! Configuration: parsed in two stages, raw serde types (`raw`) and then a
//! validated model (this module), collecting every error with its file, line
//! and key so one run of `--check-config` reports them all.

pub mod containers;
mod decode;
mod dns;
mod gpu;
#[cfg(test)]
mod man_page;
pub mod policy;
mod raw;
pub mod sink;
mod validate;

use std::fmt;
use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::IpNet;

pub use containers::ContainersConfig;
pub use dns::DnsConfig;
pub use gpu::{GpuConfig, GpuMode};
pub use sink::{EventKind, FileSink, OtlpProtocol, OtlpSink, SinkConfig, SinkFilter, SinkKind};
pub use validate::{parse_config, parse_files, validate, Validated};

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
    pub dns: DnsConfig,
    pub bpf: BpfConfig,
    pub metrics: MetricsConfig,
    pub table: TableConfig,
    pub log: LogConfig,
    pub policy: policy::Policy,
    pub gpu: GpuConfig,
    pub containers: ContainersConfig,
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

/// RFC 1123 hostname, lowercased, trailing dot removed.
pub fn hostname(s: &str) -> Result<String, &'static str> {
    let name = s.strip_suffix('.').unwrap_or(s).to_ascii_lowercase();
    if name.is_empty() || name.len() > 253 {
        return Err("a hostname is 1 to 253 characters");
    }
    if name.contains('/') {
        return Err("the prefix length is not valid");
    }
    if name.split('.').all(|l| l.chars().all(|c| c.is_ascii_digit())) {
        return Err("it looks like an address but is not a valid one");
    }
    for label in name.split('.') {
        if label.is_empty() || label.len() > 63 {
            return Err("each dot-separated label is 1 to 63 characters");
        }
        if !label
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return Err("labels hold only letters, digits, '-' and '_'");
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err("labels neither start nor end with '-'");
        }
    }
    Ok(name)
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

    /// Inclusive bounds of each range; one covering every port when empty.
    pub fn bounds(&self) -> Vec<(u16, u16)> {
        if self.is_any() {
            return vec![(0, u16::MAX)];
        }
        self.0.iter().map(|r| (*r.start(), *r.end())).collect()
    }

    /// Each range as the configuration writes it: `443`, `8000-8100`.
    pub fn items(&self) -> Vec<String> {
        self.0
            .iter()
            .map(|r| {
                if r.start() == r.end() {
                    r.start().to_string()
                } else {
                    format!("{}-{}", r.start(), r.end())
                }
            })
            .collect()
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
    /// Copy DNS answers to the sockets that asked, to name connections.
    pub dns_answers: bool,
}

/// Pending bytes at which the kernel wakes the reader, unless configured:
/// 1/16 of the ring, at most 256 KiB. Below it the reader drains on its
/// 10 ms timer; every wakeup is a chain of thread switches (reader, owner,
/// sinks), and at 16 KiB a connect flood paid for ~900 of them a second.
/// At 256 KiB of a 4 MiB ring the timer drains first up to ~150,000
/// events/s, and a burst still has 15/16 of the ring as headroom.
pub fn default_wakeup_threshold(ring_buffer_size: u32) -> u64 {
    (u64::from(ring_buffer_size) / 16).min(256 << 10)
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
    /// Serve per-process series (comm, unit, container, port, rule) on
    /// HTTP too; off, HTTP shows only aggregates.
    pub http_detail: bool,
    /// Labels of `connectracer_connections_total` beyond the bounded
    /// default set, opted into because each multiplies its series.
    pub connection_labels: ConnectionLabels,
}

/// Optional labels of `connectracer_connections_total`: a process name and
/// a destination port are unbounded under `trace = "all"`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ConnectionLabels {
    pub port: bool,
    pub comm: bool,
    /// The container's name and the pod (`namespace/name`) its runtime
    /// reports: bounded by the containers running, but new with every
    /// deployment.
    pub container_name: bool,
    pub pod: bool,
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
            dns: DnsConfig::default(),
            bpf: BpfConfig {
                ring_buffer_size: 4 << 20,
                wakeup_threshold: default_wakeup_threshold(4 << 20),
                udp_dedup_entries: 65536,
                keep_pinned_on_stop: false,
                dns_answers: true,
            },
            metrics: MetricsConfig {
                listen: DEFAULT_METRICS_LISTEN.parse().ok(),
                textfile: Some(PathBuf::from(DEFAULT_TEXTFILE)),
                textfile_interval: Duration::from_secs(15),
                remove_textfile_on_stop: true,
                http_detail: false,
                max_series_per_metric: 2000,
                connection_labels: ConnectionLabels::default(),
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
            policy: policy::Policy::default(),
            gpu: GpuConfig::default(),
            containers: ContainersConfig::default(),
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

/// Where a value was written.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Place {
    pub file: PathBuf,
    pub line: usize,
    pub column: usize,
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

impl ConfigError {
    pub fn at(place: &Place, key: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            file: place.file.clone(),
            line: place.line,
            column: place.column,
            key: key.into(),
            message: message.into(),
        }
    }
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
/// `conf.d/*.toml` beside it in lexical order. Every entry so named counts,
/// readable or not (a broken link, a looping one, a directory): reading it
/// then fails with an error naming it, rather than the configuration
/// quietly going on without that file's rules.
pub fn sources(main: &Path) -> Vec<PathBuf> {
    let mut files = vec![main.to_path_buf()];
    if let Ok(dropins) = dropins(main) {
        files.extend(dropins);
    }
    files
}

fn dropins(main: &Path) -> std::io::Result<Vec<PathBuf>> {
    let dir = main.parent().unwrap_or(Path::new("/")).join(DROPIN_DIR);
    let mut dropins = Vec::new();
    for entry in std::fs::read_dir(&dir)? {
        let p = entry?.path();
        if p.extension().is_some_and(|x| x == "toml") {
            dropins.push(p);
        }
    }
    dropins.sort();
    Ok(dropins)
}

/// Largest configuration file read: far above what the kernel maps can
/// hold (65,536 hosts take about 2 MiB), far below what would stall a
/// reload for seconds.
pub const MAX_FILE_SIZE: u64 = 16 << 20;

fn read_bounded(file: &Path) -> std::io::Result<String> {
    use std::io::Read;
    let f = std::fs::File::open(file)?;
    let mut text = String::new();
    f.take(MAX_FILE_SIZE + 1).read_to_string(&mut text)?;
    if text.len() as u64 > MAX_FILE_SIZE {
        return Err(std::io::Error::other(format!(
            "larger than {} MiB, the most a configuration file may be",
            MAX_FILE_SIZE >> 20
        )));
    }
    Ok(text)
}

/// Why `file` cannot be read, in words that name symlink trouble.
fn unreadable(file: &Path, e: &std::io::Error) -> String {
    let link = std::fs::symlink_metadata(file).is_ok_and(|m| m.file_type().is_symlink());
    match (link, e.raw_os_error()) {
        (true, Some(libc::ELOOP)) => "cannot read file: symbolic link loop".into(),
        (true, _) if e.kind() == std::io::ErrorKind::NotFound => match std::fs::read_link(file) {
            Ok(target) => format!("cannot read file: broken symbolic link to {}", target.display()),
            Err(_) => "cannot read file: broken symbolic link".into(),
        },
        _ => format!("cannot read file: {e}"),
    }
}

/// The main file and its drop-ins, read: later files' scalars win, lists
/// append. A missing main file at the default location means built-in
/// defaults (plus any drop-ins); a missing file the user named is an error.
pub fn read_sources(path: Option<&Path>) -> Result<Vec<(PathBuf, String)>, ConfigErrors> {
    let (main, explicit) = match path {
        Some(p) => (p, true),
        None => (Path::new(DEFAULT_CONFIG_PATH), false),
    };
    let mut texts = Vec::new();
    let mut errors = Vec::new();
    let dir = main.parent().unwrap_or(Path::new("/")).join(DROPIN_DIR);
    let mut files = vec![main.to_path_buf()];
    match dropins(main) {
        Ok(d) => files.extend(d),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => errors.push(ConfigError {
            file: dir,
            line: 0,
            column: 0,
            key: String::new(),
            message: format!("cannot list drop-in directory: {e}"),
        }),
    }
    for file in files {
        match read_bounded(&file) {
            Ok(text) => texts.push((file, text)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !explicit && file == main => {}
            Err(e) => errors.push(ConfigError {
                message: unreadable(&file, &e),
                file,
                line: 0,
                column: 0,
                key: String::new(),
            }),
        }
    }
    if !errors.is_empty() {
        return Err(ConfigErrors(errors));
    }
    Ok(texts)
}

#[cfg(test)]
mod sources_tests {
    use super::*;

    #[test]
    fn dropins_that_cannot_be_read_are_errors_naming_them() {
        let dir = std::env::temp_dir().join(format!("connectracer-dropins-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let d = dir.join(DROPIN_DIR);
        std::fs::create_dir_all(d.join("30-dir.toml")).unwrap();
        std::fs::write(dir.join("connectracer.toml"), "").unwrap();
        std::fs::write(d.join("05-ok.toml"), "trace = \"all\"\n").unwrap();
        std::os::unix::fs::symlink(d.join("missing.toml"), d.join("10-dangling.toml")).unwrap();
        std::os::unix::fs::symlink(d.join("20-loop.toml"), d.join("20-loop.toml")).unwrap();
        std::fs::write(d.join("40-not-config.conf"), "junk").unwrap();
        std::fs::write(d.join("50-huge.toml"), vec![b'#'; MAX_FILE_SIZE as usize + 1]).unwrap();
        let errors = read_sources(Some(&dir.join("connectracer.toml"))).unwrap_err();
        let lines: Vec<String> = errors.0.iter().map(ToString::to_string).collect();
        assert_eq!(lines.len(), 4, "{lines:#?}");
        assert!(
            lines[3].contains("50-huge.toml") && lines[3].contains("larger than 16 MiB"),
            "{lines:#?}"
        );
        assert!(
            lines[0].contains("10-dangling.toml") && lines[0].contains("broken symbolic link to"),
            "{lines:#?}"
        );
        assert!(
            lines[1].contains("20-loop.toml") && lines[1].contains("symbolic link loop"),
            "{lines:#?}"
        );
        assert!(
            lines[2].contains("30-dir.toml") && lines[2].contains("cannot read file"),
            "{lines:#?}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
