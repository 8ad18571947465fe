//! The D-Bus forms of the wire types: real D-Bus structs so that `busctl`
//! shows fields, not JSON. D-Bus has no null: an optional value travels as an
//! array of zero or one element, which keeps `None` and `Some(0)` apart and
//! lets a client rebuild exactly what the varlink interface returns.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use zbus::Type;

use crate::api::{
    HostInfo, KernelCounters, PolicyCheckReply, PolicyRuleInfo, PolicyScopeInfo, PolicyShowReply, SinkStats,
    Stats,
};
use crate::{Connection, ContainerMeta, Process};

/// Why a D-Bus value could not be turned back into a wire type.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {field} `{value}` from the daemon")]
pub struct ConversionError {
    pub field: &'static str,
    pub value: String,
}

fn opt<T>(v: Option<T>) -> Vec<T> {
    v.into_iter().collect()
}

fn one<T>(v: Vec<T>) -> Option<T> {
    v.into_iter().next()
}

/// The process behind a connection (`proto::Process`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Type)]
pub struct ProcessInfo {
    pub pid: u32,
    pub tid: u32,
    pub ppid: Vec<u32>,
    pub uid: u32,
    pub user: Vec<String>,
    pub comm: String,
    pub exe: Vec<String>,
    pub argv: Vec<String>,
    pub cgroup_id: u64,
    pub cgroup: Vec<String>,
    pub unit: Vec<String>,
    pub user_unit: Vec<String>,
    pub slice: Vec<String>,
    pub container_runtime: Vec<String>,
    pub container_id: Vec<String>,
    pub pod_uid: Vec<String>,
}

/// What the container runtime says about a connection's container
/// (`proto::ContainerMeta`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Type)]
pub struct ContainerInfo {
    pub name: Vec<String>,
    pub image: Vec<String>,
    pub pod_name: Vec<String>,
    pub pod_namespace: Vec<String>,
    pub pod_labels: BTreeMap<String, String>,
}

/// One traced connection (`proto::Connection`); `started_usec` is
/// microseconds since the Unix epoch, the precision the varlink form prints.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Type)]
pub struct ConnectionInfo {
    pub id: u64,
    pub cookie: u64,
    pub protocol: String,
    pub state: String,
    pub fail_reason: Vec<String>,
    pub verdict: String,
    pub policy_rule: Vec<u32>,
    pub dst: String,
    pub src: Vec<String>,
    pub host_id: Vec<u32>,
    pub config_epoch: u32,
    pub host: Vec<String>,
    pub label: Vec<String>,
    pub dns_name: Vec<String>,
    pub dns_source: Vec<String>,
    pub started_usec: u64,
    pub duration_ns: Vec<u64>,
    pub bytes_sent: Vec<u64>,
    pub bytes_received: Vec<u64>,
    pub container: ContainerInfo,
    pub process: ProcessInfo,
}

/// One watched host (`api::HostInfo`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Type)]
pub struct HostEntry {
    pub id: u32,
    pub name: String,
    pub kind: String,
    pub ports: Vec<String>,
    pub label: Vec<String>,
    pub source: String,
    pub addresses: Vec<String>,
    pub ttl_seconds: Vec<u64>,
    pub consecutive_failures: Vec<u32>,
    pub last_error: Vec<String>,
}

/// A policy scope (`api::PolicyScopeInfo`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Type)]
pub struct PolicyScopeEntry {
    pub id: u32,
    pub selector: String,
    pub default: Vec<String>,
    pub mode: String,
    pub block_ipv6: bool,
}

/// A policy rule (`api::PolicyRuleInfo`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Type)]
pub struct PolicyRuleEntry {
    pub id: u32,
    pub action: String,
    pub dest: Vec<String>,
    pub ports: Vec<String>,
    pub protocol: Vec<String>,
    pub scope: Vec<String>,
    pub addresses: Vec<String>,
    pub origin: String,
}

/// The merged policy (`api::PolicyShowReply`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Type)]
pub struct PolicyShowInfo {
    pub active: bool,
    pub mode: String,
    pub default: String,
    pub exceptions: Vec<String>,
    pub scopes: Vec<PolicyScopeEntry>,
    pub rules: Vec<PolicyRuleEntry>,
}

/// A policy decision (`api::PolicyCheckReply`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Type)]
pub struct PolicyDecision {
    pub verdict: String,
    pub rule: Vec<u32>,
    pub scope: String,
    pub reason: String,
    pub subject: String,
}

impl From<&PolicyShowReply> for PolicyShowInfo {
    fn from(p: &PolicyShowReply) -> Self {
        Self {
            active: p.active,
            mode: p.mode.clone(),
            default: p.default.clone(),
            exceptions: p.exceptions.clone(),
            scopes: p
                .scopes
                .iter()
                .map(|s| PolicyScopeEntry {
                    id: s.id,
                    selector: s.selector.clone(),
                    default: opt(s.default.clone()),
                    mode: s.mode.clone(),
                    block_ipv6: s.block_ipv6,
                })
                .collect(),
            rules: p
                .rules
                .iter()
                .map(|r| PolicyRuleEntry {
                    id: r.id,
                    action: r.action.clone(),
                    dest: r.dest.clone(),
                    ports: r.ports.clone(),
                    protocol: opt(r.protocol.map(|p| p.as_str().into())),
                    scope: opt(r.scope.clone()),
                    addresses: r.addresses.clone(),
                    origin: r.origin.clone(),
                })
                .collect(),
        }
    }
}

impl TryFrom<PolicyShowInfo> for PolicyShowReply {
    type Error = ConversionError;

    fn try_from(p: PolicyShowInfo) -> Result<Self, Self::Error> {
        let rules = p
            .rules
            .into_iter()
            .map(|r| {
                Ok(PolicyRuleInfo {
                    id: r.id,
                    action: r.action,
                    dest: r.dest,
                    ports: r.ports,
                    protocol: one(r.protocol).map(|p| parse_name("protocol", p)).transpose()?,
                    scope: one(r.scope),
                    addresses: r.addresses,
                    origin: r.origin,
                })
            })
            .collect::<Result<_, ConversionError>>()?;
        Ok(Self {
            active: p.active,
            mode: p.mode,
            default: p.default,
            exceptions: p.exceptions,
            scopes: p
                .scopes
                .into_iter()
                .map(|s| PolicyScopeInfo {
                    id: s.id,
                    selector: s.selector,
                    default: one(s.default),
                    mode: s.mode,
                    block_ipv6: s.block_ipv6,
                })
                .collect(),
            rules,
        })
    }
}

impl From<&PolicyCheckReply> for PolicyDecision {
    fn from(r: &PolicyCheckReply) -> Self {
        Self {
            verdict: r.verdict.as_str().into(),
            rule: opt(r.rule),
            scope: r.scope.clone(),
            reason: r.reason.clone(),
            subject: r.subject.clone(),
        }
    }
}

impl TryFrom<PolicyDecision> for PolicyCheckReply {
    type Error = ConversionError;

    fn try_from(d: PolicyDecision) -> Result<Self, Self::Error> {
        Ok(Self {
            verdict: parse_name("verdict", d.verdict)?,
            rule: one(d.rule),
            scope: d.scope,
            reason: d.reason,
            subject: d.subject,
        })
    }
}

/// The daemon's counters (`api::Stats`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Type)]
pub struct StatsInfo {
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
    pub last_reload_error: Vec<String>,
    pub trace_mode: String,
    pub sinks: Vec<SinkStatsInfo>,
}

/// One event sink's counters (`api::SinkStats`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Type)]
pub struct SinkStatsInfo {
    pub name: String,
    pub kind: String,
    pub events: u64,
    pub written: u64,
    pub lost: u64,
    pub queued: u64,
    pub errors: u64,
    pub last_error: Vec<String>,
}

impl From<&SinkStats> for SinkStatsInfo {
    fn from(s: &SinkStats) -> Self {
        Self {
            name: s.name.clone(),
            kind: s.kind.clone(),
            events: s.events,
            written: s.written,
            lost: s.lost,
            queued: s.queued,
            errors: s.errors,
            last_error: opt(s.last_error.clone()),
        }
    }
}

impl From<SinkStatsInfo> for SinkStats {
    fn from(s: SinkStatsInfo) -> Self {
        Self {
            name: s.name,
            kind: s.kind,
            events: s.events,
            written: s.written,
            lost: s.lost,
            queued: s.queued,
            errors: s.errors,
            last_error: one(s.last_error),
        }
    }
}

impl From<&Process> for ProcessInfo {
    fn from(p: &Process) -> Self {
        Self {
            pid: p.pid,
            tid: p.tid,
            ppid: opt(p.ppid),
            uid: p.uid,
            user: opt(p.user.clone()),
            comm: p.comm.clone(),
            exe: opt(p.exe.clone()),
            argv: p.argv.clone(),
            cgroup_id: p.cgroup_id,
            cgroup: opt(p.cgroup.clone()),
            unit: opt(p.unit.clone()),
            user_unit: opt(p.user_unit.clone()),
            slice: opt(p.slice.clone()),
            container_runtime: opt(p.container_runtime.clone()),
            container_id: opt(p.container_id.clone()),
            pod_uid: opt(p.pod_uid.clone()),
        }
    }
}

impl From<ProcessInfo> for Process {
    fn from(p: ProcessInfo) -> Self {
        Self {
            pid: p.pid,
            tid: p.tid,
            ppid: one(p.ppid),
            uid: p.uid,
            user: one(p.user),
            comm: p.comm,
            exe: one(p.exe),
            argv: p.argv,
            cgroup_id: p.cgroup_id,
            cgroup: one(p.cgroup),
            unit: one(p.unit),
            user_unit: one(p.user_unit),
            slice: one(p.slice),
            container_runtime: one(p.container_runtime),
            container_id: one(p.container_id),
            pod_uid: one(p.pod_uid),
        }
    }
}

impl From<&ContainerMeta> for ContainerInfo {
    fn from(m: &ContainerMeta) -> Self {
        Self {
            name: opt(m.container_name.clone()),
            image: opt(m.container_image.clone()),
            pod_name: opt(m.pod_name.clone()),
            pod_namespace: opt(m.pod_namespace.clone()),
            pod_labels: m.pod_labels.clone(),
        }
    }
}

impl From<ContainerInfo> for ContainerMeta {
    fn from(m: ContainerInfo) -> Self {
        Self {
            container_name: one(m.name),
            container_image: one(m.image),
            pod_name: one(m.pod_name),
            pod_namespace: one(m.pod_namespace),
            pod_labels: m.pod_labels,
        }
    }
}

impl From<&Connection> for ConnectionInfo {
    fn from(c: &Connection) -> Self {
        let started = c.started.duration_since(UNIX_EPOCH).unwrap_or_default();
        Self {
            id: c.id,
            cookie: c.cookie,
            protocol: c.protocol.as_str().into(),
            state: c.state.as_str().into(),
            fail_reason: opt(c.fail_reason.map(|r| r.as_str().into())),
            verdict: c.verdict.as_str().into(),
            policy_rule: opt(c.policy_rule),
            dst: c.dst.to_string(),
            src: opt(c.src.map(|a| a.to_string())),
            host_id: opt(c.host_id),
            config_epoch: c.config_epoch,
            host: opt(c.host.clone()),
            label: opt(c.label.clone()),
            dns_name: opt(c.dns_name.clone()),
            dns_source: opt(c.dns_source.map(|s| s.as_str().into())),
            started_usec: u64::try_from(started.as_micros()).unwrap_or(u64::MAX),
            duration_ns: opt(c.duration_ns),
            bytes_sent: opt(c.bytes_sent),
            bytes_received: opt(c.bytes_received),
            container: ContainerInfo::from(&*c.container),
            process: ProcessInfo::from(&*c.process),
        }
    }
}

/// The enums travel as the same lowercase names as in JSON; serde parses them.
fn parse_name<T: serde::de::DeserializeOwned>(field: &'static str, v: String) -> Result<T, ConversionError> {
    serde_json::from_value(serde_json::Value::String(v.clone()))
        .map_err(|_| ConversionError { field, value: v })
}

fn parse_addr(field: &'static str, v: String) -> Result<SocketAddr, ConversionError> {
    v.parse().map_err(|_| ConversionError { field, value: v })
}

impl TryFrom<ConnectionInfo> for Connection {
    type Error = ConversionError;

    fn try_from(c: ConnectionInfo) -> Result<Self, Self::Error> {
        Ok(Self {
            id: c.id,
            cookie: c.cookie,
            protocol: parse_name("protocol", c.protocol)?,
            state: parse_name("state", c.state)?,
            fail_reason: one(c.fail_reason)
                .map(|r| parse_name("fail_reason", r))
                .transpose()?,
            verdict: parse_name("verdict", c.verdict)?,
            policy_rule: one(c.policy_rule),
            dst: parse_addr("dst", c.dst)?,
            src: one(c.src).map(|a| parse_addr("src", a)).transpose()?,
            host_id: one(c.host_id),
            config_epoch: c.config_epoch,
            host: one(c.host),
            label: one(c.label),
            dns_name: one(c.dns_name),
            dns_source: one(c.dns_source)
                .map(|s| parse_name("dns_source", s))
                .transpose()?,
            started: UNIX_EPOCH + Duration::from_micros(c.started_usec),
            duration_ns: one(c.duration_ns),
            bytes_sent: one(c.bytes_sent),
            bytes_received: one(c.bytes_received),
            container: Arc::new(c.container.into()),
            process: Arc::new(c.process.into()),
        })
    }
}

impl From<&HostInfo> for HostEntry {
    fn from(h: &HostInfo) -> Self {
        Self {
            id: h.id,
            name: h.name.clone(),
            kind: h.kind.clone(),
            ports: h.ports.clone(),
            label: opt(h.label.clone()),
            source: h.source.clone(),
            addresses: h.addresses.clone(),
            ttl_seconds: opt(h.ttl_seconds),
            consecutive_failures: opt(h.consecutive_failures),
            last_error: opt(h.last_error.clone()),
        }
    }
}

impl From<HostEntry> for HostInfo {
    fn from(h: HostEntry) -> Self {
        Self {
            id: h.id,
            name: h.name,
            kind: h.kind,
            ports: h.ports,
            label: one(h.label),
            source: h.source,
            addresses: h.addresses,
            ttl_seconds: one(h.ttl_seconds),
            consecutive_failures: one(h.consecutive_failures),
            last_error: one(h.last_error),
        }
    }
}

impl From<&Stats> for StatsInfo {
    fn from(s: &Stats) -> Self {
        Self {
            kernel: s.kernel.clone(),
            records: s.records,
            connections: s.connections,
            orphan_state_events: s.orphan_state_events,
            decode_errors: s.decode_errors,
            table_open: s.table_open,
            table_closed: s.table_closed,
            evicted_open: s.evicted_open,
            evicted_closed: s.evicted_closed,
            processes: s.processes,
            uptime_seconds: s.uptime_seconds,
            config_epoch: s.config_epoch,
            reloads: s.reloads,
            reload_failures: s.reload_failures,
            last_reload_error: opt(s.last_reload_error.clone()),
            trace_mode: s.trace_mode.clone(),
            sinks: s.sinks.iter().map(SinkStatsInfo::from).collect(),
        }
    }
}

impl From<StatsInfo> for Stats {
    fn from(s: StatsInfo) -> Self {
        Self {
            kernel: s.kernel,
            records: s.records,
            connections: s.connections,
            orphan_state_events: s.orphan_state_events,
            decode_errors: s.decode_errors,
            table_open: s.table_open,
            table_closed: s.table_closed,
            evicted_open: s.evicted_open,
            evicted_closed: s.evicted_closed,
            processes: s.processes,
            uptime_seconds: s.uptime_seconds,
            config_epoch: s.config_epoch,
            reloads: s.reloads,
            reload_failures: s.reload_failures,
            last_reload_error: one(s.last_reload_error),
            trace_mode: s.trace_mode,
            sinks: s.sinks.into_iter().map(SinkStats::from).collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{ConnState, FailReason, Protocol, Verdict};

    fn sample(bytes_sent: Option<u64>) -> Connection {
        let container = ContainerMeta {
            container_name: bytes_sent.map(|_| "web".into()),
            container_image: Some("busybox:1".into()),
            pod_name: None,
            pod_namespace: Some("default".into()),
            pod_labels: [("app".to_string(), "web".to_string())].into(),
        };
        Connection {
            id: 7,
            cookie: 99,
            protocol: Protocol::Udp,
            state: ConnState::Failed,
            fail_reason: Some(FailReason::TimedOut),
            verdict: Verdict::WouldDeny,
            policy_rule: Some(3),
            dst: "[2001:db8::1]:443".parse().unwrap(),
            src: None,
            host_id: Some(0),
            config_epoch: 3,
            host: Some("api.test".into()),
            label: None,
            dns_name: Some("cdn.test".into()),
            dns_source: Some(crate::NameSource::Process),
            started: UNIX_EPOCH + Duration::from_micros(1_700_000_000_123_456),
            duration_ns: Some(0),
            bytes_sent,
            bytes_received: None,
            container: Arc::new(container),
            process: Arc::new(Process {
                pid: 1,
                tid: 2,
                ppid: None,
                uid: 1000,
                user: Some("u".into()),
                comm: "curl".into(),
                exe: None,
                argv: vec!["curl".into(), String::new()],
                cgroup_id: 5,
                cgroup: Some("/a".into()),
                unit: None,
                user_unit: None,
                slice: None,
                container_runtime: None,
                container_id: Some("c".into()),
                pod_uid: None,
            }),
        }
    }

    #[test]
    fn connections_survive_the_round_trip_exactly() {
        for c in [sample(None), sample(Some(0)), sample(Some(12))] {
            let back = Connection::try_from(ConnectionInfo::from(&c)).unwrap();
            assert_eq!(back, c);
        }
    }

    #[test]
    fn a_bad_enum_name_is_named() {
        let mut info = ConnectionInfo::from(&sample(None));
        info.state = "sleeping".into();
        assert_eq!(
            Connection::try_from(info).unwrap_err(),
            ConversionError {
                field: "state",
                value: "sleeping".into()
            }
        );
    }

    #[test]
    fn signatures_are_structs_not_strings() {
        assert_eq!(
            ProcessInfo::SIGNATURE.to_string(),
            "(uuauuassasastasasasasasasas)"
        );
        assert!(ConnectionInfo::SIGNATURE
            .to_string()
            .starts_with("(ttssassausasauuasasasasta"));
        assert!(ConnectionInfo::SIGNATURE
            .to_string()
            .ends_with("atatat(asasasasa{ss})(uuauuassasastasasasasasasas))"));
    }
}
