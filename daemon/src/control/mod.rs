//! The control socket: varlink over a Unix socket. The server only parses
//! and authorizes; every answer comes from the task that owns the state.

pub mod admission;
pub mod authz;
pub mod query;
pub mod server;

use connectracer_proto::varlink::{
    AddHostParams, CallError, ConnectionsParams, PolicyCheckParams, PsParams, RemoveHostParams, WhoParams,
};
use serde_json::{Map, Value};
use tokio::sync::{mpsc, oneshot};

pub use authz::Caller;

/// A call that needs the daemon's state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Method {
    GetVersion,
    GetStats,
    Who(WhoParams),
    Ps(PsParams),
    Connections(ConnectionsParams),
    Reload,
    AddHost(AddHostParams),
    RemoveHost(RemoveHostParams),
    Hosts,
    PolicyShow,
    PolicyCheck(PolicyCheckParams),
}

pub type Answer = Result<Map<String, Value>, CallError>;

#[derive(Debug)]
pub struct Request {
    pub method: Method,
    pub caller: Caller,
    pub reply: oneshot::Sender<Answer>,
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

/// Sends a request to the state owner and waits for its answer: the one
/// path both transports (socket and D-Bus) take.
pub async fn ask(requests: &mpsc::Sender<Request>, method: Method, caller: Caller) -> Answer {
    let (tx, rx) = oneshot::channel();
    let gone = || unavailable("the daemon is shutting down".into());
    requests
        .send(Request {
            method,
            caller,
            reply: tx,
        })
        .await
        .map_err(|_| gone())?;
    match tokio::time::timeout(ANSWER_TIMEOUT, rx).await {
        Ok(Ok(answer)) => answer,
        Ok(Err(_)) => Err(gone()),
        Err(_) => Err(unavailable(format!("no answer within {ANSWER_TIMEOUT:?}"))),
    }
}
