//! `tracectl run`: a command placed in a sandbox the daemon owns. The call
//! carries a pidfd of the command (stopped before exec) and the sandbox's
//! rules; its replies, on the one connection (varlink `more`), say where
//! the command was placed, then stream its connections, then say it ended
//! (with the command's syscall profile, when asked for).

use serde::{Deserialize, Serialize};

use super::{ProfileReply, WatchReply};

/// One rule of a sandbox, with the syntax of a `[[rule]]` of the
/// configuration without a selector: the daemon adds the sandbox's own.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SandboxRule {
    /// `allow` or `deny`.
    pub action: String,
    /// Hostnames, addresses and CIDRs; empty: any destination.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dest: Vec<String>,
    /// Ports and ranges (`443`, `8000-8100`); empty: every port.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<String>,
    /// `tcp` or `udp`; none: both.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SandboxParams {
    pub rules: Vec<SandboxRule>,
    /// Report what would be refused instead of refusing it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub audit: bool,
    /// Record the syscalls of the command and everything it starts, from
    /// its exec (the launcher's are not), for the ended reply.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub profile: bool,
}

/// Where the command was placed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SandboxPlaced {
    pub id: String,
    /// The sandbox's cgroup, relative to the cgroup2 mount.
    pub cgroup: String,
    /// `enforce` or `audit`.
    pub mode: String,
}

/// Why the sandbox is gone, and what it called when a profile was asked for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SandboxEnded {
    pub reason: String,
    /// The syscall profile, when the call asked for one and it could be
    /// read (`reason` says why not otherwise).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub profile: Option<ProfileReply>,
}

/// One reply of a Sandbox call: placed first, then the sandbox's events,
/// then ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum SandboxReply {
    Placed { placed: SandboxPlaced },
    Ended { ended: SandboxEnded },
    Watch(WatchReply),
}
