//! `tracectl profile`: record a cgroup's syscalls, and write them as an OCI
//! seccomp profile, a systemd drop-in or the daemon's JSON.

mod groups;
mod render;

use std::path::PathBuf;
use std::time::Duration;

use clap::ValueEnum;
use connectracer_proto::api::{ProfileParams, ProfileReply};

use crate::client::ClientError;
use crate::out;
use crate::transport::Transport;

pub use render::{oci, systemd};

/// What `profile` writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ProfileFormat {
    /// An OCI runtime seccomp profile (`linux.seccomp`; podman, docker,
    /// runc): everything seen allowed, every other syscall EPERM.
    Oci,
    /// A systemd drop-in: SystemCallFilter= (@system-service and the
    /// syscalls seen outside it, groups from `systemd-analyze
    /// syscall-filter`), SystemCallArchitectures= and
    /// RestrictAddressFamilies=.
    Systemd,
    /// The daemon's answer: every syscall with its ABI, number and count.
    Json,
}

#[derive(Debug, clap::Args)]
#[command(group(clap::ArgGroup::new("target").args(["cgroup", "unit", "container"]).required(true)))]
pub struct ProfileArgs {
    /// A cgroup path below the cgroup2 mount (/system.slice/x.service), or
    /// its full path.
    #[arg(long)]
    pub cgroup: Option<String>,
    /// A systemd unit: its cgroup (x.service, y.scope).
    #[arg(long)]
    pub unit: Option<String>,
    /// A running Docker, Podman, containerd or CRI-O container: its id, a
    /// unique prefix of it (12 hex digits or more) or its name.
    #[arg(long, value_name = "ID|NAME")]
    pub container: Option<String>,
    /// How long to record ("30s", "5min", "500ms"; at most 1h). Required:
    /// the answer comes when the recording ends.
    #[arg(long = "for", value_name = "DURATION", value_parser = parse_duration)]
    pub duration: Duration,
    /// What to write [default: oci; json with -o json or -o jsonl].
    #[arg(long, value_enum)]
    pub format: Option<ProfileFormat>,
    /// With --format systemd: allow only the syscalls seen (a group named
    /// only where every member was), not @system-service and the rest.
    #[arg(long)]
    pub exact: bool,
    /// Write to FILE instead of stdout (`-o` is tracectl's output format).
    #[arg(short = 'w', long = "write", value_name = "FILE")]
    pub write: Option<PathBuf>,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s).map_err(|e| format!("`{s}`: {e} (e.g. 30s, 5min, 500ms)"))?;
    if d.is_zero() || d > Duration::from_secs(3600) {
        return Err(format!("`{s}`: a profile records for 1ms to 1h"));
    }
    Ok(d)
}

/// Says what a profile leaves out: calls no table names.
pub fn warn_unknown(reply: &ProfileReply) {
    if reply.unknown > 0 {
        eprintln!(
            "tracectl: {} syscalls outside the x86_64 and i386 tables (x32 ABI?) are not in the profile",
            reply.unknown
        );
    }
}

/// Records, then writes the profile where asked.
pub fn profile(c: &mut Transport, a: &ProfileArgs, output: out::Format) -> Result<(), ClientError> {
    let params = ProfileParams {
        cgroup: a.cgroup.clone(),
        unit: a.unit.clone(),
        container: a.container.clone(),
        duration_ms: a.duration.as_millis().try_into().unwrap_or(u64::MAX),
    };
    let reply = c.profile(&params)?;
    warn_unknown(&reply);
    let format = a.format.unwrap_or(if output.is_json() {
        ProfileFormat::Json
    } else {
        ProfileFormat::Oci
    });
    out::write_to(a.write.as_deref(), &render(&reply, format, a.exact))
}

/// A profile as `format` writes it (`exact`: see `--exact`).
pub fn render(reply: &ProfileReply, format: ProfileFormat, exact: bool) -> String {
    match format {
        ProfileFormat::Oci => oci(reply),
        ProfileFormat::Systemd => systemd(reply, groups::from_systemd_analyze().as_ref(), exact),
        ProfileFormat::Json => {
            let mut s = serde_json::to_string_pretty(reply).expect("plain data serializes");
            s.push('\n');
            s
        }
    }
}
