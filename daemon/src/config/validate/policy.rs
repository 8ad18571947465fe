//! Validation of `mode`, `[policy]`, `[[rule]]` and `[[scope]]`.

use std::path::{Component, Path, PathBuf};

use connectracer_proto::Protocol;
use toml::Spanned;

use super::super::policy::{Action, Dest, Mode, Rule, ScopeSettings, Selector};
use super::super::raw::{RawConfig, RawRule, RawScope, RawSelector, RawUser};
use super::super::{ConfigError, HostTarget, Place};
use super::{parse_target, port_set, push, Ctx, Merge};

/// Applies one file's policy keys: scalars override, rules and scopes append.
pub(super) fn apply(ctx: &mut Ctx<'_>, raw: &RawConfig, m: &mut Merge) {
    let p = &mut m.config.policy;
    if let Some(v) = &raw.mode {
        if let Some(mode) = mode(ctx, v, "mode") {
            p.mode = mode;
        }
    }
    if let Some(rp) = &raw.policy {
        if let Some(v) = &rp.default {
            if let Some(a) = action(ctx, v, "policy.default") {
                p.default = a;
            }
        }
        if let Some(v) = &rp.allow_loopback {
            p.allow_loopback = *v.get_ref();
        }
        if let Some(v) = &rp.allow_dns {
            p.allow_dns = *v.get_ref();
        }
        if let Some(v) = &rp.block_ipv6 {
            p.block_ipv6 = *v.get_ref();
        }
    }
    for (i, r) in raw.rule.iter().enumerate() {
        if let Some(rule) = rule(ctx, r, i) {
            // Errors about a rule as a whole point at its first line.
            let place = Place {
                column: 1,
                ..ctx.loc(Some(r.action.span()))
            };
            m.rules.push((rule, place));
        }
    }
    for (i, s) in raw.scope.iter().enumerate() {
        if let Some(scope) = scope(ctx, s, i) {
            let loc = ctx.loc(first_span(&s.selector()));
            m.scopes.push((scope, loc, format!("scope[{i}]")));
        }
    }
}

/// Numbers the rules of every file in order and rejects two `[[scope]]`
/// tables for one selector; returns where each rule was written.
pub(super) fn finish(m: &mut Merge, errors: &mut Vec<ConfigError>) -> Vec<Place> {
    let p = &mut m.config.policy;
    let mut places = Vec::with_capacity(m.rules.len());
    for (i, (mut r, place)) in std::mem::take(&mut m.rules).into_iter().enumerate() {
        r.id = i as u32 + 1;
        p.rules.push(r);
        places.push(place);
    }
    let mut seen: Vec<(Selector, Place)> = Vec::new();
    for (s, loc, key) in std::mem::take(&mut m.scopes) {
        if let Some((_, first)) = seen.iter().find(|(sel, _)| *sel == s.selector) {
            let msg = format!(
                "{} already has a [[scope]] table ({}:{}); merge them",
                s.selector,
                first.file.display(),
                first.line
            );
            push(errors, &loc, key, msg);
            continue;
        }
        seen.push((s.selector.clone(), loc));
        p.scopes.push(s);
    }
    places
}

fn mode(ctx: &mut Ctx<'_>, v: &Spanned<String>, key: &str) -> Option<Mode> {
    match v.get_ref().as_str() {
        "audit" => Some(Mode::Audit),
        "enforce" => Some(Mode::Enforce),
        other => {
            ctx.spanned(
                v,
                key,
                format!("unknown mode `{other}`; expected \"audit\" or \"enforce\""),
            );
            None
        }
    }
}

fn action(ctx: &mut Ctx<'_>, v: &Spanned<String>, key: &str) -> Option<Action> {
    match v.get_ref().as_str() {
        "allow" => Some(Action::Allow),
        "deny" => Some(Action::Deny),
        other => {
            ctx.spanned(
                v,
                key,
                format!("unknown action `{other}`; expected \"allow\" or \"deny\""),
            );
            None
        }
    }
}

fn first_span(s: &RawSelector<'_>) -> Option<std::ops::Range<usize>> {
    [
        s.unit.map(Spanned::span),
        s.cgroup.map(Spanned::span),
        s.container.map(Spanned::span),
        s.container_name.map(Spanned::span),
        s.pod.map(Spanned::span),
        s.namespace.map(Spanned::span),
        s.user.map(Spanned::span),
        s.exe.map(Spanned::span),
    ]
    .into_iter()
    .flatten()
    .min_by_key(|r| r.start)
}

/// At most one selector; `Ok(None)` for none (global).
fn selector(ctx: &mut Ctx<'_>, s: &RawSelector<'_>, key: &str) -> Result<Option<Selector>, ()> {
    let named: Vec<&str> = [
        ("unit", s.unit.is_some()),
        ("cgroup", s.cgroup.is_some()),
        ("container", s.container.is_some()),
        ("container_name", s.container_name.is_some()),
        ("pod", s.pod.is_some()),
        ("namespace", s.namespace.is_some()),
        ("user", s.user.is_some()),
        ("exe", s.exe.is_some()),
    ]
    .into_iter()
    .filter_map(|(k, set)| set.then_some(k))
    .collect();
    if named.len() > 1 {
        ctx.error(
            first_span(s),
            key,
            format!(
                "one selector per entry, found {}: write one entry per selector",
                named.join(" and ")
            ),
        );
        return Err(());
    }
    let found = if let Some(v) = s.unit {
        unit(ctx, v, &format!("{key}.unit"))
    } else if let Some(v) = s.cgroup {
        cgroup(ctx, v, &format!("{key}.cgroup"))
    } else if let Some(v) = s.container {
        container(ctx, v, &format!("{key}.container"))
    } else if let Some(v) = s.container_name {
        name_glob(ctx, v, &format!("{key}.container_name"), "container name").map(Selector::ContainerName)
    } else if let Some(v) = s.pod {
        name_glob(ctx, v, &format!("{key}.pod"), "pod name").map(Selector::Pod)
    } else if let Some(v) = s.namespace {
        name_glob(ctx, v, &format!("{key}.namespace"), "namespace").map(Selector::Namespace)
    } else if let Some(v) = s.user {
        user(ctx, v, &format!("{key}.user"))
    } else if let Some(v) = s.exe {
        exe(ctx, v, &format!("{key}.exe"))
    } else {
        return Ok(None);
    };
    found.map(Some).ok_or(())
}

fn unit(ctx: &mut Ctx<'_>, v: &Spanned<String>, key: &str) -> Option<Selector> {
    let u = v.get_ref().trim();
    if u.is_empty() || u.contains('/') || u.chars().any(char::is_whitespace) {
        ctx.spanned(
            v,
            key,
            format!("`{u}` is not a unit name or glob (e.g. \"backup.service\", \"docker-*.scope\")"),
        );
        return None;
    }
    match glob::Pattern::new(u) {
        Ok(p) => Some(Selector::Unit(p)),
        Err(e) => {
            ctx.spanned(v, key, format!("`{u}`: bad glob: {e}"));
            None
        }
    }
}

fn cgroup(ctx: &mut Ctx<'_>, v: &Spanned<String>, key: &str) -> Option<Selector> {
    let c = v.get_ref().trim();
    let p = Path::new(c);
    let bad = if !p.is_absolute() {
        Some("is not an absolute cgroup path (e.g. \"/system.slice/backup.service\")")
    } else if p
        .components()
        .any(|c| matches!(c, Component::ParentDir | Component::CurDir))
    {
        Some("must not contain `.` or `..`")
    } else if c.trim_end_matches('/').is_empty() {
        Some("selects every process: write a global rule (no selector) instead")
    } else {
        None
    };
    if let Some(why) = bad {
        ctx.spanned(v, key, format!("`{c}` {why}"));
        return None;
    }
    Some(Selector::Cgroup(c.trim_end_matches('/').to_string()))
}

/// A container name, pod name or namespace, or a glob of them.
fn name_glob(ctx: &mut Ctx<'_>, v: &Spanned<String>, key: &str, what: &str) -> Option<glob::Pattern> {
    let n = v.get_ref().trim();
    if n.is_empty() || n.contains('/') || n.chars().any(char::is_whitespace) {
        ctx.spanned(
            v,
            key,
            format!("`{n}` is not a {what} or glob (e.g. \"web\", \"web-*\")"),
        );
        return None;
    }
    match glob::Pattern::new(n) {
        Ok(p) => Some(p),
        Err(e) => {
            ctx.spanned(v, key, format!("`{n}`: bad glob: {e}"));
            None
        }
    }
}

fn container(ctx: &mut Ctx<'_>, v: &Spanned<String>, key: &str) -> Option<Selector> {
    let c = v.get_ref().trim().to_ascii_lowercase();
    let hex = c.chars().all(|ch| ch.is_ascii_hexdigit());
    let bad = if c.is_empty()
        || c.len() > 64
        || !c
            .chars()
            .all(|ch| ch.is_ascii_alphanumeric() || matches!(ch, '-' | '_' | '.'))
    {
        Some("is not a container id (1 to 64 letters, digits, '-', '_', '.')")
    } else if hex && c.len() < 12 {
        Some("is too short to name one container: give at least 12 hex digits of the id")
    } else {
        None
    };
    if let Some(why) = bad {
        ctx.spanned(v, key, format!("`{c}` {why}"));
        return None;
    }
    Some(Selector::Container(c))
}

fn user(ctx: &mut Ctx<'_>, v: &Spanned<RawUser>, key: &str) -> Option<Selector> {
    match v.get_ref() {
        RawUser::Id(n) => match u32::try_from(*n) {
            Ok(uid) if uid != u32::MAX => {
                let name = nix::unistd::User::from_uid(uid.into())
                    .ok()
                    .flatten()
                    .map_or_else(|| uid.to_string(), |u| u.name);
                Some(Selector::User { uid, name })
            }
            _ => {
                ctx.spanned(v, key, format!("{n} is not a uid (0 to 4294967294)"));
                None
            }
        },
        RawUser::Name(name) => match nix::unistd::User::from_name(name.trim()) {
            Ok(Some(u)) => Some(Selector::User {
                uid: u.uid.as_raw(),
                name: u.name,
            }),
            _ => {
                ctx.spanned(
                    v,
                    key,
                    format!(
                        "no user `{name}` on this system; give a uid to name one that does not exist yet"
                    ),
                );
                None
            }
        },
    }
}

fn exe(ctx: &mut Ctx<'_>, v: &Spanned<String>, key: &str) -> Option<Selector> {
    let e = v.get_ref().trim();
    let p = Path::new(e);
    if !p.is_absolute() || p.components().any(|c| c == Component::ParentDir) {
        ctx.spanned(v, key, format!("`{e}` is not an absolute path to an executable"));
        return None;
    }
    // Symlinks (/usr/bin/python3 -> python3.11) select what they point to.
    let path = std::fs::canonicalize(p).unwrap_or_else(|_| PathBuf::from(p));
    Some(Selector::Exe(path))
}

fn dests(ctx: &mut Ctx<'_>, v: &Spanned<toml::Value>, key: &str) -> Option<Vec<Dest>> {
    let (list, many): (Vec<&toml::Value>, bool) = match v.get_ref() {
        toml::Value::Array(a) => (a.iter().collect(), true),
        one => (vec![one], false),
    };
    if list.is_empty() {
        ctx.spanned(
            v,
            key,
            "empty destination list; leave `dest` out (or write \"any\") to match every destination",
        );
        return None;
    }
    let mut out = Vec::new();
    let mut ok = true;
    for (i, d) in list.iter().enumerate() {
        let k = if many {
            format!("{key}[{i}]")
        } else {
            key.to_string()
        };
        let Some(text) = d.as_str() else {
            ctx.spanned(
                v,
                &k,
                format!("{d} is not a string: write an address, CIDR, hostname or \"any\" in quotes"),
            );
            ok = false;
            continue;
        };
        if text.trim() == "any" {
            out.push(Dest::Any);
            continue;
        }
        let item = Spanned::new(v.span(), text.to_string());
        match parse_target(ctx, &item, &k) {
            Some(HostTarget::Net(n)) => out.push(Dest::Net(n)),
            Some(HostTarget::Name(n)) => out.push(Dest::Name(n)),
            None => ok = false,
        }
    }
    ok.then_some(out)
}

fn rule(ctx: &mut Ctx<'_>, r: &RawRule, i: usize) -> Option<Rule> {
    let key = format!("rule[{i}]");
    let action = action(ctx, &r.action, &format!("{key}.action"));
    let selector = selector(ctx, &r.selector(), &key);
    let dest = match &r.dest {
        None => Some(vec![Dest::Any]),
        Some(v) => dests(ctx, v, &format!("{key}.dest")),
    };
    let ports = port_set(ctx, r.ports.as_deref(), r.action.span(), &key);
    let protocol = match &r.protocol {
        None => Some(None),
        Some(v) => match v.get_ref().as_str() {
            "tcp" => Some(Some(Protocol::Tcp)),
            "udp" => Some(Some(Protocol::Udp)),
            "any" => Some(None),
            other => {
                ctx.spanned(
                    v,
                    &format!("{key}.protocol"),
                    format!("unknown protocol `{other}`; expected \"tcp\", \"udp\" or \"any\""),
                );
                None
            }
        },
    };
    if let Some(c) = &r.comment {
        if c.get_ref().chars().any(char::is_control) {
            ctx.spanned(c, &format!("{key}.comment"), "comment must be printable");
            return None;
        }
    }
    let loc = ctx.loc(Some(r.action.span()));
    Some(Rule {
        id: 0,
        action: action?,
        dest: dest?,
        ports: ports?,
        protocol: protocol?,
        selector: selector.ok()?,
        origin: format!("{}:{}", loc.file.display(), loc.line),
    })
}

fn scope(ctx: &mut Ctx<'_>, s: &RawScope, i: usize) -> Option<ScopeSettings> {
    let key = format!("scope[{i}]");
    let sel = selector(ctx, &s.selector(), &key).ok()?;
    let anchor = first_span(&s.selector())
        .or_else(|| s.default.as_ref().map(Spanned::span))
        .or_else(|| s.mode.as_ref().map(Spanned::span))
        .or_else(|| s.block_ipv6.as_ref().map(Spanned::span));
    let Some(selector) = sel else {
        ctx.error(
            anchor,
            &key,
            "a [[scope]] needs one of unit, cgroup, container, container_name, pod, namespace, user or exe; global settings go in [policy] and the top-level `mode`",
        );
        return None;
    };
    let default = match &s.default {
        None => Some(None),
        Some(v) => action(ctx, v, &format!("{key}.default")).map(Some),
    };
    let mode = match &s.mode {
        None => Some(None),
        Some(v) => mode(ctx, v, &format!("{key}.mode")).map(Some),
    };
    let block_ipv6 = s.block_ipv6.as_ref().is_some_and(|b| *b.get_ref());
    if s.default.is_none() && s.mode.is_none() && s.block_ipv6.is_none() {
        ctx.error(
            anchor,
            &key,
            format!("{selector}: the scope sets nothing; give `default`, `mode` or `block_ipv6`"),
        );
        return None;
    }
    let loc = ctx.loc(anchor);
    Some(ScopeSettings {
        selector,
        default: default?,
        mode: mode?,
        block_ipv6,
        origin: format!("{}:{}", loc.file.display(), loc.line),
    })
}
