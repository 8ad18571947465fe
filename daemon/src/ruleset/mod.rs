//! The ruleset stage: a validated configuration (`crate::config`) and what
//! it depends on at the moment (resolved names, DNS servers, cgroup and
//! executable identities) compiled into the kernel's layout
//! (`crate::bpf::layout`), or every reason the kernel cannot hold it.
//! Validation, `--check-config` and every apply path (reload, add-host, DNS
//! update) go through `compile`: a configuration that does not fit is
//! refused whole, never written halfway.

pub mod capacity;
mod lpm;
pub mod names;
pub mod policy;
pub mod watch;

use std::path::PathBuf;

use crate::bpf::layout::Ruleset;
use crate::config::{Config, ConfigError, ConfigErrors, Place, TraceMode, Validated};
use crate::policy::scopes::Identities;
use crate::policy::Environment;

/// Why the kernel cannot hold a configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Problem {
    /// A watched prefix needing more port rules than an entry carries.
    Watch(watch::TooManyRules),
    /// A policy prefix needing more rules than an entry carries.
    Policy(policy::TooManyRules),
    /// More entries than a map holds.
    Capacity(capacity::Overflow),
}

impl Problem {
    /// In words, for an apply that is refused.
    pub fn describe(&self, c: &Config) -> String {
        match self {
            Problem::Watch(e) => format!("watch list: {e} (host `{}`)", c.hosts[e.host_index].name),
            Problem::Policy(e) => format!("policy: {e}"),
            Problem::Capacity(o) => o.to_string(),
        }
    }

    /// Located in the files, for validation.
    fn located(&self, v: &Validated) -> ConfigError {
        let rule = |id: Option<u32>| {
            let place = id
                .and_then(|id| v.rules.get((id as usize).wrapping_sub(1)))
                .cloned()
                .unwrap_or(Place {
                    column: 1,
                    ..Place::default()
                });
            let key = id.map_or_else(|| "rule".to_string(), |id| format!("rule {id}"));
            (place, key)
        };
        let (place, key) = match self {
            Problem::Watch(e) => v.hosts[e.host_index].clone(),
            Problem::Policy(e) => rule(e.rule),
            Problem::Capacity(o) => match o.culprit {
                capacity::Culprit::Host(i) if i < v.hosts.len() => v.hosts[i].clone(),
                capacity::Culprit::Rule(id) => rule(Some(id)),
                _ => (rule(None).0, "scope".to_string()),
            },
        };
        let message = match self {
            Problem::Watch(e) => e.to_string(),
            Problem::Policy(e) => e.to_string(),
            Problem::Capacity(o) => o.to_string(),
        };
        ConfigError::at(&place, key, message)
    }
}

/// The kernel's view of a configuration, or every reason it cannot be
/// held: a prefix with more port rules than an entry carries, or more
/// entries than a map holds. Nothing is left out silently: what is in force
/// is always exactly what `policy show` and `hosts` report.
pub fn compile(
    epoch: u32,
    c: &Config,
    env: &Environment<'_>,
    ids: &Identities,
) -> Result<Ruleset, Vec<Problem>> {
    let (watch, too_many) = watch::build(&c.hosts, env.resolved);
    let mut problems: Vec<Problem> = too_many.into_iter().map(Problem::Watch).collect();
    let (mut policy, too_many) = policy::compile(&c.policy, env, ids);
    // Whole seconds, rounded up: the kernel keeps an address at least as long as asked.
    policy.name_grace_s =
        u32::try_from(c.dns.grace.as_secs() + u64::from(c.dns.grace.subsec_nanos() > 0)).unwrap_or(u32::MAX);
    problems.extend(too_many.into_iter().map(Problem::Policy));
    problems.extend(
        capacity::check(&watch, &policy)
            .into_iter()
            .map(Problem::Capacity),
    );
    if !problems.is_empty() {
        return Err(problems);
    }
    Ok(Ruleset {
        epoch,
        trace_all: c.trace == TraceMode::All,
        watch,
        policy,
    })
}

/// What start, reload and `--check-config` accept: the configuration's own
/// rules (`config::validate`), then whether the kernel can hold it, with
/// every error located in the files. Hostnames count once resolved: every
/// apply compiles again with their addresses.
pub fn check_files(files: &[(PathBuf, String)]) -> Result<Config, ConfigErrors> {
    let mut v = crate::config::validate(files);
    if let Err(problems) = compile(0, &v.config, &Environment::empty(), &Identities::default()) {
        let located: Vec<ConfigError> = problems.iter().map(|p| p.located(&v)).collect();
        v.errors.extend(located);
    }
    v.into_result()
}

#[cfg(test)]
mod tests;
