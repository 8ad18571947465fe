//! The varlink wire protocol of the control socket: NUL-terminated JSON
//! messages, `method`/`parameters`/`more` calls and `parameters`/`error`
//! replies, for interface `org.connectracer.Tracer`.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::{ConnState, Connection, Protocol, Verdict};

pub const INTERFACE: &str = "org.connectracer.Tracer";
/// The interface definition, served by `GetInterfaceDescription`.
pub const DESCRIPTION: &str = include_str!("org.connectracer.Tracer.varlink");
pub const SERVICE_INTERFACE: &str = "org.varlink.service";
pub const DEFAULT_SOCKET: &str = "/run/connectracer/control.sock";
/// Requests longer than this are refused and the connection closed.
pub const MAX_MESSAGE: usize = 64 * 1024;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Call {
    pub method: String,
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub parameters: Map<String, Value>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub more: bool,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub oneway: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Reply {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default)]
    pub parameters: Map<String, Value>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub continues: bool,
}

/// Errors a call can end with, by their varlink names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CallError {
    HostNotFound {
        name: String,
    },
    AccessDenied {
        reason: String,
    },
    InvalidArgument {
        field: String,
        reason: String,
    },
    MethodNotFound {
        method: String,
    },
    InterfaceNotFound {
        interface: String,
    },
    InvalidParameter {
        parameter: String,
    },
    /// A reload found errors; the running configuration stays in force.
    ConfigInvalid {
        errors: Vec<String>,
    },
}

impl CallError {
    pub fn name(&self) -> String {
        match self {
            CallError::AccessDenied { .. } => format!("{INTERFACE}.AccessDenied"),
            CallError::InvalidArgument { .. } => format!("{INTERFACE}.InvalidArgument"),
            CallError::MethodNotFound { .. } => format!("{SERVICE_INTERFACE}.MethodNotFound"),
            CallError::InterfaceNotFound { .. } => format!("{SERVICE_INTERFACE}.InterfaceNotFound"),
            CallError::InvalidParameter { .. } => format!("{SERVICE_INTERFACE}.InvalidParameter"),
            CallError::ConfigInvalid { .. } => format!("{INTERFACE}.ConfigInvalid"),
            CallError::HostNotFound { .. } => format!("{INTERFACE}.HostNotFound"),
        }
    }

    pub fn into_reply(self) -> Reply {
        let mut p = Map::new();
        let name = self.name();
        match self {
            CallError::AccessDenied { reason } => {
                p.insert("reason".into(), reason.into());
            }
            CallError::InvalidArgument { field, reason } => {
                p.insert("field".into(), field.into());
                p.insert("reason".into(), reason.into());
            }
            CallError::MethodNotFound { method } => {
                p.insert("method".into(), method.into());
            }
            CallError::InterfaceNotFound { interface } => {
                p.insert("interface".into(), interface.into());
            }
            CallError::InvalidParameter { parameter } => {
                p.insert("parameter".into(), parameter.into());
            }
            CallError::ConfigInvalid { errors } => {
                p.insert("errors".into(), errors.into());
            }
            CallError::HostNotFound { name } => {
                p.insert("name".into(), name.into());
            }
        }
        Reply {
            error: Some(name),
            parameters: p,
            continues: false,
        }
    }

    /// Back from a reply, for clients.
    pub fn from_reply(r: &Reply) -> Option<Self> {
        let name = r.error.as_deref()?;
        let get = |k: &str| {
            r.parameters
                .get(k)
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string()
        };
        let short = name.rsplit('.').next().unwrap_or(name);
        Some(match short {
            "AccessDenied" => CallError::AccessDenied {
                reason: get("reason"),
            },
            "InvalidArgument" => CallError::InvalidArgument {
                field: get("field"),
                reason: get("reason"),
            },
            "MethodNotFound" => CallError::MethodNotFound {
                method: get("method"),
            },
            "InterfaceNotFound" => CallError::InterfaceNotFound {
                interface: get("interface"),
            },
            "HostNotFound" => CallError::HostNotFound { name: get("name") },
            "ConfigInvalid" => CallError::ConfigInvalid {
                errors: r
                    .parameters
                    .get("errors")
                    .and_then(Value::as_array)
                    .map(|a| a.iter().filter_map(|e| e.as_str().map(String::from)).collect())
                    .unwrap_or_default(),
            },
            _ => CallError::InvalidParameter {
                parameter: get("parameter"),
            },
        })
    }
}

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CallError::HostNotFound { name } => write!(f, "no added host named `{name}`"),
            CallError::AccessDenied { reason } => write!(f, "access denied: {reason}"),
            CallError::InvalidArgument { field, reason } => write!(f, "invalid {field}: {reason}"),
            CallError::MethodNotFound { method } => write!(f, "the daemon has no method {method}"),
            CallError::InterfaceNotFound { interface } => {
                write!(f, "the daemon has no interface {interface}")
            }
            CallError::InvalidParameter { parameter } => write!(f, "invalid parameter {parameter}"),
            CallError::ConfigInvalid { errors } => {
                write!(
                    f,
                    "the new configuration is invalid; the running one stays in force:"
                )?;
                for e in errors {
                    write!(f, "\n  {e}")?;
                }
                Ok(())
            }
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WhoParams {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub local_port: Option<u16>,
    /// At most this many, newest first (default 1000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PsParams {
    pub pid: u32,
    /// At most this many, newest first (default 1000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u32>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConnectionsParams {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<ConnState>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<Protocol>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConnectionsReply {
    pub connections: Vec<Connection>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionReply {
    pub version: String,
    pub kernel: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, zbus::Type)]
pub struct KernelCounters {
    pub connects: u64,
    pub sendmsg_new: u64,
    pub sendmsg_dup: u64,
    pub unwatched: u64,
    pub events: u64,
    pub drops: u64,
    pub state_changes: u64,
    pub proc_events: u64,
    pub other_proto: u64,
    /// connect/sendmsg calls refused by policy.
    #[serde(default)]
    pub denied: u64,
    /// Calls policy would refuse, let through in audit mode.
    #[serde(default)]
    pub would_deny: u64,
    pub drops_per_cpu: Vec<u64>,
    /// Bytes written to the ring buffer and not yet read.
    pub ring_pending_bytes: u64,
    pub ring_size_bytes: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Stats {
    pub kernel: KernelCounters,
    pub records: u64,
    pub connections: u64,
    pub orphan_state_events: u64,
    pub decode_errors: u64,
    pub table_open: u64,
    pub table_closed: u64,
    pub evicted_open: u64,
    pub evicted_closed: u64,
    pub processes: u64,
    pub uptime_seconds: f64,
    pub config_epoch: u32,
    pub reloads: u64,
    pub reload_failures: u64,
    /// Why the last reload failed, while the configuration stays unfixed.
    pub last_reload_error: Option<String>,
    /// `trace` of the configuration in force: "all" or "watched".
    #[serde(default)]
    pub trace_mode: String,
    /// Event sinks: lines handed over, written and lost, per sink.
    #[serde(default)]
    pub sinks: Vec<SinkStats>,
}

/// One event sink's counters: `events` = `written` + `lost` + `queued`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SinkStats {
    pub name: String,
    /// "stdout", "journal", "file" or "none".
    pub kind: String,
    /// Events its filter took.
    pub events: u64,
    pub written: u64,
    /// Lines lost: its queue was full, or writing failed.
    pub lost: u64,
    /// Waiting for its writer now.
    pub queued: u64,
    /// Failed writes (each may lose a batch).
    pub errors: u64,
    /// The error it is failing with, until it writes again.
    pub last_error: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReloadReply {
    pub epoch: u32,
    /// Settings that changed but take effect only at restart.
    pub needs_restart: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AddHostParams {
    /// Hostname, IP address or CIDR.
    pub name: String,
    /// Ports ("443") or ranges ("8000-8100"); empty: every port.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    /// Until the daemon restarts only, instead of persisted.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub runtime: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemoveHostParams {
    pub name: String,
}

/// One watched host as the daemon applies it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostInfo {
    pub id: u32,
    pub name: String,
    /// "address", "cidr" or "hostname".
    pub kind: String,
    pub ports: Vec<String>,
    pub label: Option<String>,
    /// The file that declares it, or the run-time source.
    pub source: String,
    /// What the kernel matches for it now.
    pub addresses: Vec<String>,
    pub ttl_seconds: Option<u64>,
    pub consecutive_failures: Option<u32>,
    pub last_error: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostsReply {
    pub hosts: Vec<HostInfo>,
}

/// Who and where `PolicyCheck` asks about: one of unit, pid, uid, cgroup
/// or exe (none: a caller no scope selects), and a destination address.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyCheckParams {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unit: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cgroup: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exe: Option<String>,
    pub address: String,
    pub port: u16,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<Protocol>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyCheckReply {
    pub verdict: Verdict,
    /// The rule that decided (as numbered by PolicyShow); none for defaults.
    pub rule: Option<u32>,
    /// The scope that decided: `built-in`, `global`, `unit backup.service`, ...
    pub scope: String,
    pub reason: String,
    /// The caller as judged: its user, executable and cgroup.
    pub subject: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyRuleInfo {
    pub id: u32,
    pub action: String,
    pub dest: Vec<String>,
    pub ports: Vec<String>,
    pub protocol: Option<Protocol>,
    /// None: global.
    pub scope: Option<String>,
    /// Addresses the rule's hostnames stand for now.
    pub addresses: Vec<String>,
    pub origin: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyScopeInfo {
    pub id: u32,
    pub selector: String,
    pub default: Option<String>,
    pub mode: String,
    pub block_ipv6: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyShowReply {
    /// False when nothing is configured: connects skip the policy entirely.
    pub active: bool,
    pub mode: String,
    pub default: String,
    /// Built-in exceptions in force, e.g. `127.0.0.0/8 (loopback)`.
    pub exceptions: Vec<String>,
    /// In precedence order: the order `PolicyCheck` asks them in, global last.
    pub scopes: Vec<PolicyScopeInfo>,
    pub rules: Vec<PolicyRuleInfo>,
}

/// Filters of a Watch stream; all given ones must match.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WatchParams {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    /// A watched host's name as configured (or its label).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
}

/// One reply of a Watch stream: an event, or how many this client missed
/// because it read too slowly.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum WatchReply {
    Event {
        event: String,
        connection: Box<Connection>,
    },
    Missed {
        missed: u64,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatsReply {
    pub stats: Stats,
}

/// Parameters as a JSON object (what `Call`/`Reply` carry).
pub fn to_parameters<T: Serialize>(v: &T) -> Map<String, Value> {
    match serde_json::to_value(v) {
        Ok(Value::Object(m)) => m,
        _ => Map::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_round_trip_through_replies() {
        for e in [
            CallError::AccessDenied { reason: "r".into() },
            CallError::InvalidArgument {
                field: "address".into(),
                reason: "bad".into(),
            },
            CallError::MethodNotFound { method: "x.Y".into() },
            CallError::ConfigInvalid {
                errors: vec!["a:1:1: x".into()],
            },
        ] {
            let reply = e.clone().into_reply();
            let text = serde_json::to_string(&reply).unwrap();
            let back: Reply = serde_json::from_str(&text).unwrap();
            assert_eq!(CallError::from_reply(&back), Some(e));
        }
    }

    #[test]
    fn description_declares_every_method() {
        assert!(DESCRIPTION.contains(&format!("interface {INTERFACE}\n")));
        for m in ["GetVersion", "GetStats", "Who", "Ps", "Connections", "Reload"] {
            assert!(DESCRIPTION.contains(&format!("method {m}(")), "{m}");
        }
    }
}
