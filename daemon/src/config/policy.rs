//! The validated model of `mode`, `[policy]`, `[[rule]]` and `[[scope]]`.
//! What it means (precedence, the reference decision) and how the kernel
//! holds it are the business of `crate::policy` and `crate::ruleset`.

use std::collections::BTreeSet;
use std::path::PathBuf;

use connectracer_proto::Protocol;
use ipnet::IpNet;

use super::PortSet;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Allow,
    Deny,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Allow => "allow",
            Action::Deny => "deny",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Denials are reported as would_deny and let through.
    Audit,
    Enforce,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Audit => "audit",
            Mode::Enforce => "enforce",
        }
    }
}

/// Who a rule or scope applies to.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Selector {
    /// A systemd unit name or glob (`backup.service`, `docker-*.scope`),
    /// matched against cgroup directory names; compiled once, when the
    /// configuration is read, not at every cgroup it is tried on.
    Unit(glob::Pattern),
    /// A cgroup path relative to the cgroup2 mount (`/system.slice/foo`) and
    /// everything below it.
    Cgroup(String),
    /// A container id or a prefix of one (at least 12 characters).
    Container(String),
    /// A container's name as its runtime reports it (glob): known only once
    /// the runtime answered, so its first connects are not judged by it.
    ContainerName(glob::Pattern),
    /// A Kubernetes pod's name (glob), from the runtime (CRI), likewise.
    Pod(glob::Pattern),
    /// A Kubernetes pod's namespace (glob), likewise.
    Namespace(glob::Pattern),
    User {
        uid: u32,
        name: String,
    },
    /// An executable, by the inode the path names when the policy is applied.
    Exe(PathBuf),
}

impl Selector {
    pub fn kind(&self) -> &'static str {
        match self {
            Selector::Unit(_) => "unit",
            Selector::Cgroup(_) => "cgroup",
            Selector::Container(_) => "container",
            Selector::ContainerName(_) => "container_name",
            Selector::Pod(_) => "pod",
            Selector::Namespace(_) => "namespace",
            Selector::User { .. } => "user",
            Selector::Exe(_) => "exe",
        }
    }

    pub fn is_cgroup_based(&self) -> bool {
        matches!(
            self,
            Selector::Unit(_)
                | Selector::Cgroup(_)
                | Selector::Container(_)
                | Selector::ContainerName(_)
                | Selector::Pod(_)
                | Selector::Namespace(_)
        )
    }

    /// Whether it selects by what a container runtime says (known only once
    /// it answered), not by the cgroup path.
    pub fn needs_container_meta(&self) -> bool {
        matches!(
            self,
            Selector::ContainerName(_) | Selector::Pod(_) | Selector::Namespace(_)
        )
    }
}

impl std::fmt::Display for Selector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Selector::Unit(u) => write!(f, "unit {}", u.as_str()),
            Selector::Cgroup(c) => write!(f, "cgroup {c}"),
            Selector::Container(c) => write!(f, "container {c}"),
            Selector::ContainerName(p) => write!(f, "container_name {}", p.as_str()),
            Selector::Pod(p) => write!(f, "pod {}", p.as_str()),
            Selector::Namespace(p) => write!(f, "namespace {}", p.as_str()),
            Selector::User { uid, name } => write!(f, "user {name} ({uid})"),
            Selector::Exe(p) => write!(f, "exe {}", p.display()),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Dest {
    /// Every destination, both families.
    Any,
    Net(IpNet),
    /// Followed through DNS; the rule covers the name's current addresses.
    Name(String),
}

impl std::fmt::Display for Dest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Dest::Any => f.write_str("any"),
            Dest::Net(n) if n.prefix_len() == n.max_prefix_len() => write!(f, "{}", n.addr()),
            Dest::Net(n) => write!(f, "{n}"),
            Dest::Name(n) => f.write_str(n),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// 1-based position among the merged configuration's rules: what the
    /// kernel reports, and what `policy show` numbers.
    pub id: u32,
    pub action: Action,
    pub dest: Vec<Dest>,
    pub ports: PortSet,
    /// None: TCP and UDP.
    pub protocol: Option<Protocol>,
    /// None: global.
    pub selector: Option<Selector>,
    /// `file:line` of the rule.
    pub origin: String,
}

/// Per-selector settings from a `[[scope]]` table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScopeSettings {
    pub selector: Selector,
    pub default: Option<Action>,
    pub mode: Option<Mode>,
    pub block_ipv6: bool,
    pub origin: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    pub mode: Mode,
    /// What happens to destinations no rule of any scope decides.
    pub default: Action,
    pub allow_loopback: bool,
    pub allow_dns: bool,
    /// Refuse IPv6 destinations (not v4-mapped ones) for everyone.
    pub block_ipv6: bool,
    pub rules: Vec<Rule>,
    pub scopes: Vec<ScopeSettings>,
    /// cgroup paths (relative to the cgroup2 mount) of the sandboxes of
    /// `tracectl run`: their `cgroup` scopes narrow, never widen, what the
    /// rest of the policy allows. Set by the daemon, never from a file.
    pub sandboxes: BTreeSet<String>,
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            mode: Mode::Enforce,
            default: Action::Allow,
            allow_loopback: true,
            allow_dns: true,
            block_ipv6: false,
            rules: Vec::new(),
            scopes: Vec::new(),
            sandboxes: BTreeSet::new(),
        }
    }
}

impl Policy {
    /// Whether the kernel has anything to judge: without rules, defaults or
    /// blocking every connect skips the policy lookups entirely.
    pub fn is_active(&self) -> bool {
        !self.rules.is_empty()
            || self.default == Action::Deny
            || self.block_ipv6
            || self.scopes.iter().any(|s| s.default.is_some() || s.block_ipv6)
    }

    /// Whether some scope selects by what container runtimes say.
    pub fn selects_by_container_meta(&self) -> bool {
        self.rules
            .iter()
            .filter_map(|r| r.selector.as_ref())
            .chain(self.scopes.iter().map(|s| &s.selector))
            .any(Selector::needs_container_meta)
    }

    /// Hostnames the rules name, for the DNS watcher.
    pub fn hostnames(&self) -> BTreeSet<String> {
        self.rules
            .iter()
            .flat_map(|r| &r.dest)
            .filter_map(|d| match d {
                Dest::Name(n) => Some(n.clone()),
                _ => None,
            })
            .collect()
    }
}
