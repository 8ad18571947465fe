mod bus;
mod cli;
mod client;
mod commands;
mod output;
mod socket;
mod transport;

use std::io::Write;
use std::process::ExitCode;

use clap::Parser;
use connectracer_proto::api::{AddHostParams, CallError, ConnectionsReply, WhoParams};
use serde::Serialize;

use cli::{Args, Command, PolicyCommand};
use client::{Client, ClientError};
use transport::Transport;

/// Exit codes: 0 ok, 1 error, 2 usage (clap), 3 access denied, 4 daemon not running.
fn exit_code(e: &ClientError) -> u8 {
    match e {
        ClientError::SocketDenied(_)
        | ClientError::BusDenied(_)
        | ClientError::SignalsDenied
        | ClientError::Call(CallError::AccessDenied { .. }) => 3,
        ClientError::NotRunning(_) | ClientError::NotOnBus | ClientError::NoBus(_) => 4,
        _ => 1,
    }
}

pub(crate) fn print<T: Serialize>(json: bool, value: &T, table: impl FnOnce(&T) -> String) {
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
    let mut c = if args.bus {
        if matches!(args.command, Command::Watch { .. }) && !bus::may_receive_signals() {
            return Err(ClientError::SignalsDenied);
        }
        Transport::Bus(bus::BusClient::connect()?)
    } else {
        Transport::Socket(Box::new(Client::connect(&args.socket)?))
    };
    let list = |r: &ConnectionsReply| output::connections(&r.connections);
    match &args.command {
        Command::Who {
            address,
            local_port,
            limit,
        } => {
            let p = WhoParams {
                address: address.clone(),
                port: None,
                local_port: *local_port,
                limit: Some(*limit),
            };
            let r = c.who(&p)?;
            print(args.json, &r, list);
        }
        Command::Ps { pid, limit } => {
            let r = c.ps(*pid, *limit)?;
            print(args.json, &r, list);
        }
        Command::Connections {
            state,
            protocol,
            name,
            limit,
        } => {
            let params = commands::connections_params(*state, *protocol, name.clone(), *limit);
            let r = c.connections(&params)?;
            print(args.json, &r, list);
        }
        Command::Stats => {
            let r = c.stats()?;
            print(args.json, &r, |r| output::stats(&r.stats));
        }
        Command::Reload => {
            let r = c.reload()?;
            print(args.json, &r, commands::reload_text);
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
            let r = c.add_host(&p)?;
            print(args.json, &r, |r| {
                format!("watching {name} (configuration epoch {})\n", r.epoch)
            });
        }
        Command::RemoveHost { name } => {
            let r = c.remove_host(name)?;
            print(args.json, &r, |r| {
                format!("no longer watching {name} (configuration epoch {})\n", r.epoch)
            });
        }
        Command::Hosts => {
            let r = c.hosts()?;
            print(args.json, &r, |r| output::hosts(&r.hosts));
        }
        Command::Watch { pid, host } => commands::watch(&mut c, args.json, *pid, host.clone())?,
        Command::Policy(PolicyCommand::Show) => {
            let r = c.policy_show()?;
            print(args.json, &r, output::policy);
        }
        Command::Policy(check @ PolicyCommand::Check { .. }) => {
            commands::policy_check(&mut c, args.json, check)?
        }
        Command::Completions { .. } => unreachable!("handled before connecting"),
        Command::Version => {
            let r = c.version()?;
            print(args.json, &r, commands::version_text);
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
