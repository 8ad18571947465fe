//! `tracectl policy show` and `policy check`: the merged policy as the
//! daemon holds it, and the reference decision for a caller and destination.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use connectracer_proto::api::{
    CallError, PolicyCheckParams, PolicyCheckReply, PolicyRuleInfo, PolicyScopeInfo, PolicyShowReply,
};
use connectracer_proto::Protocol;

use super::{Dest, Environment, Policy, Selector, Subject, Target};
use crate::attribution::cgroup_path::proc_cgroup_best_path;
use crate::sys::cgroup_tree;

/// Executables, then users, then cgroups, then global: the order a connect
/// asks them in (cgroups deepest first at run time).
fn rank(sel: Option<&Selector>) -> u8 {
    match sel {
        Some(Selector::Exe(_)) => 0,
        Some(Selector::User { .. }) => 1,
        Some(_) => 2,
        None => 3,
    }
}

pub fn show(policy: &Policy, env: &Environment<'_>) -> PolicyShowReply {
    let mut scopes = policy.scopes();
    scopes.sort_by_key(|s| (rank(s.selector.as_ref()), s.id));
    PolicyShowReply {
        active: policy.is_active(),
        mode: policy.mode.as_str().into(),
        default: policy.default.as_str().into(),
        exceptions: if policy.is_active() {
            policy
                .exceptions(env)
                .into_iter()
                .map(|(net, p, why)| {
                    if p.is_any() {
                        format!("{net} ({why})")
                    } else {
                        format!("{net} port {} ({why})", p.items().join(","))
                    }
                })
                .collect()
        } else {
            Vec::new()
        },
        scopes: scopes
            .iter()
            .map(|s| PolicyScopeInfo {
                id: s.id,
                selector: s
                    .selector
                    .as_ref()
                    .map_or_else(|| "global".into(), ToString::to_string),
                default: s.default.map(|a| a.as_str().into()),
                mode: s.mode.as_str().into(),
                block_ipv6: s.block_ipv6,
            })
            .collect(),
        rules: policy
            .rules
            .iter()
            .map(|r| PolicyRuleInfo {
                id: r.id,
                action: r.action.as_str().into(),
                dest: r.dest.iter().map(ToString::to_string).collect(),
                ports: r.ports.items(),
                protocol: r.protocol,
                scope: r.selector.as_ref().map(ToString::to_string),
                addresses: r
                    .dest
                    .iter()
                    .filter_map(|d| match d {
                        Dest::Name(n) => env.resolved.get(n),
                        _ => None,
                    })
                    .flatten()
                    .map(ToString::to_string)
                    .collect(),
                origin: r.origin.clone(),
            })
            .collect(),
    }
}

fn invalid(field: &str, reason: impl Into<String>) -> CallError {
    CallError::InvalidArgument {
        field: field.into(),
        reason: reason.into(),
    }
}

/// The caller a check is about, from what it names; reads /proc for a pid
/// and the cgroup tree for a unit.
pub fn subject(p: &PolicyCheckParams, mount: &Path) -> Result<Subject, CallError> {
    let given = [
        p.unit.is_some(),
        p.pid.is_some(),
        p.uid.is_some(),
        p.cgroup.is_some(),
        p.exe.is_some(),
    ]
    .iter()
    .filter(|x| **x)
    .count();
    if given > 1 {
        return Err(invalid("subject", "name one of unit, pid, uid, cgroup or exe"));
    }
    if let Some(pid) = p.pid {
        let proc = PathBuf::from(format!("/proc/{pid}"));
        let status = std::fs::read_to_string(proc.join("status"))
            .map_err(|e| invalid("pid", format!("process {pid}: {e}")))?;
        let uid = status
            .lines()
            .find_map(|l| l.strip_prefix("Uid:"))
            .and_then(|l| l.split_whitespace().next())
            .and_then(|u| u.parse().ok());
        let cgroup = std::fs::read_to_string(proc.join("cgroup"))
            .ok()
            .and_then(|t| proc_cgroup_best_path(&t).map(String::from));
        return Ok(Subject {
            uid,
            exe: std::fs::read_link(proc.join("exe")).ok(),
            cgroup,
        });
    }
    if let Some(unit) = &p.unit {
        if unit.is_empty() || unit.contains('/') {
            return Err(invalid("unit", format!("`{unit}` is not a unit name")));
        }
        return Ok(Subject {
            cgroup: Some(find_unit(mount, unit).unwrap_or_else(|| format!("/system.slice/{unit}"))),
            ..Default::default()
        });
    }
    if let Some(c) = &p.cgroup {
        if !c.starts_with('/') || c.split('/').any(|x| x == "..") {
            return Err(invalid("cgroup", format!("`{c}` is not an absolute cgroup path")));
        }
        return Ok(Subject {
            cgroup: Some(c.trim_end_matches('/').to_string()),
            ..Default::default()
        });
    }
    if let Some(e) = &p.exe {
        if !e.starts_with('/') {
            return Err(invalid("exe", format!("`{e}` is not an absolute path")));
        }
        return Ok(Subject {
            exe: Some(PathBuf::from(e)),
            ..Default::default()
        });
    }
    Ok(Subject {
        uid: p.uid,
        ..Default::default()
    })
}

/// Where a running unit's cgroup is; None when it is not running.
fn find_unit(mount: &Path, unit: &str) -> Option<String> {
    cgroup_tree::dirs(mount)
        .skip(1)
        .find(|d| d.file_name().is_some_and(|n| n == unit))
        .and_then(|d| cgroup_tree::relative_path(mount, &d))
}

fn describe(s: &Subject) -> String {
    let mut parts = Vec::new();
    if let Some(uid) = s.uid {
        let name = nix::unistd::User::from_uid(uid.into())
            .ok()
            .flatten()
            .map(|u| u.name);
        parts.push(match name {
            Some(n) => format!("uid {uid} ({n})"),
            None => format!("uid {uid}"),
        });
    }
    if let Some(e) = &s.exe {
        parts.push(format!("exe {}", e.display()));
    }
    if let Some(c) = &s.cgroup {
        parts.push(format!("cgroup {c}"));
    }
    if parts.is_empty() {
        "a caller no scope selects".into()
    } else {
        parts.join(", ")
    }
}

pub fn check(
    policy: &Policy,
    env: &Environment<'_>,
    p: &PolicyCheckParams,
    mount: &Path,
) -> Result<PolicyCheckReply, CallError> {
    let addr: IpAddr = p
        .address
        .parse()
        .map_err(|_| invalid("address", format!("`{}` is not an IP address", p.address)))?;
    if p.port == 0 {
        return Err(invalid("port", "0 is not a destination port"));
    }
    let who = subject(p, mount)?;
    let d = policy.judge(
        &who,
        &Target {
            addr,
            port: p.port,
            protocol: p.protocol.unwrap_or(Protocol::Tcp),
        },
        env,
    );
    Ok(PolicyCheckReply {
        verdict: d.verdict,
        rule: d.rule,
        scope: d.scope,
        reason: d.reason,
        subject: describe(&who),
    })
}
