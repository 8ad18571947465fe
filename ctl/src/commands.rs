//! The commands with more to them than one call and one print.

use std::io::Write;

use connectracer_proto::api::{
    ConnectionsParams, PolicyCheckParams, ReloadReply, VersionReply, WatchParams, WatchReply,
};
use connectracer_proto::{ConnState, Protocol};

use crate::cli::{PolicyCommand, ProtocolArg, StateArg};
use crate::client::ClientError;
use crate::output;
use crate::transport::Transport;

pub fn connections_params(
    state: Option<StateArg>,
    protocol: Option<ProtocolArg>,
    name: Option<String>,
    limit: u32,
) -> ConnectionsParams {
    ConnectionsParams {
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
        name,
        limit: Some(limit),
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

/// Streams events until the daemon ends the stream or stdout goes away.
pub fn watch(
    c: &mut Transport,
    json: bool,
    pid: Option<u32>,
    host: Option<String>,
) -> Result<(), ClientError> {
    let filter = WatchParams { pid, host };
    let mut out = std::io::stdout().lock();
    c.watch(&filter, |r: WatchReply| {
        let line = if json {
            serde_json::to_string(&r).unwrap_or_default()
        } else {
            output::watch_line(&r)
        };
        // Stop when stdout is gone (e.g. piped into head).
        writeln!(out, "{line}").and_then(|()| out.flush()).is_ok()
    })
}

/// One question per destination address the name resolved to.
pub fn policy_check(c: &mut Transport, json: bool, check: &PolicyCommand) -> Result<(), ClientError> {
    let PolicyCommand::Check {
        unit,
        pid,
        uid,
        cgroup,
        exe,
        dest,
    } = check
    else {
        return Ok(());
    };
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
            protocol: dest.protocol,
        };
        answers.push((addr, c.policy_check(&p)?));
    }
    if json {
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
    Ok(())
}
