//! Event lines, text or JSON. A process's attribution is formatted once
//! and reused for each of its events (the cache is keyed by the shared
//! `Arc<Process>`, which the attributor hands out per process); JSON is
//! written by serde straight from borrowed fields, with no Value tree.

// Looked up for every line; SipHash showed in profiles.
type HashMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;
use std::fmt::{self, Write as _};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

#[cfg(test)]
use connectracer_proto::{ConnState, Protocol};
use connectracer_proto::{FailReason, Process, Verdict};
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
    clock: Clock,
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

/// RFC 3339 with microseconds, `2026-11-29T15:25:26.354172Z`: the date and
/// time of day are formatted once per second and reused, since a batch's
/// events fall within a few seconds of each other.
#[derive(Debug, Default)]
struct Clock {
    second: Option<u64>,
    /// `2026-11-29T15:25:26.` for `second`.
    prefix: [u8; 20],
}

/// A formatted timestamp; serializes as a plain string.
struct Stamp([u8; 27]);

impl Serialize for Stamp {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        // Built from ASCII digits and punctuation only.
        s.serialize_str(std::str::from_utf8(&self.0).unwrap_or_default())
    }
}

impl Clock {
    fn stamp(&mut self, t: SystemTime) -> Stamp {
        let since = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
        let secs = since.as_secs();
        if self.second != Some(secs) {
            let whole = SystemTime::UNIX_EPOCH + Duration::from_secs(secs);
            // "YYYY-MM-DDTHH:MM:SSZ": keep all but the Z, add the dot.
            let text = humantime::format_rfc3339_seconds(whole).to_string();
            let n = text.len().min(19);
            self.prefix[..n].copy_from_slice(&text.as_bytes()[..n]);
            self.prefix[19] = b'.';
            self.second = Some(secs);
        }
        let mut out = [0u8; 27];
        out[..20].copy_from_slice(&self.prefix);
        let mut micros = since.subsec_micros();
        for i in (20..26).rev() {
            out[i] = b'0' + (micros % 10) as u8;
            micros /= 10;
        }
        out[26] = b'Z';
        Stamp(out)
    }
}

/// The JSON line as serde writes it: the reference `Formatter::json` is
/// tested against (a test holds this and `Connection` together). Fields
/// without a value are left out, which makes a line about a third shorter.
#[cfg(test)]
#[derive(Serialize)]
struct JsonLine<'a> {
    timestamp: Stamp,
    event: &'static str,
    id: u64,
    cookie: u64,
    protocol: Protocol,
    state: ConnState,
    #[serde(skip_serializing_if = "Option::is_none")]
    fail_reason: Option<FailReason>,
    verdict: Verdict,
    #[serde(skip_serializing_if = "Option::is_none")]
    policy_rule: Option<u32>,
    dst: SocketAddr,
    #[serde(skip_serializing_if = "Option::is_none")]
    src: Option<SocketAddr>,
    #[serde(skip_serializing_if = "Option::is_none")]
    host_id: Option<u32>,
    config_epoch: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    host: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    label: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    dns_name: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    dns_source: Option<connectracer_proto::NameSource>,
    started: Stamp,
    #[serde(skip_serializing_if = "Option::is_none")]
    duration_ns: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    bytes_sent: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    bytes_received: Option<u64>,
    process: &'a RawValue,
}

/// A process as JSON, without its null fields (see `JsonLine`).
fn process_json(p: &Process) -> Box<RawValue> {
    let mut v = serde_json::to_value(p).expect("a Process always serializes");
    if let Some(o) = v.as_object_mut() {
        o.retain(|_, v| !v.is_null());
    }
    serde_json::value::to_raw_value(&v).expect("a JSON value always serializes")
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

    /// Appends one JSON line (with its newline) to `out`: `JsonLine`'s
    /// fields in its order, written directly. Half the sink's time went to
    /// serde's per-field calls and escaping of strings that are known to
    /// need none (names of variants, numbers, addresses, timestamps); the
    /// strings that can hold anything (host, label) and the process go
    /// through serde_json.
    pub fn json(&mut self, ev: &WatchEvent, out: &mut Vec<u8>) {
        let c = &ev.connection;
        let timestamp = self.clock.stamp(ev.at);
        let started = self.clock.stamp(c.started);
        out.extend_from_slice(b"{\"timestamp\":\"");
        out.extend_from_slice(&timestamp.0);
        out.push(b'"');
        text(out, "event", ev.kind.as_str());
        number(out, "id", c.id);
        number(out, "cookie", c.cookie);
        text(out, "protocol", c.protocol.as_str());
        text(out, "state", c.state.as_str());
        if let Some(r) = c.fail_reason {
            text(out, "fail_reason", r.as_str());
        }
        text(out, "verdict", c.verdict.as_str());
        if let Some(r) = c.policy_rule {
            number(out, "policy_rule", r.into());
        }
        address(out, "dst", c.dst);
        if let Some(src) = c.src {
            address(out, "src", src);
        }
        if let Some(h) = c.host_id {
            number(out, "host_id", h.into());
        }
        number(out, "config_epoch", c.config_epoch.into());
        for (key, v) in [("host", &c.host), ("label", &c.label), ("dns_name", &c.dns_name)] {
            if let Some(v) = v {
                out.extend_from_slice(b",\"");
                out.extend_from_slice(key.as_bytes());
                out.extend_from_slice(b"\":");
                // Writing into a Vec fails only on allocation failure.
                let _ = serde_json::to_writer(&mut *out, v);
            }
        }
        if let Some(src) = c.dns_source {
            text(out, "dns_source", src.as_str());
        }
        out.extend_from_slice(b",\"started\":\"");
        out.extend_from_slice(&started.0);
        out.push(b'"');
        for (key, v) in [
            ("duration_ns", c.duration_ns),
            ("bytes_sent", c.bytes_sent),
            ("bytes_received", c.bytes_received),
        ] {
            if let Some(v) = v {
                number(out, key, v);
            }
        }
        out.extend_from_slice(b",\"process\":");
        let cached = self.cached(&c.process);
        let process = cached.json.get_or_insert_with(|| process_json(&c.process));
        out.extend_from_slice(process.get().as_bytes());
        out.extend_from_slice(b"}\n");
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
        opt(&mut s, "name", c.dns_name.as_deref());
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

/// `,"key":"value"` for a value known to need no escaping. Inlined, so
/// that the key is a constant and its copy no call to memcpy (a line is a
/// score of small copies; the calls were a fifth of the writer's time).
#[inline(always)]
fn text(out: &mut Vec<u8>, key: &str, value: &str) {
    out.extend_from_slice(b",\"");
    out.extend_from_slice(key.as_bytes());
    out.extend_from_slice(b"\":\"");
    out.extend_from_slice(value.as_bytes());
    out.push(b'"');
}

#[inline(always)]
fn number(out: &mut Vec<u8>, key: &str, value: u64) {
    out.extend_from_slice(b",\"");
    out.extend_from_slice(key.as_bytes());
    out.extend_from_slice(b"\":");
    out.extend_from_slice(itoa::Buffer::new().format(value).as_bytes());
}

/// An address as `Display` writes it (serde's form too), IPv4 without the
/// formatting machinery.
#[inline(always)]
fn address(out: &mut Vec<u8>, key: &str, a: SocketAddr) {
    out.extend_from_slice(b",\"");
    out.extend_from_slice(key.as_bytes());
    out.extend_from_slice(b"\":\"");
    match a {
        SocketAddr::V4(v4) => {
            let mut digits = itoa::Buffer::new();
            for (i, octet) in v4.ip().octets().iter().enumerate() {
                if i > 0 {
                    out.push(b'.');
                }
                out.extend_from_slice(digits.format(*octet).as_bytes());
            }
            out.push(b':');
            out.extend_from_slice(digits.format(v4.port()).as_bytes());
        }
        SocketAddr::V6(_) => {
            let _ = write!(VecWriter(out), "{a}");
        }
    }
    out.push(b'"');
}

/// `fmt::Write` into a byte buffer.
struct VecWriter<'a>(&'a mut Vec<u8>);

impl fmt::Write for VecWriter<'_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        self.0.extend_from_slice(s.as_bytes());
        Ok(())
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
pub fn batch<'a>(
    f: &mut Formatter,
    json: bool,
    events: impl Iterator<Item = &'a WatchEvent>,
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
                dns_name: None,
                dns_source: None,
                started: SystemTime::UNIX_EPOCH + Duration::from_secs(1_795_000_000),
                duration_ns: Some(245_123_456),
                bytes_sent: Some(517),
                bytes_received: Some(4821),
                container: Default::default(),
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
        let no_nulls = |v: &mut serde_json::Value| {
            v.as_object_mut().unwrap().retain(|_, v| !v.is_null());
        };
        no_nulls(&mut want);
        no_nulls(&mut want["process"]);
        assert!(want.get("label").is_none() && want["process"].get("pod_uid").is_none());
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

    /// What serde writes for the event: the reference.
    fn serde_line(ev: &WatchEvent) -> String {
        let c = &ev.connection;
        let mut clock = Clock::default();
        let process = process_json(&c.process);
        let line = JsonLine {
            timestamp: clock.stamp(ev.at),
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
            dns_name: c.dns_name.as_deref(),
            dns_source: c.dns_source,
            started: clock.stamp(c.started),
            duration_ns: c.duration_ns,
            bytes_sent: c.bytes_sent,
            bytes_received: c.bytes_received,
            process: &process,
        };
        serde_json::to_string(&line).unwrap()
    }

    #[test]
    fn the_direct_json_writer_matches_serde_for_every_variant() {
        use connectracer_proto::{ConnState as S, FailReason as F, NameSource, Protocol as P, Verdict as V};
        let mut f = Formatter::default();
        let mut n = 0;
        for (i, kind) in EventKind::ALL.into_iter().enumerate() {
            for state in [S::Connecting, S::Established, S::Failed, S::Closed] {
                for verdict in [V::Allow, V::Deny, V::WouldDeny] {
                    let mut ev = event(kind);
                    let c = &mut ev.connection;
                    c.state = state;
                    c.verdict = verdict;
                    c.protocol = if i % 2 == 0 { P::Tcp } else { P::Udp };
                    c.fail_reason = [None, Some(F::Denied), Some(F::from_errno(111))][n % 3];
                    if n % 2 == 0 {
                        c.dst = "[2001:db8::1%3]:8443".parse().unwrap();
                        c.src = None;
                        c.host = Some("we\"ird\\name\u{1}é".into());
                        c.label = Some("a\nb".into());
                        c.dns_name = Some("cdn.\"x\".test".into());
                        c.dns_source = [Some(NameSource::Process), Some(NameSource::Cgroup), None][n % 3];
                        c.policy_rule = None;
                        c.host_id = None;
                        c.duration_ns = None;
                        c.bytes_sent = None;
                        c.bytes_received = Some(u64::MAX);
                    }
                    let mut out = Vec::new();
                    f.json(&ev, &mut out);
                    assert_eq!(out.pop(), Some(b'\n'));
                    // Byte for byte: same keys, order, escapes and numbers.
                    assert_eq!(String::from_utf8(out).unwrap(), serde_line(&ev));
                    n += 1;
                }
            }
        }
    }

    #[test]
    fn timestamps_match_humantime_across_seconds_and_days() {
        let mut clock = Clock::default();
        let base = SystemTime::UNIX_EPOCH + Duration::from_secs(1_795_000_000);
        for offset_us in [
            0u64,
            1,
            999_999,
            1_000_000,
            1_000_001,
            86_399_999_999,
            86_400_000_000,
        ] {
            let t = base + Duration::from_micros(offset_us);
            let got = clock.stamp(t);
            let want = humantime::format_rfc3339_micros(t).to_string();
            assert_eq!(std::str::from_utf8(&got.0).unwrap(), want);
        }
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
