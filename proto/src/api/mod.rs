//! The control API, defined once: the operations a client can ask for, the
//! typed answers the daemon gives and the errors a call can end with. The
//! daemon's owner answers with these types; only the transports (varlink
//! JSON on the control socket, D-Bus structs on the bus) serialize them.

mod error;
mod filter;
mod profile;
mod sandbox;
mod suggest;
mod types;

use serde::Serialize;

pub use error::CallError;
pub use filter::{Filter, Matcher, WatchMatcher, EVENT_KINDS};
pub use profile::*;
pub use sandbox::{SandboxEnded, SandboxParams, SandboxPlaced, SandboxReply, SandboxRule};
pub use suggest::*;
pub use types::*;

use crate::varlink::INTERFACE;

/// Everything a client can ask the daemon for. Serialized, it is the
/// `method` and `parameters` of a varlink call (what the client sends);
/// the server parses calls with [`Operation::from_varlink`] instead, which
/// tells an unknown method from bad parameters.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "method", content = "parameters")]
pub enum Operation {
    #[serde(rename = "org.connectracer.Tracer.GetVersion")]
    GetVersion,
    #[serde(rename = "org.connectracer.Tracer.GetStats")]
    GetStats,
    #[serde(rename = "org.connectracer.Tracer.Who")]
    Who(WhoParams),
    #[serde(rename = "org.connectracer.Tracer.Ps")]
    Ps(PsParams),
    #[serde(rename = "org.connectracer.Tracer.Connections")]
    Connections(ConnectionsParams),
    #[serde(rename = "org.connectracer.Tracer.Reload")]
    Reload,
    #[serde(rename = "org.connectracer.Tracer.AddHost")]
    AddHost(AddHostParams),
    #[serde(rename = "org.connectracer.Tracer.RemoveHost")]
    RemoveHost(RemoveHostParams),
    #[serde(rename = "org.connectracer.Tracer.Hosts")]
    Hosts,
    #[serde(rename = "org.connectracer.Tracer.PolicyShow")]
    PolicyShow,
    #[serde(rename = "org.connectracer.Tracer.PolicyCheck")]
    PolicyCheck(PolicyCheckParams),
    #[serde(rename = "org.connectracer.Tracer.Answers")]
    Answers(AnswersParams),
    #[serde(rename = "org.connectracer.Tracer.Gpu")]
    Gpu,
    /// Records a cgroup's syscalls for a while: the answer comes when the
    /// recording ends.
    #[serde(rename = "org.connectracer.Tracer.Profile")]
    Profile(ProfileParams),
    /// The destinations a unit, cgroup or user reached, for allow-lists.
    #[serde(rename = "org.connectracer.Tracer.PolicySuggest")]
    PolicySuggest(SuggestParams),
    /// A stream of events (varlink `more`; on D-Bus, signals): served by
    /// the transports from the event broadcast, never by the owner.
    #[serde(rename = "org.connectracer.Tracer.Watch")]
    Watch(WatchParams),
    /// Places a command in a sandbox (`tracectl run`); with a pidfd passed
    /// along and `more`, served by the transports like Watch.
    #[serde(rename = "org.connectracer.Tracer.Sandbox")]
    Sandbox(SandboxParams),
}

impl Operation {
    /// The method name within the interface, as the IDL declares it.
    pub fn name(&self) -> &'static str {
        match self {
            Self::GetVersion => "GetVersion",
            Self::GetStats => "GetStats",
            Self::Who(_) => "Who",
            Self::Ps(_) => "Ps",
            Self::Connections(_) => "Connections",
            Self::Reload => "Reload",
            Self::AddHost(_) => "AddHost",
            Self::RemoveHost(_) => "RemoveHost",
            Self::Hosts => "Hosts",
            Self::PolicyShow => "PolicyShow",
            Self::PolicyCheck(_) => "PolicyCheck",
            Self::Answers(_) => "Answers",
            Self::Gpu => "Gpu",
            Self::Profile(_) => "Profile",
            Self::PolicySuggest(_) => "PolicySuggest",
            Self::Watch(_) => "Watch",
            Self::Sandbox(_) => "Sandbox",
        }
    }

    /// The fully qualified varlink method name.
    pub fn method(&self) -> String {
        format!("{INTERFACE}.{}", self.name())
    }

    /// Changes the daemon's configuration (the rest only read).
    pub fn mutates(&self) -> bool {
        matches!(self, Self::Reload | Self::AddHost(_) | Self::RemoveHost(_))
    }

    /// One of each operation, with default parameters: for tests that must
    /// cover every operation (the match in [`Operation::name`] is
    /// exhaustive, and this list is checked against it).
    pub fn every() -> Vec<Operation> {
        vec![
            Self::GetVersion,
            Self::GetStats,
            Self::Who(WhoParams::default()),
            Self::Ps(PsParams { pid: 1, limit: None }),
            Self::Connections(ConnectionsParams::default()),
            Self::Reload,
            Self::AddHost(AddHostParams::default()),
            Self::RemoveHost(RemoveHostParams { name: "x".into() }),
            Self::Hosts,
            Self::PolicyShow,
            Self::PolicyCheck(PolicyCheckParams::default()),
            Self::Answers(AnswersParams::default()),
            Self::Gpu,
            Self::Profile(ProfileParams::default()),
            Self::PolicySuggest(SuggestParams::default()),
            Self::Watch(WatchParams::default()),
            Self::Sandbox(SandboxParams::default()),
        ]
    }
}

/// The daemon's answer to an operation, typed. Serialized, it is the
/// `parameters` of the varlink reply.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum Answer {
    Version(VersionReply),
    Stats(StatsReply),
    Connections(ConnectionsReply),
    Reload(ReloadReply),
    Hosts(HostsReply),
    PolicyShow(PolicyShowReply),
    PolicyCheck(PolicyCheckReply),
    Answers(AnswersReply),
    Gpu(GpuReply),
    Profile(ProfileReply),
    PolicySuggest(SuggestReply),
}

impl Answer {
    fn kind(&self) -> &'static str {
        match self {
            Self::Version(_) => "version",
            Self::Stats(_) => "stats",
            Self::Connections(_) => "connections",
            Self::Reload(_) => "reload",
            Self::Hosts(_) => "hosts",
            Self::PolicyShow(_) => "policy",
            Self::PolicyCheck(_) => "policy decision",
            Self::Answers(_) => "answers",
            Self::Gpu(_) => "gpu",
            Self::Profile(_) => "profile",
            Self::PolicySuggest(_) => "egress suggestion",
        }
    }
}

/// An answer of another kind than the operation asked for: a bug in the
/// daemon, reported rather than trusted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the daemon answered with a {got} reply where a {wanted} reply was due")]
pub struct WrongAnswer {
    pub wanted: &'static str,
    pub got: &'static str,
}

macro_rules! answer_kind {
    ($($variant:ident($ty:ty) = $kind:literal),* $(,)?) => {$(
        impl From<$ty> for Answer {
            fn from(r: $ty) -> Self {
                Self::$variant(r)
            }
        }

        impl TryFrom<Answer> for $ty {
            type Error = WrongAnswer;

            fn try_from(a: Answer) -> Result<Self, WrongAnswer> {
                match a {
                    Answer::$variant(r) => Ok(r),
                    other => Err(WrongAnswer { wanted: $kind, got: other.kind() }),
                }
            }
        }
    )*};
}

answer_kind! {
    Version(VersionReply) = "version",
    Stats(StatsReply) = "stats",
    Connections(ConnectionsReply) = "connections",
    Reload(ReloadReply) = "reload",
    Hosts(HostsReply) = "hosts",
    PolicyShow(PolicyShowReply) = "policy",
    PolicyCheck(PolicyCheckReply) = "policy decision",
    Answers(AnswersReply) = "answers",
    Gpu(GpuReply) = "gpu",
    Profile(ProfileReply) = "profile",
    PolicySuggest(SuggestReply) = "egress suggestion",
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_lists_each_operation_once() {
        let names: std::collections::BTreeSet<&str> =
            Operation::every().iter().map(Operation::name).collect();
        assert_eq!(names.len(), Operation::every().len());
        assert_eq!(names.len(), 17);
    }

    #[test]
    fn operations_serialize_as_varlink_calls() {
        assert_eq!(
            serde_json::to_value(Operation::GetVersion).unwrap(),
            serde_json::json!({"method": "org.connectracer.Tracer.GetVersion"})
        );
        let ps = Operation::Ps(PsParams { pid: 7, limit: None });
        assert_eq!(
            serde_json::to_value(&ps).unwrap(),
            serde_json::json!({"method": "org.connectracer.Tracer.Ps", "parameters": {"pid": 7}})
        );
        for op in Operation::every() {
            let v = serde_json::to_value(&op).unwrap();
            assert_eq!(v["method"], op.method().as_str());
        }
    }

    #[test]
    fn answers_serialize_as_their_reply_and_come_back_typed() {
        let r = ReloadReply {
            epoch: 3,
            needs_restart: vec![],
        };
        let a = Answer::from(r.clone());
        assert_eq!(
            serde_json::to_value(&a).unwrap(),
            serde_json::json!({"epoch": 3, "needs_restart": []})
        );
        assert_eq!(ReloadReply::try_from(a.clone()), Ok(r));
        assert_eq!(
            HostsReply::try_from(a).unwrap_err().to_string(),
            "the daemon answered with a reload reply where a hosts reply was due"
        );
    }
}
