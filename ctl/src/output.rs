//! Human-readable tables.

use std::time::SystemTime;

use connectracer_proto::api::{DnsAnswer, HostInfo, Stats};
use connectracer_proto::{ConnState, Connection, Verdict};

use crate::out::{paint, Paint, Printer};
use crate::table::{cell, Table};

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

fn state_cell(c: &Connection) -> (String, Option<Paint>) {
    let state = match c.fail_reason {
        Some(r) => format!("{}({})", c.state.as_str(), r.as_str()),
        None => c.state.as_str().to_string(),
    };
    let paint = (c.state == ConnState::Failed).then_some(Paint::Red);
    (state, paint)
}

fn verdict_paint(v: Verdict) -> Option<Paint> {
    match v {
        Verdict::Allow => None,
        Verdict::WouldDeny => Some(Paint::Yellow),
        Verdict::Deny => Some(Paint::Red),
    }
}

fn dash(s: Option<impl ToString>) -> String {
    s.map_or_else(|| "-".into(), |s| s.to_string())
}

/// A container id as `docker ps` shows it.
pub fn short_id(id: &str) -> &str {
    &id[..id.len().min(12)]
}

/// One row per connection, aligned columns; `wide` adds the executable,
/// resolved name, verdict, rule, bytes and duration, and the container's
/// name and image and its pod (`namespace/name`).
pub fn connections(conns: &[Connection], p: Printer) -> String {
    let mut header = vec![
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
    if p.wide() {
        header.extend([
            "EXE",
            "NAME",
            "VERDICT",
            "RULE",
            "SENT",
            "RECEIVED",
            "DURATION",
            "CONTAINER_NAME",
            "IMAGE",
            "POD",
        ]);
    }
    let mut t = Table::new(&header);
    for c in conns {
        let pr = &c.process;
        let mut row = vec![
            cell(pr.pid.to_string()),
            cell(pr.comm.clone()),
            cell(pr.user.clone().unwrap_or_else(|| pr.uid.to_string())),
            cell(c.protocol.as_str()),
            state_cell(c),
            cell(dash(c.src)),
            cell(c.dst.to_string()),
            cell(dash(c.label.as_ref().or(c.host.as_ref()))),
            cell(dash(pr.unit.as_ref())),
            cell(dash(pr.container_id.as_deref().map(short_id))),
            cell(age(c.started)),
        ];
        if p.wide() {
            row.extend([
                cell(dash(pr.exe.as_ref())),
                cell(dash(c.dns_name.as_ref())),
                (c.verdict.as_str().to_string(), verdict_paint(c.verdict)),
                cell(dash(c.policy_rule)),
                cell(dash(c.bytes_sent)),
                cell(dash(c.bytes_received)),
                cell(dash(c.duration_ns.map(duration))),
                cell(dash(c.container.container_name.as_ref())),
                cell(dash(c.container.container_image.as_ref())),
                cell(dash(c.container.pod())),
            ]);
        }
        t.row(row);
    }
    t.render(p.colour)
}

/// A duration as people read it: `850ms`, `12.3s`, `4m05s`.
pub fn duration(ns: u64) -> String {
    let ms = ns / 1_000_000;
    match ms {
        m if m < 1000 => format!("{m}ms"),
        m if m < 60_000 => format!("{:.1}s", m as f64 / 1000.0),
        m => format!("{}m{:02}s", m / 60_000, (m / 1000) % 60),
    }
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

/// One row per watched host; "no hosts" when there are none.
pub fn hosts(hosts: &[HostInfo], p: Printer) -> String {
    if hosts.is_empty() {
        return "no hosts\n".into();
    }
    let mut t = Table::new(&[
        "NAME",
        "KIND",
        "PORTS",
        "LABEL",
        "ADDRESSES",
        "TTL",
        "STATE",
        "SOURCE",
    ]);
    for h in hosts {
        let ports = if h.ports.is_empty() {
            "all".to_string()
        } else {
            h.ports.join(",")
        };
        let addrs = if h.addresses.is_empty() {
            "-".to_string()
        } else {
            h.addresses.join(",")
        };
        let state = match &h.last_error {
            Some(e) => (
                format!("failing ({} times): {e}", h.consecutive_failures.unwrap_or(0)),
                Some(Paint::Red),
            ),
            None => (String::from("ok"), Some(Paint::Green)),
        };
        t.row(vec![
            cell(h.name.clone()),
            cell(h.kind.clone()),
            cell(ports),
            cell(dash(h.label.as_ref())),
            cell(addrs),
            cell(dash(h.ttl_seconds.map(|t| format!("{t}s")))),
            state,
            cell(h.source.clone()),
        ]);
    }
    t.render(p.colour)
}

pub fn answers(answers: &[DnsAnswer], p: Printer) -> String {
    if answers.is_empty() {
        return "no DNS answers seen\n".into();
    }
    let mut t = Table::new(&["TIME", "PID", "UID", "NAME", "ADDRESSES", "TTL", "RESOLVER"]);
    for a in answers {
        let addrs = if a.addresses.is_empty() {
            "-".to_string()
        } else {
            a.addresses.join(",")
        };
        t.row(vec![
            cell(a.time.clone()),
            cell(a.pid.to_string()),
            cell(a.uid.to_string()),
            cell(a.name.clone()),
            cell(addrs),
            cell(format!("{}s", a.ttl_seconds)),
            cell(a.resolver.clone()),
        ]);
    }
    t.render(p.colour)
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

pub fn policy_check(
    dest: std::net::SocketAddr,
    r: &connectracer_proto::api::PolicyCheckReply,
    colour: bool,
) -> String {
    let verdict = r.verdict.as_str();
    format!(
        "{dest}: {} by {}: {}\n  caller: {}\n",
        verdict_paint(r.verdict).map_or_else(|| verdict.to_string(), |p| paint(colour, p, verdict)),
        r.scope,
        r.reason,
        r.subject
    )
}
