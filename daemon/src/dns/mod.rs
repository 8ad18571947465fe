//! Follows watched hostnames through DNS. The kernel matches addresses, not
//! names, so each hostname is resolved (A and AAAA, through CNAMEs) and
//! re-resolved when its answer expires; every change of a host's address set
//! goes out as a [`DnsUpdate`] carrying the full new set.
//!
//! The rules that keep attribution stable while DNS misbehaves:
//! - addresses that leave an answer stay matched for a grace period, because
//!   clients that resolved a moment earlier still connect to them;
//! - a failed lookup never shrinks a host's set: DNS blinking must not make
//!   a watched service disappear from the trace;
//! - every host is resolved on its own schedule and in its own task, so a
//!   name whose server times out never delays the others.
//!
//! One task owns all per-host state ([`state`], a pure state machine over
//! timestamps); lookups run as child tasks in a `JoinSet` that dies with it.

mod resolve;
mod state;
#[cfg(test)]
mod tests;

use std::collections::hash_map::RandomState;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::hash::{BuildHasher, Hasher};
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::{mpsc, oneshot};
use tokio::task::{AbortHandle, JoinSet};

use crate::config::DnsConfig;
use resolve::{Backend, SystemFiles, Tuning};
use state::{HostState, Outcome, Policy};

fn validate(config: &DnsConfig) -> Result<(), DnsError> {
    match config.problem() {
        Some(why) => Err(DnsError::InvalidConfig(why.to_owned())),
        None => Ok(()),
    }
}

/// Everything known about one hostname, for status output.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct HostStatus {
    pub name: String,
    /// Current addresses plus those still within their grace period; what the kernel should match.
    pub addresses: BTreeSet<IpAddr>,
    /// Addresses from the last successful answer only.
    pub current: BTreeSet<IpAddr>,
    /// When the last successful answer arrived; `None` if the name never resolved.
    pub last_success: Option<SystemTime>,
    /// When the next lookup is due; `None` while a lookup is in flight, since
    /// its completion (not a clock) decides what comes next.
    pub next_refresh: Option<SystemTime>,
    /// TTL of the last answer, after clamping: the interval the refreshes
    /// follow while the name keeps resolving.
    pub ttl_seconds: Option<u64>,
    /// Failed lookups since the last success; also what the retry backoff is
    /// computed from.
    pub consecutive_failures: u32,
    /// Lookups completed (answered or failed) since the name was first watched.
    pub lookups: u64,
    /// Of those, the ones that failed.
    pub failures: u64,
    /// Why the last lookup failed, e.g. "no records (NXDOMAIN)" or "timed
    /// out"; cleared by the next success so a stale error cannot mislead.
    pub last_error: Option<String>,
}

/// Sent whenever a host's `addresses` set changes (including grace expiry), with the full new set.
/// The full set rather than a delta, so a consumer that missed or coalesced
/// updates still ends up with the right state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsUpdate {
    pub name: String,
    pub addresses: BTreeSet<IpAddr>,
}

/// Why the watcher could not start or take a new configuration.
#[derive(Debug, thiserror::Error)]
pub enum DnsError {
    /// The system resolver configuration (or hosts file) could not be read.
    #[error("reading {}: {source}", path.display())]
    ReadSystemConfig {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The system resolver configuration could not be used, e.g. it names no nameserver.
    #[error("{}: {message}", path.display())]
    ParseSystemConfig { path: PathBuf, message: String },
    /// Hickory refused to build a resolver from the configuration.
    #[error("building the DNS resolver: {0}")]
    Resolver(String),
    /// The timing settings are unusable (see [`DnsConfig`]).
    #[error("invalid DNS settings: {0}")]
    InvalidConfig(String),
    /// [`DnsWatcher::spawn`] was called outside a tokio runtime.
    #[error("the DNS watcher must be started inside a tokio runtime")]
    NoRuntime,
    /// The watcher task has ended (its updates receiver was dropped), so
    /// there is nothing left to configure.
    #[error("the DNS watcher has stopped")]
    Stopped,
}

/// Messages from the handle to the watcher task. Each carries a reply
/// channel so the caller knows the change is in effect when its call returns.
enum Command {
    SetHosts(Vec<String>, oneshot::Sender<()>),
    SetConfig(Box<DnsConfig>, Box<Backend>, oneshot::Sender<()>),
    Status(oneshot::Sender<Vec<HostStatus>>),
}

/// Handle to the watcher task. Dropping it stops the task, along with any
/// lookups in flight, so a reload that builds a new watcher cannot leak the
/// old one.
#[derive(Debug)]
pub struct DnsWatcher {
    commands: mpsc::Sender<Command>,
    /// Kept so a new resolver built by `set_config` reads the same files as
    /// the first one did (tests point these away from /etc).
    files: SystemFiles,
    tuning: Tuning,
}

impl DnsWatcher {
    /// Spawns the watcher task on the current tokio runtime. Every host is resolved immediately, then refreshed at TTL expiry.
    /// Fails, rather than starting a watcher that can never resolve, when
    /// the settings are unusable or the system resolver configuration
    /// cannot be read.
    pub fn spawn(
        config: DnsConfig,
        hosts: Vec<String>,
        updates: mpsc::Sender<DnsUpdate>,
    ) -> Result<Self, DnsError> {
        Self::spawn_with(config, hosts, updates, SystemFiles::default(), Tuning::default())
    }

    /// [`Self::spawn`] with the system files and timeouts as parameters, so
    /// tests can use their own hosts file and fail fast against dead servers.
    pub(crate) fn spawn_with(
        config: DnsConfig,
        hosts: Vec<String>,
        updates: mpsc::Sender<DnsUpdate>,
        files: SystemFiles,
        tuning: Tuning,
    ) -> Result<Self, DnsError> {
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| DnsError::NoRuntime)?;
        validate(&config)?;
        let backend = Backend::new(&config.nameservers, &files, tuning)?;
        // A small queue suffices: every command waits for its reply.
        let (commands, command_rx) = mpsc::channel(8);
        let mut task = Task {
            policy: Policy::from_config(&config),
            config,
            backend,
            hosts: BTreeMap::new(),
            in_flight: HashMap::new(),
            lookups: JoinSet::new(),
            pending: BTreeMap::new(),
            updates,
            commands: command_rx,
        };
        task.set_hosts(hosts, Instant::now());
        runtime.spawn(task.run());
        Ok(Self {
            commands,
            files,
            tuning,
        })
    }

    /// Replaces the watched set (hot reload): new names are resolved at once, removed ones forgotten (no update is sent for removed names), unchanged ones keep their state and schedule.
    /// Unchanged names keep their state so a reload does not re-query every
    /// name nor restart grace periods.
    pub async fn set_hosts(&self, hosts: Vec<String>) {
        let (reply, done) = oneshot::channel();
        if self.commands.send(Command::SetHosts(hosts, reply)).await.is_ok() {
            // An error means the task ended meanwhile; there is nothing to update then.
            let _ = done.await;
        }
    }

    /// Replaces the configuration (nameservers, clamps, backoff, grace) keeping per-host state.
    /// New clamps and backoff apply to the pending refreshes at once. New
    /// nameservers abandon the lookups in flight and re-resolve every host,
    /// since the old servers' answers may not hold for the new ones. Fails,
    /// changing nothing, when the new settings are unusable.
    pub async fn set_config(&self, config: DnsConfig) -> Result<(), DnsError> {
        validate(&config)?;
        let (reply, done) = oneshot::channel();
        // Built here, not in the task, so a bad resolv.conf is reported to
        // the caller instead of being logged by a task nobody watches.
        let backend = Backend::new(&config.nameservers, &self.files, self.tuning)?;
        self.commands
            .send(Command::SetConfig(Box::new(config), Box::new(backend), reply))
            .await
            .map_err(|_| DnsError::Stopped)?;
        done.await.map_err(|_| DnsError::Stopped)
    }

    /// Every watched host, sorted by name. Empty once the task has ended.
    pub async fn status(&self) -> Vec<HostStatus> {
        let (reply, done) = oneshot::channel();
        if self.commands.send(Command::Status(reply)).await.is_err() {
            return Vec::new();
        }
        done.await.unwrap_or_default()
    }
}

/// One watched name: its state and, while a lookup runs, the handle to
/// abort it if the name is dropped or the resolver replaced.
struct Entry {
    state: HostState,
    lookup: Option<AbortHandle>,
}

/// What woke the task up.
enum Event {
    Command(Option<Command>),
    Lookup(Result<(tokio::task::Id, Outcome), tokio::task::JoinError>),
    /// Room in the updates channel, or `None` when its receiver is gone.
    Permit(Option<mpsc::OwnedPermit<DnsUpdate>>),
    Tick,
}

struct Task {
    config: DnsConfig,
    policy: Policy,
    backend: Backend,
    hosts: BTreeMap<String, Entry>,
    /// Which host each running lookup belongs to, by task id, so even a
    /// lookup task that panicked is traced back to its host and retried.
    in_flight: HashMap<tokio::task::Id, String>,
    lookups: JoinSet<Outcome>,
    /// Updates not yet handed to the channel, newest set per name. Sending
    /// never blocks the task: a slow consumer gets the latest full set per
    /// name instead of stalling lookups and status replies.
    pending: BTreeMap<String, BTreeSet<IpAddr>>,
    updates: mpsc::Sender<DnsUpdate>,
    commands: mpsc::Receiver<Command>,
}

impl Task {
    async fn run(mut self) {
        loop {
            let now = Instant::now();
            self.expire(now);
            self.start_due(now);
            // With nothing scheduled (no hosts) the task just waits for a
            // command; the hour is only a bound, not a poll.
            let wake = self.next_wakeup().unwrap_or(now + Duration::from_secs(3600));
            // The branches only produce an event; handling it happens after
            // the select, once no branch borrows `self` anymore.
            let event = tokio::select! {
                command = self.commands.recv() => Event::Command(command),
                Some(done) = self.lookups.join_next_with_id() => Event::Lookup(done),
                permit = self.updates.clone().reserve_owned(), if !self.pending.is_empty() => Event::Permit(permit.ok()),
                () = self.updates.closed() => Event::Permit(None),
                () = tokio::time::sleep_until(wake.into()) => Event::Tick,
            };
            match event {
                Event::Command(Some(command)) => self.handle(command),
                // The handle was dropped: nobody can read status or change the set anymore.
                Event::Command(None) => return,
                Event::Lookup(done) => self.finish(done),
                Event::Permit(Some(permit)) => {
                    if let Some((name, addresses)) = self.pending.pop_first() {
                        permit.send(DnsUpdate { name, addresses });
                    }
                }
                // The consumer is gone: resolving further would be wasted queries.
                Event::Permit(None) => return,
                Event::Tick => {}
            }
        }
    }

    fn handle(&mut self, command: Command) {
        match command {
            Command::SetHosts(hosts, reply) => {
                self.set_hosts(hosts, Instant::now());
                let _ = reply.send(());
            }
            Command::SetConfig(config, backend, reply) => {
                self.set_config(*config, *backend, Instant::now());
                let _ = reply.send(());
            }
            Command::Status(reply) => {
                let _ = reply.send(self.status());
            }
        }
    }

    fn set_hosts(&mut self, hosts: Vec<String>, now: Instant) {
        let wanted: BTreeSet<String> = hosts.into_iter().collect();
        let removed: Vec<String> = self
            .hosts
            .keys()
            .filter(|n| !wanted.contains(*n))
            .cloned()
            .collect();
        for name in removed {
            if let Some(entry) = self.hosts.remove(&name) {
                self.abort_lookup(entry.lookup);
            }
            self.pending.remove(&name);
        }
        for name in wanted {
            self.hosts.entry(name).or_insert_with(|| Entry {
                state: HostState::new(now),
                lookup: None,
            });
        }
    }

    fn set_config(&mut self, config: DnsConfig, backend: Backend, now: Instant) {
        let servers_changed = config.nameservers != self.config.nameservers;
        self.policy = Policy::from_config(&config);
        self.config = config;
        if servers_changed {
            self.backend = backend;
            for entry in self.hosts.values_mut() {
                if let Some(lookup) = entry.lookup.take() {
                    lookup.abort();
                    self.in_flight.remove(&lookup.id());
                }
                entry.state.abandon_lookup(now);
            }
        } else {
            // Same servers: the running resolver (and its connections) stays.
            for entry in self.hosts.values_mut() {
                entry.state.reschedule(&self.policy);
            }
        }
    }

    fn abort_lookup(&mut self, lookup: Option<AbortHandle>) {
        if let Some(lookup) = lookup {
            lookup.abort();
            self.in_flight.remove(&lookup.id());
        }
    }

    fn expire(&mut self, now: Instant) {
        for (name, entry) in &mut self.hosts {
            if entry.state.expire(now, &self.policy) {
                let addresses = entry.state.addresses();
                tracing::info!(host = %name, ?addresses, "DNS grace period over; dropping stale addresses");
                self.pending.insert(name.clone(), addresses);
            }
        }
    }

    fn start_due(&mut self, now: Instant) {
        if !self.hosts.values().any(|e| e.state.is_due(now)) {
            return;
        }
        // Checked only when about to query, so an idle watcher does not stat
        // files, and each batch of lookups sees the latest system config.
        self.backend.reload_if_changed();
        let deadline = self.backend.deadline();
        for (name, entry) in &mut self.hosts {
            if !entry.state.is_due(now) {
                continue;
            }
            entry.state.start_lookup();
            let handle = self
                .lookups
                .spawn(resolve::lookup(self.backend.resolver(), name.clone(), deadline));
            self.in_flight.insert(handle.id(), name.clone());
            entry.lookup = Some(handle);
        }
    }

    fn finish(&mut self, done: Result<(tokio::task::Id, Outcome), tokio::task::JoinError>) {
        let (id, outcome) = match done {
            Ok((id, outcome)) => (id, outcome),
            Err(error) if error.is_cancelled() => return,
            Err(error) => (
                error.id(),
                Outcome::Failed(format!("lookup task failed: {error}")),
            ),
        };
        // Unknown id: the host was removed or its lookup abandoned meanwhile.
        let Some(name) = self.in_flight.remove(&id) else {
            return;
        };
        let Some(entry) = self.hosts.get_mut(&name) else {
            return;
        };
        entry.lookup = None;
        let now = Instant::now();
        let changed =
            entry
                .state
                .finish_lookup(outcome.clone(), now, SystemTime::now(), jitter(), &self.policy);
        match outcome {
            Outcome::Failed(error) => {
                let status = entry.state.status(&name, now, SystemTime::now(), &self.policy);
                // Loud once per outage, quiet while it lasts.
                if status.consecutive_failures == 1 {
                    tracing::warn!(host = %name, %error, kept = ?status.addresses, "DNS lookup failed; keeping the last known addresses");
                } else {
                    tracing::debug!(host = %name, %error, failures = status.consecutive_failures, "DNS lookup failed again");
                }
            }
            Outcome::Answer { .. } => tracing::debug!(host = %name, "DNS lookup succeeded"),
        }
        if changed {
            let addresses = entry.state.addresses();
            tracing::info!(host = %name, ?addresses, "DNS addresses changed");
            self.pending.insert(name, addresses);
        }
    }

    fn next_wakeup(&self) -> Option<Instant> {
        self.hosts
            .values()
            .filter_map(|e| e.state.next_wakeup(&self.policy))
            .min()
    }

    fn status(&self) -> Vec<HostStatus> {
        let (now, wall) = (Instant::now(), SystemTime::now());
        self.hosts
            .iter()
            .map(|(name, e)| e.state.status(name, now, wall, &self.policy))
            .collect()
    }
}

/// A number in `[0, 1)` for backoff jitter. Each `RandomState` is seeded
/// afresh, which is all the randomness jitter needs, without a dependency.
fn jitter() -> f64 {
    let bits = RandomState::new().build_hasher().finish() >> 11;
    bits as f64 / (1u64 << 53) as f64
}
