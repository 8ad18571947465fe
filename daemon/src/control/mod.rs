//! The control socket: varlink over a Unix socket. The server only parses
//! and authorizes; every answer comes from the task that owns the state.

pub mod authz;
pub mod query;
pub mod server;

use connectracer_proto::varlink::{
    AddHostParams, CallError, ConnectionsParams, PolicyCheckParams, PsParams, RemoveHostParams, WhoParams,
};
use serde_json::{Map, Value};
use tokio::sync::oneshot;

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
