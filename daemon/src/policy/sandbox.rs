//! The reference decision of a sandbox's scope (`tracectl run`), asked
//! before the host's policy. The kernel's `judge` in connectracer.bpf.c
//! does the same: the sandbox's scope is keyed by the caller's own cgroup
//! (its processes cannot create cgroups below it), the DNS servers in use
//! answer on port 53 whatever the sandbox's rules, then its rules and its
//! default.

use std::net::IpAddr;

use connectracer_proto::Verdict;

use super::{Decision, Environment, Subject, Target};
use crate::config::policy::{Policy, Selector};

/// The sandbox's say, when `who` is in one.
pub(super) fn judge(
    policy: &Policy,
    who: &Subject,
    addr: IpAddr,
    to: &Target,
    env: &Environment<'_>,
) -> Option<Decision> {
    let cgroup = who.cgroup.as_deref()?;
    let scopes = policy.scopes();
    let scope = scopes
        .iter()
        .find(|s| s.sandbox && matches!(&s.selector, Some(Selector::Cgroup(p)) if p == cgroup))?;
    if to.port == 53 && env.dns_servers.iter().any(|d| d.to_canonical() == addr) {
        return Some(Decision {
            verdict: Verdict::Allow,
            rule: None,
            scope: format!("sandbox {cgroup}"),
            reason: "built-in exception: DNS server in use".into(),
        });
    }
    policy.judge_scope(scope, addr, to, env)
}

/// The DNS servers a sandbox may always ask, as the kernel holds them.
pub fn dns_exceptions(env: &Environment<'_>) -> Vec<ipnet::IpNet> {
    env.dns_servers
        .iter()
        .map(|ip| ipnet::IpNet::from(ip.to_canonical()))
        .collect()
}
