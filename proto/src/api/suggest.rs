//! Egress suggestions: the destinations a unit, cgroup or user reached, as
//! the daemon remembers them, for `tracectl policy suggest` to turn into
//! allow-lists.

use serde::{Deserialize, Serialize};

use crate::Protocol;

/// Whose destinations: exactly one of `unit`, `cgroup`, `uid` and `container`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SuggestParams {
    /// A systemd unit: connections from cgroups of that name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unit: Option<String>,
    /// A cgroup path below the cgroup2 mount, with everything under it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cgroup: Option<String>,
    /// A user id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<u32>,
    /// A container (Docker, Podman, containerd, CRI-O), running or gone:
    /// its id, a unique prefix of 12 hex digits or more, or its name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<String>,
    /// Only destinations last seen this many milliseconds ago or later.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since_ms: Option<u64>,
}

/// One destination as reached: a name (from DNS correlation) and the
/// address it stood for, a port and a protocol.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SeenDestination {
    /// The name the process looked up, when the daemon saw the answer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub address: std::net::IpAddr,
    pub port: u16,
    pub protocol: Protocol,
    /// Connections (and first datagrams) seen.
    pub count: u64,
    /// Milliseconds since the Unix epoch.
    pub first_seen_ms: u64,
    pub last_seen_ms: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SuggestReply {
    /// Every destination of the scope, by name then address, port, protocol.
    pub destinations: Vec<SeenDestination>,
    /// Destinations (of any scope) forgotten because the daemon's store
    /// was full (the least recently seen go first): a suggestion may lack
    /// some when this is not zero.
    pub dropped: u64,
    /// How many destinations the daemon remembers at most, all scopes together.
    pub capacity: u64,
    /// For a container: its full id, as the request's id, prefix or name
    /// resolved.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<String>,
}
