//! The control socket: varlink over a Unix socket. The server only parses
//! and authorizes; every answer comes from the task that owns the state.

pub mod admission;
pub mod authz;
mod limited;
pub mod query;
pub mod sandbox;
pub mod server;

use connectracer_proto::api::{Answer, CallError, Operation};
use tokio::sync::{mpsc, oneshot};

pub use authz::Caller;

/// What the owner sends back: a typed answer, serialized only by the
/// transport that asked.
pub type Outcome = Result<Answer, CallError>;

#[derive(Debug)]
pub struct Request {
    pub op: Operation,
    pub caller: Caller,
    pub reply: oneshot::Sender<Outcome>,
}

/// How long a transport waits for the state owner before answering that
/// the daemon is unavailable.
const ANSWER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

fn unavailable(reason: String) -> CallError {
    CallError::InvalidArgument {
        field: "daemon".into(),
        reason,
    }
}

/// Watch or Sandbox asked for without `more`: a stream has no single answer.
pub fn watch_needs_more() -> CallError {
    CallError::InvalidArgument {
        field: "more".into(),
        reason: "Watch and Sandbox stream events: call them with \"more\": true".into(),
    }
}

/// Sends a request to the state owner and waits for its answer: the one
/// path both transports (socket and D-Bus) take.
pub async fn ask(requests: &mpsc::Sender<Request>, op: Operation, caller: Caller) -> Outcome {
    let (tx, rx) = oneshot::channel();
    let gone = || unavailable("the daemon is shutting down".into());
    let op_wait = match &op {
        Operation::Profile(p) => Some(p.duration_ms.min(connectracer_proto::api::MAX_PROFILE_MS)),
        _ => None,
    };
    requests
        .send(Request {
            op,
            caller,
            reply: tx,
        })
        .await
        .map_err(|_| gone())?;
    // A profile answers when its recording ends.
    let timeout = match &op_wait {
        Some(ms) => ANSWER_TIMEOUT + std::time::Duration::from_millis(*ms),
        None => ANSWER_TIMEOUT,
    };
    match tokio::time::timeout(timeout, rx).await {
        Ok(Ok(answer)) => answer,
        Ok(Err(_)) => Err(gone()),
        Err(_) => Err(unavailable(format!("no answer within {timeout:?}"))),
    }
}
