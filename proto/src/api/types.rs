//! The parameters and replies of every operation, as serde types: the
//! varlink transport serializes them as they are, the D-Bus one through its
//! own struct forms (`dbus::types`).

use serde::{Deserialize, Serialize};

use super::Filter;
use crate::{ConnState, Connection, Protocol, Verdict};

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
    #[serde(default, skip_serializing_if = "Filter::is_empty")]
    pub filter: Filter,
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
    #[serde(default, skip_serializing_if = "Filter::is_empty")]
    pub filter: Filter,
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
    /// Event kinds (connect, send, established, failed, closed, denied,
    /// ...); empty: every kind.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub events: Vec<String>,
    #[serde(default, skip_serializing_if = "Filter::is_empty")]
    pub filter: Filter,
}

/// One reply of a Watch stream: an event, or how many this client missed
/// because it read too slowly.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum WatchReply {
    Event {
        event: String,
        /// When it happened, from the kernel's timestamp (RFC 3339, UTC).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        time: Option<String>,
        connection: Box<Connection>,
    },
    Missed {
        missed: u64,
    },
}

impl WatchReply {
    /// The event's kernel time, when the stream gave one.
    pub fn time(&self) -> Option<std::time::SystemTime> {
        match self {
            WatchReply::Event { time: Some(t), .. } => humantime::parse_rfc3339(t).ok(),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatsReply {
    pub stats: Stats,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AnswersParams {
    /// Only the answers to this process's queries.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    /// Only the answers to queries from this systemd unit (a glob, matched
    /// against the unit and the user-manager unit).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unit: Option<String>,
    /// At most this many, newest first (default 1000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u32>,
}

/// A DNS answer a traced process received, as the kernel copied it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DnsAnswer {
    /// When it arrived (RFC 3339, UTC).
    pub time: String,
    /// The process that asked, and its uid.
    pub pid: u32,
    pub uid: u32,
    /// The name asked for (a CNAME chain's addresses are listed under it).
    pub name: String,
    pub addresses: Vec<String>,
    /// The shortest TTL among the addresses.
    pub ttl_seconds: u32,
    pub resolver: String,
    /// The cgroup of the task that asked (below the cgroup2 mount), and its
    /// systemd unit, where known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cgroup: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unit: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AnswersReply {
    pub answers: Vec<DnsAnswer>,
}

/// GPU telemetry as the daemon's last NVML poll saw it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct GpuReply {
    /// Whether GPU telemetry runs (`[gpu] enabled`, and NVML found).
    pub enabled: bool,
    /// Why it is off (`enabled = false`, no libnvidia-ml.so.1, no GPU).
    pub reason: Option<String>,
    /// When the devices and processes below were sampled (RFC 3339, UTC);
    /// none before the first poll.
    pub sampled: Option<String>,
    pub poll_interval_seconds: f64,
    pub devices: Vec<GpuDevice>,
    /// The caller's own processes unless root or in group connectracer.
    pub processes: Vec<GpuProcess>,
}

/// One GPU, by NVML index. A value NVML could not give is none (the reason
/// is in `errors` unless the device does not support it).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct GpuDevice {
    pub index: u32,
    pub uuid: String,
    pub name: String,
    /// MIG mode on: per-process utilization is not available, memory is.
    pub mig: bool,
    pub memory_used_bytes: Option<u64>,
    pub memory_total_bytes: Option<u64>,
    /// Share of the last sample period a kernel ran (0 to 1).
    pub utilization: Option<f64>,
    /// Share of the last sample period device memory was read or written.
    pub memory_utilization: Option<f64>,
    pub temperature_celsius: Option<u32>,
    pub power_watts: Option<f64>,
    /// NVML calls that failed in this poll: `CALL: REASON`.
    pub errors: Vec<String>,
}

/// One process's use of one GPU (of one MIG instance on a MIG device).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GpuProcess {
    /// The device's NVML index and UUID.
    pub gpu: u32,
    pub uuid: String,
    /// The MIG GPU instance, on MIG devices.
    pub gpu_instance: Option<u32>,
    /// Host pid, as NVML reports it.
    pub pid: u32,
    pub memory_bytes: Option<u64>,
    /// Share of the poll interval the process's kernels ran on the SMs, and
    /// read or wrote device memory (none on MIG or where unsupported).
    pub sm_utilization: Option<f64>,
    pub memory_utilization: Option<f64>,
    /// The same attribution as connections (exe, user, unit, container,
    /// pod); none when the process was gone before it could be looked up.
    pub process: Option<crate::Process>,
}
