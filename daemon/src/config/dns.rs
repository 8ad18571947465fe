//! The validated model of `[dns]`: how watched hostnames are resolved.

use std::net::SocketAddr;
use std::time::Duration;

/// How the watcher resolves and how it paces itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsConfig {
    /// Explicit nameservers (UDP+TCP port 53 unless given); empty = the system resolver (/etc/resolv.conf, and /etc/hosts).
    pub nameservers: Vec<SocketAddr>,
    /// Floor for the refresh interval, so a zero or tiny TTL cannot turn the
    /// watcher into a query flood.
    pub min_ttl: Duration,
    /// Ceiling for the refresh interval, so a long TTL (or a hosts-file
    /// entry) cannot hide a change for days.
    pub max_ttl: Duration,
    /// First retry delay after a failed lookup; it doubles per consecutive
    /// failure, so a dead server is not hammered but a blip heals fast.
    pub retry_min: Duration,
    /// Cap of the doubling retry delay: how long a recovered server may at
    /// worst go unnoticed.
    pub retry_max: Duration,
    /// How long an address that left the answer stays matched, because
    /// clients that resolved it earlier keep (re)connecting to it for a while.
    pub grace: Duration,
}

impl Default for DnsConfig {
    fn default() -> Self {
        Self {
            nameservers: Vec::new(),
            min_ttl: Duration::from_secs(5),
            max_ttl: Duration::from_secs(3600),
            retry_min: Duration::from_secs(1),
            retry_max: Duration::from_secs(60),
            grace: Duration::from_secs(300),
        }
    }
}

impl DnsConfig {
    /// The first setting the scheduler cannot honour: a zero `min_ttl` or
    /// `retry_min` would let a zero-TTL answer or a failing server drive a
    /// busy loop of queries, and an inverted range has no meaning. Checked
    /// when the configuration is read and again by the watcher it is given to.
    pub fn problem(&self) -> Option<&'static str> {
        if self.min_ttl.is_zero() {
            Some("dns.min_ttl must be greater than zero")
        } else if self.retry_min.is_zero() {
            Some("dns.retry_min must be greater than zero")
        } else if self.min_ttl > self.max_ttl {
            Some("dns.min_ttl is longer than dns.max_ttl")
        } else if self.retry_min > self.retry_max {
            Some("dns.retry_min is longer than dns.retry_max")
        } else {
            None
        }
    }
}
