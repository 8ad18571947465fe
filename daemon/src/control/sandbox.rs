//! The Sandbox call (`tracectl run`), served on either socket: the command
//! is checked and placed in its cgroup here, and the owner puts the
//! sandbox's rules in force; the connection
//! then streams the sandbox's events until the caller closes its writing
//! side (its command ended) or hangs up (killed): then the owner stops
//! whatever is left in the sandbox, removes it, and the last reply says so.

use std::os::fd::{AsFd, OwnedFd};
use std::time::Duration;

use connectracer_proto::api::{
    CallError, ProfileReply, SandboxEnded, SandboxParams, SandboxPlaced, SandboxReply, WatchReply,
};
use connectracer_proto::varlink::RawMethod;
use tokio::sync::{mpsc, oneshot};

use super::server::{send_on, Conn, Watchers};
use super::Caller;
use crate::sandbox::placer::{Placement, Placer};

/// What the owner is asked about sandboxes.
#[derive(Debug)]
pub enum Command {
    /// The command is in its cgroup already (placed by the handler): put
    /// the sandbox in force, or stop it if it cannot be.
    Create {
        caller: Caller,
        placement: Placement,
        params: SandboxParams,
        reply: oneshot::Sender<Result<Placed, CallError>>,
    },
    /// The caller is done (or gone): stop what is left, remove the sandbox,
    /// then say why on `done`.
    Finish {
        id: String,
        done: oneshot::Sender<String>,
    },
    /// The sandbox's cgroup has emptied (from the task watching it).
    Emptied { id: String },
    /// The sandbox is gone: its syscall profile, if one was recorded
    /// (Err: why it could not be read).
    Profile {
        id: String,
        reply: oneshot::Sender<Result<Option<ProfileReply>, String>>,
    },
}

/// Where the owner placed the command.
#[derive(Debug, Clone)]
pub struct Placed {
    pub wire: SandboxPlaced,
    /// The cgroup's id: the sandbox's events are those from it.
    pub cgroup_id: u64,
}

/// Placing includes a reload (a DNS lookup is not waited for, but a large
/// configuration is parsed again): longer than other calls may take.
const PLACE_TIMEOUT: Duration = Duration::from_secs(30);
const FINISH_TIMEOUT: Duration = Duration::from_secs(30);

fn invalid(field: &str, reason: impl Into<String>) -> CallError {
    CallError::InvalidArgument {
        field: field.into(),
        reason: reason.into(),
    }
}

async fn place(
    owner: &mpsc::Sender<Command>,
    placer: &Placer,
    caller: Caller,
    mut fds: Vec<OwnedFd>,
    params: SandboxParams,
) -> Result<Placed, CallError> {
    if fds.len() != 1 {
        return Err(invalid(
            "fds",
            format!(
                "pass exactly one pidfd (of the command to place), not {}",
                fds.len()
            ),
        ));
    }
    let pidfd = fds.remove(0);
    crate::sandbox::check(&params).map_err(|(field, reason)| invalid(&field, reason))?;
    // Placed here, not by the owner: the checks read /proc and a scope is
    // a round trip to systemd, neither of which the owner's loop waits on.
    let placement = placer
        .place(pidfd.as_fd(), caller.uid, caller.pid)
        .await
        .map_err(|e| match e.is_refusal() {
            true => CallError::AccessDenied {
                reason: e.to_string(),
            },
            false => invalid("sandbox", format!("{:#}", anyhow::Error::from(e))),
        })?;
    let (reply, rx) = oneshot::channel();
    let gone = || invalid("daemon", "the daemon is shutting down");
    owner
        .send(Command::Create {
            caller,
            placement,
            params,
            reply,
        })
        .await
        .map_err(|_| gone())?;
    match tokio::time::timeout(PLACE_TIMEOUT, rx).await {
        Ok(Ok(r)) => r,
        Ok(Err(_)) => Err(gone()),
        Err(_) => Err(invalid("daemon", format!("not placed within {PLACE_TIMEOUT:?}"))),
    }
}

/// Serves one Sandbox call to its end.
pub(super) async fn serve(
    conn: &mut Conn,
    caller: Caller,
    fds: Vec<OwnedFd>,
    params: SandboxParams,
    owner: &mpsc::Sender<Command>,
    placer: &Placer,
    watchers: &Watchers,
) -> zlink::Result<()> {
    // Subscribed before the command can run: none of its events is missed.
    let mut events = watchers.subscribe();
    let profiled = params.profile;
    let placed = match place(owner, placer, caller, fds, params).await {
        Ok(p) => p,
        Err(e) => return conn.send(&e).await,
    };
    let id = placed.wire.id.clone();
    let first = SandboxReply::Placed {
        placed: placed.wire.clone(),
    };
    // A caller gone already is seen below, and its sandbox removed.
    let _ = conn
        .send(&zlink::Reply::new(Some(first)).set_continues(Some(true)))
        .await;
    // Anything the caller sends now, or its hanging up, ends the sandbox.
    let streamed = {
        let Conn { read, write } = conn;
        let done = read.receive_call::<RawMethod>();
        tokio::pin!(done);
        // A caller that stops reading loses its trace, not its command.
        let mut reading = true;
        loop {
            tokio::select! {
                biased;
                ev = events.recv() => match event_reply(ev, &placed, &caller) {
                    Step::Send(reply) if reading => reading = send_on(write, &reply).await.is_ok(),
                    Step::Send(_) => {}
                    Step::Skip => {}
                    // The daemon is stopping: the sandbox stays for the next one.
                    Step::Closed => return Ok(()),
                },
                _ = &mut done => break Ok::<(), zlink::Error>(()),
            }
        }
    };
    streamed?;
    let (tx, mut ended) = oneshot::channel();
    if owner.send(Command::Finish { id, done: tx }).await.is_err() {
        return Ok(());
    }
    let deadline = tokio::time::sleep(FINISH_TIMEOUT);
    tokio::pin!(deadline);
    // The sandbox's last events come before its end.
    let reason = loop {
        tokio::select! {
            biased;
            ev = events.recv() => match event_reply(ev, &placed, &caller) {
                // The caller may have hung up: the sandbox still goes.
                Step::Send(reply) => drop(send_on(&mut conn.write, &reply).await),
                Step::Skip => {}
                Step::Closed => return Ok(()),
            },
            r = &mut ended => break r.unwrap_or_else(|_| "the daemon is shutting down".into()),
            () = &mut deadline => break "not removed in time; see the daemon's log".into(),
        }
    };
    let (reason, profile) = match profiled {
        true => claim_profile(owner, &placed.wire.id, reason).await,
        false => (reason, None),
    };
    let last = SandboxReply::Ended {
        ended: SandboxEnded { reason, profile },
    };
    conn.send(&zlink::Reply::new(Some(last))).await
}

/// The sandbox's syscall profile, asked for once it is gone (all its
/// processes' calls counted); why it is missing goes into the reason.
async fn claim_profile(
    owner: &mpsc::Sender<Command>,
    id: &str,
    reason: String,
) -> (String, Option<ProfileReply>) {
    let (reply, rx) = oneshot::channel();
    let asked = owner
        .send(Command::Profile {
            id: id.to_string(),
            reply,
        })
        .await;
    let answer = match asked {
        Ok(()) => rx
            .await
            .unwrap_or_else(|_| Err("the daemon is shutting down".into())),
        Err(_) => Err("the daemon is shutting down".into()),
    };
    match answer {
        Ok(Some(p)) => (reason, Some(p)),
        Ok(None) => (format!("{reason}; no syscall profile was recorded"), None),
        Err(e) => (format!("{reason}; the syscall profile is lost: {e}"), None),
    }
}

enum Step {
    Send(zlink::Reply<SandboxReply>),
    Skip,
    Closed,
}

/// The sandbox's own events, as replies; those of other cgroups are not.
fn event_reply(
    ev: Result<std::sync::Arc<crate::pipeline::WatchEvent>, tokio::sync::broadcast::error::RecvError>,
    placed: &Placed,
    caller: &Caller,
) -> Step {
    use tokio::sync::broadcast::error::RecvError;
    let reply = match ev {
        Ok(ev) => {
            let c = &ev.connection;
            if c.process.cgroup_id != placed.cgroup_id || !caller.may_see(c) {
                return Step::Skip;
            }
            WatchReply::Event {
                event: ev.kind.as_str().to_string(),
                time: Some(humantime::format_rfc3339_micros(ev.at).to_string()),
                connection: Box::new(c.clone()),
            }
        }
        Err(RecvError::Lagged(missed)) => WatchReply::Missed { missed },
        Err(RecvError::Closed) => return Step::Closed,
    };
    Step::Send(zlink::Reply::new(Some(SandboxReply::Watch(reply))).set_continues(Some(true)))
}
