//! Types that cross the boundary between connectracerd and its clients
//! (tracectl, log consumers): defined once, serialized the same everywhere.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

pub mod api;
pub mod dbus;
pub mod varlink;

/// Transport protocol of a traced connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Tcp,
    Udp,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        }
    }
}

/// Where a connection is in its life, as the kernel last reported it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ConnState {
    /// connect() (or the first sendto()) was seen; TCP has not completed the handshake yet.
    Connecting,
    Established,
    /// The TCP handshake failed (refused, timed out) or connect() failed synchronously.
    Failed,
    Closed,
}

impl ConnState {
    pub fn as_str(self) -> &'static str {
        match self {
            ConnState::Connecting => "connecting",
            ConnState::Established => "established",
            ConnState::Failed => "failed",
            ConnState::Closed => "closed",
        }
    }

    pub fn is_open(self) -> bool {
        matches!(self, ConnState::Connecting | ConnState::Established)
    }
}

/// What the egress policy decided for a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    Allow,
    /// Denied by policy in audit mode: let through and reported.
    WouldDeny,
    Deny,
}

impl Verdict {
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Allow => "allow",
            Verdict::WouldDeny => "would_deny",
            Verdict::Deny => "deny",
        }
    }
}

/// Whose DNS answer named a connection: its own process's, another
/// process's in its cgroup, or any on the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NameSource {
    Process,
    Cgroup,
    Host,
}

impl NameSource {
    pub fn as_str(self) -> &'static str {
        match self {
            NameSource::Process => "process",
            NameSource::Cgroup => "cgroup",
            NameSource::Host => "host",
        }
    }
}

/// How a failed connection failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailReason {
    Refused,
    TimedOut,
    Unreachable,
    /// Closed by the application before the handshake completed.
    Aborted,
    /// Refused by the egress policy (EPERM at connect or sendmsg).
    Denied,
    Other,
}

impl FailReason {
    /// From the socket error the kernel recorded (`sk_err`).
    pub fn from_errno(errno: i32) -> Self {
        match errno {
            111 => FailReason::Refused,
            110 => FailReason::TimedOut,
            101 | 113 => FailReason::Unreachable,
            0 => FailReason::Aborted,
            _ => FailReason::Other,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            FailReason::Refused => "refused",
            FailReason::TimedOut => "timed_out",
            FailReason::Unreachable => "unreachable",
            FailReason::Aborted => "aborted",
            FailReason::Denied => "denied",
            FailReason::Other => "other",
        }
    }
}

/// The task behind a connection, frozen at connect time (the process may be
/// gone by the time anyone asks).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Process {
    pub pid: u32,
    pub tid: u32,
    pub ppid: Option<u32>,
    pub uid: u32,
    pub user: Option<String>,
    pub comm: String,
    pub exe: Option<String>,
    pub argv: Vec<String>,
    pub cgroup_id: u64,
    pub cgroup: Option<String>,
    pub unit: Option<String>,
    pub user_unit: Option<String>,
    pub slice: Option<String>,
    pub container_runtime: Option<String>,
    pub container_id: Option<String>,
    pub pod_uid: Option<String>,
}

/// What the container runtime says about a connection's container: its
/// name and image, and for a Kubernetes pod its name, namespace and the
/// labels the configuration selects. Empty while the lookup is pending,
/// when the runtime cannot be asked, and outside containers: the
/// connection's `process.container_id` is there from its first event, the
/// names from the first event after the runtime answered.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerMeta {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container_image: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_namespace: Option<String>,
    /// Only the labels `[containers] pod_labels` lists.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub pod_labels: BTreeMap<String, String>,
}

impl ContainerMeta {
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }

    /// `namespace/name`, as kubectl writes a pod.
    pub fn pod(&self) -> Option<String> {
        let name = self.pod_name.as_deref()?;
        Some(match self.pod_namespace.as_deref() {
            Some(ns) => format!("{ns}/{name}"),
            None => name.to_string(),
        })
    }
}

/// One traced connection: an entry of the daemon's connection table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Connection {
    pub id: u64,
    /// Kernel socket cookie; an unconnected UDP socket has one entry per destination.
    pub cookie: u64,
    pub protocol: Protocol,
    pub state: ConnState,
    pub fail_reason: Option<FailReason>,
    pub verdict: Verdict,
    /// The policy rule behind a deny or would_deny verdict (1-based, as in
    /// `tracectl policy show`); None for defaults and allowed connections.
    #[serde(default)]
    pub policy_rule: Option<u32>,
    pub dst: SocketAddr,
    pub src: Option<SocketAddr>,
    pub host_id: Option<u32>,
    /// Configuration generation the connection was judged against.
    pub config_epoch: u32,
    /// The watched-host entry the destination matched, as configured.
    pub host: Option<String>,
    pub label: Option<String>,
    /// The name the connecting process looked up for the destination, from
    /// the DNS answers seen (any destination, watched or not).
    #[serde(default)]
    pub dns_name: Option<String>,
    #[serde(default)]
    pub dns_source: Option<NameSource>,
    #[serde(with = "rfc3339")]
    pub started: SystemTime,
    pub duration_ns: Option<u64>,
    pub bytes_sent: Option<u64>,
    pub bytes_received: Option<u64>,
    /// Its fields sit beside the others on the wire, each left out when
    /// unknown; shared by every connection of one container.
    #[serde(flatten, default)]
    pub container: Arc<ContainerMeta>,
    pub process: Arc<Process>,
}

mod rfc3339 {
    use std::time::SystemTime;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&humantime::format_rfc3339_micros(*t))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<SystemTime, D::Error> {
        let s = String::deserialize(d)?;
        humantime::parse_rfc3339(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serde_names_match_as_str() {
        for v in [Verdict::Allow, Verdict::WouldDeny, Verdict::Deny] {
            assert_eq!(serde_json::to_value(v).unwrap(), v.as_str());
        }
        for s in [
            ConnState::Connecting,
            ConnState::Established,
            ConnState::Failed,
            ConnState::Closed,
        ] {
            assert_eq!(serde_json::to_value(s).unwrap(), s.as_str());
        }
        for r in [FailReason::Refused, FailReason::TimedOut, FailReason::Aborted] {
            assert_eq!(serde_json::to_value(r).unwrap(), r.as_str());
        }
        assert_eq!(serde_json::to_value(Protocol::Udp).unwrap(), "udp");
    }

    #[test]
    fn errno_mapping() {
        assert_eq!(FailReason::from_errno(111), FailReason::Refused);
        assert_eq!(FailReason::from_errno(110), FailReason::TimedOut);
        assert_eq!(FailReason::from_errno(0), FailReason::Aborted);
        assert!(!ConnState::Failed.is_open());
    }
}
