//! The policy laid out for the kernel: per-scope LPM entries (each carrying
//! its covering prefixes' rules, like the watch list) and the map from
//! kernel-visible identities (cgroup ids, uids, executable inodes) to scopes.

use connectracer_proto::Protocol;
use ipnet::IpNet;

use super::scopes::Identities;
use super::{Action, Dest, Environment, Mode, Policy, Scope, Selector, SCOPE_BUILTIN};
use crate::bpf::types::{ct_policy_flag, ct_verdict};
use crate::watchlist::{Flat, Prefixes, MAX_RULES};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KernelRule {
    pub lo: u16,
    pub hi: u16,
    /// IP protocol number, 0 for both.
    pub protocol: u8,
    /// `ct_verdict` with the scope's mode applied.
    pub verdict: u8,
    pub rule_id: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyEntry {
    pub scope: u32,
    pub net: IpNet,
    pub rules: Vec<KernelRule>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ScopeKey {
    Cgroup(u64),
    Uid(u32),
    Exe {
        ino: u64,
        dev: u64,
    },
    /// The scope's own settings.
    Scope(u32),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ScopeVal {
    pub scope: u32,
    /// `ct_verdict` + 1; 0: no default.
    pub default_verdict: u8,
    pub ipv6_verdict: u8,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CompiledPolicy {
    /// `ct_policy_flag` bits.
    pub flags: u8,
    pub entries: Vec<PolicyEntry>,
    pub scopes: Vec<(ScopeKey, ScopeVal)>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{net} in {scope} needs {needed} rules counting those of the wider prefixes that cover it; the kernel holds at most {MAX_RULES} per prefix: merge port ranges or overlap fewer prefixes")]
pub struct TooManyRules {
    pub scope: String,
    pub net: IpNet,
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

fn port_rules(ports: &crate::config::PortSet, protocol: u8, verdict: u8, rule_id: u32) -> Vec<KernelRule> {
    if ports.is_any() {
        return vec![KernelRule {
            lo: 0,
            hi: u16::MAX,
            protocol,
            verdict,
            rule_id,
        }];
    }
    ports
        .0
        .iter()
        .map(|r| KernelRule {
            lo: *r.start(),
            hi: *r.end(),
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

pub fn compile(
    policy: &Policy,
    env: &Environment<'_>,
    ids: &Identities,
) -> (CompiledPolicy, Vec<TooManyRules>) {
    if !policy.is_active() {
        return (CompiledPolicy::default(), Vec::new());
    }
    let scopes = policy.scopes();
    let scope_of = |sel: &Option<Selector>| {
        scopes
            .iter()
            .find(|s| &s.selector == sel)
            .expect("every rule's selector is numbered")
    };

    // Own rules per (scope, prefix), declaration order kept.
    let mut prefixes: Prefixes<u32, KernelRule> = Prefixes::default();
    for (net, ports, _) in policy.exceptions(env) {
        prefixes.add(SCOPE_BUILTIN, net, port_rules(&ports, 0, 0, 0));
    }
    for r in &policy.rules {
        let scope = scope_of(&r.selector);
        let verdict = verdict_code(r.action, scope.mode);
        for d in &r.dest {
            for net in nets(d, env) {
                prefixes.add(
                    scope.id,
                    net,
                    port_rules(&r.ports, protocol_code(r.protocol), verdict, r.id),
                );
            }
        }
    }

    let mut out = CompiledPolicy {
        flags: ct_policy_flag::CT_POLICY_ON.0 as u8,
        ..Default::default()
    };
    let mut errors = Vec::new();
    for flat in prefixes.flatten() {
        match flat {
            Flat::Entry { scope, net, rules } => out.entries.push(PolicyEntry { scope, net, rules }),
            Flat::TooMany {
                scope,
                net,
                needed,
                first_own,
            } => {
                let name = scopes
                    .iter()
                    .find(|s| s.id == scope)
                    .and_then(|s| s.selector.as_ref())
                    .map_or_else(|| "the global scope".to_string(), |s| s.to_string());
                errors.push(TooManyRules {
                    scope: name,
                    net,
                    needed,
                    rule: first_own.map(|r| r.rule_id).filter(|id| *id != 0),
                });
            }
        }
    }

    out.scopes.push((
        ScopeKey::Scope(SCOPE_BUILTIN),
        ScopeVal {
            scope: SCOPE_BUILTIN,
            ..Default::default()
        },
    ));
    for s in &scopes {
        out.scopes.push((ScopeKey::Scope(s.id), settings(s)));
        match &s.selector {
            Some(sel) if sel.is_cgroup_based() => out.flags |= ct_policy_flag::CT_POLICY_CGROUP.0 as u8,
            Some(Selector::User { uid, .. }) => {
                out.flags |= ct_policy_flag::CT_POLICY_UID.0 as u8;
                out.scopes.push((
                    ScopeKey::Uid(*uid),
                    ScopeVal {
                        scope: s.id,
                        ..Default::default()
                    },
                ));
            }
            Some(Selector::Exe(path)) => {
                out.flags |= ct_policy_flag::CT_POLICY_EXE.0 as u8;
                if let Some(Some((ino, dev))) = ids.exes.get(path) {
                    out.scopes.push((
                        ScopeKey::Exe { ino: *ino, dev: *dev },
                        ScopeVal {
                            scope: s.id,
                            ..Default::default()
                        },
                    ));
                }
            }
            _ => {}
        }
    }
    // Each cgroup goes to the first scope, in declaration order, that selects it.
    for (path, id) in &ids.cgroups {
        if let Some(s) = scopes
            .iter()
            .find(|s| s.selector.as_ref().is_some_and(|sel| sel.matches_cgroup(path)))
        {
            out.scopes.push((
                ScopeKey::Cgroup(*id),
                ScopeVal {
                    scope: s.id,
                    ..Default::default()
                },
            ));
        }
    }
    (out, errors)
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
/// for a cgroup that appeared after the policy was put in force.
pub fn scope_for_new_cgroup(policy: &Policy, path: &str) -> Option<u32> {
    if !policy.is_active() {
        return None;
    }
    policy
        .scopes()
        .iter()
        .find(|s| s.selector.as_ref().is_some_and(|sel| sel.matches_cgroup(path)))
        .map(|s| s.id)
}
