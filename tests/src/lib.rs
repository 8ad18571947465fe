//! Harness for the integration tests: a test-owned cgroup, the real
//! connectracerd attached to it, clients spawned inside it, and the daemon's
//! JSON event lines collected for assertions.
//!
//! Nothing here attaches to the root cgroup: every daemon gets `--cgroup`
//! pointing at a fresh directory that only the test's clients join, and the
//! directory is removed when the test ends, whether it passed or not.

pub mod bench;
mod bus;
mod cgroup;
mod command;
pub mod config_dir;
pub mod containerd;
mod daemon;
mod dnsmasq;
mod dockerd;
mod net;
mod paths;
pub mod rootfs;
pub mod sandbox;
mod users;
pub mod wait;

use serde_json::Value;

pub use bus::{PrivateBus, NO_BUS};
pub use cgroup::{hold, probe, probe_as, TestCgroup};
pub use command::{output, strace_names, verify_unit_with};
pub use config_dir::ConfigDir;
pub use daemon::{daemon_command, Daemon};
pub use dnsmasq::Dnsmasq;
pub use dockerd::Dockerd;
pub use net::{closed_port, free_port, http_get, http_get_raw, metric, tcp_server};
pub use paths::{bin_path, repo_root};
pub use users::{TestGroup, TestUser};
pub use wait::{eventually, wait_until};

/// The pids of the connections a tracectl JSON answer (`{"connections": [...]}`) lists, in its order.
pub fn connection_pids(v: &serde_json::Value) -> Vec<u64> {
    v["connections"]
        .as_array()
        .expect("a connections answer")
        .iter()
        .map(|c| c["process"]["pid"].as_u64().expect("a pid"))
        .collect()
}

pub fn pretty(v: &[Value]) -> String {
    v.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("\n")
}
