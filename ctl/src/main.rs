mod bus;
mod cli;
mod client;
mod commands;
mod gpu;
mod out;
mod output;
mod profile;
mod run;
mod socket;
mod suggest;
mod table;
mod top;
mod transport;
mod watch;

use std::process::ExitCode;

use clap::Parser;
use connectracer_proto::api::CallError;

use cli::{Args, Command};
use client::{Client, ClientError};
use transport::Transport;

/// Exit codes: 0 ok, 1 error (and a deny from `policy check`), 2 usage,
/// 3 access denied, 4 daemon not running.
fn exit_code(e: &ClientError, cmd: &Command) -> u8 {
    match e {
        ClientError::SocketDenied(_)
        | ClientError::BusDenied(_)
        | ClientError::SignalsDenied
        | ClientError::Call(CallError::AccessDenied { .. }) => 3,
        ClientError::Usage(_) => 2,
        ClientError::NotRunning(_) | ClientError::NotOnBus | ClientError::NoBus(_) => 4,
        ClientError::Call(CallError::InvalidArgument { field, .. }) if argument(cmd, field).is_some() => 2,
        _ => 1,
    }
}

/// The command-line argument a refused API field came from, as the user
/// typed it: a refusal of what they gave is a usage error and names it.
fn argument(cmd: &Command, field: &str) -> Option<String> {
    let positional_name = matches!(cmd, Command::AddHost { .. } | Command::RemoveHost { .. });
    Some(match field {
        "address" => "ADDRESS[:PORT]".into(),
        "name" if positional_name => "NAME".into(),
        "events" => "--event".into(),
        "local_port" => "--local-port".into(),
        "duration_ms" => "--for".into(),
        "unit" | "container" | "comm" | "exe" | "user" | "dest" | "port" | "verdict" | "name" | "label"
        | "pid" | "uid" | "cgroup" | "host" => format!("--{field}"),
        _ => return None,
    })
}

fn connect(args: &Args) -> Result<Transport, ClientError> {
    if args.bus {
        if matches!(args.command, Command::Watch { .. }) && !bus::may_receive_signals() {
            return Err(ClientError::SignalsDenied);
        }
        Ok(Transport::Bus(bus::BusClient::connect()?))
    } else {
        Ok(Transport::Socket(Box::new(Client::connect(&args.socket)?)))
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    let p = out::Printer {
        format: args.format(),
        colour: out::colour(),
    };
    if let Command::Completions { shell } = &args.command {
        commands::completions(*shell);
        return ExitCode::SUCCESS;
    }
    // Over its own socket, with its own exit status: the command's.
    if let Command::Run(r) = &args.command {
        return match run::run(r, &args.socket) {
            Ok(code) => ExitCode::from(code),
            Err(f) => {
                eprintln!("tracectl: {}", f.message);
                ExitCode::from(f.code)
            }
        };
    }
    match connect(&args).and_then(|mut c| commands::run(&mut c, &args.command, p)) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            match (&e, argument(&args.command, e_field(&e))) {
                (ClientError::Call(CallError::InvalidArgument { reason, .. }), Some(arg)) => {
                    eprintln!("tracectl: invalid value for {arg}: {reason}")
                }
                _ => eprintln!("tracectl: {e}"),
            }
            ExitCode::from(exit_code(&e, &args.command))
        }
    }
}

fn e_field(e: &ClientError) -> &str {
    match e {
        ClientError::Call(CallError::InvalidArgument { field, .. }) => field,
        _ => "",
    }
}
