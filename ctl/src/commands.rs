//! Each command: its request, and how its answer is printed.

use connectracer_proto::api::{
    AddHostParams, AnswersParams, ConnectionsParams, ConnectionsReply, PolicyCheckParams, ReloadReply,
    VersionReply, WatchParams, WhoParams,
};
use connectracer_proto::{ConnState, Protocol, Verdict};

use crate::cli::{Command, PolicyCommand, ProtocolArg, StateArg};
use crate::client::ClientError;
use crate::out::{self, Printer};
use crate::output;
use crate::transport::Transport;

/// Exit status 1 for a deny from `policy check`, as `test` answers false.
const DENIED: u8 = 1;

pub fn completions(shell: clap_complete::Shell) {
    let mut cmd = <crate::cli::Args as clap::CommandFactory>::command();
    // Into a buffer: clap_complete panics when its writer fails, and a
    // closed pipe (`| head`) is not worth a panic.
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut cmd, "tracectl", &mut script);
    out::write(&String::from_utf8_lossy(&script));
}

fn connections(p: Printer, r: &ConnectionsReply) {
    p.list(("connections", "connection"), &r.connections, |c| {
        output::connections(c, p)
    });
}

/// Runs one command; the exit status it ends with when it succeeds.
pub fn run(c: &mut Transport, cmd: &Command, p: Printer) -> Result<u8, ClientError> {
    match cmd {
        Command::Who {
            address,
            local_port,
            limit,
            filter,
        } => {
            let params = WhoParams {
                address: address.clone(),
                port: None,
                local_port: *local_port,
                limit: Some(*limit),
                filter: filter.filter(),
            };
            connections(p, &c.who(&params)?);
        }
        Command::Ps { pid, limit } => connections(p, &c.ps(*pid, *limit)?),
        Command::Dns { pid, unit, limit } => {
            let r = c.answers(AnswersParams {
                pid: *pid,
                unit: unit.clone(),
                limit: Some(*limit),
            })?;
            p.list(("answers", "answer"), &r.answers, |a| output::answers(a, p));
        }
        Command::Connections {
            state,
            protocol,
            limit,
            filter,
        } => {
            let params = ConnectionsParams {
                state: state.map(state_of),
                protocol: protocol.map(protocol_of),
                limit: Some(*limit),
                filter: filter.filter(),
            };
            connections(p, &c.connections(&params)?);
        }
        Command::Stats => p.one("stats", &c.stats()?.stats, output::stats),
        Command::Reload => p.one("reload", &c.reload()?, reload_text),
        Command::AddHost {
            name,
            ports,
            label,
            runtime,
        } => add_host(c, p, name, ports, label, *runtime)?,
        Command::RemoveHost { name } => {
            let r = c.remove_host(name)?;
            p.one("reload", &r, |r| {
                format!("no longer watching {name} (configuration epoch {})\n", r.epoch)
            });
        }
        Command::Gpu => p.one("gpu", &c.gpu()?, |g| crate::gpu::render(g, p)),
        Command::Hosts => p.list(("hosts", "host"), &c.hosts()?.hosts, |h| output::hosts(h, p)),
        Command::Watch {
            pid,
            host,
            events,
            filter,
        } => {
            let params = WatchParams {
                pid: *pid,
                host: host.clone(),
                events: events.iter().map(|e| e.as_str().to_string()).collect(),
                filter: filter.filter(),
            };
            crate::watch::watch(c, p, &params)?;
        }
        Command::Top(args) => crate::top::top(c, p, args)?,
        Command::Profile(args) => crate::profile::profile(c, args, p.format)?,
        Command::Policy(PolicyCommand::Show) => p.one("policy", &c.policy_show()?, output::policy),
        Command::Policy(check @ PolicyCommand::Check { .. }) => return policy_check(c, p, check),
        Command::Policy(PolicyCommand::Suggest(args)) => crate::suggest::suggest(c, args, p.format)?,
        Command::Version => {
            let r = c.version()?;
            let v = serde_json::json!({
                "tracectl": env!("CARGO_PKG_VERSION"),
                "connectracerd": r.version,
                "kernel": r.kernel,
            });
            p.one("version", &v, |_| version_text(&r));
        }
        Command::Completions { shell } => completions(*shell),
        Command::Run(_) => unreachable!("main runs `run` before connecting: its own socket and exit status"),
    }
    Ok(0)
}

fn state_of(s: StateArg) -> ConnState {
    match s {
        StateArg::Connecting => ConnState::Connecting,
        StateArg::Established => ConnState::Established,
        StateArg::Failed => ConnState::Failed,
        StateArg::Closed => ConnState::Closed,
    }
}

fn protocol_of(p: ProtocolArg) -> Protocol {
    match p {
        ProtocolArg::Tcp => Protocol::Tcp,
        ProtocolArg::Udp => Protocol::Udp,
    }
}

/// Adds the host; a hostname that does not resolve here is still added
/// (it may resolve later, or only through the daemon's resolvers), with a
/// warning that says so rather than silence.
fn add_host(
    c: &mut Transport,
    p: Printer,
    name: &str,
    ports: &[String],
    label: &Option<String>,
    runtime: bool,
) -> Result<(), ClientError> {
    let params = AddHostParams {
        name: name.to_string(),
        ports: ports.to_vec(),
        label: label.clone(),
        runtime,
    };
    let r = c.add_host(&params)?;
    if let Some(why) = unresolvable(name) {
        eprintln!(
            "tracectl: warning: `{name}` does not resolve ({why}); it is watched, and its connections are matched once it resolves"
        );
    }
    p.one("reload", &r, |r| {
        format!("watching {name} (configuration epoch {})\n", r.epoch)
    });
    Ok(())
}

/// Why a hostname does not resolve; None for one that does, or an
/// address or CIDR (nothing to resolve).
fn unresolvable(name: &str) -> Option<String> {
    use std::net::ToSocketAddrs;
    if name.parse::<std::net::IpAddr>().is_ok() || name.contains('/') {
        return None;
    }
    match (name, 0).to_socket_addrs() {
        Ok(addrs) => addrs.count().eq(&0).then(|| "no addresses".into()),
        Err(e) => Some(e.to_string()),
    }
}

pub fn reload_text(r: &ReloadReply) -> String {
    let mut out = format!("configuration epoch {} in force\n", r.epoch);
    if !r.needs_restart.is_empty() {
        out.push_str(&format!(
            "changed but applied only at restart: {}\n",
            r.needs_restart.join(", ")
        ));
    }
    out
}

pub fn version_text(r: &VersionReply) -> String {
    format!(
        "tracectl {}\nconnectracerd {} on kernel {}\n",
        env!("CARGO_PKG_VERSION"),
        r.version,
        r.kernel
    )
}

/// One question per destination address the name resolved to; exit
/// status 1 when any of them is denied.
fn policy_check(c: &mut Transport, p: Printer, check: &PolicyCommand) -> Result<u8, ClientError> {
    let PolicyCommand::Check {
        unit,
        pid,
        uid,
        cgroup,
        exe,
        dest,
    } = check
    else {
        return Ok(0);
    };
    let mut answers = Vec::new();
    for addr in dest.addrs.iter().copied() {
        let q = PolicyCheckParams {
            unit: unit.clone(),
            pid: *pid,
            uid: *uid,
            cgroup: cgroup.clone(),
            exe: exe.clone(),
            address: addr.ip().to_string(),
            port: addr.port(),
            protocol: dest.protocol,
        };
        answers.push((addr, c.policy_check(&q)?));
    }
    let decisions: Vec<_> = answers
        .iter()
        .map(|(a, r)| serde_json::json!({ "destination": a.to_string(), "decision": r }))
        .collect();
    p.list(("decisions", "decision"), &decisions, |_| {
        answers
            .iter()
            .map(|(a, r)| output::policy_check(*a, r, p.colour))
            .collect()
    });
    let denied = answers.iter().any(|(_, r)| r.verdict == Verdict::Deny);
    Ok(if denied { DENIED } else { 0 })
}
