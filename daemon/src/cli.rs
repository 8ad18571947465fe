//! Command line of connectracerd.

use std::path::PathBuf;

use clap::{Parser, ValueEnum};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormatArg {
    Text,
    Json,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum TraceArg {
    Watched,
    All,
}

/// Egress connection tracer: follows every outbound TCP and UDP connection
/// through eBPF cgroup hooks and tracepoints and attributes it to its
/// process, user, cgroup, systemd unit and container.
#[derive(Debug, Parser)]
#[command(name = "connectracerd", version, about, long_about = None)]
pub struct Args {
    /// Run in the foreground. connectracerd never forks; the flag is
    /// accepted so that interactive use reads the same as under systemd.
    #[arg(long)]
    pub foreground: bool,

    /// Configuration file [default: /etc/connectracer/connectracer.toml,
    /// built-in defaults if it does not exist].
    #[arg(long, value_name = "PATH")]
    pub config: Option<PathBuf>,

    /// Validate the configuration, print every error, and exit.
    #[arg(long)]
    pub check_config: bool,

    /// Attach to this cgroup v2 directory instead of the cgroup2 root (a path
    /// under the cgroup2 mount, or one relative to it like /system.slice).
    #[arg(long, value_name = "PATH")]
    pub cgroup: Option<PathBuf>,

    /// Override the configuration's `trace` mode.
    #[arg(long, value_enum)]
    pub trace: Option<TraceArg>,

    /// bpffs directory for pinned links and state, re-adopted after a
    /// restart so that tracing never stops.
    #[arg(
        long,
        value_name = "PATH",
        default_value = "/sys/fs/bpf/connectracer",
        conflicts_with = "no_pin"
    )]
    pub pin_dir: PathBuf,

    /// Pin nothing: tracing stops whenever the daemon does.
    #[arg(long)]
    pub no_pin: bool,

    /// Persistent state (counters that must survive restarts).
    #[arg(long, value_name = "PATH", default_value = "/var/lib/connectracer")]
    pub state_dir: PathBuf,

    /// Control socket (varlink) path.
    #[arg(long, value_name = "PATH", default_value = connectracer_proto::varlink::DEFAULT_SOCKET)]
    pub control_socket: PathBuf,

    /// Format of event lines (stdout) and diagnostics (stderr).
    #[arg(long, value_enum)]
    pub log_format: Option<LogFormatArg>,
}

#[cfg(test)]
mod man;
