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

#[cfg(test)]
mod tests {
    use connectracer_proto::Verdict;

    use crate::policy::tests::{env, policy, to, TCP, UDP};
    use crate::policy::Subject;

    const SANDBOX: &str = "/t/connectracer-sandbox/sb-1";

    /// A host policy (a global deny, a scope on the sandbox's parent) and a
    /// sandbox: what the sandbox refuses is refused, what it allows is then
    /// the host's to judge; loopback is refused unless allowed, DNS servers
    /// answer on port 53.
    fn with_sandbox(mode: &str) -> crate::config::policy::Policy {
        let mut p = policy(&format!(
            r#"
[[rule]]
action = "deny"
dest = "203.0.113.0/24"

[[scope]]
cgroup = "/t"
default = "deny"

[[rule]]
action = "allow"
cgroup = "/t"
dest = ["10.1.0.0/16", "203.0.113.0/24"]

[[scope]]
cgroup = "{SANDBOX}"
default = "deny"
mode = "{mode}"

[[rule]]
action = "allow"
cgroup = "{SANDBOX}"
dest = ["10.1.2.3", "10.2.0.0/16", "203.0.113.5"]
ports = [443]
"#
        ));
        p.sandboxes.insert(SANDBOX.into());
        p
    }

    #[test]
    fn a_sandbox_only_narrows_the_host_policy() {
        let p = with_sandbox("enforce");
        let who = Subject {
            cgroup: Some(SANDBOX.into()),
            ..Default::default()
        };
        let env = env();
        let judge = |a: &str, port: u16, proto| p.judge(&who, &to(a, port, proto), &env);
        // Allowed by both.
        assert_eq!(judge("10.1.2.3", 443, TCP).verdict, Verdict::Allow);
        // Allowed by the sandbox, refused by the host's scope on /t.
        let d = judge("10.2.0.1", 443, TCP);
        assert_eq!(
            (d.verdict, d.scope.as_str()),
            (Verdict::Deny, "cgroup /t"),
            "{d:?}"
        );
        // Allowed by the sandbox and /t, but /t's rule does not beat the
        // scope order: the host decides as without a sandbox.
        assert_eq!(judge("203.0.113.5", 443, TCP).verdict, Verdict::Allow);
        // Not allowed by the sandbox: its default, before anything else.
        let d = judge("10.1.2.3", 80, TCP);
        assert_eq!(
            (d.verdict, d.scope.as_str()),
            (Verdict::Deny, "cgroup /t/connectracer-sandbox/sb-1"),
            "{d:?}"
        );
        assert_eq!(judge("127.0.0.1", 80, TCP).verdict, Verdict::Deny, "loopback");
        let d = judge("10.0.0.53", 53, UDP);
        assert_eq!(d.verdict, Verdict::Allow, "the DNS server in use: {d:?}");
        assert_eq!(judge("10.0.0.53", 80, TCP).verdict, Verdict::Deny);
        // A process outside the sandbox is judged as before.
        let outside = Subject {
            cgroup: Some("/t/other".into()),
            ..Default::default()
        };
        assert_eq!(
            p.judge(&outside, &to("10.1.9.9", 80, TCP), &env).verdict,
            Verdict::Allow
        );
    }

    #[test]
    fn an_audited_sandbox_reports_unless_the_host_refuses() {
        let p = with_sandbox("audit");
        let who = Subject {
            cgroup: Some(SANDBOX.into()),
            ..Default::default()
        };
        let env = env();
        let judge = |a: &str, port: u16| p.judge(&who, &to(a, port, TCP), &env).verdict;
        assert_eq!(judge("10.1.9.9", 80), Verdict::WouldDeny);
        assert_eq!(
            judge("10.9.9.9", 80),
            Verdict::Deny,
            "the host's scope on /t refuses it"
        );
        assert_eq!(judge("10.1.2.3", 443), Verdict::Allow);
    }
}
