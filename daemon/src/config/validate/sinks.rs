//! Validation of `[[event_sink]]`: each table on its own, then the sinks of
//! every file together (names, stdout, file paths).

use std::collections::HashMap;
use std::path::{Component, Path, PathBuf};

use connectracer_proto::Verdict;
use toml::Spanned;

use super::super::raw::RawEventSink;
use super::super::sink::{DEFAULT_KEEP, DEFAULT_MAX_SIZE, DEFAULT_QUEUE};
use super::super::{ConfigError, EventKind, FileSink, LogFormat, Place, SinkConfig, SinkFilter, SinkKind};
use super::{int_in, push, size, Ctx, Merge};

const MIN_FILE_SIZE: u64 = 4096;
const MAX_KEEP: u64 = 1000;

/// Validates one file's `[[event_sink]]` tables; they append to earlier files'.
pub(super) fn apply(ctx: &mut Ctx<'_>, raw: &[RawEventSink], m: &mut Merge) {
    for (i, r) in raw.iter().enumerate() {
        let key = format!("event_sink[{i}]");
        if let Some(sink) = sink(ctx, r, &key) {
            m.sinks.push((sink, ctx.loc(Some(r.kind.span())), key));
        }
    }
}

/// Names are unique (they key stats, metrics and reloads), one sink at
/// most owns stdout, and no two sinks rotate the same file.
pub(super) fn finish(m: &mut Merge, errors: &mut Vec<ConfigError>) {
    let mut names: HashMap<String, Place> = HashMap::new();
    let mut paths: HashMap<PathBuf, Place> = HashMap::new();
    let mut stdout: Option<Place> = None;
    for (s, loc, key) in std::mem::take(&mut m.sinks) {
        let earlier = |first: &Place| format!("{}:{}", first.file.display(), first.line);
        if let Some(first) = names.get(&s.name) {
            let msg = format!(
                "a sink named `{}` already exists ({}); give each sink its own `name`",
                s.name,
                earlier(first)
            );
            push(errors, &loc, format!("{key}.name"), msg);
            continue;
        }
        match &s.kind {
            SinkKind::Stdout { .. } => {
                if let Some(first) = &stdout {
                    let msg = format!(
                        "stdout already has a sink ({}); lines of two writers would interleave",
                        earlier(first)
                    );
                    push(errors, &loc, format!("{key}.type"), msg);
                    continue;
                }
                stdout = Some(loc.clone());
            }
            SinkKind::File(f) => {
                if let Some(first) = paths.get(&f.path) {
                    let msg = format!(
                        "{} is already written by a sink ({})",
                        f.path.display(),
                        earlier(first)
                    );
                    push(errors, &loc, format!("{key}.path"), msg);
                    continue;
                }
                paths.insert(f.path.clone(), loc.clone());
            }
            SinkKind::Journal | SinkKind::Otlp(_) | SinkKind::Discard => {}
        }
        names.insert(s.name.clone(), loc);
        m.config.log.sinks.push(s);
    }
}

fn sink(ctx: &mut Ctx<'_>, r: &RawEventSink, key: &str) -> Option<SinkConfig> {
    let kind = kind(ctx, r, key);
    let name = match &r.name {
        Some(n) if valid_name(n.get_ref()) => Some(n.get_ref().clone()),
        Some(n) => {
            ctx.spanned(
                n,
                &format!("{key}.name"),
                "a name is 1 to 64 letters, digits, '-', '_' or '.'",
            );
            None
        }
        None => kind.as_ref().map(|k| k.as_str().to_string()),
    };
    let queue = match &r.queue {
        Some(v) => int_in(ctx, v, &format!("{key}.queue"), 1, 1 << 24).map(|n| n as usize),
        None => Some(DEFAULT_QUEUE),
    };
    let filter = filter(ctx, r, key);
    Some(SinkConfig {
        name: name?,
        kind: kind?,
        queue: queue?,
        filter: filter?,
    })
}

fn valid_name(s: &str) -> bool {
    (1..=64).contains(&s.len())
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// The type, and the keys that belong to it; a key of another type is an
/// error rather than silently ignored.
fn kind(ctx: &mut Ctx<'_>, r: &RawEventSink, key: &str) -> Option<SinkKind> {
    let t = r.kind.get_ref().as_str();
    let only = |ctx: &mut Ctx<'_>, span: Option<std::ops::Range<usize>>, k: &str, for_type: &str| {
        if let Some(span) = span {
            let msg = format!("`{k}` applies only to type = \"{for_type}\", not \"{t}\"");
            ctx.error(Some(span), format!("{key}.{k}"), msg);
        }
    };
    if t != "stdout" {
        only(ctx, r.format.as_ref().map(Spanned::span), "format", "stdout");
    }
    if t != "file" {
        only(ctx, r.path.as_ref().map(Spanned::span), "path", "file");
        only(ctx, r.max_size.as_ref().map(Spanned::span), "max_size", "file");
        only(ctx, r.keep.as_ref().map(Spanned::span), "keep", "file");
        only(ctx, r.compress.as_ref().map(Spanned::span), "compress", "file");
    }
    if t != "otlp" {
        only(ctx, r.endpoint.as_ref().map(Spanned::span), "endpoint", "otlp");
        only(ctx, r.protocol.as_ref().map(Spanned::span), "protocol", "otlp");
        only(ctx, r.headers.as_ref().map(Spanned::span), "headers", "otlp");
        only(ctx, r.timeout.as_ref().map(Spanned::span), "timeout", "otlp");
    }
    match t {
        "stdout" => {
            let format = match &r.format {
                None => Some(None),
                Some(f) => match f.get_ref().as_str() {
                    "text" => Some(Some(LogFormat::Text)),
                    "json" => Some(Some(LogFormat::Json)),
                    other => {
                        let msg = format!("unknown format `{other}`; expected \"text\" or \"json\"");
                        ctx.spanned(f, &format!("{key}.format"), msg);
                        None
                    }
                },
            };
            Some(SinkKind::Stdout { format: format? })
        }
        "journal" => Some(SinkKind::Journal),
        "none" => Some(SinkKind::Discard),
        "file" => file(ctx, r, key).map(SinkKind::File),
        "otlp" => super::otlp::sink(ctx, r, key).map(SinkKind::Otlp),
        other => {
            let msg = format!(
                "unknown sink type `{other}`; expected \"stdout\", \"journal\", \"file\", \"otlp\" or \"none\""
            );
            ctx.spanned(&r.kind, &format!("{key}.type"), msg);
            None
        }
    }
}

fn file(ctx: &mut Ctx<'_>, r: &RawEventSink, key: &str) -> Option<FileSink> {
    let path = match &r.path {
        None => {
            ctx.spanned(&r.kind, &format!("{key}.path"), "a file sink needs `path`");
            None
        }
        Some(p) => {
            let path = Path::new(p.get_ref());
            let bad = if !path.is_absolute() {
                Some("is not an absolute path")
            } else if path.components().any(|c| c == Component::ParentDir) {
                Some("must not contain `..`")
            } else if p.get_ref().ends_with('/') {
                Some("names a directory; name the file")
            } else {
                None
            };
            if let Some(why) = bad {
                ctx.spanned(p, &format!("{key}.path"), format!("`{}` {why}", p.get_ref()));
            }
            bad.is_none().then(|| path.to_path_buf())
        }
    };
    let max_size = match &r.max_size {
        None => Some(DEFAULT_MAX_SIZE),
        Some(v) => size(ctx, v, &format!("{key}.max_size")).and_then(|n| {
            if n < MIN_FILE_SIZE {
                let msg = format!("{n} bytes: a file is rotated at 4KiB at the least");
                ctx.spanned(v, &format!("{key}.max_size"), msg);
                return None;
            }
            Some(n)
        }),
    };
    let keep = match &r.keep {
        None => Some(DEFAULT_KEEP),
        Some(v) => int_in(ctx, v, &format!("{key}.keep"), 0, MAX_KEEP).map(|n| n as u32),
    };
    Some(FileSink {
        path: path?,
        max_size: max_size?,
        keep: keep?,
        compress: r.compress.as_ref().is_some_and(|v| *v.get_ref()),
    })
}

fn filter(ctx: &mut Ctx<'_>, r: &RawEventSink, key: &str) -> Option<SinkFilter> {
    let mut ok = true;
    let events = r.events.as_ref().map(|list| {
        list_of(ctx, r.kind.span(), list, &format!("{key}.events"), &mut ok, |s| {
            EventKind::ALL.into_iter().find(|k| k.as_str() == s)
        })
    });
    let verdicts = r.verdicts.as_ref().map(|list| {
        list_of(
            ctx,
            r.kind.span(),
            list,
            &format!("{key}.verdicts"),
            &mut ok,
            |s| {
                [Verdict::Allow, Verdict::WouldDeny, Verdict::Deny]
                    .into_iter()
                    .find(|v| v.as_str() == s)
            },
        )
    });
    let mut pattern = |v: &Option<Spanned<String>>, k: &str| {
        let v = v.as_ref()?;
        match glob::Pattern::new(v.get_ref()) {
            Ok(p) => Some(p),
            Err(e) => {
                ctx.spanned(
                    v,
                    &format!("{key}.{k}"),
                    format!("`{}` is not a glob: {e}", v.get_ref()),
                );
                ok = false;
                None
            }
        }
    };
    let unit = pattern(&r.unit, "unit");
    let container = pattern(&r.container, "container");
    let exe = pattern(&r.exe, "exe");
    ok.then_some(SinkFilter {
        events,
        verdicts,
        unit,
        container,
        exe,
    })
}

/// A non-empty list of known names; every unknown one is reported.
fn list_of<T: PartialEq + Copy + NamedValue>(
    ctx: &mut Ctx<'_>,
    anchor: std::ops::Range<usize>,
    list: &[Spanned<String>],
    key: &str,
    ok: &mut bool,
    parse: impl Fn(&str) -> Option<T>,
) -> Vec<T> {
    if list.is_empty() {
        // An empty list has no span of its own: point at the table's type.
        ctx.error(
            Some(anchor),
            key,
            "empty list; leave the key out to take every value",
        );
        *ok = false;
    }
    let mut out = Vec::new();
    for (j, v) in list.iter().enumerate() {
        match parse(v.get_ref()) {
            Some(x) if !out.contains(&x) => out.push(x),
            Some(_) => {}
            None => {
                let msg = format!("unknown value `{}`; expected one of {}", v.get_ref(), T::names());
                ctx.spanned(v, &format!("{key}[{j}]"), msg);
                *ok = false;
            }
        }
    }
    out
}

/// The accepted spellings, for error messages.
trait NamedValue {
    fn names() -> String;
}

impl NamedValue for EventKind {
    fn names() -> String {
        EventKind::ALL.map(EventKind::as_str).join(", ")
    }
}

impl NamedValue for Verdict {
    fn names() -> String {
        "allow, would_deny, deny".to_string()
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::super::super::parse_config;
    use super::*;

    const F: &str = "/etc/connectracer/connectracer.toml";

    use super::super::errors_of as errors;

    #[test]
    fn sinks_parse_with_their_defaults() {
        let c = parse_config(
            Path::new(F),
            r#"
[[event_sink]]
type = "file"
path = "/var/log/connectracer/events.jsonl"
compress = true
[[event_sink]]
type = "journal"
name = "denials"
events = ["denied"]
verdicts = ["deny", "would_deny"]
unit = "backup*.service"
[[event_sink]]
type = "stdout"
format = "json"
queue = 10
"#,
        )
        .unwrap();
        let s = &c.log.sinks;
        assert_eq!(s.len(), 3);
        assert_eq!(s[0].name, "file");
        assert_eq!(
            s[0].kind,
            SinkKind::File(FileSink {
                path: "/var/log/connectracer/events.jsonl".into(),
                max_size: DEFAULT_MAX_SIZE,
                keep: DEFAULT_KEEP,
                compress: true,
            })
        );
        assert_eq!(s[0].queue, DEFAULT_QUEUE);
        assert!(s[0].filter.is_empty());
        assert_eq!(s[1].name, "denials");
        assert_eq!(s[1].filter.events, Some(vec![EventKind::Denied]));
        assert_eq!(
            s[1].filter.verdicts,
            Some(vec![Verdict::Deny, Verdict::WouldDeny])
        );
        assert_eq!(
            s[1].filter.unit,
            Some(glob::Pattern::new("backup*.service").unwrap())
        );
        assert_eq!(
            s[2].kind,
            SinkKind::Stdout {
                format: Some(LogFormat::Json)
            }
        );
        assert_eq!(s[2].queue, 10);
    }

    #[test]
    fn every_sink_error_names_file_line_and_key() {
        let e = errors(
            r#"[[event_sink]]
type = "syslog"
[[event_sink]]
type = "journal"
path = "/tmp/x"
format = "json"
[[event_sink]]
type = "file"
path = "relative.jsonl"
max_size = "1KiB"
keep = -1
[[event_sink]]
type = "file"
events = ["connect", "opened"]
verdicts = []
unit = "[bad"
queue = 0
[[event_sink]]
type = "stdout"
name = "a b"
[[event_sink]]
type = "stdout"
[[event_sink]]
type = "stdout"
name = "second"
[[event_sink]]
type = "none"
name = "stdout"
"#,
        );
        assert_eq!(
            e,
            [
                format!("{F}:2:8: event_sink[0].type: unknown sink type `syslog`; expected \"stdout\", \"journal\", \"file\", \"otlp\" or \"none\""),
                format!("{F}:6:10: event_sink[1].format: `format` applies only to type = \"stdout\", not \"journal\""),
                format!("{F}:5:8: event_sink[1].path: `path` applies only to type = \"file\", not \"journal\""),
                format!("{F}:9:8: event_sink[2].path: `relative.jsonl` is not an absolute path"),
                format!("{F}:10:12: event_sink[2].max_size: 1024 bytes: a file is rotated at 4KiB at the least"),
                format!("{F}:11:8: event_sink[2].keep: -1 is out of range 0..=1000"),
                format!("{F}:13:8: event_sink[3].path: a file sink needs `path`"),
                format!("{F}:17:9: event_sink[3].queue: 0 is out of range 1..=16777216"),
                format!("{F}:14:22: event_sink[3].events[1]: unknown value `opened`; expected one of connect, send, established, failed, closed, denied"),
                format!("{F}:13:8: event_sink[3].verdicts: empty list; leave the key out to take every value"),
                format!("{F}:16:8: event_sink[3].unit: `[bad` is not a glob: Pattern syntax error near position 0: invalid range pattern"),
                format!("{F}:20:8: event_sink[4].name: a name is 1 to 64 letters, digits, '-', '_' or '.'"),
                format!("{F}:24:8: event_sink[6].type: stdout already has a sink ({F}:22); lines of two writers would interleave"),
                format!("{F}:27:8: event_sink[7].name: a sink named `stdout` already exists ({F}:22); give each sink its own `name`"),
            ]
        );
    }
}
