//! `tracectl run`: the command forked and held, placed in a sandbox by the
//! daemon (which gets a pidfd of it), released to exec, traced, and waited
//! for; tracectl exits with its status.

pub mod args;
mod child;
mod files;
mod syscalls;
mod trace;

use std::os::fd::AsRawFd;
use std::path::Path;

use connectracer_proto::api::{CallError, Operation, ProfileReply, SandboxPlaced, SandboxReply};

use crate::socket::Patient;
pub use args::RunArgs;
use trace::Trace;

/// Why the command did not run, and the exit status that says so (the
/// same as every other command's: 2 usage, 3 access denied, 4 no daemon).
#[derive(Debug)]
pub struct Failure {
    pub message: String,
    pub code: u8,
}

fn fail(code: u8) -> impl FnOnce(String) -> Failure {
    move |message| Failure { message, code }
}

fn call_failure(e: CallError) -> Failure {
    let code = match &e {
        CallError::AccessDenied { .. } => 3,
        CallError::InvalidArgument { field, .. } if field.starts_with("rules") => 2,
        _ => 1,
    };
    Failure {
        message: format!("the daemon refused the sandbox: {e}"),
        code,
    }
}

/// Runs the command; its exit status, or why it never ran.
pub fn run(args: &RunArgs, control_socket: &Path) -> Result<u8, Failure> {
    let params = args.params().map_err(fail(2))?;
    let files = files::prepare(args).map_err(fail(2))?;
    let mut trace = Trace::new(args.log.as_deref()).map_err(fail(1))?;
    let profile_out = args
        .profile_syscalls
        .as_deref()
        .map(|p| syscalls::ProfileOut::create(p, args.profile_format))
        .transpose()
        .map_err(fail(1))?;
    let path = args.socket(control_socket);
    let stream = std::os::unix::net::UnixStream::connect(&path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused => Failure {
            message: format!(
                "connectracerd is not running (no sandbox socket at {})",
                path.display()
            ),
            code: 4,
        },
        std::io::ErrorKind::PermissionDenied => Failure {
            message: format!("permission denied on {}", path.display()),
            code: 3,
        },
        _ => Failure {
            message: format!("{}: {e}", path.display()),
            code: 1,
        },
    })?;
    // Forked before any thread exists (the runtime below has none of its own).
    let held = child::spawn(&args.command, files).map_err(fail(1))?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Failure {
            message: format!("starting the async runtime: {e}"),
            code: 1,
        });
    let rt = match rt {
        Ok(rt) => rt,
        Err(e) => {
            held.abandon();
            return Err(e);
        }
    };
    rt.block_on(session(stream, held, params, &mut trace))
        .map(|(code, ended)| {
            trace.finish(&ended.text);
            let written = profile_out.map(|out| out.finish(ended.profile.as_ref(), &ended.text));
            // A run that asked for a profile and got none is no success.
            if written == Some(false) && code == 0 {
                1
            } else {
                code
            }
        })
}

/// How the sandbox ended, and its syscall profile when one was asked for.
#[derive(Debug)]
struct Ended {
    text: String,
    profile: Option<ProfileReply>,
}

type Connection = zlink::Connection<Patient>;

async fn place(
    conn: &mut Connection,
    held: &child::Held,
    params: connectracer_proto::api::SandboxParams,
) -> Result<SandboxPlaced, Failure> {
    let io = |e: zlink::Error| Failure {
        message: format!("talking to connectracerd: {e}"),
        code: 1,
    };
    let pidfd = held.pidfd().try_clone_to_owned().map_err(|e| io(e.into()))?;
    let op = Operation::Sandbox(params);
    let call = zlink::Call::new(&op).set_more(true);
    conn.send_call(&call, vec![pidfd]).await.map_err(io)?;
    let (reply, _) = conn
        .receive_reply::<SandboxReply, CallError>()
        .await
        .map_err(io)?;
    match reply.map_err(call_failure)?.into_parameters() {
        Some(SandboxReply::Placed { placed }) => Ok(placed),
        other => Err(Failure {
            message: format!("unexpected answer from connectracerd: {other:?}"),
            code: 1,
        }),
    }
}

async fn session(
    stream: std::os::unix::net::UnixStream,
    held: child::Held,
    params: connectracer_proto::api::SandboxParams,
    trace: &mut Trace,
) -> Result<(u8, Ended), Failure> {
    let io = |e: std::io::Error| Failure {
        message: format!("the sandbox socket: {e}"),
        code: 1,
    };
    let prepared = stream
        .set_nonblocking(true)
        .and_then(|()| tokio::net::UnixStream::from_std(stream))
        .map_err(io)
        .and_then(|s| {
            let raw = s.as_raw_fd();
            let (socket, timed) = Patient::new(s).map_err(|e| fail(1)(e.to_string()))?;
            // Events may be minutes apart.
            timed.store(false, std::sync::atomic::Ordering::Relaxed);
            Ok((raw, Connection::new(socket)))
        });
    let (raw, mut conn) = match prepared {
        Ok(p) => p,
        Err(e) => {
            held.abandon();
            return Err(e);
        }
    };
    let placed = match place(&mut conn, &held, params).await {
        Ok(p) => p,
        Err(e) => {
            held.abandon();
            return Err(e);
        }
    };
    // Like a shell waiting for its job: ^C and ^\ are for the command.
    // SAFETY: setting signal dispositions to SIG_IGN.
    unsafe {
        libc::signal(libc::SIGINT, libc::SIG_IGN);
        libc::signal(libc::SIGQUIT, libc::SIG_IGN);
    }
    let pid = held.release().map_err(fail(1))?;
    // The command's end closes our writing side: the daemon then stops
    // what is left in the sandbox, removes it and sends its last reply.
    let waiter = std::thread::spawn(move || {
        let code = child::wait(pid);
        // SAFETY: `raw` stays open until this thread is joined below.
        unsafe { libc::shutdown(raw, libc::SHUT_WR) };
        code
    });
    let ended = follow(
        &mut conn,
        trace,
        format!("sandbox {} ({})", placed.id, placed.mode),
    )
    .await;
    let code = waiter.join().unwrap_or(1);
    drop(conn);
    Ok((code, ended))
}

/// The sandbox's replies until its end (or the daemon's); how it ended.
async fn follow(conn: &mut Connection, trace: &mut Trace, name: String) -> Ended {
    let mut ended = name;
    let mut profile = None;
    loop {
        match conn.receive_reply::<SandboxReply, CallError>().await {
            Ok((Ok(reply), _)) => {
                let more = reply.continues() == Some(true);
                match reply.into_parameters() {
                    Some(SandboxReply::Watch(w)) => trace.event(&w),
                    Some(SandboxReply::Ended { ended: e }) => {
                        ended = format!("{ended} ended: {}", e.reason);
                        profile = e.profile;
                        break;
                    }
                    Some(SandboxReply::Placed { .. }) | None => {}
                }
                if !more {
                    break;
                }
            }
            Ok((Err(e), _)) => {
                ended = format!("{ended}: the daemon ended the trace: {e}");
                break;
            }
            Err(e) => {
                eprintln!(
                    "tracectl: lost connectracerd ({e}): the sandbox stays in force; the trace ends here"
                );
                ended = format!("{ended}: trace cut short");
                break;
            }
        }
    }
    Ended { text: ended, profile }
}
