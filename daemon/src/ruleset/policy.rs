//! The policy laid out for the kernel: per-scope LPM entries (each carrying
//! its covering prefixes' rules, like the watch list) and the map from
//! kernel-visible identities (cgroup ids, uids, executable inodes) to scopes.

use connectracer_proto::{ContainerMeta, Protocol};
use ipnet::IpNet;

use super::lpm::{Flat, Prefixes};
use super::names;
use crate::attribution::cgroup_path::parse_cgroup_path;
use crate::bpf::layout::{CompiledPolicy, KernelRule, PolicyEntry, ScopeKey, ScopeVal, MAX_RULES};
use crate::bpf::types::{ct_policy_flag, ct_verdict};
use crate::config::policy::{Action, Dest, Mode, Policy, Selector};
use crate::config::PortSet;
use crate::policy::scopes::Identities;
use crate::policy::{Environment, Scope, SCOPE_BUILTIN};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{dest} in {scope} needs {needed} rules counting those of the wider prefixes that cover it; the kernel holds at most {MAX_RULES} per prefix: merge port ranges or overlap fewer prefixes")]
pub struct TooManyRules {
    pub scope: String,
    /// The prefix, or the hostname.
    pub dest: String,
    pub needed: usize,
    /// A rule on that prefix, for locating the problem.
    pub rule: Option<u32>,
}

fn verdict_code(action: Action, mode: Mode) -> u8 {
    let v = match (action, mode) {
        (Action::Allow, _) => ct_verdict::CT_VERDICT_ALLOW,
        (Action::Deny, Mode::Audit) => ct_verdict::CT_VERDICT_AUDIT,
        (Action::Deny, Mode::Enforce) => ct_verdict::CT_VERDICT_DENY,
    };
    v.0 as u8
}

fn protocol_code(p: Option<Protocol>) -> u8 {
    match p {
        None => 0,
        Some(Protocol::Tcp) => libc::IPPROTO_TCP as u8,
        Some(Protocol::Udp) => libc::IPPROTO_UDP as u8,
    }
}

fn port_rules(ports: &PortSet, protocol: u8, verdict: u8, rule_id: u32) -> Vec<KernelRule> {
    ports
        .bounds()
        .into_iter()
        .map(|(lo, hi)| KernelRule {
            lo,
            hi,
            protocol,
            verdict,
            rule_id,
        })
        .collect()
}

/// The networks a destination stands for now.
fn nets(d: &Dest, env: &Environment<'_>) -> Vec<IpNet> {
    match d {
        Dest::Any => vec![
            "0.0.0.0/0".parse().expect("literal"),
            "::/0".parse().expect("literal"),
        ],
        Dest::Net(n) => vec![*n],
        Dest::Name(name) => env
            .resolved
            .get(name)
            .into_iter()
            .flatten()
            .map(|ip| IpNet::from(ip.to_canonical()))
            .collect(),
    }
}

/// The policy as the kernel holds it, and every prefix that needs more
/// rules than an entry carries.
pub fn compile(
    policy: &Policy,
    env: &Environment<'_>,
    ids: &Identities,
) -> (CompiledPolicy, Vec<TooManyRules>) {
    if !policy.is_active() {
        return (CompiledPolicy::default(), Vec::new());
    }
    let scopes = policy.scopes();
    let mut out = CompiledPolicy {
        flags: ct_policy_flag::CT_POLICY_ON.0 as u8,
        ..Default::default()
    };
    let errors = entries(policy, &scopes, env, &mut out);
    scope_keys(&scopes, ids, &mut out);
    (out, errors)
}

/// Own rules per (scope, prefix), declaration order kept, flattened into
/// `out.entries`.
fn entries(
    policy: &Policy,
    scopes: &[Scope],
    env: &Environment<'_>,
    out: &mut CompiledPolicy,
) -> Vec<TooManyRules> {
    let mut prefixes: Prefixes<u32, KernelRule> = Prefixes::default();
    let mut by_name = names::Collect::default();
    for (net, ports, _) in policy.exceptions(env) {
        prefixes.add(SCOPE_BUILTIN, net, port_rules(&ports, 0, 0, 0));
    }
    // A sandbox is asked before the built-in scope: the DNS servers in use
    // are its own exception (the host's policy still judges them after).
    let dns = PortSet(vec![53..=53]);
    for s in scopes.iter().filter(|s| s.sandbox) {
        for net in crate::policy::sandbox::dns_exceptions(env) {
            prefixes.add(s.id, net, port_rules(&dns, 0, 0, 0));
        }
    }
    for r in &policy.rules {
        let scope = scopes
            .iter()
            .find(|s| s.selector == r.selector)
            .expect("every rule's selector is numbered");
        let verdict = verdict_code(r.action, scope.mode);
        let rules = port_rules(&r.ports, protocol_code(r.protocol), verdict, r.id);
        for d in &r.dest {
            if let Dest::Name(name) = d {
                by_name.add(scope.id, name, rules.iter().copied());
            }
        }
        for net in r.dest.iter().flat_map(|d| nets(d, env)) {
            prefixes.add(
                scope.id,
                net,
                port_rules(&r.ports, protocol_code(r.protocol), verdict, r.id),
            );
        }
    }
    let scope_name = |scope: u32| {
        scopes
            .iter()
            .find(|s| s.id == scope)
            .and_then(|s| s.selector.as_ref())
            .map_or_else(|| "the global scope".to_string(), ToString::to_string)
    };
    let (named, too_many) = by_name.finish();
    if !named.is_empty() {
        out.flags |= ct_policy_flag::CT_POLICY_NAMES.0 as u8;
    }
    out.names = named;
    let mut errors: Vec<TooManyRules> = too_many
        .into_iter()
        .map(|e| TooManyRules {
            scope: scope_name(e.scope),
            dest: e.name,
            needed: e.needed,
            rule: e.first,
        })
        .collect();
    for flat in prefixes.flatten() {
        match flat {
            Flat::Entry {
                scope,
                net,
                rules,
                own,
            } => out.entries.push(PolicyEntry {
                scope,
                net,
                rules,
                own,
            }),
            Flat::TooMany {
                scope,
                net,
                needed,
                first_own,
            } => errors.push(TooManyRules {
                scope: scope_name(scope),
                dest: net.to_string(),
                needed,
                rule: first_own.map(|r| r.rule_id).filter(|id| *id != 0),
            }),
        }
    }
    errors
}

/// The scope map: each scope's settings, and the identities (uids,
/// executables, cgroups) that select it.
fn scope_keys(scopes: &[Scope], ids: &Identities, out: &mut CompiledPolicy) {
    let member = |scope: u32| ScopeVal {
        scope,
        ..Default::default()
    };
    out.scopes
        .push((ScopeKey::Scope(SCOPE_BUILTIN), member(SCOPE_BUILTIN)));
    for s in scopes {
        out.scopes.push((ScopeKey::Scope(s.id), settings(s)));
        match &s.selector {
            Some(sel) if sel.is_cgroup_based() => out.flags |= ct_policy_flag::CT_POLICY_CGROUP.0 as u8,
            Some(Selector::User { uid, .. }) => {
                out.flags |= ct_policy_flag::CT_POLICY_UID.0 as u8;
                out.scopes.push((ScopeKey::Uid(*uid), member(s.id)));
            }
            Some(Selector::Exe(path)) => {
                out.flags |= ct_policy_flag::CT_POLICY_EXE.0 as u8;
                if let Some(Some((ino, dev))) = ids.exes.get(path) {
                    out.scopes
                        .push((ScopeKey::Exe { ino: *ino, dev: *dev }, member(s.id)));
                }
            }
            _ => {}
        }
    }
    // Each cgroup goes to the first scope, in declaration order, that
    // selects it; a sandbox's cgroup to its sandbox scope as well.
    for (path, id) in &ids.cgroups {
        let meta = parse_cgroup_path(path)
            .container
            .and_then(|c| ids.containers.get(&c.id))
            .map(|m| &**m);
        if let Some(s) = scopes
            .iter()
            .find(|s| s.sandbox && matches!(&s.selector, Some(Selector::Cgroup(p)) if p == path))
        {
            out.flags |= ct_policy_flag::CT_POLICY_SANDBOX.0 as u8;
            out.scopes.push((ScopeKey::Sandbox(*id), member(s.id)));
        }
        if let Some(s) = host_scope_of(scopes, path, meta) {
            out.scopes.push((ScopeKey::Cgroup(*id), member(s)));
        }
    }
}

/// The first host scope (not a sandbox's), in declaration order, that
/// selects the cgroup at `path`.
fn host_scope_of(scopes: &[Scope], path: &str, meta: Option<&ContainerMeta>) -> Option<u32> {
    scopes
        .iter()
        .find(|s| !s.sandbox && s.selector.as_ref().is_some_and(|sel| sel.matches(path, meta)))
        .map(|s| s.id)
}

fn settings(s: &Scope) -> ScopeVal {
    ScopeVal {
        scope: s.id,
        default_verdict: s.default.map_or(0, |a| verdict_code(a, s.mode) + 1),
        ipv6_verdict: if s.block_ipv6 {
            verdict_code(Action::Deny, s.mode) + 1
        } else {
            0
        },
    }
}

/// The first scope (in declaration order) selecting the cgroup at `path`,
/// for a cgroup that appeared after the policy was put in force, or whose
/// container the runtime has just described (`meta`).
pub fn scope_for_new_cgroup(policy: &Policy, path: &str, meta: Option<&ContainerMeta>) -> Option<u32> {
    if !policy.is_active() {
        return None;
    }
    host_scope_of(&policy.scopes(), path, meta)
}
