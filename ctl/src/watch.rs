//! `tracectl watch`: events as they happen, one line each.

use std::fmt::Write as _;
use std::io::Write as _;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use connectracer_proto::api::{WatchParams, WatchReply};
use connectracer_proto::{Connection, Verdict};

use crate::client::ClientError;
use crate::out::{self, paint, Format, Paint, Printer};
use crate::output::{duration, short_id};
use crate::transport::Transport;

/// How long a filter may match nothing before watch says so.
const QUIET_NOTICE: Duration = Duration::from_secs(2);

/// Streams events until the daemon ends the stream or stdout goes away.
/// With a filter, says once on stderr when nothing has matched it after
/// [`QUIET_NOTICE`]: a typo in `--unit` otherwise looks like a quiet host.
pub fn watch(c: &mut Transport, p: Printer, filter: &WatchParams) -> Result<(), ClientError> {
    let matched = Arc::new(AtomicBool::new(false));
    if *filter != WatchParams::default() {
        let matched = matched.clone();
        std::thread::spawn(move || {
            std::thread::sleep(QUIET_NOTICE);
            if !matched.load(Ordering::Relaxed) {
                eprintln!(
                    "tracectl: no event has matched the filter in {}s; still watching",
                    QUIET_NOTICE.as_secs()
                );
            }
        });
    }
    let mut stdout = std::io::stdout().lock();
    c.watch(filter, |r: WatchReply| {
        matched.store(true, Ordering::Relaxed);
        let line = match p.format {
            Format::Json | Format::Jsonl => envelope(&r).to_string(),
            // The kernel's time of the event; the arrival time without one.
            Format::Text | Format::Wide => line(&r, r.time().unwrap_or_else(SystemTime::now), p.colour),
        };
        if let Err(e) = writeln!(stdout, "{line}").and_then(|()| stdout.flush()) {
            out::gone(&e);
        }
        true
    })
}

/// `{"event": {"kind": ..., "connection": ...}}` or `{"missed": N}`: one
/// top-level key a line, as every other command's JSON.
pub fn envelope(r: &WatchReply) -> serde_json::Value {
    match r {
        WatchReply::Event {
            event,
            time,
            connection,
        } => serde_json::json!({
            "event": { "kind": event, "time": time, "connection": connection }
        }),
        WatchReply::Missed { missed } => serde_json::json!({ "missed": missed }),
    }
}

/// `HH:MM:SS.mmm` in local time.
fn clock(t: SystemTime) -> String {
    let since = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs() as libc::time_t;
    // SAFETY: localtime_r writes only into `tm`, which lives on this stack
    // frame; a zeroed `tm` is a valid value of the plain C struct.
    let tm = unsafe {
        let mut tm: libc::tm = std::mem::zeroed();
        libc::localtime_r(&secs, &mut tm);
        tm
    };
    format!(
        "{:02}:{:02}:{:02}.{:03}",
        tm.tm_hour,
        tm.tm_min,
        tm.tm_sec,
        since.subsec_millis()
    )
}

/// Where a connection's process runs: its unit, else its container.
fn place(c: &Connection) -> Option<String> {
    let p = &c.process;
    let unit = p
        .unit
        .as_ref()
        .or(p.user_unit.as_ref())
        .map(|u| format!("unit={u}"));
    // The runtime's name once known; the id meanwhile (or without one).
    let container = match (&c.container.container_name, &p.container_id) {
        (Some(name), _) => Some(format!("container={name}")),
        (None, Some(id)) if unit.is_none() => Some(format!("container={}", short_id(id))),
        _ => None,
    };
    let pod = c.container.pod().map(|pod| format!("pod={pod}"));
    let parts: Vec<String> = [unit, container, pod].into_iter().flatten().collect();
    (!parts.is_empty()).then(|| parts.join(" "))
}

/// One line per streamed event: time, kind, protocol, local → remote, the
/// process, where it runs, what it reached, the verdict, and on ends how
/// long it lasted and what it carried.
pub fn line(r: &WatchReply, at: SystemTime, colour: bool) -> String {
    let (event, c) = match r {
        WatchReply::Missed { missed } => {
            return format!(
                "{} ({missed} events missed: this client read too slowly)",
                clock(at)
            )
        }
        WatchReply::Event {
            event, connection, ..
        } => (event, connection),
    };
    let p = &c.process;
    let kind = match event.as_str() {
        "failed" | "denied" => paint(colour, Paint::Red, &format!("{event:<11}")),
        "closed" => paint(colour, Paint::Dim, &format!("{event:<11}")),
        _ => format!("{event:<11}"),
    };
    let mut s = format!("{} {kind} {} ", clock(at), c.protocol.as_str());
    let src = c.src.map_or_else(|| "*".to_string(), |s| s.to_string());
    let user = p.user.clone().unwrap_or_else(|| p.uid.to_string());
    let _ = write!(s, "{src} → {} pid={} comm={} user={user}", c.dst, p.pid, p.comm);
    if let Some(place) = place(c) {
        let _ = write!(s, " {place}");
    }
    if let Some(h) = c.label.as_ref().or(c.host.as_ref()) {
        let _ = write!(s, " host={h}");
    } else if let Some(n) = &c.dns_name {
        let _ = write!(s, " name={n}");
    }
    let verdict = format!("verdict={}", c.verdict.as_str());
    let _ = match c.verdict {
        Verdict::Allow => write!(s, " {verdict}"),
        Verdict::WouldDeny => write!(s, " {}", paint(colour, Paint::Yellow, &verdict)),
        Verdict::Deny => write!(s, " {}", paint(colour, Paint::Red, &verdict)),
    };
    if let Some(rule) = c.policy_rule {
        let _ = write!(s, " rule={rule}");
    }
    if let Some(r) = c.fail_reason {
        let _ = write!(s, " reason={}", r.as_str());
    }
    if matches!(event.as_str(), "closed" | "failed") {
        if let Some(d) = c.duration_ns {
            let _ = write!(s, " duration={}", duration(d));
        }
        if let (Some(tx), Some(rx)) = (c.bytes_sent, c.bytes_received) {
            let _ = write!(s, " sent={tx} received={rx}");
        }
    }
    s
}
