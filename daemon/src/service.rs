//! The systemd service protocol (sd_notify): readiness, reload and stop
//! notifications, a one-line status, and watchdog keep-alives. Every call
//! is a no-op outside systemd (no NOTIFY_SOCKET).

use std::time::Duration;

use sd_notify::NotifyState;

fn send(states: &[NotifyState]) {
    if let Err(e) = sd_notify::notify(states) {
        tracing::debug!("sd_notify: {e}");
    }
}

/// READY=1 with a status line: only once programs are attached and the
/// control socket listens.
pub fn ready(status: &str) {
    send(&[NotifyState::Ready, NotifyState::Status(status)]);
}

/// RELOADING=1 with the CLOCK_MONOTONIC timestamp systemd (253+) expects;
/// READY=1 follows when the reload is done, applied or not.
pub fn reloading() {
    match NotifyState::monotonic_usec_now() {
        Ok(now) => send(&[NotifyState::Reloading, now]),
        Err(_) => send(&[NotifyState::Reloading]),
    }
}

pub fn status(status: &str) {
    send(&[NotifyState::Status(status)]);
}

pub fn stopping() {
    send(&[NotifyState::Stopping, NotifyState::Status("stopping")]);
}

/// How often to send WATCHDOG=1 (half of WatchdogSec), if the unit has a
/// watchdog.
pub fn watchdog_interval() -> Option<Duration> {
    sd_notify::watchdog_enabled().map(|d| d / 2)
}

pub fn watchdog() {
    send(&[NotifyState::Watchdog]);
}

/// What is traced, for `STATUS=`: "tracing 3 hosts, 12 addresses, 0 drops"
/// under `trace = "watched"`; under `trace = "all"` the watched hosts only
/// label events, so the count of them does not say what is traced ("tracing
/// 0 hosts" read as tracing nothing).
pub fn summary(trace_all: bool, hosts: usize, addresses: usize, drops: u64, reload_error: bool) -> String {
    let mut s = if trace_all {
        format!("tracing all connections ({hosts} watched hosts, {addresses} addresses), {drops} drops")
    } else {
        format!("tracing {hosts} hosts, {addresses} addresses, {drops} drops")
    };
    if reload_error {
        s.push_str("; last reload failed, see tracectl stats");
    }
    s
}

#[cfg(test)]
mod summary_tests {
    use super::*;

    #[test]
    fn trace_all_does_not_read_as_tracing_nothing() {
        assert_eq!(
            summary(true, 0, 0, 2, false),
            "tracing all connections (0 watched hosts, 0 addresses), 2 drops"
        );
        assert_eq!(
            summary(false, 3, 12, 0, true),
            "tracing 3 hosts, 12 addresses, 0 drops; last reload failed, see tracectl stats"
        );
    }
}
