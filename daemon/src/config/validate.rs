//! Stage two: raw values to the validated model, every error collected.

mod policy;
mod sinks;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::ops::Range;
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use ipnet::IpNet;
use toml::Spanned;

use super::raw::{RawConfig, RawDns, RawHost, RawMetrics, RawPort, RawSize};
use super::{
    Config, ConfigError, ConfigErrors, HostTarget, LogFormat, MetricsConfig, PortSet, TraceMode, WatchedHost,
};
use crate::watchlist;

const PAGE_SIZE: u64 = 4096;
const MAX_LABEL_LEN: usize = 64;

/// Where rule `id` (1-based) was written, for errors about it.
fn rule_loc(c: &Config, id: Option<u32>) -> Loc {
    let rule = id.and_then(|id| c.policy.rules.get((id as usize).wrapping_sub(1)));
    let (file, line) = rule
        .and_then(|r| r.origin.rsplit_once(':'))
        .map_or((PathBuf::new(), 0), |(f, l)| {
            (PathBuf::from(f), l.parse().unwrap_or(0))
        });
    Loc {
        file,
        line,
        column: 1,
    }
}

/// Where a value was set, for problems found only once all files are merged.
#[derive(Debug, Clone)]
struct Loc {
    file: PathBuf,
    line: usize,
    column: usize,
}

struct Ctx<'a> {
    file: &'a Path,
    text: &'a str,
    /// Byte offset where each line starts: a location is a binary search,
    /// not a scan of the text (10,000 hosts would make that quadratic).
    line_starts: Vec<usize>,
    errors: &'a mut Vec<ConfigError>,
}

impl Ctx<'_> {
    fn loc(&self, span: Option<Range<usize>>) -> Loc {
        let (line, column) = span.map_or((0, 0), |s| {
            line_col(&self.line_starts, s.start.min(self.text.len()))
        });
        Loc {
            file: self.file.to_path_buf(),
            line,
            column,
        }
    }

    fn error(&mut self, span: Option<Range<usize>>, key: impl Into<String>, message: impl Into<String>) {
        let loc = self.loc(span);
        push(self.errors, &loc, key, message);
    }

    fn spanned<T>(&mut self, v: &Spanned<T>, key: &str, message: impl Into<String>) {
        self.error(Some(v.span()), key, message);
    }
}

fn push(errors: &mut Vec<ConfigError>, loc: &Loc, key: impl Into<String>, message: impl Into<String>) {
    errors.push(ConfigError {
        file: loc.file.clone(),
        line: loc.line,
        column: loc.column,
        key: key.into(),
        message: message.into(),
    });
}

fn line_starts(text: &str) -> Vec<usize> {
    std::iter::once(0)
        .chain(text.match_indices('\n').map(|(i, _)| i + 1))
        .collect()
}

/// 1-based line and column of a byte offset.
fn line_col(line_starts: &[usize], offset: usize) -> (usize, usize) {
    let line = line_starts.partition_point(|start| *start <= offset);
    let column = offset - line_starts[line.saturating_sub(1)] + 1;
    (line, column)
}

/// The configuration being assembled from several files.
#[derive(Default)]
struct Merge {
    config: Config,
    hosts: Vec<(WatchedHost, Loc, String)>,
    ring_loc: Option<Loc>,
    wakeup_loc: Option<Loc>,
    dns_loc: Option<Loc>,
    rules: Vec<crate::policy::Rule>,
    scopes: Vec<(crate::policy::ScopeSettings, Loc, String)>,
    sinks: Vec<(super::SinkConfig, Loc, String)>,
}

/// Parses and validates one configuration text that came from `file`.
pub fn parse_config(file: &Path, text: &str) -> Result<Config, ConfigErrors> {
    parse_files(&[(file.to_path_buf(), text.to_string())])
}

/// Parses, validates and merges files in order: later files' scalars win,
/// lists append. Every error of every file is collected.
pub fn parse_files(files: &[(PathBuf, String)]) -> Result<Config, ConfigErrors> {
    let mut errors = Vec::new();
    let mut m = Merge::default();
    for (file, text) in files {
        let mut ctx = Ctx {
            file,
            text,
            line_starts: line_starts(text),
            errors: &mut errors,
        };
        match super::decode::parse(text) {
            Ok(raw) => apply(&mut ctx, raw, &mut m),
            Err(errors) => {
                for e in errors {
                    ctx.error(e.span, e.key, e.message);
                }
            }
        }
    }
    let config = finish(m, &mut errors);
    if errors.is_empty() {
        Ok(config)
    } else {
        Err(ConfigErrors(errors))
    }
}

/// Checks that need every file: duplicates, kernel capacity, sizes that
/// depend on each other. Assigns host ids.
fn finish(mut m: Merge, errors: &mut Vec<ConfigError>) -> Config {
    let mut seen: HashMap<(HostTarget, Vec<(u16, u16)>), Loc> = HashMap::new();
    let mut hosts: Vec<WatchedHost> = Vec::new();
    let mut locs = Vec::new();
    for (h, loc, key) in std::mem::take(&mut m.hosts) {
        let dedup = (
            h.target.clone(),
            h.ports.0.iter().map(|r| (*r.start(), *r.end())).collect(),
        );
        if let Some(first) = seen.get(&dedup) {
            let msg = format!(
                "`{}` with the same ports is already watched ({}:{})",
                h.name,
                first.file.display(),
                first.line
            );
            push(errors, &loc, format!("{key}.name"), msg);
            continue;
        }
        seen.insert(dedup, loc.clone());
        hosts.push(WatchedHost {
            id: hosts.len() as u32 + 1,
            origin: loc.file.clone(),
            ..h
        });
        locs.push((loc, key));
    }
    let (watch, too_many) = watchlist::build(&hosts, &HashMap::new());
    for e in too_many {
        let (loc, key) = &locs[e.host_index];
        push(errors, loc, key.clone(), e.to_string());
    }
    m.config.hosts = hosts;
    policy::finish(&mut m, errors);
    sinks::finish(&mut m, errors);
    let (compiled, too_many) = crate::policy::compile::compile(
        &m.config.policy,
        &crate::policy::Environment::empty(),
        &crate::policy::scopes::Identities::default(),
    );
    for e in too_many {
        let key = e
            .rule
            .map_or_else(|| "rule".to_string(), |id| format!("rule {id}"));
        push(errors, &rule_loc(&m.config, e.rule), key, e.to_string());
    }
    // Hostnames count once resolved: every apply checks again with them.
    for o in crate::capacity::check(&watch, &compiled) {
        let (loc, key) = match o.culprit {
            crate::capacity::Culprit::Host(i) if i < locs.len() => locs[i].clone(),
            crate::capacity::Culprit::Rule(id) => (rule_loc(&m.config, Some(id)), format!("rule {id}")),
            _ => (rule_loc(&m.config, None), "scope".to_string()),
        };
        push(errors, &loc, key, o.to_string());
    }
    let bpf = &m.config.bpf;
    if bpf.wakeup_threshold >= u64::from(bpf.ring_buffer_size) {
        let loc = m.wakeup_loc.or(m.ring_loc).unwrap_or(Loc {
            file: PathBuf::new(),
            line: 0,
            column: 0,
        });
        let msg = format!(
            "{} bytes: must be below bpf.ring_buffer_size ({} bytes)",
            bpf.wakeup_threshold, bpf.ring_buffer_size
        );
        push(errors, &loc, "bpf.wakeup_threshold", msg);
    }
    if m.config.dns.min_ttl > m.config.dns.max_ttl {
        let msg = "dns.min_ttl is longer than dns.max_ttl";
        push(
            errors,
            &Loc {
                file: PathBuf::new(),
                line: 0,
                column: 0,
            },
            "dns",
            msg,
        );
    }
    m.config
}

/// Applies one file's values on top of what earlier files set.
fn apply(ctx: &mut Ctx<'_>, raw: RawConfig, m: &mut Merge) {
    policy::apply(ctx, &raw, m);
    sinks::apply(ctx, &raw.event_sink, m);
    if let Some(d) = &raw.dns {
        let first = [&d.min_ttl, &d.max_ttl, &d.retry_min, &d.retry_max, &d.grace]
            .into_iter()
            .flatten()
            .map(|v| v.span())
            .min_by_key(|r| r.start);
        if first.is_some() {
            m.dns_loc = Some(ctx.loc(first));
        }
        dns(ctx, d, &mut m.config.dns);
    }
    let c = &mut m.config;
    if let Some(t) = &raw.trace {
        match t.get_ref().as_str() {
            "watched" => c.trace = TraceMode::Watched,
            "all" => c.trace = TraceMode::All,
            other => ctx.spanned(
                t,
                "trace",
                format!("unknown trace mode `{other}`; expected \"watched\" or \"all\""),
            ),
        }
    }
    if let Some(cg) = &raw.cgroup {
        if let Some(p) = cgroup_path(ctx, cg) {
            c.cgroup = Some(p);
        }
    }
    for (i, h) in raw.host.iter().enumerate() {
        if let Some(host) = host(ctx, h, i) {
            m.hosts
                .push((host, ctx.loc(Some(h.name.span())), format!("host[{i}]")));
        }
    }
    if let Some(b) = &raw.bpf {
        if let Some(v) = &b.ring_buffer_size {
            if let Some(n) = size(ctx, v, "bpf.ring_buffer_size") {
                if !n.is_power_of_two() || !(PAGE_SIZE..=1 << 30).contains(&n) {
                    ctx.spanned(
                        v,
                        "bpf.ring_buffer_size",
                        format!("{n} bytes: must be a power of two between 4KiB and 1GiB"),
                    );
                } else {
                    c.bpf.ring_buffer_size = n as u32;
                    m.ring_loc = Some(ctx.loc(Some(v.span())));
                }
            }
        }
        if let Some(v) = &b.wakeup_threshold {
            if let Some(n) = size(ctx, v, "bpf.wakeup_threshold") {
                c.bpf.wakeup_threshold = n;
                m.wakeup_loc = Some(ctx.loc(Some(v.span())));
            }
        }
        if let Some(v) = &b.keep_pinned_on_stop {
            c.bpf.keep_pinned_on_stop = *v.get_ref();
        }
        if let Some(v) = &b.udp_dedup_entries {
            if let Some(n) = int_in(ctx, v, "bpf.udp_dedup_entries", 1, 1 << 24) {
                c.bpf.udp_dedup_entries = n as u32;
            }
        }
    }
    if let Some(mc) = &raw.metrics {
        metrics(ctx, mc, &mut c.metrics);
    }
    if let Some(t) = &raw.table {
        if let Some(v) = &t.max_open {
            if let Some(n) = int_in(ctx, v, "table.max_open", 1, 1 << 24) {
                c.table.max_open = n as usize;
            }
        }
        if let Some(v) = &t.max_closed {
            if let Some(n) = int_in(ctx, v, "table.max_closed", 0, 1 << 24) {
                c.table.max_closed = n as usize;
            }
        }
        if let Some(v) = &t.closed_retention {
            if let Some(d) = duration(ctx, v, "table.closed_retention") {
                c.table.closed_retention = d;
            }
        }
        if let Some(v) = &t.process_retention {
            if let Some(d) = duration(ctx, v, "table.process_retention") {
                c.table.process_retention = d;
            }
        }
    }
    if let Some(l) = &raw.log {
        if let Some(f) = &l.format {
            match f.get_ref().as_str() {
                "text" => c.log.format = LogFormat::Text,
                "json" => c.log.format = LogFormat::Json,
                other => ctx.spanned(
                    f,
                    "log.format",
                    format!("unknown log format `{other}`; expected \"text\" or \"json\""),
                ),
            }
        }
        if let Some(e) = &l.events {
            c.log.events = *e.get_ref();
        }
    }
}

fn metrics(ctx: &mut Ctx<'_>, r: &RawMetrics, out: &mut MetricsConfig) {
    if let Some(v) = &r.listen {
        match v.get_ref().trim() {
            "off" => out.listen = None,
            s => match s.parse::<SocketAddr>() {
                Ok(a) => out.listen = Some(a),
                Err(_) => ctx.spanned(v, "metrics.listen", format!("`{s}` is not IP:PORT or \"off\"")),
            },
        }
    }
    if let Some(v) = &r.textfile {
        match v.get_ref().trim() {
            "off" => out.textfile = None,
            s if Path::new(s).is_absolute() && s.ends_with(".prom") => out.textfile = Some(PathBuf::from(s)),
            s => ctx.spanned(
                v,
                "metrics.textfile",
                format!(
                    "`{s}`: an absolute path ending in .prom (node_exporter reads only those), or \"off\""
                ),
            ),
        }
    }
    if let Some(v) = &r.textfile_interval {
        if let Some(d) = duration(ctx, v, "metrics.textfile_interval") {
            if d < Duration::from_secs(1) {
                ctx.spanned(v, "metrics.textfile_interval", "must be at least 1s");
            } else {
                out.textfile_interval = d;
            }
        }
    }
    if let Some(v) = &r.http_detail {
        out.http_detail = *v.get_ref();
    }
    if let Some(v) = &r.remove_textfile_on_stop {
        out.remove_textfile_on_stop = *v.get_ref();
    }
    if let Some(v) = &r.max_series_per_metric {
        if let Some(n) = int_in(ctx, v, "metrics.max_series_per_metric", 1, 1_000_000) {
            out.max_series_per_metric = n as usize;
        }
    }
}

fn dns(ctx: &mut Ctx<'_>, d: &RawDns, out: &mut crate::dns::DnsConfig) {
    if let Some(list) = &d.nameservers {
        let mut servers = Vec::new();
        for (i, v) in list.iter().enumerate() {
            let s = v.get_ref().trim();
            match s
                .parse::<SocketAddr>()
                .or_else(|_| s.parse::<IpAddr>().map(|ip| SocketAddr::new(ip, 53)))
            {
                Ok(a) => servers.push(a),
                Err(_) => ctx.spanned(
                    v,
                    &format!("dns.nameservers[{i}]"),
                    format!("`{s}` is not an IP address or IP:PORT"),
                ),
            }
        }
        out.nameservers = servers;
    }
    for (v, key, slot) in [
        (&d.min_ttl, "dns.min_ttl", &mut out.min_ttl),
        (&d.max_ttl, "dns.max_ttl", &mut out.max_ttl),
        (&d.retry_min, "dns.retry_min", &mut out.retry_min),
        (&d.retry_max, "dns.retry_max", &mut out.retry_max),
        (&d.grace, "dns.grace", &mut out.grace),
    ] {
        if let Some(v) = v {
            if let Some(dur) = duration(ctx, v, key) {
                *slot = dur;
            }
        }
    }
}

fn host(ctx: &mut Ctx<'_>, h: &RawHost, i: usize) -> Option<WatchedHost> {
    let key = format!("host[{i}]");
    // Everything about the entry is checked even when the name is bad, so
    // one run reports all of its errors.
    let target = parse_target(ctx, &h.name, &format!("{key}.name"));
    let ports = port_set(ctx, h.ports.as_deref(), h.name.span(), &key);
    let label = match &h.label {
        Some(l)
            if l.get_ref().is_empty()
                || l.get_ref().len() > MAX_LABEL_LEN
                || l.get_ref().chars().any(char::is_control) =>
        {
            ctx.spanned(
                l,
                &format!("{key}.label"),
                format!("label must be 1 to {MAX_LABEL_LEN} printable characters"),
            );
            return None;
        }
        l => l.as_ref().map(|l| l.get_ref().clone()),
    };
    Some(WatchedHost {
        id: 0,
        name: h.name.get_ref().trim().to_string(),
        target: target?,
        ports: ports?,
        label,
        origin: PathBuf::new(),
    })
}

/// An IP (a /32 or /128), a CIDR, or a hostname. `::ffff:a.b.c.d` forms
/// are folded to IPv4 because the kernel reports v4-mapped destinations as
/// IPv4.
fn parse_target(ctx: &mut Ctx<'_>, v: &Spanned<String>, key: &str) -> Option<HostTarget> {
    let s = v.get_ref().trim();
    if let Ok(addr) = s.parse::<IpAddr>() {
        return Some(HostTarget::Net(fold_v4_mapped(IpNet::from(addr))));
    }
    if let Ok(net) = s.parse::<IpNet>() {
        if net.trunc() != net {
            ctx.spanned(
                v,
                key,
                format!("`{s}` has host bits set; did you mean `{}`?", net.trunc()),
            );
            return None;
        }
        return Some(HostTarget::Net(fold_v4_mapped(net)));
    }
    match hostname(s) {
        Ok(name) => Some(HostTarget::Name(name)),
        Err(why) => {
            ctx.spanned(
                v,
                key,
                format!("`{s}` is not an IP address, CIDR or hostname: {why}"),
            );
            None
        }
    }
}

/// RFC 1123 hostname, lowercased, trailing dot removed.
fn hostname(s: &str) -> Result<String, &'static str> {
    let name = s.strip_suffix('.').unwrap_or(s).to_ascii_lowercase();
    if name.is_empty() || name.len() > 253 {
        return Err("a hostname is 1 to 253 characters");
    }
    if name.contains('/') {
        return Err("the prefix length is not valid");
    }
    if name.split('.').all(|l| l.chars().all(|c| c.is_ascii_digit())) {
        return Err("it looks like an address but is not a valid one");
    }
    for label in name.split('.') {
        if label.is_empty() || label.len() > 63 {
            return Err("each dot-separated label is 1 to 63 characters");
        }
        if !label
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return Err("labels hold only letters, digits, '-' and '_'");
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err("labels neither start nor end with '-'");
        }
    }
    Ok(name)
}

fn cgroup_path(ctx: &mut Ctx<'_>, v: &Spanned<String>) -> Option<PathBuf> {
    let p = Path::new(v.get_ref());
    if !p.is_absolute() {
        ctx.spanned(v, "cgroup", format!("`{}` is not an absolute path", p.display()));
        return None;
    }
    if p.components().any(|c| c == Component::ParentDir) {
        ctx.spanned(v, "cgroup", format!("`{}` must not contain `..`", p.display()));
        return None;
    }
    Some(p.to_path_buf())
}

fn fold_v4_mapped(net: IpNet) -> IpNet {
    match net {
        IpNet::V6(n) if n.prefix_len() >= 96 => match n.addr().to_ipv4_mapped() {
            Some(v4) => IpNet::new(IpAddr::V4(v4), n.prefix_len() - 96).unwrap_or(net),
            None => net,
        },
        _ => net,
    }
}

/// An entry's `ports`: absent is every port, empty is an error (located at
/// `anchor`, the entry's first key, since an empty list has nothing to point
/// at), and every bad item is reported.
fn port_set(
    ctx: &mut Ctx<'_>,
    list: Option<&[Spanned<RawPort>]>,
    anchor: Range<usize>,
    key: &str,
) -> Option<PortSet> {
    match list {
        None => Some(PortSet::default()),
        Some([]) => {
            ctx.error(
                Some(anchor),
                format!("{key}.ports"),
                "empty port list; leave `ports` out to match every port",
            );
            None
        }
        Some(list) => {
            let set: Vec<_> = list
                .iter()
                .enumerate()
                .filter_map(|(j, p)| port_range(ctx, p, &format!("{key}.ports[{j}]")))
                .collect();
            (set.len() == list.len()).then_some(PortSet(set))
        }
    }
}

fn port_range(ctx: &mut Ctx<'_>, v: &Spanned<RawPort>, key: &str) -> Option<std::ops::RangeInclusive<u16>> {
    let parse_one = |s: &str| s.trim().parse::<u16>().ok().filter(|p| *p != 0);
    let range = match v.get_ref() {
        RawPort::Number(n) => u16::try_from(*n).ok().filter(|p| *p != 0).map(|p| p..=p),
        RawPort::Text(s) => match s.split_once('-') {
            Some((lo, hi)) => match (parse_one(lo), parse_one(hi)) {
                (Some(lo), Some(hi)) if lo <= hi => Some(lo..=hi),
                _ => None,
            },
            None => parse_one(s).map(|p| p..=p),
        },
    };
    if range.is_none() {
        let shown = match v.get_ref() {
            RawPort::Number(n) => n.to_string(),
            RawPort::Text(s) => format!("\"{s}\""),
        };
        ctx.spanned(
            v,
            key,
            format!("{shown} is not a port (1-65535) or a range \"LOW-HIGH\" with LOW <= HIGH"),
        );
    }
    range
}

fn size(ctx: &mut Ctx<'_>, v: &Spanned<RawSize>, key: &str) -> Option<u64> {
    let parsed = match v.get_ref() {
        RawSize::Bytes(n) => u64::try_from(*n).ok(),
        RawSize::Text(s) => parse_size(s),
    };
    if parsed.is_none() {
        ctx.spanned(
            v,
            key,
            "not a size: use bytes or a number with KiB, MiB or GiB (e.g. \"4MiB\")",
        );
    }
    parsed
}

/// `"4MiB"`, `"256 KiB"`, `"4M"`, `"65536"`: binary units only, since ring
/// buffer sizes must be powers of two.
pub(crate) fn parse_size(s: &str) -> Option<u64> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num.parse().ok()?;
    let mult: u64 = match unit.trim() {
        "" | "B" => 1,
        "K" | "KiB" => 1 << 10,
        "M" | "MiB" => 1 << 20,
        "G" | "GiB" => 1 << 30,
        _ => return None,
    };
    n.checked_mul(mult)
}

fn int_in(ctx: &mut Ctx<'_>, v: &Spanned<i64>, key: &str, min: u64, max: u64) -> Option<u64> {
    match u64::try_from(*v.get_ref()) {
        Ok(n) if (min..=max).contains(&n) => Some(n),
        _ => {
            ctx.spanned(v, key, format!("{} is out of range {min}..={max}", v.get_ref()));
            None
        }
    }
}

fn duration(ctx: &mut Ctx<'_>, v: &Spanned<String>, key: &str) -> Option<Duration> {
    match humantime::parse_duration(v.get_ref()) {
        Ok(d) => Some(d),
        Err(e) => {
            ctx.spanned(
                v,
                key,
                format!(
                    "`{}` is not a duration ({e}); e.g. \"90s\" or \"5m\"",
                    v.get_ref()
                ),
            );
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn errors(text: &str) -> Vec<String> {
        parse_config(Path::new("/etc/connectracer/connectracer.toml"), text)
            .unwrap_err()
            .0
            .iter()
            .map(ToString::to_string)
            .collect()
    }

    #[test]
    fn defaults_when_empty() {
        let c = parse_config(Path::new("x.toml"), "").unwrap();
        assert_eq!(c, Config::default());
        assert_eq!(c.trace, TraceMode::Watched);
        assert_eq!(c.bpf.ring_buffer_size, 4 << 20);
    }

    #[test]
    fn full_example_parses() {
        let c = parse_config(
            Path::new("x.toml"),
            r#"
trace = "all"
cgroup = "/system.slice"
[[host]]
name = "10.20.0.0/16"
ports = [443, "8000-8100"]
label = "payments"
[[host]]
name = "::ffff:192.0.2.0/120"
[[host]]
name = "2001:db8::1"
[bpf]
ring_buffer_size = "8MiB"
wakeup_threshold = 32768
udp_dedup_entries = 1000
[table]
max_open = 10
max_closed = 0
closed_retention = "90s"
[log]
format = "json"
events = false
"#,
        )
        .unwrap();
        assert_eq!(c.trace, TraceMode::All);
        assert_eq!(c.hosts.len(), 3);
        assert_eq!(c.hosts[0].ports.0, vec![443..=443, 8000..=8100]);
        assert_eq!(c.hosts[0].label.as_deref(), Some("payments"));
        assert_eq!(
            c.hosts[1].target,
            HostTarget::Net("192.0.2.0/24".parse().unwrap()),
            "v4-mapped folded to IPv4"
        );
        assert_eq!(
            c.hosts[2].target,
            HostTarget::Net("2001:db8::1/128".parse().unwrap())
        );
        assert_eq!(c.hosts.iter().map(|h| h.id).collect::<Vec<_>>(), [1, 2, 3]);
        assert_eq!(c.bpf.ring_buffer_size, 8 << 20);
        assert_eq!(c.table.closed_retention, Duration::from_secs(90));
        assert_eq!(c.log.format, LogFormat::Json);
        assert!(!c.log.events);
    }

    #[test]
    fn syntax_and_unknown_keys_name_the_line() {
        assert_eq!(
            errors("trace = \"all\"\ntrcae = 1\n"),
            ["/etc/connectracer/connectracer.toml:2:1: trcae: unknown field `trcae`, expected one of `trace`, `cgroup`, `host`, `dns`, `bpf`, `metrics`, `table`, `log`, `event_sink`, `mode`, `policy`, `rule`, `scope`"]
        );
        let e = errors("[[host]]\nname = \"10.0.0.1\"\nport = [1]\n");
        assert!(
            e[0].starts_with("/etc/connectracer/connectracer.toml:3:1: host[0].port: unknown field `port`"),
            "{e:?}"
        );
        let e = errors("trace = \n");
        assert!(
            e[0].starts_with("/etc/connectracer/connectracer.toml:1:"),
            "{e:?}"
        );
    }

    #[test]
    fn every_value_error_is_collected_with_its_key() {
        let e = errors(
            r#"trace = "some"
cgroup = "relative/path"
[[host]]
name = "-bad-.example.com"
[[host]]
name = "10.1.2.3/16"
[[host]]
name = "10.0.0.1"
ports = [0, 70000, "9-3", "http"]
[[host]]
name = "10.0.0.2"
ports = []
label = ""
[[host]]
name = "10.0.0.3"
label = "ok"
[[host]]
name = "10.0.0.3"
[bpf]
ring_buffer_size = "3MiB"
udp_dedup_entries = 0
[table]
closed_retention = "soon"
[log]
format = "xml"
"#,
        );
        let f = "/etc/connectracer/connectracer.toml";
        let port = |at: &str, k: usize, v: &str| {
            format!("{f}:{at}: host[2].ports[{k}]: {v} is not a port (1-65535) or a range \"LOW-HIGH\" with LOW <= HIGH")
        };
        assert_eq!(
            e,
            [
                format!("{f}:1:9: trace: unknown trace mode `some`; expected \"watched\" or \"all\""),
                format!("{f}:2:10: cgroup: `relative/path` is not an absolute path"),
                format!("{f}:4:8: host[0].name: `-bad-.example.com` is not an IP address, CIDR or hostname: labels neither start nor end with '-'"),
                format!("{f}:6:8: host[1].name: `10.1.2.3/16` has host bits set; did you mean `10.1.0.0/16`?"),
                port("9:10", 0, "0"),
                port("9:13", 1, "70000"),
                port("9:20", 2, "\"9-3\""),
                port("9:27", 3, "\"http\""),
                format!("{f}:11:8: host[3].ports: empty port list; leave `ports` out to match every port"),
                format!("{f}:13:9: host[3].label: label must be 1 to 64 printable characters"),
                format!("{f}:20:20: bpf.ring_buffer_size: 3145728 bytes: must be a power of two between 4KiB and 1GiB"),
                format!("{f}:21:21: bpf.udp_dedup_entries: 0 is out of range 1..=16777216"),
                format!("{f}:23:20: table.closed_retention: `soon` is not a duration (expected number at 0); e.g. \"90s\" or \"5m\""),
                format!("{f}:25:10: log.format: unknown log format `xml`; expected \"text\" or \"json\""),
                format!("{f}:18:8: host[5].name: `10.0.0.3` with the same ports is already watched ({f}:15)"),
            ]
        );
    }

    #[test]
    fn hostnames_are_normalised_and_checked() {
        let c = parse_config(
            Path::new("x.toml"),
            "[[host]]\nname = \"API.Example.COM.\"\n[[host]]\nname = \"svc_1.internal\"\n",
        )
        .unwrap();
        assert_eq!(c.hosts[0].target, HostTarget::Name("api.example.com".into()));
        assert_eq!(c.hosts[0].name, "API.Example.COM.", "shown as written");
        assert_eq!(c.hostnames(), ["api.example.com", "svc_1.internal"]);
        for (bad, why) in [
            ("a..b", "each dot-separated label is 1 to 63 characters"),
            ("300.1.1.1", "it looks like an address but is not a valid one"),
            ("ex ample.com", "labels hold only letters, digits, '-' and '_'"),
            ("10.0.0.0/99", "the prefix length is not valid"),
        ] {
            let e = errors(&format!("[[host]]\nname = \"{bad}\"\n"));
            assert_eq!(
                e,
                [format!("/etc/connectracer/connectracer.toml:2:8: host[0].name: `{bad}` is not an IP address, CIDR or hostname: {why}")]
            );
        }
    }

    #[test]
    fn dropins_merge_in_order_scalars_win_lists_append() {
        let files = [
            (PathBuf::from("/etc/c/connectracer.toml"), "trace = \"all\"\n[[host]]\nname = \"10.0.0.1\"\n[table]\nmax_open = 10\n".to_string()),
            (PathBuf::from("/etc/c/conf.d/10-a.toml"), "trace = \"watched\"\n[[host]]\nname = \"db.internal\"\nlabel = \"db\"\n".to_string()),
            (PathBuf::from("/etc/c/conf.d/20-b.toml"), "[table]\nmax_closed = 5\n[dns]\nnameservers = [\"127.0.0.1:5353\", \"::1\"]\ngrace = \"30s\"\n".to_string()),
        ];
        let c = parse_files(&files).unwrap();
        assert_eq!(c.trace, TraceMode::Watched);
        assert_eq!(
            c.hosts
                .iter()
                .map(|h| (h.id, h.name.as_str()))
                .collect::<Vec<_>>(),
            [(1, "10.0.0.1"), (2, "db.internal")]
        );
        assert_eq!((c.table.max_open, c.table.max_closed), (10, 5));
        assert_eq!(
            c.dns.nameservers,
            ["127.0.0.1:5353".parse().unwrap(), "[::1]:53".parse().unwrap()]
        );
        assert_eq!(c.dns.grace, Duration::from_secs(30));
    }

    #[test]
    fn errors_name_the_dropin_they_are_in() {
        let files = [
            (
                PathBuf::from("/etc/c/connectracer.toml"),
                "[[host]]\nname = \"10.0.0.1\"\n".to_string(),
            ),
            (
                PathBuf::from("/etc/c/conf.d/10-a.toml"),
                "\n[[host]]\nname = \"10.0.0.1\"\n[dns]\nnameservers = [\"dns.example\"]\n".to_string(),
            ),
        ];
        let e: Vec<String> = parse_files(&files)
            .unwrap_err()
            .0
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(
            e,
            [
                "/etc/c/conf.d/10-a.toml:5:16: dns.nameservers[0]: `dns.example` is not an IP address or IP:PORT",
                "/etc/c/conf.d/10-a.toml:3:8: host[0].name: `10.0.0.1` with the same ports is already watched (/etc/c/connectracer.toml:2)",
            ]
        );
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("4MiB"), Some(4 << 20));
        assert_eq!(parse_size("256 KiB"), Some(256 << 10));
        assert_eq!(parse_size("4096"), Some(4096));
        assert_eq!(parse_size("4MB"), None);
        assert_eq!(parse_size("-1"), None);
        assert_eq!(parse_size("99999999999999G"), None);
    }

    #[test]
    fn wakeup_threshold_must_fit_in_the_ring() {
        let e = errors("[bpf]\nring_buffer_size = \"64KiB\"\nwakeup_threshold = \"64KiB\"\n");
        assert_eq!(
            e,
            ["/etc/connectracer/connectracer.toml:3:20: bpf.wakeup_threshold: 65536 bytes: must be below bpf.ring_buffer_size (65536 bytes)"]
        );
    }
}
