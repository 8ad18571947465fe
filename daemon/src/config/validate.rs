//! Stage two: raw values to the validated model, every error collected.

mod containers;
mod finish;
mod gpu;
mod otlp;
mod policy;
mod sinks;

use finish::finish;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::ops::Range;
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use ipnet::IpNet;
use toml::Spanned;

use super::raw::{RawBpf, RawConfig, RawDns, RawHost, RawLog, RawMetrics, RawPort, RawSize, RawTable};
use super::{
    Config, ConfigError, ConfigErrors, ConnectionLabels, DnsConfig, HostTarget, LogConfig, LogFormat,
    MetricsConfig, Place, PortSet, TableConfig, TraceMode, WatchedHost,
};

const PAGE_SIZE: u64 = 4096;
const MAX_LABEL_LEN: usize = 64;

struct Ctx<'a> {
    file: &'a Path,
    text: &'a str,
    /// Byte offset where each line starts: a location is a binary search,
    /// not a scan of the text (10,000 hosts would make that quadratic).
    line_starts: Vec<usize>,
    errors: &'a mut Vec<ConfigError>,
}

impl Ctx<'_> {
    fn loc(&self, span: Option<Range<usize>>) -> Place {
        let (line, column) = span.map_or((0, 0), |s| {
            line_col(&self.line_starts, s.start.min(self.text.len()))
        });
        Place {
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

fn push(errors: &mut Vec<ConfigError>, loc: &Place, key: impl Into<String>, message: impl Into<String>) {
    errors.push(ConfigError::at(loc, key, message));
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
    hosts: Vec<(WatchedHost, Place, String)>,
    ring_loc: Option<Place>,
    wakeup_loc: Option<Place>,
    dns_loc: Option<Place>,
    rules: Vec<(super::policy::Rule, Place)>,
    scopes: Vec<(super::policy::ScopeSettings, Place, String)>,
    sinks: Vec<(super::SinkConfig, Place, String)>,
}

/// A configuration as its own rules judge it: the model (complete only
/// where `errors` is empty), every error found, and where each host and
/// rule was written, for the errors later stages find in them.
#[derive(Debug)]
pub struct Validated {
    pub config: Config,
    pub errors: Vec<ConfigError>,
    /// Where each of `config.hosts` names its destination, with its key
    /// (`host[2]`), in the same order.
    pub hosts: Vec<(Place, String)>,
    /// Where each of `config.policy.rules` starts, in the same order.
    pub rules: Vec<Place>,
}

impl Validated {
    pub fn into_result(self) -> Result<Config, ConfigErrors> {
        if self.errors.is_empty() {
            Ok(self.config)
        } else {
            Err(ConfigErrors(self.errors))
        }
    }
}

/// Parses and validates one configuration text that came from `file`.
pub fn parse_config(file: &Path, text: &str) -> Result<Config, ConfigErrors> {
    parse_files(&[(file.to_path_buf(), text.to_string())])
}

/// `validate`, for callers that need the model only. Whether the kernel
/// can hold it is not asked: `crate::ruleset::check_files` asks both.
pub fn parse_files(files: &[(PathBuf, String)]) -> Result<Config, ConfigErrors> {
    validate(files).into_result()
}

/// Parses, validates and merges files in order: later files' scalars win,
/// lists append. Every error of every file is collected.
pub fn validate(files: &[(PathBuf, String)]) -> Validated {
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
    finish(m, errors)
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
    if let Some(t) = &raw.trace {
        match t.get_ref().as_str() {
            "watched" => m.config.trace = TraceMode::Watched,
            "all" => m.config.trace = TraceMode::All,
            other => ctx.spanned(
                t,
                "trace",
                format!("unknown trace mode `{other}`; expected \"watched\" or \"all\""),
            ),
        }
    }
    if let Some(cg) = &raw.cgroup {
        if let Some(p) = cgroup_path(ctx, cg) {
            m.config.cgroup = Some(p);
        }
    }
    for (i, h) in raw.host.iter().enumerate() {
        if let Some(host) = host(ctx, h, i) {
            m.hosts
                .push((host, ctx.loc(Some(h.name.span())), format!("host[{i}]")));
        }
    }
    if let Some(b) = &raw.bpf {
        bpf(ctx, b, m);
    }
    if let Some(mc) = &raw.metrics {
        metrics(ctx, mc, &mut m.config.metrics);
    }
    if let Some(t) = &raw.table {
        table(ctx, t, &mut m.config.table);
    }
    if let Some(l) = &raw.log {
        log(ctx, l, &mut m.config.log);
    }
    if let Some(g) = &raw.gpu {
        gpu::apply(ctx, g, &mut m.config.gpu);
    }
    if let Some(c) = &raw.containers {
        containers::apply(ctx, c, &mut m.config.containers);
    }
}

fn bpf(ctx: &mut Ctx<'_>, b: &RawBpf, m: &mut Merge) {
    let c = &mut m.config.bpf;
    if let Some(v) = &b.ring_buffer_size {
        if let Some(n) = size(ctx, v, "bpf.ring_buffer_size") {
            if !n.is_power_of_two() || !(PAGE_SIZE..=1 << 30).contains(&n) {
                ctx.spanned(
                    v,
                    "bpf.ring_buffer_size",
                    format!("{n} bytes: must be a power of two between 4KiB and 1GiB"),
                );
            } else {
                c.ring_buffer_size = n as u32;
                m.ring_loc = Some(ctx.loc(Some(v.span())));
            }
        }
    }
    if let Some(v) = &b.wakeup_threshold {
        if let Some(n) = size(ctx, v, "bpf.wakeup_threshold") {
            c.wakeup_threshold = n;
            m.wakeup_loc = Some(ctx.loc(Some(v.span())));
        }
    }
    if let Some(v) = &b.keep_pinned_on_stop {
        c.keep_pinned_on_stop = *v.get_ref();
    }
    if let Some(v) = &b.dns_answers {
        c.dns_answers = *v.get_ref();
    }
    if let Some(v) = &b.udp_dedup_entries {
        if let Some(n) = int_in(ctx, v, "bpf.udp_dedup_entries", 1, 1 << 24) {
            c.udp_dedup_entries = n as u32;
        }
    }
}

fn table(ctx: &mut Ctx<'_>, t: &RawTable, out: &mut TableConfig) {
    if let Some(v) = &t.max_open {
        if let Some(n) = int_in(ctx, v, "table.max_open", 1, 1 << 24) {
            out.max_open = n as usize;
        }
    }
    if let Some(v) = &t.max_closed {
        if let Some(n) = int_in(ctx, v, "table.max_closed", 0, 1 << 24) {
            out.max_closed = n as usize;
        }
    }
    if let Some(v) = &t.closed_retention {
        if let Some(d) = duration(ctx, v, "table.closed_retention") {
            out.closed_retention = d;
        }
    }
    if let Some(v) = &t.process_retention {
        if let Some(d) = duration(ctx, v, "table.process_retention") {
            out.process_retention = d;
        }
    }
}

fn log(ctx: &mut Ctx<'_>, l: &RawLog, out: &mut LogConfig) {
    if let Some(f) = &l.format {
        match f.get_ref().as_str() {
            "text" => out.format = LogFormat::Text,
            "json" => out.format = LogFormat::Json,
            other => ctx.spanned(
                f,
                "log.format",
                format!("unknown log format `{other}`; expected \"text\" or \"json\""),
            ),
        }
    }
    if let Some(e) = &l.events {
        out.events = *e.get_ref();
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
    if let Some(list) = &r.connection_labels {
        out.connection_labels = ConnectionLabels::default();
        for (i, v) in list.iter().enumerate() {
            match v.get_ref().as_str() {
                "port" => out.connection_labels.port = true,
                "comm" => out.connection_labels.comm = true,
                "container_name" => out.connection_labels.container_name = true,
                "pod" => out.connection_labels.pod = true,
                other => ctx.spanned(
                    v,
                    &format!("metrics.connection_labels[{i}]"),
                    format!(
                        "`{other}`: \"port\", \"comm\", \"container_name\" or \"pod\" (the other labels are always there)"
                    ),
                ),
            }
        }
    }
}

fn dns(ctx: &mut Ctx<'_>, d: &RawDns, out: &mut DnsConfig) {
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
    match super::hostname(s) {
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
mod tests;

/// Every error a configuration text at the default path gets, as printed.
#[cfg(test)]
pub(super) fn errors_of(text: &str) -> Vec<String> {
    parse_config(std::path::Path::new("/etc/connectracer/connectracer.toml"), text)
        .unwrap_err()
        .0
        .iter()
        .map(ToString::to_string)
        .collect()
}
