mod cli;
mod client;
mod output;

use std::io::Write;
use std::process::ExitCode;

use clap::Parser;
use connectracer_proto::varlink::{
    AddHostParams, CallError, ConnectionsParams, ConnectionsReply, HostsReply, PolicyCheckParams,
    PolicyCheckReply, PolicyShowReply, PsParams, ReloadReply, RemoveHostParams, StatsReply, VersionReply,
    WatchParams, WatchReply, WhoParams, INTERFACE,
};
use connectracer_proto::{ConnState, Protocol};
use serde::Serialize;

use cli::{Args, Command, PolicyCommand, ProtocolArg, StateArg};
use client::{Client, ClientError};

/// Exit codes: 0 ok, 1 error, 2 usage (clap), 3 access denied, 4 daemon not running.
fn exit_code(e: &ClientError) -> u8 {
    match e {
        ClientError::SocketDenied(_) | ClientError::Call(CallError::AccessDenied { .. }) => 3,
        ClientError::NotRunning(_) => 4,
        _ => 1,
    }
}

fn print<T: Serialize>(json: bool, value: &T, table: impl FnOnce(&T) -> String) {
    if json {
        println!("{}", serde_json::to_string_pretty(value).unwrap_or_default());
    } else {
        print!("{}", table(value));
    }
}

fn run(args: &Args) -> Result<(), ClientError> {
    if let Command::Completions { shell } = &args.command {
        let mut cmd = <Args as clap::CommandFactory>::command();
        // Into a buffer: clap_complete panics when its writer fails, and a
        // closed pipe (`| head`) is not worth a panic.
        let mut script = Vec::new();
        clap_complete::generate(*shell, &mut cmd, "tracectl", &mut script);
        let _ = std::io::stdout().write_all(&script);
        return Ok(());
    }
    let mut c = Client::connect(&args.socket)?;
    let m = |name: &str| format!("{INTERFACE}.{name}");
    let list = |r: &ConnectionsReply| output::connections(&r.connections);
    match &args.command {
        Command::Who { address, local_port } => {
            let p = WhoParams {
                address: address.clone(),
                port: None,
                local_port: *local_port,
            };
            let r: ConnectionsReply = c.call(&m("Who"), &p)?;
            print(args.json, &r, list);
        }
        Command::Ps { pid } => {
            let r: ConnectionsReply = c.call(&m("Ps"), &PsParams { pid: *pid })?;
            print(args.json, &r, list);
        }
        Command::Connections {
            state,
            protocol,
            limit,
        } => {
            let p = ConnectionsParams {
                state: state.map(|s| match s {
                    StateArg::Connecting => ConnState::Connecting,
                    StateArg::Established => ConnState::Established,
                    StateArg::Failed => ConnState::Failed,
                    StateArg::Closed => ConnState::Closed,
                }),
                protocol: protocol.map(|p| match p {
                    ProtocolArg::Tcp => Protocol::Tcp,
                    ProtocolArg::Udp => Protocol::Udp,
                }),
                limit: Some(*limit),
            };
            let r: ConnectionsReply = c.call(&m("Connections"), &p)?;
            print(args.json, &r, list);
        }
        Command::Stats => {
            let r: StatsReply = c.call(&m("GetStats"), &serde_json::json!({}))?;
            print(args.json, &r, |r| output::stats(&r.stats));
        }
        Command::Reload => {
            let r: ReloadReply = c.call(&m("Reload"), &serde_json::json!({}))?;
            print(args.json, &r, |r| {
                let mut out = format!("configuration epoch {} in force\n", r.epoch);
                if !r.needs_restart.is_empty() {
                    out.push_str(&format!(
                        "changed but applied only at restart: {}\n",
                        r.needs_restart.join(", ")
                    ));
                }
                out
            });
        }
        Command::AddHost {
            name,
            ports,
            label,
            runtime,
        } => {
            let p = AddHostParams {
                name: name.clone(),
                ports: ports.clone(),
                label: label.clone(),
                runtime: *runtime,
            };
            let r: ReloadReply = c.call(&m("AddHost"), &p)?;
            print(args.json, &r, |r| {
                format!("watching {name} (configuration epoch {})\n", r.epoch)
            });
        }
        Command::RemoveHost { name } => {
            let r: ReloadReply = c.call(&m("RemoveHost"), &RemoveHostParams { name: name.clone() })?;
            print(args.json, &r, |r| {
                format!("no longer watching {name} (configuration epoch {})\n", r.epoch)
            });
        }
        Command::Hosts => {
            let r: HostsReply = c.call(&m("Hosts"), &serde_json::json!({}))?;
            print(args.json, &r, |r| output::hosts(&r.hosts));
        }
        Command::Watch { pid, host } => {
            let filter = WatchParams {
                pid: *pid,
                host: host.clone(),
            };
            let mut out = std::io::stdout().lock();
            c.stream(&m("Watch"), &filter, |r: WatchReply| {
                let line = if args.json {
                    serde_json::to_string(&r).unwrap_or_default()
                } else {
                    output::watch_line(&r)
                };
                // Stop when stdout is gone (e.g. piped into head).
                writeln!(out, "{line}").and_then(|()| out.flush()).is_ok()
            })?;
        }
        Command::Policy(PolicyCommand::Show) => {
            let r: PolicyShowReply = c.call(&m("PolicyShow"), &serde_json::json!({}))?;
            print(args.json, &r, output::policy);
        }
        Command::Policy(PolicyCommand::Check {
            unit,
            pid,
            uid,
            cgroup,
            exe,
            dest,
        }) => {
            let protocol = dest.protocol;
            let mut answers = Vec::new();
            for addr in dest.addrs.iter().copied() {
                let p = PolicyCheckParams {
                    unit: unit.clone(),
                    pid: *pid,
                    uid: *uid,
                    cgroup: cgroup.clone(),
                    exe: exe.clone(),
                    address: addr.ip().to_string(),
                    port: addr.port(),
                    protocol,
                };
                let r: PolicyCheckReply = c.call(&m("PolicyCheck"), &p)?;
                answers.push((addr, r));
            }
            if args.json {
                let v: Vec<_> = answers
                    .iter()
                    .map(|(a, r)| serde_json::json!({ "destination": a.to_string(), "decision": r }))
                    .collect();
                println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
            } else {
                for (a, r) in &answers {
                    print!("{}", output::policy_check(*a, r));
                }
            }
        }
        Command::Completions { .. } => unreachable!("handled before connecting"),
        Command::Version => {
            let r: VersionReply = c.call(&m("GetVersion"), &serde_json::json!({}))?;
            print(args.json, &r, |r| {
                format!(
                    "tracectl {}\nconnectracerd {} on kernel {}\n",
                    env!("CARGO_PKG_VERSION"),
                    r.version,
                    r.kernel
                )
            });
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tracectl: {e}");
            ExitCode::from(exit_code(&e))
        }
    }
}
