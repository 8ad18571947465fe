//! `tracectl policy suggest`: the destinations a unit, cgroup or user
//! reached, as connectracer rules for conf.d, a systemd `IPAddressAllow=`
//! drop-in or the daemon's JSON.

mod render;

use std::path::PathBuf;
use std::time::Duration;

use clap::ValueEnum;
use connectracer_proto::api::SuggestParams;

use crate::client::ClientError;
use crate::out;
use crate::transport::Transport;

pub use render::{systemd, toml, Target};

/// What `policy suggest` writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SuggestFormat {
    /// connectracer configuration for conf.d: a [[scope]] with default =
    /// "deny" and one allow [[rule]] per destination (hostnames by name,
    /// addresses as /32 or /128) with its ports and protocol.
    Toml,
    /// A systemd drop-in: IPAddressDeny=any and IPAddressAllow= the
    /// addresses seen (systemd cannot allow by hostname, nor by port).
    Systemd,
    /// The daemon's answer: every destination with its count and times.
    Json,
}

#[derive(Debug, clap::Args)]
#[command(group(clap::ArgGroup::new("target").args(["unit", "cgroup", "user", "container"]).required(true)))]
pub struct SuggestArgs {
    /// A systemd unit (connections from cgroups of that name).
    #[arg(long)]
    pub unit: Option<String>,
    /// A cgroup path below the cgroup2 mount, with everything under it.
    #[arg(long)]
    pub cgroup: Option<String>,
    /// A user name or uid.
    #[arg(long)]
    pub user: Option<String>,
    /// A Docker, Podman, containerd or CRI-O container, running or gone:
    /// its id, a unique prefix of it (12 hex digits or more) or its name.
    #[arg(long, value_name = "ID|NAME")]
    pub container: Option<String>,
    /// Only destinations seen within this long ("1h", "7days").
    #[arg(long, value_name = "DURATION", value_parser = parse_since)]
    pub since: Option<Duration>,
    /// Group addresses into their /24 (IPv4) and /64 (IPv6).
    #[arg(long)]
    pub cidr: bool,
    /// What to write [default: toml; json with -o json or -o jsonl].
    #[arg(long, value_enum)]
    pub format: Option<SuggestFormat>,
    /// Write to FILE instead of stdout (`-o` is tracectl's output format).
    #[arg(short = 'w', long = "write", value_name = "FILE")]
    pub write: Option<PathBuf>,
}

fn parse_since(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("`{s}`: {e} (e.g. 1h, 30min, 7days)"))
}

/// A user name or uid to the uid.
fn uid_of(user: &str) -> Result<u32, ClientError> {
    if let Ok(uid) = user.parse() {
        return Ok(uid);
    }
    match nix::unistd::User::from_name(user) {
        Ok(Some(u)) => Ok(u.uid.as_raw()),
        Ok(None) => Err(ClientError::Usage(format!("--user: no user `{user}`"))),
        Err(e) => Err(ClientError::Usage(format!("--user: looking up `{user}`: {e}"))),
    }
}

pub fn suggest(c: &mut Transport, a: &SuggestArgs, output: out::Format) -> Result<(), ClientError> {
    let params = SuggestParams {
        unit: a.unit.clone(),
        cgroup: a.cgroup.clone(),
        uid: a.user.as_deref().map(uid_of).transpose()?,
        container: a.container.clone(),
        since_ms: a.since.map(|d| d.as_millis().try_into().unwrap_or(u64::MAX)),
    };
    let format = a.format.unwrap_or(if output.is_json() {
        SuggestFormat::Json
    } else {
        SuggestFormat::Toml
    });
    if a.container.is_some() && format == SuggestFormat::Systemd {
        return Err(ClientError::Usage(
            "--format systemd: a container is no systemd unit (use toml or json)".into(),
        ));
    }
    let reply = c.policy_suggest(&params)?;
    if reply.dropped > 0 {
        eprintln!(
            "tracectl: the daemon's store was full ({} destinations) and forgot the {} least recently seen: this suggestion may lack some",
            reply.capacity, reply.dropped
        );
    }
    let target = match (&a.unit, &a.cgroup, &a.user, &reply.container) {
        (Some(u), _, _, _) => Target::Unit(u.clone()),
        (_, Some(c), _, _) => Target::Cgroup(c.clone()),
        (_, _, Some(u), _) => Target::User(u.clone()),
        // The daemon's answer names the container by its full id.
        (_, _, _, Some(id)) => Target::Container(id.clone()),
        _ => {
            return Err(ClientError::Protocol(
                "the daemon's answer names no container".into(),
            ))
        }
    };
    if reply.destinations.is_empty() && format != SuggestFormat::Json {
        // A scope that denies everything is no suggestion.
        return Err(ClientError::Nothing(format!(
            "no connections seen for {target}{}: nothing to suggest",
            if a.since.is_some() { " in that time" } else { "" }
        )));
    }
    let text = match format {
        SuggestFormat::Toml => toml(&reply, &target, a.cidr),
        SuggestFormat::Systemd => systemd(&reply, &target, a.cidr),
        SuggestFormat::Json => {
            let mut s = serde_json::to_string_pretty(&reply).expect("plain data serializes");
            s.push('\n');
            s
        }
    };
    out::write_to(a.write.as_deref(), &text)
}
