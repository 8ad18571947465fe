//! Stage two: raw values to the validated model, every error collected.

use std::collections::HashMap;
use std::net::IpAddr;
use std::ops::Range;
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use ipnet::IpNet;
use toml::Spanned;

use super::raw::{RawConfig, RawHost, RawPort, RawSize};
use super::{Config, ConfigError, ConfigErrors, LogFormat, PortSet, TraceMode, WatchedHost};
use crate::watchlist;

const PAGE_SIZE: u64 = 4096;
const MAX_LABEL_LEN: usize = 64;

struct Ctx<'a> {
    file: &'a Path,
    text: &'a str,
    errors: Vec<ConfigError>,
}

impl Ctx<'_> {
    fn error(&mut self, span: Option<Range<usize>>, key: impl Into<String>, message: impl Into<String>) {
        let (line, column) = span.map_or((0, 0), |s| line_col(self.text, s.start));
        self.errors.push(ConfigError {
            file: self.file.to_path_buf(),
            line,
            column,
            key: key.into(),
            message: message.into(),
        });
    }

    fn spanned<T>(&mut self, v: &Spanned<T>, key: &str, message: impl Into<String>) {
        self.error(Some(v.span()), key, message);
    }
}

/// 1-based line and column of a byte offset.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
    (line, column)
}

/// Parses and validates one configuration text that came from `file`.
pub fn parse_config(file: &Path, text: &str) -> Result<Config, ConfigErrors> {
    let mut ctx = Ctx {
        file,
        text,
        errors: Vec::new(),
    };
    let raw: RawConfig = match toml::from_str(text) {
        Ok(raw) => raw,
        Err(e) => {
            ctx.error(e.span(), "", e.message().trim().replace('\n', "; "));
            return Err(ConfigErrors(ctx.errors));
        }
    };
    let config = build(&mut ctx, raw);
    if ctx.errors.is_empty() {
        Ok(config)
    } else {
        Err(ConfigErrors(ctx.errors))
    }
}

fn build(ctx: &mut Ctx<'_>, raw: RawConfig) -> Config {
    let mut c = Config::default();
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
        c.cgroup = cgroup_path(ctx, cg);
    }
    c.hosts = hosts(ctx, &raw.host);
    if let Err(e) = watchlist::build(&c.hosts) {
        let span = raw.host.get(e.host_index()).map(|h| h.name.span());
        ctx.error(span, format!("host[{}]", e.host_index()), e.to_string());
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
                }
            }
        }
        if let Some(v) = &b.wakeup_threshold {
            if let Some(n) = size(ctx, v, "bpf.wakeup_threshold") {
                c.bpf.wakeup_threshold = n;
            }
        }
        if let Some(v) = &b.udp_dedup_entries {
            c.bpf.udp_dedup_entries = int_in(ctx, v, "bpf.udp_dedup_entries", 1, 1 << 24)
                .unwrap_or(c.bpf.udp_dedup_entries as u64) as u32;
        }
    }
    if c.bpf.wakeup_threshold >= u64::from(c.bpf.ring_buffer_size) {
        let span = raw
            .bpf
            .as_ref()
            .and_then(|b| b.wakeup_threshold.as_ref())
            .map(|v| v.span());
        ctx.error(
            span,
            "bpf.wakeup_threshold",
            format!(
                "{} bytes: must be below bpf.ring_buffer_size ({} bytes)",
                c.bpf.wakeup_threshold, c.bpf.ring_buffer_size
            ),
        );
    }
    if let Some(t) = &raw.table {
        if let Some(v) = &t.max_open {
            c.table.max_open =
                int_in(ctx, v, "table.max_open", 1, 1 << 24).map_or(c.table.max_open, |n| n as usize);
        }
        if let Some(v) = &t.max_closed {
            c.table.max_closed =
                int_in(ctx, v, "table.max_closed", 0, 1 << 24).map_or(c.table.max_closed, |n| n as usize);
        }
        if let Some(v) = &t.closed_retention {
            c.table.closed_retention =
                duration(ctx, v, "table.closed_retention").unwrap_or(c.table.closed_retention);
        }
        if let Some(v) = &t.process_retention {
            c.table.process_retention =
                duration(ctx, v, "table.process_retention").unwrap_or(c.table.process_retention);
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
    c
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

fn hosts(ctx: &mut Ctx<'_>, raw: &[RawHost]) -> Vec<WatchedHost> {
    let mut out = Vec::new();
    let mut seen: HashMap<(IpNet, Vec<(u16, u16)>), usize> = HashMap::new();
    for (i, h) in raw.iter().enumerate() {
        let key = format!("host[{i}]");
        // Everything about the entry is checked even when the name is bad,
        // so one run reports all of its errors.
        let net = parse_net(ctx, &h.name, &format!("{key}.name"));
        let ports = match &h.ports {
            None => PortSet::default(),
            Some(list) if list.is_empty() => {
                ctx.spanned(
                    &h.name,
                    &format!("{key}.ports"),
                    "empty port list; leave `ports` out to match every port",
                );
                continue;
            }
            Some(list) => {
                let mut set = Vec::new();
                for (j, p) in list.iter().enumerate() {
                    if let Some(r) = port_range(ctx, p, &format!("{key}.ports[{j}]")) {
                        set.push(r);
                    }
                }
                PortSet(set)
            }
        };
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
                None
            }
            l => l.as_ref().map(|l| l.get_ref().clone()),
        };
        let Some(net) = net else { continue };
        let dedup = (net, ports.0.iter().map(|r| (*r.start(), *r.end())).collect());
        if let Some(first) = seen.insert(dedup, i) {
            ctx.spanned(
                &h.name,
                &format!("{key}.name"),
                format!(
                    "`{}` with the same ports is already watched by host[{first}]",
                    h.name.get_ref()
                ),
            );
            continue;
        }
        out.push(WatchedHost {
            id: out.len() as u32 + 1,
            name: h.name.get_ref().clone(),
            net,
            ports,
            label,
        });
    }
    out
}

/// An IP (a /32 or /128) or a CIDR; `::ffff:a.b.c.d` forms are folded to
/// IPv4 because the kernel reports v4-mapped destinations as IPv4.
fn parse_net(ctx: &mut Ctx<'_>, v: &Spanned<String>, key: &str) -> Option<IpNet> {
    let s = v.get_ref().trim();
    let net = if let Ok(addr) = s.parse::<IpAddr>() {
        IpNet::from(addr)
    } else if let Ok(net) = s.parse::<IpNet>() {
        if net.trunc() != net {
            ctx.spanned(
                v,
                key,
                format!("`{s}` has host bits set; did you mean `{}`?", net.trunc()),
            );
            return None;
        }
        net
    } else {
        ctx.spanned(v, key, format!("`{s}` is not an IP address or CIDR (hostnames need the DNS watcher, which this build does not have)"));
        return None;
    };
    Some(fold_v4_mapped(net))
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
            c.hosts[1].net.to_string(),
            "192.0.2.0/24",
            "v4-mapped folded to IPv4"
        );
        assert_eq!(c.hosts[2].net.to_string(), "2001:db8::1/128");
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
            ["/etc/connectracer/connectracer.toml:2:1: unknown field `trcae`, expected one of `trace`, `cgroup`, `host`, `bpf`, `table`, `log`"]
        );
        let e = errors("[[host]]\nname = \"10.0.0.1\"\nport = [1]\n");
        assert!(
            e[0].starts_with("/etc/connectracer/connectracer.toml:3:1: unknown field `port`"),
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
name = "api.example.com"
[[host]]
name = "10.1.2.3/16"
[[host]]
name = "10.0.0.1"
ports = [0, 70000, "9-3", "http"]
[[host]]
name = "10.0.0.2"
ports = []
[[host]]
name = "10.0.0.3"
label = ""
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
        assert_eq!(
            e,
            [
                format!("{f}:1:9: trace: unknown trace mode `some`; expected \"watched\" or \"all\""),
                format!("{f}:2:10: cgroup: `relative/path` is not an absolute path"),
                format!("{f}:4:8: host[0].name: `api.example.com` is not an IP address or CIDR (hostnames need the DNS watcher, which this build does not have)"),
                format!("{f}:6:8: host[1].name: `10.1.2.3/16` has host bits set; did you mean `10.1.0.0/16`?"),
                format!("{f}:9:10: host[2].ports[0]: 0 is not a port (1-65535) or a range \"LOW-HIGH\" with LOW <= HIGH"),
                format!("{f}:9:13: host[2].ports[1]: 70000 is not a port (1-65535) or a range \"LOW-HIGH\" with LOW <= HIGH"),
                format!("{f}:9:20: host[2].ports[2]: \"9-3\" is not a port (1-65535) or a range \"LOW-HIGH\" with LOW <= HIGH"),
                format!("{f}:9:27: host[2].ports[3]: \"http\" is not a port (1-65535) or a range \"LOW-HIGH\" with LOW <= HIGH"),
                format!("{f}:11:8: host[3].ports: empty port list; leave `ports` out to match every port"),
                format!("{f}:15:9: host[4].label: label must be 1 to 64 printable characters"),
                format!("{f}:17:8: host[5].name: `10.0.0.3` with the same ports is already watched by host[4]"),
                format!("{f}:19:20: bpf.ring_buffer_size: 3145728 bytes: must be a power of two between 4KiB and 1GiB"),
                format!("{f}:20:21: bpf.udp_dedup_entries: 0 is out of range 1..=16777216"),
                format!("{f}:22:20: table.closed_retention: `soon` is not a duration (expected number at 0); e.g. \"90s\" or \"5m\""),
                format!("{f}:24:10: log.format: unknown log format `xml`; expected \"text\" or \"json\""),
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
