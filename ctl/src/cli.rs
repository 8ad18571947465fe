//! tracectl's command line.

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

pub use filter::FilterArgs;

use crate::out::Format;

/// Ask connectracerd which process owns a connection, list traced
/// connections and read the daemon's counters.
#[derive(Debug, Parser)]
#[command(name = "tracectl", version, about, long_about = None)]
pub struct Args {
    /// What to print: tables (text, wide: every column), one JSON document
    /// (json) or one JSON object a line (jsonl).
    #[arg(short = 'o', long = "output", global = true, value_enum, default_value_t = Format::Text)]
    pub output: Format,

    /// Same as `-o json`.
    #[arg(long, global = true)]
    pub json: bool,

    /// The daemon's control socket.
    #[arg(
        long,
        global = true,
        value_name = "PATH",
        env = "CONNECTRACER_SOCKET",
        default_value = connectracer_proto::varlink::DEFAULT_SOCKET
    )]
    pub socket: PathBuf,

    /// Talk to the daemon over the system bus (org.connectracer.Tracer1)
    /// instead of the control socket.
    #[arg(long, global = true)]
    pub bus: bool,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum StateArg {
    Connecting,
    Established,
    Failed,
    Closed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ProtocolArg {
    Tcp,
    Udp,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Who connects to a destination (IP, IP:PORT, or a hostname the daemon
    /// follows), or owns a local port.
    Who {
        /// Destination: 93.184.216.34, 93.184.216.34:443, [2001:db8::1]:443, or
        /// api.example.com[:443] when it is watched (or named by a policy rule).
        #[arg(
            value_name = "ADDRESS[:PORT]",
            required_unless_present = "local_port",
            conflicts_with = "local_port"
        )]
        address: Option<String>,
        /// The local (source) port of the connection.
        #[arg(long, value_name = "PORT")]
        local_port: Option<u16>,
        /// At most this many, newest first (the daemon caps answers at 100000).
        #[arg(long, default_value_t = 1000)]
        limit: u32,
        #[command(flatten)]
        filter: FilterArgs,
    },
    /// DNS answers traced processes received, newest first: the name asked
    /// for, its addresses and TTL, the resolver (your own processes' unless
    /// you are root or in group connectracer).
    Dns {
        /// Only the answers to this process's queries.
        #[arg(long)]
        pid: Option<u32>,
        /// Only the answers to queries from this systemd unit (glob, e.g.
        /// 'backup*.service'; a user manager's units count too).
        #[arg(long)]
        unit: Option<String>,
        /// At most this many, newest first.
        #[arg(long, default_value_t = 1000)]
        limit: u32,
    },
    /// GPU telemetry: each NVIDIA GPU's memory, utilization, temperature and
    /// power, and the processes using them with their unit, container and
    /// pod (your own processes unless you are root or in group
    /// connectracer); says so when the daemon runs without it.
    Gpu,
    /// Open and recently closed connections of a process.
    Ps {
        /// The process id.
        pid: u32,
        /// At most this many, newest first.
        #[arg(long, default_value_t = 1000)]
        limit: u32,
    },
    /// Connections in the daemon's table, newest first.
    Connections {
        /// Only connections in this state.
        #[arg(long, value_enum)]
        state: Option<StateArg>,
        /// Only this protocol.
        #[arg(long, value_enum)]
        protocol: Option<ProtocolArg>,
        /// At most this many (the daemon caps answers at 100000).
        #[arg(long, default_value_t = 1000)]
        limit: u32,
        #[command(flatten)]
        filter: FilterArgs,
    },
    /// Kernel and daemon counters: events, drops, table size.
    Stats,
    /// The daemon's version and kernel.
    Version,
    /// Print a completion script for a shell (no daemon needed).
    Completions {
        /// The shell the script is for.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Re-read /etc/connectracer and apply it (root or group connectracer).
    Reload,
    /// Watch a hostname, IP or CIDR (root or group connectracer).
    AddHost {
        /// api.example.com, 93.184.216.34 or 10.20.0.0/16.
        name: String,
        /// Destination port or range ("443", "8000-8100"); repeatable. Default: every port.
        #[arg(long = "port", value_name = "PORT")]
        ports: Vec<String>,
        /// Label carried by its events.
        #[arg(long)]
        label: Option<String>,
        /// Until the daemon restarts, instead of persisted in /var/lib/connectracer.
        #[arg(long)]
        runtime: bool,
    },
    /// Stop watching a host added with add-host.
    RemoveHost {
        /// The host as add-host was given it.
        name: String,
    },
    /// Watched hosts, their addresses and DNS state.
    Hosts,
    /// The egress policy: what is in force, and what it decides.
    #[command(subcommand)]
    Policy(PolicyCommand),
    /// Stream connection events as they happen.
    Watch {
        /// Only this process's connections.
        #[arg(long)]
        pid: Option<u32>,
        /// Only connections to this watched host (its name or label).
        #[arg(long)]
        host: Option<String>,
        /// Only events of this kind; repeatable.
        #[arg(long = "event", value_name = "KIND", value_enum)]
        events: Vec<EventArg>,
        #[command(flatten)]
        filter: FilterArgs,
    },
    /// Record the syscalls a cgroup or unit (and what runs below it) makes
    /// for a while, and write them as an OCI seccomp profile, a systemd
    /// drop-in or JSON (root or group connectracer).
    Profile(crate::profile::ProfileArgs),
    /// A live view of who connects: rates, open connections, failures
    /// and denials per unit, container, process or destination.
    Top(crate::top::TopArgs),
    /// Run a command in a sandbox: a network allow-list (hosts, IPs, CIDRs,
    /// ports), file rules, and a trace of its connections (any user).
    #[command(long_about = crate::run::args::LONG_ABOUT)]
    Run(crate::run::RunArgs),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum EventArg {
    Connect,
    Send,
    Established,
    Failed,
    Closed,
    Denied,
}

impl EventArg {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Connect => "connect",
            Self::Send => "send",
            Self::Established => "established",
            Self::Failed => "failed",
            Self::Closed => "closed",
            Self::Denied => "denied",
        }
    }
}

/// A destination to check: every address HOST stands for, one port, and
/// the protocol when given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DestArg {
    pub addrs: Vec<std::net::SocketAddr>,
    pub protocol: Option<connectracer_proto::Protocol>,
}

fn parse_dest(s: &str) -> Result<DestArg, String> {
    use std::net::ToSocketAddrs;
    let (hostport, protocol) = match s.rsplit_once('/') {
        Some((hp, "tcp")) => (hp, Some(connectracer_proto::Protocol::Tcp)),
        Some((hp, "udp")) => (hp, Some(connectracer_proto::Protocol::Udp)),
        Some((_, other)) => return Err(format!("unknown protocol `{other}`: tcp or udp")),
        None => (s, None),
    };
    if let Ok(a) = hostport.parse::<std::net::SocketAddr>() {
        return Ok(DestArg {
            addrs: vec![a],
            protocol,
        });
    }
    let Some((host, port)) = hostport.rsplit_once(':') else {
        return Err(format!(
            "`{s}` is not HOST:PORT (e.g. api.example.com:443 or [2001:db8::1]:443/udp)"
        ));
    };
    let port: u16 = port
        .parse()
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| format!("`{port}` is not a port (1-65535)"))?;
    let mut addrs: Vec<_> = (host, port)
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve `{host}`: {e}"))?
        .collect();
    addrs.sort();
    addrs.dedup();
    Ok(DestArg { addrs, protocol })
}

#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// The effective rules after merging every file, in precedence order.
    Show,
    /// Whether a caller may connect to a destination, and which rule decides.
    #[command(group(clap::ArgGroup::new("subject").args(["unit", "pid", "uid", "cgroup", "exe"])))]
    Check {
        /// A systemd unit (judged by its cgroup; /system.slice/UNIT when not running).
        #[arg(long)]
        unit: Option<String>,
        /// A running process (its user, executable and cgroup).
        #[arg(long)]
        pid: Option<u32>,
        /// A user id.
        #[arg(long)]
        uid: Option<u32>,
        /// A cgroup path relative to the cgroup2 mount.
        #[arg(long)]
        cgroup: Option<String>,
        /// An executable path.
        #[arg(long)]
        exe: Option<String>,
        /// HOST:PORT[/tcp|/udp]; HOST is an address or a name resolved here.
        #[arg(long, value_name = "HOST:PORT[/PROTO]", value_parser = parse_dest)]
        dest: DestArg,
    },
    /// An allow-list from what a unit, cgroup or user was seen connecting
    /// to: connectracer rules for conf.d or a systemd IPAddressAllow=
    /// drop-in (root or group connectracer).
    Suggest(crate::suggest::SuggestArgs),
}

mod filter;
#[cfg(test)]
mod man;

impl Args {
    /// `-o`, with `--json` as its alias.
    pub fn format(&self) -> Format {
        if self.json {
            Format::Json
        } else {
            self.output
        }
    }
}
