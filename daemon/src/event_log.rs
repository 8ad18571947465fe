//! One line per connection event on stdout: `key=value` text for people,
//! or one JSON object per line for machines. Daemon diagnostics go to stderr
//! through `tracing`, so the two never interleave within a line.

use std::io::Write;
use std::time::SystemTime;

use crate::config::LogFormat;
use crate::table::Connection;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    Connect,
    Send,
    Established,
    Failed,
    Closed,
    /// Refused by the egress policy.
    Denied,
}

impl EventKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Connect => "connect",
            EventKind::Send => "send",
            EventKind::Established => "established",
            EventKind::Failed => "failed",
            EventKind::Closed => "closed",
            EventKind::Denied => "denied",
        }
    }
}

#[derive(Debug)]
pub struct EventLog {
    format: LogFormat,
    enabled: bool,
    /// Send to journald with structured fields instead of writing stdout.
    journal: bool,
}

impl EventLog {
    pub fn new(format: LogFormat, enabled: bool, journal: bool) -> Self {
        Self {
            format,
            enabled,
            journal,
        }
    }

    pub fn log(&self, kind: EventKind, c: &Connection) {
        if !self.enabled {
            return;
        }
        if self.journal {
            return self.journal(kind, c);
        }
        let line = match self.format {
            LogFormat::Json => self.json(kind, c),
            LogFormat::Text => self.text(kind, c),
        };
        let mut out = std::io::stdout().lock();
        // A closed stdout must not take the daemon down.
        let _ = out.write_all(line.as_bytes()).and_then(|()| out.flush());
    }

    /// journalctl shows the text line; PID, COMM, EXE, DEST, HOST, UNIT and
    /// CONTAINER are fields to filter on (`journalctl DEST=10.0.0.1:443`).
    fn journal(&self, kind: EventKind, c: &Connection) {
        let p = &c.process;
        let line = self.text(kind, c);
        tracing::info!(
            target: "connectracer::event",
            event = kind.as_str(),
            pid = p.pid,
            comm = p.comm.as_str(),
            exe = p.exe.as_deref(),
            uid = p.uid,
            dest = %c.dst,
            protocol = c.protocol.as_str(),
            host = c.host.as_deref(),
            unit = p.unit.as_deref(),
            container = p.container_id.as_deref(),
            "{}",
            line.trim_end()
        );
    }

    fn json(&self, kind: EventKind, c: &Connection) -> String {
        let mut v = serde_json::to_value(c).unwrap_or_default();
        if let Some(obj) = v.as_object_mut() {
            obj.insert(
                "timestamp".into(),
                humantime::format_rfc3339_micros(SystemTime::now())
                    .to_string()
                    .into(),
            );
            obj.insert("event".into(), kind.as_str().into());
        }
        let mut s = v.to_string();
        s.push('\n');
        s
    }

    fn text(&self, kind: EventKind, c: &Connection) -> String {
        use std::fmt::Write as _;
        let p = &c.process;
        let mut s = format!(
            "{} {} {} ",
            humantime::format_rfc3339_millis(SystemTime::now()),
            kind.as_str(),
            c.protocol.as_str()
        );
        if let Some(src) = c.src {
            let _ = write!(s, "{src} -> ");
        }
        let _ = write!(s, "{} pid={} comm={:?} uid={}", c.dst, p.pid, p.comm, p.uid);
        if let Some(u) = &p.user {
            let _ = write!(s, "({u})");
        }
        let opt = |s: &mut String, k: &str, v: Option<&str>| {
            if let Some(v) = v {
                let _ = write!(s, " {k}={v:?}");
            }
        };
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
        opt(&mut s, "host", c.host.as_deref());
        opt(&mut s, "label", c.label.as_deref());
        if c.verdict != connectracer_proto::Verdict::Allow {
            opt(&mut s, "verdict", Some(c.verdict.as_str()));
            if let Some(r) = c.policy_rule {
                let _ = write!(s, " rule={r}");
            }
        }
        opt(&mut s, "reason", c.fail_reason.map(|r| r.as_str()));
        if let Some(d) = c.duration_ns {
            let _ = write!(s, " duration={:?}", std::time::Duration::from_nanos(d));
        }
        if let (Some(tx), Some(rx)) = (c.bytes_sent, c.bytes_received) {
            let _ = write!(s, " sent={tx} received={rx}");
        }
        s.push('\n');
        s
    }
}
