//! A syscall profile: what the tasks of one cgroup (and its descendants)
//! called while the daemon recorded it.

use serde::{Deserialize, Serialize};

/// Record a cgroup's syscalls for `duration_ms`, then answer with them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProfileParams {
    /// The cgroup, as a path below the cgroup2 mount (`/system.slice/x.service`)
    /// or a full path under it. Exactly one of `cgroup`, `unit` and `container`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cgroup: Option<String>,
    /// A systemd unit: the cgroup of that name (`x.service`, `y.scope`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unit: Option<String>,
    /// A running container (Docker, Podman, containerd, CRI-O): its id,
    /// a unique prefix of 12 hex digits or more, or its name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<String>,
    /// How long to record, in milliseconds (at most [`MAX_PROFILE_MS`]).
    pub duration_ms: u64,
}

/// The longest recording one call may ask for: an hour.
pub const MAX_PROFILE_MS: u64 = 3_600_000;

/// The ABI a syscall was made through.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum SyscallArch {
    /// The native 64-bit ABI.
    #[serde(rename = "x86_64")]
    X86_64,
    /// 32-bit compat syscalls (i386 programs, `int 0x80`).
    #[serde(rename = "x86")]
    X86,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProfiledSyscall {
    pub arch: SyscallArch,
    pub number: u32,
    /// From the syscall table of `arch`; absent for a number it lacks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// How many times it was called.
    pub count: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProfileReply {
    /// The cgroup recorded, below the cgroup2 mount.
    pub cgroup: String,
    pub duration_ms: u64,
    /// Every syscall made, by arch then number.
    pub syscalls: Vec<ProfiledSyscall>,
    /// Address families passed to socket(2) and socketpair(2) (AF_* numbers).
    pub families: Vec<u32>,
    /// Syscalls outside the tables (x32 ABI, unknown numbers).
    pub unknown: u64,
    /// i386 socketcall(2) calls, whose families are not read.
    pub socketcall: u64,
}
