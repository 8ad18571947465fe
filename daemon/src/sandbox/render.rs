//! Sandboxes as configuration text: a `[[scope]]` (default deny) and the
//! caller's rules, each given the sandbox's `cgroup` selector. Written
//! through the TOML serializer from typed values, so nothing a caller sends
//! can add a key, a selector or a table of its own.

use std::path::Path;

use connectracer_proto::api::{SandboxParams, SandboxRule};
use toml::{Table, Value};

use super::{Sandbox, SOURCE};

fn strings(v: &[String]) -> Value {
    Value::Array(v.iter().cloned().map(Value::String).collect())
}

/// Ports as the configuration writes them: numbers, or ranges as strings.
fn ports(v: &[String]) -> Value {
    Value::Array(
        v.iter()
            .map(|p| {
                p.trim()
                    .parse::<i64>()
                    .map_or_else(|_| Value::String(p.clone()), Value::Integer)
            })
            .collect(),
    )
}

fn rule(cgroup: &str, r: &SandboxRule) -> Value {
    let mut t = Table::new();
    t.insert("action".into(), Value::String(r.action.clone()));
    t.insert("cgroup".into(), Value::String(cgroup.to_string()));
    if !r.dest.is_empty() {
        t.insert("dest".into(), strings(&r.dest));
    }
    if !r.ports.is_empty() {
        t.insert("ports".into(), ports(&r.ports));
    }
    if let Some(p) = &r.protocol {
        t.insert("protocol".into(), Value::String(p.clone()));
    }
    Value::Table(t)
}

pub fn config(all: &[Sandbox]) -> String {
    let mut scopes = Vec::new();
    let mut rules = Vec::new();
    for s in all {
        let mut t = Table::new();
        t.insert("cgroup".into(), Value::String(s.cgroup.clone()));
        t.insert("default".into(), Value::String("deny".into()));
        let mode = if s.audit { "audit" } else { "enforce" };
        t.insert("mode".into(), Value::String(mode.into()));
        scopes.push(Value::Table(t));
        rules.extend(s.rule.iter().map(|r| rule(&s.cgroup, r)));
    }
    let mut doc = Table::new();
    doc.insert("scope".into(), Value::Array(scopes));
    if !rules.is_empty() {
        doc.insert("rule".into(), Value::Array(rules));
    }
    toml::to_string(&doc).unwrap_or_default()
}

/// Checks a request's rules on their own, through the configuration
/// parser, before anything is created: a rule that cannot be valid is the
/// caller's mistake. The error names the rule (`rules[2].dest`) and why.
pub fn check(p: &SandboxParams) -> Result<(), (String, String)> {
    if p.rules.len() > super::MAX_RULES {
        return Err((
            "rules".into(),
            format!(
                "{} rules; a sandbox holds at most {}",
                p.rules.len(),
                super::MAX_RULES
            ),
        ));
    }
    let probe = Sandbox {
        id: "check".into(),
        uid: 0,
        dir: "/".into(),
        cgroup: format!("/{}/check", super::CGROUP_DIR),
        unit: None,
        audit: p.audit,
        rule: p.rules.clone(),
    };
    let Err(errors) = crate::config::parse_config(Path::new(SOURCE), &config(&[probe])) else {
        return Ok(());
    };
    let first = errors.0.into_iter().next().map(|e| {
        let key = e
            .key
            .strip_prefix("rule")
            .map_or(e.key.clone(), |rest| format!("rules{rest}"));
        (key, e.message)
    });
    Err(first.unwrap_or_else(|| ("rules".into(), "not a valid rule".into())))
}
