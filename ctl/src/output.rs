//! Human-readable tables.

use std::fmt::Write as _;
use std::time::SystemTime;

use connectracer_proto::api::{HostInfo, Stats, WatchReply};
use connectracer_proto::Connection;

fn age(t: SystemTime) -> String {
    let secs = SystemTime::now()
        .duration_since(t)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    match secs {
        s if s < 120 => format!("{s}s"),
        s if s < 7200 => format!("{}m", s / 60),
        s => format!("{}h", s / 3600),
    }
}

/// One row per connection, aligned columns.
pub fn connections(conns: &[Connection]) -> String {
    let header = [
        "PID",
        "COMM",
        "USER",
        "PROTO",
        "STATE",
        "LOCAL",
        "REMOTE",
        "HOST",
        "UNIT",
        "CONTAINER",
        "AGE",
    ];
    let rows: Vec<[String; 11]> = conns
        .iter()
        .map(|c| {
            let p = &c.process;
            let state = match c.fail_reason {
                Some(r) => format!("{}({})", c.state.as_str(), r.as_str()),
                None => c.state.as_str().to_string(),
            };
            [
                p.pid.to_string(),
                p.comm.clone(),
                p.user.clone().unwrap_or_else(|| p.uid.to_string()),
                c.protocol.as_str().to_string(),
                state,
                c.src.map_or_else(|| "-".into(), |s| s.to_string()),
                c.dst.to_string(),
                c.label
                    .clone()
                    .or_else(|| c.host.clone())
                    .unwrap_or_else(|| "-".into()),
                p.unit.clone().unwrap_or_else(|| "-".into()),
                p.container_id
                    .as_deref()
                    .map_or_else(|| "-".into(), |id| id[..id.len().min(12)].to_string()),
                age(c.started),
            ]
        })
        .collect();
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in &rows {
        for (w, cell) in widths.iter_mut().zip(r) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: &mut dyn Iterator<Item = &str>| {
        let mut l = String::new();
        for (i, (cell, w)) in cells.zip(&widths).enumerate() {
            if i + 1 == widths.len() {
                l.push_str(cell);
            } else {
                let _ = write!(l, "{cell:<w$}  ");
            }
        }
        out.push_str(l.trim_end());
        out.push('\n');
    };
    line(&mut header.iter().copied());
    for r in &rows {
        line(&mut r.iter().map(String::as_str));
    }
    out
}

pub fn stats(s: &Stats) -> String {
    let mut out = counters(s);
    for sink in &s.sinks {
        out.push_str(&format!(
            "sink {:<14} {:<7} {} events, {} written, {} lost, {} queued{}\n",
            sink.name,
            sink.kind,
            sink.events,
            sink.written,
            sink.lost,
            sink.queued,
            sink.last_error
                .as_deref()
                .map(|e| format!(" (failing: {e})"))
                .unwrap_or_default(),
        ));
    }
    out
}

fn counters(s: &Stats) -> String {
    let k = &s.kernel;
    format!(
        "uptime              {:.0}s\n\
         kernel connects     {}\n\
         kernel sendmsg      {} new, {} repeated\n\
         unwatched           {}\n\
         events submitted    {}\n\
         events dropped      {} (per CPU: {:?})\n\
         ring buffer         {} of {} bytes pending\n\
         records read        {}\n\
         connections traced  {}\n\
         table               {} open, {} closed ({} + {} evicted)\n\
         processes cached    {}\n\
         config epoch        {} ({} reloads, {} failed){}\n",
        s.uptime_seconds,
        k.connects,
        k.sendmsg_new,
        k.sendmsg_dup,
        k.unwatched,
        k.events,
        k.drops,
        k.drops_per_cpu,
        k.ring_pending_bytes,
        k.ring_size_bytes,
        s.records,
        s.connections,
        s.table_open,
        s.table_closed,
        s.evicted_open,
        s.evicted_closed,
        s.processes,
        s.config_epoch,
        s.reloads,
        s.reload_failures,
        s.last_reload_error
            .as_deref()
            .map(|e| format!("\nlast reload error   {e}"))
            .unwrap_or_default(),
    )
}

/// One line per watched host.
pub fn hosts(hosts: &[HostInfo]) -> String {
    let mut out = String::new();
    for h in hosts {
        let ports = if h.ports.is_empty() {
            "all ports".to_string()
        } else {
            h.ports.join(",")
        };
        let _ = write!(out, "{} [{}] {ports}", h.name, h.kind);
        if let Some(l) = &h.label {
            let _ = write!(out, " label={l}");
        }
        let addrs = if h.addresses.is_empty() {
            "-".to_string()
        } else {
            h.addresses.join(",")
        };
        let _ = write!(out, " -> {addrs}");
        if let Some(ttl) = h.ttl_seconds {
            let _ = write!(out, " ttl={ttl}s");
        }
        if let Some(e) = &h.last_error {
            let _ = write!(
                out,
                " error=\"{e}\" failures={}",
                h.consecutive_failures.unwrap_or(0)
            );
        }
        let _ = writeln!(out, " ({})", h.source);
    }
    out
}

/// One line per streamed event.
pub fn watch_line(r: &WatchReply) -> String {
    match r {
        WatchReply::Missed { missed } => format!("({missed} events missed: this client read too slowly)"),
        WatchReply::Event { event, connection: c } => {
            let p = &c.process;
            let mut s = format!("{event} {} ", c.protocol.as_str());
            if let Some(src) = c.src {
                let _ = write!(s, "{src} -> ");
            }
            let _ = write!(s, "{} pid={} comm={}", c.dst, p.pid, p.comm);
            if let Some(exe) = &p.exe {
                let _ = write!(s, " exe={exe}");
            }
            if let Some(h) = c.label.as_ref().or(c.host.as_ref()) {
                let _ = write!(s, " host={h}");
            }
            if let Some(u) = &p.unit {
                let _ = write!(s, " unit={u}");
            }
            if let Some(r) = c.fail_reason {
                let _ = write!(s, " reason={}", r.as_str());
            }
            s
        }
    }
}

pub fn policy(p: &connectracer_proto::api::PolicyShowReply) -> String {
    use std::fmt::Write as _;
    let mut s = String::new();
    if !p.active {
        s.push_str("no egress policy configured: every connection is allowed\n");
        return s;
    }
    let _ = writeln!(s, "mode {}, default {}", p.mode, p.default);
    for e in &p.exceptions {
        let _ = writeln!(s, "built-in exception: allow {e}");
    }
    s.push_str("\nscopes, in the order a connect asks them (cgroups deepest first):\n");
    for sc in &p.scopes {
        let _ = write!(s, "  {:>3}  {} mode={}", sc.id, sc.selector, sc.mode);
        if let Some(d) = &sc.default {
            let _ = write!(s, " default={d}");
        }
        if sc.block_ipv6 {
            s.push_str(" block_ipv6");
        }
        s.push('\n');
    }
    if p.rules.is_empty() {
        return s;
    }
    s.push_str("\nrules (within a scope: most specific destination first, then this order):\n");
    for r in &p.rules {
        let _ = write!(s, "  {:>3}  {:<5} {}", r.id, r.action, r.dest.join(","));
        if !r.ports.is_empty() {
            let _ = write!(s, " port {}", r.ports.join(","));
        }
        if let Some(p) = r.protocol {
            let _ = write!(s, " {}", p.as_str());
        }
        let _ = write!(s, " [{}]", r.scope.as_deref().unwrap_or("global"));
        if !r.addresses.is_empty() {
            let _ = write!(s, " = {}", r.addresses.join(","));
        }
        let _ = writeln!(s, "  ({})", r.origin);
    }
    s
}

pub fn policy_check(dest: std::net::SocketAddr, r: &connectracer_proto::api::PolicyCheckReply) -> String {
    format!(
        "{dest}: {} by {}: {}\n  caller: {}\n",
        r.verdict.as_str(),
        r.scope,
        r.reason,
        r.subject
    )
}
