//! The per-host bookkeeping of the DNS watcher as a pure state machine over
//! timestamps. Nothing here sleeps, resolves or reads a clock: the caller
//! passes `now` in, so TTL clamping, backoff and grace expiry are tested to
//! the millisecond without a DNS server or real time passing.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::time::{Duration, Instant, SystemTime};

use super::{DnsConfig, HostStatus};

/// How much of a backoff delay jitter may take away. Hosts that failed
/// together (one DNS outage) would otherwise retry in lockstep forever;
/// shaving up to a fifth off spreads them out without ever retrying later
/// than `retry_max` promised.
const JITTER_FRACTION: f64 = 0.2;

/// The timing knobs of [`DnsConfig`], apart from the nameservers, which only
/// the resolver cares about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Policy {
    pub min_ttl: Duration,
    pub max_ttl: Duration,
    pub retry_min: Duration,
    pub retry_max: Duration,
    pub grace: Duration,
}

impl Policy {
    pub fn from_config(config: &DnsConfig) -> Self {
        Self {
            min_ttl: config.min_ttl,
            max_ttl: config.max_ttl,
            retry_min: config.retry_min,
            retry_max: config.retry_max,
            grace: config.grace,
        }
    }

    /// Clamps an answer's TTL into `[min_ttl, max_ttl]`. The lower bound keeps
    /// a zero-TTL (load-balancer style) record from turning the watcher into a
    /// query flood; the upper bound keeps a week-long TTL (or a hosts-file
    /// entry, which hickory gives the maximum TTL) from hiding a change for
    /// days. Relies on the config having been validated (`min <= max`), but
    /// does not panic when it was not.
    pub fn clamp_ttl(&self, ttl: Duration) -> Duration {
        ttl.min(self.max_ttl).max(self.min_ttl)
    }

    /// Delay before retry number `failures` (1 = the first retry after the
    /// first failure): `retry_min` doubling per failure up to `retry_max`, then
    /// shortened by up to [`JITTER_FRACTION`] according to `jitter` in
    /// `[0, 1)`, but never below `retry_min`, so a configured minimum is a
    /// real promise to the DNS server.
    pub fn backoff(&self, failures: u32, jitter: f64) -> Duration {
        let doublings = failures.saturating_sub(1).min(31);
        let base = self
            .retry_min
            .saturating_mul(1u32 << doublings)
            .min(self.retry_max);
        let shave = base.mul_f64(jitter.clamp(0.0, 1.0) * JITTER_FRACTION);
        base.saturating_sub(shave).max(self.retry_min.min(self.retry_max))
    }
}

/// What a finished lookup said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// The answer's addresses (never empty) and the time the answer stays
    /// valid, as the server gave it.
    Answer {
        addresses: BTreeSet<IpAddr>,
        ttl: Duration,
    },
    /// Why there is no usable answer, worded for the status output.
    Failed(String),
}

/// How the last lookup ended, kept so a config change can recompute the
/// schedule with the new clamps and backoff.
#[derive(Debug, Clone, Copy, PartialEq)]
enum LastResult {
    Never,
    Success { at: Instant, ttl: Duration },
    Failure { at: Instant, jitter: f64 },
}

/// Everything the watcher knows about one hostname.
#[derive(Debug, Clone)]
pub(crate) struct HostState {
    current: BTreeSet<IpAddr>,
    /// Addresses that left the answer, with the moment they left. The
    /// deadline is computed from the policy's grace at each check, so a hot
    /// reload that shortens the grace takes effect on addresses already fading.
    fading: BTreeMap<IpAddr, Instant>,
    last: LastResult,
    last_success: Option<SystemTime>,
    /// The TTL of the last answer as the server gave it; clamped only when
    /// shown, so the status follows a hot-reloaded clamp.
    last_ttl: Option<Duration>,
    consecutive_failures: u32,
    /// Lifetime totals, for the lookup and failure counters.
    lookups: u64,
    failures: u64,
    last_error: Option<String>,
    next_refresh: Instant,
    in_flight: bool,
}

impl HostState {
    /// A host nobody has looked up yet: due at once, because a newly watched
    /// name should be matched as soon as possible.
    pub fn new(now: Instant) -> Self {
        Self {
            current: BTreeSet::new(),
            fading: BTreeMap::new(),
            last: LastResult::Never,
            last_success: None,
            last_ttl: None,
            consecutive_failures: 0,
            lookups: 0,
            failures: 0,
            last_error: None,
            next_refresh: now,
            in_flight: false,
        }
    }

    /// What the kernel should match: the current answer plus the addresses
    /// still within their grace period.
    pub fn addresses(&self) -> BTreeSet<IpAddr> {
        self.current.iter().chain(self.fading.keys()).copied().collect()
    }

    /// Whether a lookup should start now. A host with a lookup in flight is
    /// never due: one query at a time per name, however slow the server.
    pub fn is_due(&self, now: Instant) -> bool {
        !self.in_flight && self.next_refresh <= now
    }

    pub fn start_lookup(&mut self) {
        self.in_flight = true;
    }

    /// The lookup in flight was abandoned (the resolver was replaced): look
    /// again at once with the new one instead of waiting a whole TTL.
    pub fn abandon_lookup(&mut self, now: Instant) {
        self.in_flight = false;
        self.next_refresh = now;
    }

    /// Applies a finished lookup. Returns whether [`Self::addresses`] changed,
    /// i.e. whether an update must be sent.
    pub fn finish_lookup(
        &mut self,
        outcome: Outcome,
        now: Instant,
        wall: SystemTime,
        jitter: f64,
        policy: &Policy,
    ) -> bool {
        self.in_flight = false;
        match outcome {
            Outcome::Answer { addresses, .. } if addresses.is_empty() => {
                // An empty answer is treated as a failure: a server that
                // blinked must never empty the set the kernel matches.
                self.record_failure("answer held no addresses".to_owned(), now, jitter, policy);
                false
            }
            Outcome::Answer { addresses, ttl } => self.record_success(addresses, ttl, now, wall, policy),
            Outcome::Failed(error) => {
                self.record_failure(error, now, jitter, policy);
                false
            }
        }
    }

    fn record_success(
        &mut self,
        addresses: BTreeSet<IpAddr>,
        ttl: Duration,
        now: Instant,
        wall: SystemTime,
        policy: &Policy,
    ) -> bool {
        let before = self.addresses();
        if !policy.grace.is_zero() {
            for gone in self.current.difference(&addresses) {
                self.fading.entry(*gone).or_insert(now);
            }
        }
        // An address that came back is current again, not fading: its grace
        // must not run out while the server still hands it out.
        self.fading.retain(|ip, _| !addresses.contains(ip));
        self.current = addresses;
        self.last = LastResult::Success { at: now, ttl };
        self.last_success = Some(wall);
        self.last_ttl = Some(ttl);
        self.lookups += 1;
        self.consecutive_failures = 0;
        self.last_error = None;
        self.next_refresh = now + policy.clamp_ttl(ttl);
        // Grace may be zero, or already over for addresses that faded long
        // ago under a longer grace.
        self.expire(now, policy);
        self.addresses() != before
    }

    fn record_failure(&mut self, error: String, now: Instant, jitter: f64, policy: &Policy) {
        self.consecutive_failures = self.consecutive_failures.saturating_add(1);
        self.lookups += 1;
        self.failures += 1;
        self.last_error = Some(error);
        self.last = LastResult::Failure { at: now, jitter };
        self.next_refresh = now + policy.backoff(self.consecutive_failures, jitter);
    }

    /// Drops the fading addresses whose grace is over. Returns whether
    /// [`Self::addresses`] changed.
    pub fn expire(&mut self, now: Instant, policy: &Policy) -> bool {
        let before = self.fading.len();
        self.fading.retain(|_, left| *left + policy.grace > now);
        self.fading.len() != before
    }

    /// Recomputes the next refresh under a new policy, from when the last
    /// lookup finished, so a hot reload that lowers `max_ttl` or `retry_max`
    /// is felt now and not one old interval later.
    pub fn reschedule(&mut self, policy: &Policy) {
        if self.in_flight {
            return;
        }
        match self.last {
            LastResult::Never => {}
            LastResult::Success { at, ttl } => self.next_refresh = at + policy.clamp_ttl(ttl),
            LastResult::Failure { at, jitter } => {
                self.next_refresh = at + policy.backoff(self.consecutive_failures, jitter)
            }
        }
    }

    /// When this host next needs attention: its refresh (unless a lookup is
    /// already in flight, whose completion wakes the watcher anyway) or the
    /// end of the earliest grace period.
    pub fn next_wakeup(&self, policy: &Policy) -> Option<Instant> {
        let grace_end = self.fading.values().map(|left| *left + policy.grace).min();
        let refresh = (!self.in_flight).then_some(self.next_refresh);
        match (grace_end, refresh) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    pub fn status(&self, name: &str, now: Instant, wall: SystemTime, policy: &Policy) -> HostStatus {
        // Rounded, not truncated: the TTL is measured when the answer is
        // handled, a hair after the server set it, so 2 s arrives as 1.999 s.
        let ttl_seconds = self
            .last_ttl
            .map(|ttl| policy.clamp_ttl(ttl).as_secs_f64().round() as u64);
        HostStatus {
            name: name.to_owned(),
            addresses: self.addresses(),
            current: self.current.clone(),
            last_success: self.last_success,
            next_refresh: (!self.in_flight).then(|| to_wall(self.next_refresh, now, wall)),
            ttl_seconds,
            consecutive_failures: self.consecutive_failures,
            lookups: self.lookups,
            failures: self.failures,
            last_error: self.last_error.clone(),
        }
    }
}

/// Translates a monotonic instant into wall-clock time for people reading
/// the status, anchored at one `(now, wall)` pair so every host in one status
/// report is converted consistently.
fn to_wall(at: Instant, now: Instant, wall: SystemTime) -> SystemTime {
    if at >= now {
        wall + (at - now)
    } else {
        wall.checked_sub(now - at).unwrap_or(wall)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("test address")
    }

    fn set(addrs: &[&str]) -> BTreeSet<IpAddr> {
        addrs.iter().map(|s| ip(s)).collect()
    }

    fn policy() -> Policy {
        Policy {
            min_ttl: Duration::from_secs(5),
            max_ttl: Duration::from_secs(3600),
            retry_min: Duration::from_secs(1),
            retry_max: Duration::from_secs(60),
            grace: Duration::from_secs(300),
        }
    }

    fn answer(addrs: &[&str], ttl_secs: u64) -> Outcome {
        Outcome::Answer {
            addresses: set(addrs),
            ttl: Duration::from_secs(ttl_secs),
        }
    }

    fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    #[test]
    fn default_config_policy() {
        let p = Policy::from_config(&DnsConfig::default());
        assert_eq!(p, policy());
    }

    #[test]
    fn ttl_is_clamped_into_min_max() {
        let p = policy();
        assert_eq!(p.clamp_ttl(secs(0)), secs(5));
        assert_eq!(p.clamp_ttl(secs(4)), secs(5));
        assert_eq!(p.clamp_ttl(secs(5)), secs(5));
        assert_eq!(p.clamp_ttl(secs(30)), secs(30));
        assert_eq!(p.clamp_ttl(secs(3600)), secs(3600));
        assert_eq!(p.clamp_ttl(secs(86_400 * 7)), secs(3600));
    }

    #[test]
    fn backoff_doubles_from_retry_min_up_to_retry_max() {
        let p = policy();
        let schedule: Vec<u64> = (1..=9).map(|n| p.backoff(n, 0.0).as_secs()).collect();
        assert_eq!(schedule, vec![1, 2, 4, 8, 16, 32, 60, 60, 60]);
        // Absurd failure counts must neither overflow nor exceed the cap.
        assert_eq!(p.backoff(u32::MAX, 0.0), secs(60));
        assert_eq!(p.backoff(0, 0.0), secs(1));
    }

    #[test]
    fn backoff_jitter_only_shortens_and_never_below_retry_min() {
        let p = policy();
        for n in 1..=12 {
            let plain = p.backoff(n, 0.0);
            for j in [0.1, 0.5, 0.999, 7.0, -3.0] {
                let d = p.backoff(n, j);
                assert!(d <= plain, "failure {n} jitter {j}: {d:?} > {plain:?}");
                assert!(d >= p.retry_min, "failure {n} jitter {j}: {d:?} < retry_min");
                assert!(d >= plain.mul_f64(1.0 - JITTER_FRACTION) - Duration::from_nanos(1));
            }
        }
        assert!(
            p.backoff(7, 0.999) < secs(60),
            "jitter must also spread hosts at the cap"
        );
    }

    #[test]
    fn new_host_is_due_at_once_and_not_while_in_flight() {
        let t0 = Instant::now();
        let mut h = HostState::new(t0);
        assert!(h.is_due(t0));
        assert_eq!(h.next_wakeup(&policy()), Some(t0));
        h.start_lookup();
        assert!(!h.is_due(t0));
        assert!(!h.is_due(t0 + secs(10_000)), "only one lookup in flight per host");
        assert_eq!(h.next_wakeup(&policy()), None);
        assert!(h.addresses().is_empty());
    }

    #[test]
    fn success_schedules_refresh_at_clamped_ttl() {
        let p = policy();
        let t0 = Instant::now();
        let w0 = SystemTime::UNIX_EPOCH + secs(1_000_000);
        let mut h = HostState::new(t0);
        h.start_lookup();
        assert!(h.finish_lookup(answer(&["192.0.2.1", "2001:db8::1"], 30), t0, w0, 0.0, &p));
        assert_eq!(h.addresses(), set(&["192.0.2.1", "2001:db8::1"]));
        assert!(!h.is_due(t0 + secs(29)));
        assert!(h.is_due(t0 + secs(30)));
        let st = h.status("a", t0, w0, &p);
        assert_eq!(st.ttl_seconds, Some(30));
        assert_eq!(st.next_refresh, Some(w0 + secs(30)));
        assert_eq!(st.last_success, Some(w0));

        // A one-second TTL is raised to min_ttl, a week-long one lowered.
        h.start_lookup();
        assert!(!h.finish_lookup(answer(&["192.0.2.1", "2001:db8::1"], 1), t0, w0, 0.0, &p));
        assert!(!h.is_due(t0 + secs(4)));
        assert!(h.is_due(t0 + secs(5)));
        assert_eq!(h.status("a", t0, w0, &p).ttl_seconds, Some(5));
        h.start_lookup();
        h.finish_lookup(answer(&["192.0.2.1"], 604_800), t0, w0, 0.0, &p);
        assert!(h.is_due(t0 + secs(3600)));
        assert_eq!(h.status("a", t0, w0, &p).ttl_seconds, Some(3600));
    }

    #[test]
    fn vanished_addresses_fade_after_grace() {
        let p = Policy {
            grace: secs(3),
            ..policy()
        };
        let t0 = Instant::now();
        let w = SystemTime::UNIX_EPOCH;
        let mut h = HostState::new(t0);
        h.finish_lookup(answer(&["192.0.2.1", "192.0.2.2"], 60), t0, w, 0.0, &p);

        let t1 = t0 + secs(60);
        assert!(h.finish_lookup(answer(&["192.0.2.2", "192.0.2.3"], 60), t1, w, 0.0, &p));
        assert_eq!(h.addresses(), set(&["192.0.2.1", "192.0.2.2", "192.0.2.3"]));
        assert_eq!(h.status("a", t1, w, &p).current, set(&["192.0.2.2", "192.0.2.3"]));
        assert_eq!(h.next_wakeup(&p), Some(t1 + secs(3)));

        assert!(!h.expire(t1 + Duration::from_millis(2999), &p));
        assert!(h.addresses().contains(&ip("192.0.2.1")));
        assert!(h.expire(t1 + secs(3), &p));
        assert_eq!(h.addresses(), set(&["192.0.2.2", "192.0.2.3"]));
        assert_eq!(h.next_wakeup(&p), Some(t1 + secs(60)));
    }

    #[test]
    fn address_that_returns_stops_fading() {
        let p = Policy {
            grace: secs(10),
            ..policy()
        };
        let t0 = Instant::now();
        let w = SystemTime::UNIX_EPOCH;
        let mut h = HostState::new(t0);
        h.finish_lookup(answer(&["192.0.2.1"], 5), t0, w, 0.0, &p);
        h.finish_lookup(answer(&["192.0.2.2"], 5), t0 + secs(5), w, 0.0, &p);
        // Back again before its grace ran out: the set is unchanged, so no update.
        assert!(!h.finish_lookup(answer(&["192.0.2.1", "192.0.2.2"], 5), t0 + secs(8), w, 0.0, &p));
        assert!(!h.expire(t0 + secs(100), &p), "a current address never expires");
        assert_eq!(h.addresses(), set(&["192.0.2.1", "192.0.2.2"]));
    }

    #[test]
    fn zero_grace_drops_at_once() {
        let p = Policy {
            grace: Duration::ZERO,
            ..policy()
        };
        let t0 = Instant::now();
        let w = SystemTime::UNIX_EPOCH;
        let mut h = HostState::new(t0);
        h.finish_lookup(answer(&["192.0.2.1"], 5), t0, w, 0.0, &p);
        assert!(h.finish_lookup(answer(&["192.0.2.2"], 5), t0 + secs(5), w, 0.0, &p));
        assert_eq!(h.addresses(), set(&["192.0.2.2"]));
    }

    #[test]
    fn failures_keep_addresses_and_back_off() {
        let p = policy();
        let t0 = Instant::now();
        let w = SystemTime::UNIX_EPOCH;
        let mut h = HostState::new(t0);
        h.finish_lookup(answer(&["192.0.2.1"], 30), t0, w, 0.0, &p);

        let mut t = t0 + secs(30);
        let mut delays = Vec::new();
        for _ in 0..8 {
            assert!(h.is_due(t));
            h.start_lookup();
            assert!(!h.finish_lookup(Outcome::Failed("timed out".into()), t, w, 0.0, &p));
            let next = h.next_wakeup(&p).expect("a failing host keeps retrying");
            delays.push((next - t).as_secs());
            t = next;
        }
        assert_eq!(delays, vec![1, 2, 4, 8, 16, 32, 60, 60]);
        let st = h.status("a", t, w, &p);
        assert_eq!(
            st.addresses,
            set(&["192.0.2.1"]),
            "DNS blinking never empties the set"
        );
        assert_eq!(st.current, set(&["192.0.2.1"]));
        assert_eq!(st.consecutive_failures, 8);
        assert_eq!(st.last_error.as_deref(), Some("timed out"));
        assert_eq!(st.last_success, Some(w));

        // The next success resets the backoff.
        h.finish_lookup(answer(&["192.0.2.1"], 30), t, w, 0.0, &p);
        let st = h.status("a", t, w, &p);
        assert_eq!((st.consecutive_failures, st.last_error), (0, None));
        h.finish_lookup(Outcome::Failed("x".into()), t, w, 0.0, &p);
        assert_eq!(h.next_wakeup(&p), Some(t + secs(1)));
    }

    #[test]
    fn empty_answer_counts_as_failure() {
        let p = policy();
        let t0 = Instant::now();
        let w = SystemTime::UNIX_EPOCH;
        let mut h = HostState::new(t0);
        h.finish_lookup(answer(&["192.0.2.1"], 30), t0, w, 0.0, &p);
        assert!(!h.finish_lookup(answer(&[], 30), t0 + secs(30), w, 0.0, &p));
        assert_eq!(h.addresses(), set(&["192.0.2.1"]));
        assert_eq!(h.status("a", t0, w, &p).consecutive_failures, 1);
    }

    #[test]
    fn never_resolved_host_is_empty_and_retries() {
        let p = policy();
        let t0 = Instant::now();
        let w = SystemTime::UNIX_EPOCH;
        let mut h = HostState::new(t0);
        h.start_lookup();
        h.finish_lookup(Outcome::Failed("no records (NXDOMAIN)".into()), t0, w, 0.0, &p);
        let st = h.status("nx", t0, w, &p);
        assert!(st.addresses.is_empty());
        assert_eq!(st.last_success, None);
        assert_eq!(st.ttl_seconds, None);
        assert_eq!(st.next_refresh, Some(w + secs(1)));
        assert!(h.is_due(t0 + secs(1)));
    }

    #[test]
    fn reschedule_applies_new_policy_from_last_lookup() {
        let p = policy();
        let t0 = Instant::now();
        let w = SystemTime::UNIX_EPOCH;
        let mut ok = HostState::new(t0);
        ok.finish_lookup(answer(&["192.0.2.1"], 600), t0, w, 0.0, &p);
        let mut failing = HostState::new(t0);
        for _ in 0..6 {
            failing.finish_lookup(Outcome::Failed("timed out".into()), t0, w, 0.0, &p);
        }
        assert_eq!(failing.next_wakeup(&p), Some(t0 + secs(32)));
        let mut fresh = HostState::new(t0);

        let p2 = Policy {
            max_ttl: secs(60),
            retry_max: secs(10),
            ..p
        };
        for h in [&mut ok, &mut failing, &mut fresh] {
            h.reschedule(&p2);
        }
        assert_eq!(ok.next_wakeup(&p2), Some(t0 + secs(60)));
        assert_eq!(failing.next_wakeup(&p2), Some(t0 + secs(10)));
        assert_eq!(fresh.next_wakeup(&p2), Some(t0));
    }

    #[test]
    fn shorter_grace_applies_to_addresses_already_fading() {
        let p = policy();
        let t0 = Instant::now();
        let w = SystemTime::UNIX_EPOCH;
        let mut h = HostState::new(t0);
        h.finish_lookup(answer(&["192.0.2.1"], 3600), t0, w, 0.0, &p);
        h.finish_lookup(answer(&["192.0.2.2"], 3600), t0 + secs(10), w, 0.0, &p);
        let short = Policy { grace: secs(5), ..p };
        assert!(h.expire(t0 + secs(15), &short));
        assert_eq!(h.addresses(), set(&["192.0.2.2"]));
    }

    #[test]
    fn abandoned_lookup_is_due_again() {
        let t0 = Instant::now();
        let mut h = HostState::new(t0);
        h.start_lookup();
        h.abandon_lookup(t0 + secs(1));
        assert!(h.is_due(t0 + secs(1)));
    }

    #[test]
    fn wall_clock_conversion() {
        let t0 = Instant::now();
        let w = SystemTime::UNIX_EPOCH + secs(100);
        assert_eq!(to_wall(t0 + secs(5), t0, w), w + secs(5));
        let later = t0 + secs(7);
        assert_eq!(to_wall(t0, later, w), w - secs(7));
    }
}
