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
use connectracer_proto::{ContainerMeta, FailReason, Process, Verdict};
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

/// A container's fields, formatted once for all its events.
#[derive(Debug)]
struct CachedContainer {
    /// Held so that the address keying the entry is not reused meanwhile.
    _meta: Arc<ContainerMeta>,
    /// `,"container_name":"web",...`: its fields as serde writes them
    /// flattened into the connection.
    json: Vec<u8>,
    /// ` container_name="web" image=...`.
    text: String,
}

/// Formats lines for one writer (no sharing, no locks).
#[derive(Debug, Default)]
pub struct Formatter {
    procs: HashMap<usize, Cached>,
    containers: HashMap<usize, CachedContainer>,
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
    #[serde(flatten)]
    container: &'a ContainerMeta,
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

fn container_json(m: &ContainerMeta) -> Vec<u8> {
    if m.is_empty() {
        return Vec::new();
    }
    let mut object = serde_json::to_vec(m).expect("a ContainerMeta always serializes");
    // `{"container_name":...}` to `,"container_name":...`.
    object.pop();
    object[0] = b',';
    object
}

fn container_text(m: &ContainerMeta) -> String {
    let mut s = String::new();
    opt(&mut s, "container_name", m.container_name.as_deref());
    opt(&mut s, "image", m.container_image.as_deref());
    opt(&mut s, "pod", m.pod().as_deref());
    if !m.pod_labels.is_empty() {
        let labels: Vec<String> = m.pod_labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
        opt(&mut s, "pod_labels", Some(&labels.join(",")));
    }
    s
}

impl Formatter {
    fn container(&mut self, m: &Arc<ContainerMeta>) -> &CachedContainer {
        if self.containers.len() >= MAX_CACHED {
            self.containers.clear();
        }
        self.containers
            .entry(Arc::as_ptr(m) as usize)
            .or_insert_with(|| CachedContainer {
                _meta: m.clone(),
                json: container_json(m),
                text: container_text(m),
            })
    }

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
        if !c.container.is_empty() {
            out.extend_from_slice(&self.container(&c.container).json);
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
        if !c.container.is_empty() {
            s.push_str(&self.container(&c.container).text);
        }
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
pub(super) mod tests;
