//! Event lines, text or JSON. A process's attribution is formatted once
//! and reused for each of its events (the cache is keyed by the shared
//! `Arc<Process>`, which the attributor hands out per process); JSON is
//! written by serde straight from borrowed fields, with no Value tree.

use std::collections::HashMap;
use std::fmt::{self, Write as _};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use connectracer_proto::{ConnState, FailReason, Process, Protocol, Verdict};
use serde::Serialize;
use serde_json::value::RawValue;

use super::WatchEvent;

/// Distinct processes remembered; beyond it the cache starts over.
const MAX_CACHED: usize = 4096;

#[derive(Debug)]
struct Cached {
    /// Held so that the address keying the entry is not reused meanwhile.
    _process: Arc<Process>,
    json: Option<Box<RawValue>>,
    text: Option<String>,
}

/// Formats lines for one writer (no sharing, no locks).
#[derive(Debug, Default)]
pub struct Formatter {
    procs: HashMap<usize, Cached>,
}

/// A duration as people read it: 245.1ms, 12.4s, 3m05s; never
/// 0.12285900000000001.
pub fn human_duration(d: Duration) -> impl fmt::Display {
    HumanDuration(d)
}

struct HumanDuration(Duration);

impl fmt::Display for HumanDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ns = self.0.as_nanos();
        let secs = self.0.as_secs();
        match ns {
            0..1_000 => write!(f, "{ns}ns"),
            1_000..1_000_000 => write!(f, "{:.1}µs", ns as f64 / 1e3),
            1_000_000..1_000_000_000 => write!(f, "{:.1}ms", ns as f64 / 1e6),
            _ if secs < 60 => write!(f, "{:.1}s", self.0.as_secs_f64()),
            _ if secs < 3600 => write!(f, "{}m{:02}s", secs / 60, secs % 60),
            _ => write!(f, "{}h{:02}m", secs / 3600, secs % 3600 / 60),
        }
    }
}

struct Rfc3339Micros(SystemTime);

impl Serialize for Rfc3339Micros {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&humantime::format_rfc3339_micros(self.0))
    }
}

/// A JSON line: `timestamp` and `event`, then the connection's fields as
/// `Connection` serializes them (a test holds the two together).
#[derive(Serialize)]
struct JsonLine<'a> {
    timestamp: Rfc3339Micros,
    event: &'static str,
    id: u64,
    cookie: u64,
    protocol: Protocol,
    state: ConnState,
    fail_reason: Option<FailReason>,
    verdict: Verdict,
    policy_rule: Option<u32>,
    dst: SocketAddr,
    src: Option<SocketAddr>,
    host_id: Option<u32>,
    config_epoch: u32,
    host: Option<&'a str>,
    label: Option<&'a str>,
    started: Rfc3339Micros,
    duration_ns: Option<u64>,
    bytes_sent: Option<u64>,
    bytes_received: Option<u64>,
    process: &'a RawValue,
}

impl Formatter {
    fn cached(&mut self, p: &Arc<Process>) -> &mut Cached {
        if self.procs.len() >= MAX_CACHED {
            self.procs.clear();
        }
        self.procs
            .entry(Arc::as_ptr(p) as usize)
            .or_insert_with(|| Cached {
                _process: p.clone(),
                json: None,
                text: None,
            })
    }

    /// Appends one JSON line (with its newline) to `out`.
    pub fn json(&mut self, ev: &WatchEvent, out: &mut Vec<u8>) {
        let c = &ev.connection;
        let cached = self.cached(&c.process);
        let process = cached.json.get_or_insert_with(|| {
            serde_json::value::to_raw_value(&*c.process).expect("a Process always serializes")
        });
        let line = JsonLine {
            timestamp: Rfc3339Micros(ev.at),
            event: ev.kind.as_str(),
            id: c.id,
            cookie: c.cookie,
            protocol: c.protocol,
            state: c.state,
            fail_reason: c.fail_reason,
            verdict: c.verdict,
            policy_rule: c.policy_rule,
            dst: c.dst,
            src: c.src,
            host_id: c.host_id,
            config_epoch: c.config_epoch,
            host: c.host.as_deref(),
            label: c.label.as_deref(),
            started: Rfc3339Micros(c.started),
            duration_ns: c.duration_ns,
            bytes_sent: c.bytes_sent,
            bytes_received: c.bytes_received,
            process,
        };
        // Writing into a Vec fails only on allocation failure.
        let _ = serde_json::to_writer(&mut *out, &line);
        out.push(b'\n');
    }

    /// Appends one `key=value` text line (with its newline) to `out`.
    pub fn text(&mut self, ev: &WatchEvent, out: &mut Vec<u8>) {
        let line = self.text_line(ev);
        out.extend_from_slice(line.as_bytes());
        out.push(b'\n');
    }

    /// The text line without its newline (the journal's MESSAGE).
    pub fn text_line(&mut self, ev: &WatchEvent) -> String {
        let c = &ev.connection;
        let mut s = String::with_capacity(256);
        let _ = write!(
            s,
            "{} {} {} ",
            humantime::format_rfc3339_millis(ev.at),
            ev.kind.as_str(),
            c.protocol.as_str()
        );
        if let Some(src) = c.src {
            let _ = write!(s, "{src} -> ");
        }
        let _ = write!(s, "{}", c.dst);
        let cached = self.cached(&c.process);
        s.push_str(cached.text.get_or_insert_with(|| attribution_text(&c.process)));
        opt(&mut s, "host", c.host.as_deref());
        opt(&mut s, "label", c.label.as_deref());
        if c.verdict != Verdict::Allow {
            opt(&mut s, "verdict", Some(c.verdict.as_str()));
            if let Some(r) = c.policy_rule {
                let _ = write!(s, " rule={r}");
            }
        }
        opt(&mut s, "reason", c.fail_reason.map(FailReason::as_str));
        if let Some(d) = c.duration_ns {
            let _ = write!(s, " duration={}", human_duration(Duration::from_nanos(d)));
        }
        if let (Some(tx), Some(rx)) = (c.bytes_sent, c.bytes_received) {
            let _ = write!(s, " sent={tx} received={rx}");
        }
        s
    }
}

fn opt(s: &mut String, k: &str, v: Option<&str>) {
    if let Some(v) = v {
        let _ = write!(s, " {k}={v:?}");
    }
}

/// ` pid=... comm=... uid=...(user) exe=... unit=... ...`: the same for
/// every event of one process.
fn attribution_text(p: &Process) -> String {
    let mut s = String::with_capacity(160);
    let _ = write!(s, " pid={} comm={:?} uid={}", p.pid, p.comm, p.uid);
    if let Some(u) = &p.user {
        let _ = write!(s, "({u})");
    }
    opt(&mut s, "exe", p.exe.as_deref());
    opt(&mut s, "unit", p.unit.as_deref());
    opt(&mut s, "user_unit", p.user_unit.as_deref());
    opt(
        &mut s,
        "container",
        p.container_id.as_deref().map(|id| &id[..id.len().min(12)]),
    );
    opt(&mut s, "runtime", p.container_runtime.as_deref());
    opt(&mut s, "cgroup", p.cgroup.as_deref());
    s
}

/// Writes `lines` as JSON or text into one buffer; returns the offset
/// after each line, so a writer can split the buffer at line boundaries.
pub fn batch(
    f: &mut Formatter,
    json: bool,
    events: &[Arc<WatchEvent>],
    out: &mut Vec<u8>,
    ends: &mut Vec<usize>,
) {
    out.clear();
    ends.clear();
    for ev in events {
        if json {
            f.json(ev, out);
        } else {
            f.text(ev, out);
        }
        ends.push(out.len());
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::sinks::EventKind;
    use crate::table::Connection;

    pub fn process() -> Process {
        Process {
            pid: 4242,
            tid: 4242,
            ppid: Some(1),
            uid: 1000,
            user: Some("alice".into()),
            comm: "curl".into(),
            exe: Some("/usr/bin/curl".into()),
            argv: vec!["curl".into(), "-sI".into()],
            cgroup_id: 7,
            cgroup: Some("/user.slice/session-3.scope".into()),
            unit: Some("session-3.scope".into()),
            user_unit: None,
            slice: Some("user.slice".into()),
            container_runtime: None,
            container_id: None,
            pod_uid: None,
        }
    }

    pub fn event(kind: EventKind) -> WatchEvent {
        WatchEvent {
            kind,
            at: SystemTime::UNIX_EPOCH + Duration::from_millis(1_795_000_000_123),
            connection: Connection {
                id: 3,
                cookie: 99,
                protocol: Protocol::Tcp,
                state: ConnState::Closed,
                fail_reason: None,
                verdict: Verdict::WouldDeny,
                policy_rule: Some(2),
                dst: "93.184.215.14:443".parse().unwrap(),
                src: Some("10.0.2.15:51234".parse().unwrap()),
                host_id: Some(1),
                config_epoch: 4,
                host: Some("example.com".into()),
                label: None,
                started: SystemTime::UNIX_EPOCH + Duration::from_secs(1_795_000_000),
                duration_ns: Some(245_123_456),
                bytes_sent: Some(517),
                bytes_received: Some(4821),
                process: Arc::new(process()),
            },
        }
    }

    #[test]
    fn json_line_is_the_connection_plus_timestamp_and_event() {
        let ev = event(EventKind::Closed);
        let mut out = Vec::new();
        let mut f = Formatter::default();
        f.json(&ev, &mut out);
        f.json(&ev, &mut out);
        let text = String::from_utf8(out).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0], lines[1], "the cached attribution gives the same line");
        let got: serde_json::Value = serde_json::from_str(lines[0]).unwrap();
        let mut want = serde_json::to_value(&ev.connection).unwrap();
        want["timestamp"] = "2026-11-18T11:06:40.123000Z".into();
        want["event"] = "closed".into();
        assert_eq!(got, want);
    }

    #[test]
    fn text_line_reads_like_before_with_a_human_duration() {
        let mut f = Formatter::default();
        assert_eq!(
            f.text_line(&event(EventKind::Closed)),
            "2026-11-18T11:06:40.123Z closed tcp 10.0.2.15:51234 -> 93.184.215.14:443 pid=4242 comm=\"curl\" uid=1000(alice) exe=\"/usr/bin/curl\" unit=\"session-3.scope\" cgroup=\"/user.slice/session-3.scope\" host=\"example.com\" verdict=\"would_deny\" rule=2 duration=245.1ms sent=517 received=4821"
        );
    }

    #[test]
    fn durations_read_as_people_write_them() {
        let h = |ns: u64| human_duration(Duration::from_nanos(ns)).to_string();
        assert_eq!(h(0), "0ns");
        assert_eq!(h(12_500), "12.5µs");
        assert_eq!(h(122_859_000), "122.9ms");
        assert_eq!(h(12_400_000_000), "12.4s");
        assert_eq!(h(185_000_000_000), "3m05s");
        assert_eq!(h(7_500_000_000_000), "2h05m");
    }
}
