//! Egress policy: the validated model of `mode`, `[policy]`, `[[rule]]` and
//! `[[scope]]`, and the reference evaluator that defines what it means. The
//! kernel's lookup (see `compile`) must agree with `Policy::judge` row by row;
//! `tracectl policy check` answers with it.
//!
//! Precedence, first match wins:
//! 1. built-in exceptions (loopback, the DNS servers in use), unless turned off;
//! 2. the scopes that select the caller, most specific first: its executable,
//!    its user, then its cgroups from the deepest up (units, cgroup paths and
//!    containers are all cgroups); where several selectors name the same
//!    cgroup, the one declared first;
//! 3. the global rules (no selector), then the global default.
//!
//! Within a scope: IPv6 blocking, then its rules by most specific destination
//! (longest prefix; a hostname is its addresses), ties in declaration order,
//! the first whose port and protocol match; then the scope's default. A scope
//! without a matching rule or a default has no say and the next one is asked.

pub mod explain;
pub mod sandbox;
pub mod scopes;
pub mod shadow;

use std::collections::{BTreeSet, HashMap};
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use connectracer_proto::{ContainerMeta, Protocol, Verdict};
use ipnet::IpNet;

use crate::attribution::cgroup_path::parse_cgroup_path;
use crate::bpf::types::ct_scope_id;
use crate::config::policy::{Action, Dest, Mode, Policy, Rule, Selector};
use crate::config::PortSet;

/// What DNS currently says for each followed hostname.
pub type Resolved = HashMap<String, BTreeSet<IpAddr>>;

pub const SCOPE_BUILTIN: u32 = ct_scope_id::CT_SCOPE_BUILTIN.0;
pub const SCOPE_GLOBAL: u32 = ct_scope_id::CT_SCOPE_GLOBAL.0;

impl Selector {
    /// Whether the cgroup directory at `path` (relative to the cgroup2
    /// mount, starting with `/`) is selected.
    pub fn matches_cgroup(&self, path: &str) -> bool {
        match self {
            Selector::Unit(glob) => glob.matches(path.rsplit('/').next().unwrap_or(path)),
            Selector::Cgroup(prefix) => path == prefix,
            Selector::Container(id) => {
                parse_cgroup_path(path)
                    .container
                    .is_some_and(|c| c.id.starts_with(id.as_str()))
                    // Only the container's own cgroup: its sub-cgroups reach
                    // it as an ancestor.
                    && path.rsplit('/').next().is_some_and(|last| last.contains(id.as_str()))
            }
            // Known from the runtime, not the path: see `matches_container`.
            Selector::ContainerName(_)
            | Selector::Pod(_)
            | Selector::Namespace(_)
            | Selector::User { .. }
            | Selector::Exe(_) => false,
        }
    }

    /// Whether a container the runtime described as `meta` is selected.
    pub fn matches_container(&self, meta: &ContainerMeta) -> bool {
        let glob = |p: &glob::Pattern, v: &Option<String>| v.as_deref().is_some_and(|v| p.matches(v));
        match self {
            Selector::ContainerName(p) => glob(p, &meta.container_name),
            Selector::Pod(p) => glob(p, &meta.pod_name),
            Selector::Namespace(p) => glob(p, &meta.pod_namespace),
            _ => false,
        }
    }

    /// Whether the cgroup at `path` is selected, `meta` being what the
    /// runtime said of the container whose cgroup it is (if any).
    pub fn matches(&self, path: &str, meta: Option<&ContainerMeta>) -> bool {
        self.matches_cgroup(path) || meta.is_some_and(|m| self.matches_container(m))
    }
}

/// A numbered scope: what the kernel keys rules by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scope {
    pub id: u32,
    /// None for the global scope.
    pub selector: Option<Selector>,
    pub default: Option<Action>,
    pub mode: Mode,
    pub block_ipv6: bool,
    /// A sandbox's scope (`tracectl run`): asked before everything else,
    /// and it can only narrow what the rest allows.
    pub sandbox: bool,
}

/// The caller a decision is about.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Subject {
    pub uid: Option<u32>,
    pub exe: Option<PathBuf>,
    /// cgroup path relative to the cgroup2 mount (`/system.slice/x.service`).
    pub cgroup: Option<String>,
}

/// Where a connection goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Target {
    pub addr: IpAddr,
    pub port: u16,
    pub protocol: Protocol,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub verdict: Verdict,
    /// The rule that decided; None for defaults and exceptions.
    pub rule: Option<u32>,
    /// Which scope decided, in words (`global`, `unit backup.service`, ...).
    pub scope: String,
    /// Why, in words.
    pub reason: String,
}

/// What the policy is judged against besides itself: hostnames' current
/// addresses (borrowed from the daemon, not copied per apply or query) and
/// the DNS servers the built-in exception allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Environment<'a> {
    pub resolved: &'a Resolved,
    pub dns_servers: &'a [IpAddr],
}

impl Environment<'_> {
    /// No names resolved, no DNS servers: what validation checks against.
    pub fn empty() -> Environment<'static> {
        static NONE: std::sync::LazyLock<Resolved> = std::sync::LazyLock::new(Resolved::new);
        Environment {
            resolved: &NONE,
            dns_servers: &[],
        }
    }
}

impl Policy {
    /// Numbered scopes: global first, then each selector in order of first
    /// appearance (rules, then `[[scope]]` tables).
    pub fn scopes(&self) -> Vec<Scope> {
        let mut out = vec![Scope {
            id: SCOPE_GLOBAL,
            selector: None,
            default: Some(self.default),
            mode: self.mode,
            block_ipv6: self.block_ipv6,
            sandbox: false,
        }];
        let selectors = self
            .rules
            .iter()
            .filter_map(|r| r.selector.as_ref())
            .chain(self.scopes.iter().map(|s| &s.selector));
        for sel in selectors {
            if out.iter().any(|s| s.selector.as_ref() == Some(sel)) {
                continue;
            }
            let settings = self.scopes.iter().find(|s| &s.selector == sel);
            out.push(Scope {
                id: SCOPE_GLOBAL + out.len() as u32,
                selector: Some(sel.clone()),
                default: settings.and_then(|s| s.default),
                mode: settings.and_then(|s| s.mode).unwrap_or(self.mode),
                block_ipv6: settings.is_some_and(|s| s.block_ipv6),
                sandbox: matches!(sel, Selector::Cgroup(p) if self.sandboxes.contains(p)),
            });
        }
        out
    }

    /// The built-in exceptions as (network, ports, why).
    pub fn exceptions(&self, env: &Environment<'_>) -> Vec<(IpNet, PortSet, &'static str)> {
        let mut out = Vec::new();
        if self.allow_loopback {
            for n in ["127.0.0.0/8", "::1/128"] {
                out.push((n.parse().expect("literal"), PortSet::default(), "loopback"));
            }
        }
        if self.allow_dns {
            for ip in env.dns_servers {
                out.push((
                    IpNet::from(ip.to_canonical()),
                    PortSet(vec![53..=53]),
                    "DNS server in use",
                ));
            }
        }
        out
    }

    /// The reference decision for one connection: a sandbox's deny is
    /// final, what it lets through is judged by the host's policy, and an
    /// audited sandbox deny is reported unless the host denies.
    pub fn judge(&self, who: &Subject, to: &Target, env: &Environment<'_>) -> Decision {
        let addr = to.addr.to_canonical();
        if !self.is_active() {
            return self.judge_host(who, to, addr, env);
        }
        let sandboxed = sandbox::judge(self, who, addr, to, env);
        if let Some(d) = sandboxed.as_ref().filter(|d| d.verdict == Verdict::Deny) {
            return d.clone();
        }
        let host = self.judge_host(who, to, addr, env);
        match sandboxed {
            Some(d) if d.verdict == Verdict::WouldDeny && host.verdict != Verdict::Deny => d,
            _ => host,
        }
    }

    /// The host's policy: exceptions, scopes selecting the caller, global.
    fn judge_host(&self, who: &Subject, to: &Target, addr: IpAddr, env: &Environment<'_>) -> Decision {
        if self.is_active() {
            for (net, ports, why) in self.exceptions(env) {
                if net.contains(&addr) && ports.contains(to.port) {
                    return Decision {
                        verdict: Verdict::Allow,
                        rule: None,
                        scope: "built-in".into(),
                        reason: format!("built-in exception: {why} ({net})"),
                    };
                }
            }
        } else {
            return Decision {
                verdict: Verdict::Allow,
                rule: None,
                scope: "global".into(),
                reason: "no policy configured".into(),
            };
        }
        let scopes = self.scopes();
        for scope in self.applicable(&scopes, who) {
            if let Some(d) = self.judge_scope(scope, addr, to, env) {
                return d;
            }
        }
        unreachable!("the global scope always has a default")
    }

    /// Scopes that select `who`, most specific first, global last.
    fn applicable<'a>(&self, scopes: &'a [Scope], who: &Subject) -> Vec<&'a Scope> {
        let find = |pred: &dyn Fn(&Selector) -> bool| {
            scopes
                .iter()
                .find(|s| !s.sandbox && s.selector.as_ref().is_some_and(pred))
        };
        let mut out = Vec::new();
        if let Some(exe) = &who.exe {
            let exe = std::fs::canonicalize(exe).unwrap_or_else(|_| exe.clone());
            if let Some(s) = find(&|sel| matches!(sel, Selector::Exe(p) if same_file(p, &exe))) {
                out.push(s);
            }
        }
        if let Some(uid) = who.uid {
            if let Some(s) = find(&|sel| matches!(sel, Selector::User { uid: u, .. } if *u == uid)) {
                out.push(s);
            }
        }
        if let Some(path) = &who.cgroup {
            for dir in ancestors(path) {
                if let Some(s) = find(&|sel| sel.matches_cgroup(dir)) {
                    out.push(s);
                }
            }
        }
        out.push(&scopes[0]);
        out
    }

    pub(super) fn judge_scope(
        &self,
        scope: &Scope,
        addr: IpAddr,
        to: &Target,
        env: &Environment<'_>,
    ) -> Option<Decision> {
        let name = scope
            .selector
            .as_ref()
            .map_or_else(|| "global".to_string(), ToString::to_string);
        let deny = match scope.mode {
            Mode::Audit => Verdict::WouldDeny,
            Mode::Enforce => Verdict::Deny,
        };
        let verdict = |a: Action| match a {
            Action::Allow => Verdict::Allow,
            Action::Deny => deny,
        };
        if scope.block_ipv6 && addr.is_ipv6() {
            return Some(Decision {
                verdict: deny,
                rule: None,
                reason: format!("IPv6 egress is blocked for {name}"),
                scope: name,
            });
        }
        // Most specific destination first, then declaration order.
        let mut candidates: Vec<(u8, &Rule)> = self
            .rules
            .iter()
            .filter(|r| r.selector == scope.selector)
            .filter_map(|r| r.dest_prefix(addr, env.resolved).map(|len| (len, r)))
            .collect();
        candidates.sort_by_key(|(len, r)| (std::cmp::Reverse(*len), r.id));
        for (_, r) in candidates {
            if r.ports.contains(to.port) && r.protocol.is_none_or(|p| p == to.protocol) {
                return Some(Decision {
                    verdict: verdict(r.action),
                    rule: Some(r.id),
                    reason: format!("rule {} ({}) {}", r.id, r.origin, r.action.as_str()),
                    scope: name,
                });
            }
        }
        scope.default.map(|a| Decision {
            verdict: verdict(a),
            rule: None,
            reason: format!("default for {name}: {}", a.as_str()),
            scope: name,
        })
    }
}

impl Rule {
    /// The longest prefix among this rule's destinations that contains `addr`.
    fn dest_prefix(&self, addr: IpAddr, resolved: &Resolved) -> Option<u8> {
        self.dest
            .iter()
            .filter_map(|d| match d {
                Dest::Any => Some(0),
                Dest::Net(n) => n.contains(&addr).then(|| n.prefix_len()),
                Dest::Name(name) => resolved
                    .get(name)
                    .is_some_and(|ips| ips.iter().any(|ip| ip.to_canonical() == addr))
                    .then(|| if addr.is_ipv4() { 32 } else { 128 }),
            })
            .max()
    }
}

/// `/a/b/c`, `/a/b`, `/a`: the deepest first, the root left out (the
/// kernel's walk starts below it).
pub fn ancestors(path: &str) -> impl Iterator<Item = &str> {
    let path = path.trim_end_matches('/');
    let mut cut = Some(path.len());
    std::iter::from_fn(move || {
        let end = cut?;
        let dir = &path[..end];
        if dir.is_empty() {
            return None;
        }
        cut = dir.rfind('/');
        Some(dir)
    })
}

fn same_file(a: &Path, b: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (std::fs::metadata(a), std::fs::metadata(b)) {
        (Ok(x), Ok(y)) => x.dev() == y.dev() && x.ino() == y.ino(),
        _ => a == b,
    }
}

#[cfg(test)]
pub(crate) mod tests;
