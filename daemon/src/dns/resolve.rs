//! The hickory side of the watcher: building a resolver from a
//! [`DnsConfig`](super::DnsConfig) and turning one lookup into an
//! [`Outcome`]. Kept apart from the scheduling so the state machine never
//! sees a hickory type.

use std::collections::BTreeSet;
use std::fmt;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use hickory_resolver::config::{
    ConnectionConfig, LookupIpStrategy, NameServerConfig, ResolveHosts, ResolverConfig, ResolverOpts,
};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::net::{DnsError as WireError, NetError};
use hickory_resolver::proto::op::ResponseCode;
use hickory_resolver::{Hosts, TokioResolver};

use super::state::Outcome;
use super::DnsError;

/// Timeouts that are not part of [`DnsConfig`](super::DnsConfig): the
/// defaults suit production, and the tests shorten them to keep a dead server
/// from costing seconds per check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Tuning {
    /// Per-query timeout; `None` keeps hickory's default or resolv.conf's `timeout`.
    pub query_timeout: Option<Duration>,
    /// Retries per query; `None` keeps hickory's default or resolv.conf's `attempts`.
    pub attempts: Option<usize>,
    /// Upper bound on one whole lookup (search list, A and AAAA, retries,
    /// every server). Hickory bounds each query, but a lookup that somehow
    /// never finished would leave its host "in flight" and never refreshed.
    pub deadline: Duration,
}

impl Default for Tuning {
    fn default() -> Self {
        Self {
            query_timeout: None,
            attempts: None,
            deadline: Duration::from_secs(30),
        }
    }
}

/// Where the system resolver's configuration lives; a value rather than
/// constants so tests can point it at files they write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SystemFiles {
    pub resolv_conf: PathBuf,
    pub hosts: PathBuf,
}

impl Default for SystemFiles {
    fn default() -> Self {
        Self {
            resolv_conf: PathBuf::from("/etc/resolv.conf"),
            hosts: PathBuf::from("/etc/hosts"),
        }
    }
}

/// Identity of a file's content as far as `stat` can tell, to notice an edit
/// (or an atomic replace, which changes the inode) without rereading it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Stamp(Option<(SystemTime, u64, u64)>);

impl Stamp {
    fn of(path: &Path) -> Self {
        Self(
            std::fs::metadata(path)
                .ok()
                .map(|m| (m.modified().unwrap_or(SystemTime::UNIX_EPOCH), m.len(), m.ino())),
        )
    }
}

/// A system-resolver backend remembers what it was built from, so edits to
/// resolv.conf or /etc/hosts reach a long-running daemon without a restart.
#[derive(Debug)]
struct SystemSource {
    files: SystemFiles,
    stamps: (Stamp, Stamp),
}

impl SystemSource {
    fn current_stamps(&self) -> (Stamp, Stamp) {
        (Stamp::of(&self.files.resolv_conf), Stamp::of(&self.files.hosts))
    }
}

/// The resolver the watcher queries through, shared with the lookup tasks.
pub(crate) struct Backend {
    resolver: Arc<TokioResolver>,
    system: Option<SystemSource>,
    tuning: Tuning,
}

impl fmt::Debug for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Backend")
            .field("system", &self.system)
            .field("tuning", &self.tuning)
            .finish_non_exhaustive()
    }
}

impl Backend {
    /// Builds the resolver: the explicit `nameservers`, or when there are
    /// none the system's resolv.conf and hosts file from `files`.
    pub fn new(nameservers: &[SocketAddr], files: &SystemFiles, tuning: Tuning) -> Result<Self, DnsError> {
        if nameservers.is_empty() {
            let source = SystemSource {
                files: files.clone(),
                stamps: (Stamp::of(&files.resolv_conf), Stamp::of(&files.hosts)),
            };
            let resolver = build_system(files, &tuning)?;
            Ok(Self {
                resolver: Arc::new(resolver),
                system: Some(source),
                tuning,
            })
        } else {
            Ok(Self {
                resolver: Arc::new(build_explicit(nameservers, &tuning)?),
                system: None,
                tuning,
            })
        }
    }

    pub fn resolver(&self) -> Arc<TokioResolver> {
        Arc::clone(&self.resolver)
    }

    pub fn deadline(&self) -> Duration {
        self.tuning.deadline
    }

    /// Rebuilds a system-resolver backend when resolv.conf or the hosts file
    /// changed since it was built. Returns whether it did. A file that fails
    /// to parse keeps the old resolver working: a half-edited resolv.conf
    /// must not stop the watcher from resolving.
    pub fn reload_if_changed(&mut self) -> bool {
        let Some(source) = &mut self.system else {
            return false;
        };
        let stamps = source.current_stamps();
        if stamps == source.stamps {
            return false;
        }
        // Remember the new stamps even on failure, so a broken file is
        // reported once per edit rather than on every scheduling pass.
        source.stamps = stamps;
        match build_system(&source.files, &self.tuning) {
            Ok(resolver) => {
                tracing::info!(
                    resolv_conf = %source.files.resolv_conf.display(),
                    hosts = %source.files.hosts.display(),
                    "system resolver configuration changed; reloaded"
                );
                self.resolver = Arc::new(resolver);
                true
            }
            Err(error) => {
                tracing::warn!(%error, "system resolver configuration changed but cannot be used; keeping the previous one");
                false
            }
        }
    }
}

/// Options every watcher resolver shares, whatever its servers.
fn watcher_options(mut opts: ResolverOpts, tuning: &Tuning) -> ResolverOpts {
    // Both families in one lookup: a host reachable over IPv6 must be
    // matched on IPv6 too, and A-then-AAAA fallbacks would hide the AAAA
    // records of any dual-stack name.
    opts.ip_strategy = LookupIpStrategy::Ipv4AndIpv6;
    // No response cache: the watcher itself decides when to ask again (at
    // the clamped TTL), and each refresh must reach the server. A cached
    // answer would at best repeat what we already know and at worst, with
    // TTLs rounded or clamped differently, hide a change for another round.
    // Zero disables moka's map entirely rather than shrinking it.
    opts.cache_size = 0;
    // The hosts file is loaded by us (see `build_system`), so its reload
    // follows our own change detection; hickory would read it only once.
    opts.use_hosts_file = ResolveHosts::Never;
    if let Some(timeout) = tuning.query_timeout {
        opts.timeout = timeout;
    }
    if let Some(attempts) = tuning.attempts {
        opts.attempts = attempts;
    }
    opts
}

fn build_explicit(nameservers: &[SocketAddr], tuning: &Tuning) -> Result<TokioResolver, DnsError> {
    let servers = nameservers
        .iter()
        .map(|addr| {
            // UDP first, TCP for truncated answers and as a fallback.
            let mut udp = ConnectionConfig::udp();
            udp.port = addr.port();
            let mut tcp = ConnectionConfig::tcp();
            tcp.port = addr.port();
            NameServerConfig::new(addr.ip(), true, vec![udp, tcp])
        })
        .collect();
    let mut opts = watcher_options(ResolverOpts::default(), tuning);
    // Explicit servers: try them in the order the operator listed them.
    opts.server_ordering_strategy = hickory_resolver::config::ServerOrderingStrategy::UserProvidedOrder;
    TokioResolver::builder_with_config(
        ResolverConfig::from_name_servers(servers),
        TokioRuntimeProvider::default(),
    )
    .with_options(opts)
    .build()
    .map_err(|e| DnsError::Resolver(e.to_string()))
}

fn build_system(files: &SystemFiles, tuning: &Tuning) -> Result<TokioResolver, DnsError> {
    let resolv_conf = std::fs::read(&files.resolv_conf).map_err(|source| DnsError::ReadSystemConfig {
        path: files.resolv_conf.clone(),
        source,
    })?;
    let (config, opts) = hickory_resolver::system_conf::parse_resolv_conf(resolv_conf).map_err(|e| {
        DnsError::ParseSystemConfig {
            path: files.resolv_conf.clone(),
            message: e.to_string(),
        }
    })?;
    let hosts = read_hosts(&files.hosts)?;
    let mut resolver = TokioResolver::builder_with_config(config, TokioRuntimeProvider::default())
        .with_options(watcher_options(opts, tuning))
        .build()
        .map_err(|e| DnsError::Resolver(e.to_string()))?;
    resolver.set_hosts(Arc::new(hosts));
    Ok(resolver)
}

/// A missing hosts file is an empty one, as for libc; any other read error
/// is reported, since silently ignoring it would change what names mean.
fn read_hosts(path: &Path) -> Result<Hosts, DnsError> {
    let mut hosts = Hosts::default();
    match std::fs::File::open(path) {
        Ok(file) => hosts
            .read_hosts_conf(file)
            .map_err(|source| DnsError::ReadSystemConfig {
                path: path.to_owned(),
                source,
            })?,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(source) => {
            return Err(DnsError::ReadSystemConfig {
                path: path.to_owned(),
                source,
            })
        }
    }
    Ok(hosts)
}

/// One lookup of `name`, A and AAAA together (CNAME chains are followed by
/// hickory), with the answer's real TTL.
pub(crate) async fn lookup(resolver: Arc<TokioResolver>, name: String, deadline: Duration) -> Outcome {
    let result = tokio::time::timeout(deadline, resolver.lookup_ip(name.as_str())).await;
    match result {
        Err(_) => Outcome::Failed(format!(
            "timed out (no answer within {}s)",
            deadline.as_secs_f64()
        )),
        Ok(Err(error)) => Outcome::Failed(describe(&error)),
        Ok(Ok(answer)) => {
            let addresses: BTreeSet<IpAddr> = answer.iter().collect();
            // `valid_until` is the answer's arrival plus the smallest TTL of
            // the records that made it (CNAMEs included), i.e. exactly when
            // a resolver would have to ask again.
            let ttl = answer.valid_until().saturating_duration_since(Instant::now());
            Outcome::Answer { addresses, ttl }
        }
    }
}

/// Words a failed lookup for the status output: short and stable
/// ("no records (NXDOMAIN)", "timed out", "server failure (SERVFAIL)")
/// rather than hickory's debug-heavy messages, which quote whole queries.
pub(crate) fn describe(error: &NetError) -> String {
    match error {
        NetError::Timeout => "timed out".to_owned(),
        NetError::Dns(WireError::NoRecordsFound(no_records)) => match no_records.response_code {
            ResponseCode::NXDomain => "no records (NXDOMAIN)".to_owned(),
            ResponseCode::NoError => "no records (NODATA)".to_owned(),
            code => format!("no records ({})", rcode_name(code)),
        },
        NetError::Dns(WireError::ResponseCode(code)) => match code {
            ResponseCode::ServFail => "server failure (SERVFAIL)".to_owned(),
            ResponseCode::Refused => "query refused (REFUSED)".to_owned(),
            code => format!("error response ({})", rcode_name(*code)),
        },
        NetError::Io(e) if e.kind() == io::ErrorKind::ConnectionRefused => "connection refused".to_owned(),
        NetError::Io(e) if e.kind() == io::ErrorKind::TimedOut => "timed out".to_owned(),
        NetError::Io(e) => format!("I/O error: {e}"),
        NetError::NoConnections => "no nameserver reachable".to_owned(),
        other => other.to_string(),
    }
}

fn rcode_name(code: ResponseCode) -> String {
    match code {
        ResponseCode::NoError => "NOERROR".to_owned(),
        ResponseCode::FormErr => "FORMERR".to_owned(),
        ResponseCode::ServFail => "SERVFAIL".to_owned(),
        ResponseCode::NXDomain => "NXDOMAIN".to_owned(),
        ResponseCode::NotImp => "NOTIMP".to_owned(),
        ResponseCode::Refused => "REFUSED".to_owned(),
        other => format!("{other} ({})", u16::from(other)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_resolver::net::NoRecords;
    use hickory_resolver::proto::op::Query;
    use hickory_resolver::proto::rr::{Name, RecordType};

    fn no_records(code: ResponseCode) -> NetError {
        let query = Query::query(Name::root(), RecordType::A);
        NetError::Dns(WireError::NoRecordsFound(NoRecords::new(query, code)))
    }

    #[test]
    fn errors_read_well() {
        assert_eq!(
            describe(&no_records(ResponseCode::NXDomain)),
            "no records (NXDOMAIN)"
        );
        assert_eq!(
            describe(&no_records(ResponseCode::NoError)),
            "no records (NODATA)"
        );
        assert_eq!(
            describe(&NetError::Dns(WireError::ResponseCode(ResponseCode::ServFail))),
            "server failure (SERVFAIL)"
        );
        assert_eq!(describe(&NetError::Timeout), "timed out");
        let refused = NetError::Io(Arc::new(io::Error::from(io::ErrorKind::ConnectionRefused)));
        assert_eq!(describe(&refused), "connection refused");
    }

    #[test]
    fn system_files_default_to_etc() {
        let files = SystemFiles::default();
        assert_eq!(files.resolv_conf, Path::new("/etc/resolv.conf"));
        assert_eq!(files.hosts, Path::new("/etc/hosts"));
    }

    #[test]
    fn unreadable_resolv_conf_is_an_error() {
        let files = SystemFiles {
            resolv_conf: PathBuf::from("/nonexistent/connectracer/resolv.conf"),
            hosts: PathBuf::from("/nonexistent/connectracer/hosts"),
        };
        let err = Backend::new(&[], &files, Tuning::default()).expect_err("no resolv.conf");
        assert!(matches!(err, DnsError::ReadSystemConfig { .. }), "{err:?}");
        assert!(
            err.to_string().contains("/nonexistent/connectracer/resolv.conf"),
            "{err}"
        );
    }
}
