//! One set of typed calls over either transport: the control socket
//! (varlink) or the system bus (`--bus`).

use connectracer_proto::api::{
    AddHostParams, AnswersParams, AnswersReply, ConnectionsParams, ConnectionsReply, GpuReply, HostsReply,
    Operation, PolicyCheckParams, PolicyCheckReply, PolicyShowReply, ProfileParams, ProfileReply, PsParams,
    ReloadReply, RemoveHostParams, StatsReply, VersionReply, WatchParams, WatchReply, WhoParams,
};

use crate::bus::BusClient;
use crate::client::{Client, ClientError};

#[derive(Debug)]
pub enum Transport {
    // Boxed: the client holds its own runtime and buffers.
    Socket(Box<Client>),
    Bus(BusClient),
}

fn cut(mut r: ConnectionsReply, limit: Option<u32>) -> ConnectionsReply {
    if let Some(l) = limit {
        r.connections.truncate(l as usize);
    }
    r
}

impl Transport {
    /// The bus methods take no limit (the daemon's default applies); the
    /// client cuts the answer to the same newest-first length.
    pub fn who(&mut self, p: &WhoParams) -> Result<ConnectionsReply, ClientError> {
        match self {
            Self::Socket(c) => c.call(&Operation::Who(p.clone())),
            Self::Bus(b) => b.who(p).map(|r| cut(r, p.limit)),
        }
    }

    pub fn ps(&mut self, pid: u32, limit: u32) -> Result<ConnectionsReply, ClientError> {
        match self {
            Self::Socket(c) => c.call(&Operation::Ps(PsParams {
                pid,
                limit: Some(limit),
            })),
            Self::Bus(b) => b.ps(pid).map(|r| cut(r, Some(limit))),
        }
    }

    pub fn connections(&mut self, p: &ConnectionsParams) -> Result<ConnectionsReply, ClientError> {
        match self {
            Self::Socket(c) => c.call(&Operation::Connections(p.clone())),
            Self::Bus(b) => b.connections(p),
        }
    }

    pub fn stats(&mut self) -> Result<StatsReply, ClientError> {
        match self {
            Self::Socket(c) => c.call(&Operation::GetStats),
            Self::Bus(b) => b.stats(),
        }
    }

    pub fn version(&mut self) -> Result<VersionReply, ClientError> {
        match self {
            Self::Socket(c) => c.call(&Operation::GetVersion),
            Self::Bus(b) => b.version(),
        }
    }

    pub fn reload(&mut self) -> Result<ReloadReply, ClientError> {
        match self {
            Self::Socket(c) => c.call(&Operation::Reload),
            Self::Bus(b) => b.reload(),
        }
    }

    pub fn add_host(&mut self, p: &AddHostParams) -> Result<ReloadReply, ClientError> {
        match self {
            Self::Socket(c) => c.call(&Operation::AddHost(p.clone())),
            Self::Bus(b) => b.add_host(p),
        }
    }

    pub fn remove_host(&mut self, name: &str) -> Result<ReloadReply, ClientError> {
        match self {
            Self::Socket(c) => c.call(&Operation::RemoveHost(RemoveHostParams { name: name.into() })),
            Self::Bus(b) => b.remove_host(name),
        }
    }

    /// Over the control socket only: the bus interface has no method for it.
    pub fn answers(&mut self, p: AnswersParams) -> Result<AnswersReply, ClientError> {
        match self {
            Self::Socket(c) => c.call(&Operation::Answers(p)),
            Self::Bus(_) => Err(ClientError::Protocol(
                "DNS answers are served on the control socket only (without --bus)".into(),
            )),
        }
    }

    /// Over the control socket only: the bus interface has no method for it.
    pub fn gpu(&mut self) -> Result<GpuReply, ClientError> {
        match self {
            Self::Socket(c) => c.call(&Operation::Gpu),
            Self::Bus(_) => Err(ClientError::Protocol(
                "GPU telemetry is served on the control socket only (without --bus)".into(),
            )),
        }
    }

    /// Over the control socket only: the bus interface has no method for it.
    pub fn profile(&mut self, p: &ProfileParams) -> Result<ProfileReply, ClientError> {
        match self {
            Self::Socket(c) => c.call_untimed(&Operation::Profile(p.clone())),
            Self::Bus(_) => Err(ClientError::Protocol(
                "syscall profiles are served on the control socket only (without --bus)".into(),
            )),
        }
    }

    pub fn hosts(&mut self) -> Result<HostsReply, ClientError> {
        match self {
            Self::Socket(c) => c.call(&Operation::Hosts),
            Self::Bus(b) => b.hosts(),
        }
    }

    pub fn policy_show(&mut self) -> Result<PolicyShowReply, ClientError> {
        match self {
            Self::Socket(c) => c.call(&Operation::PolicyShow),
            Self::Bus(b) => b.policy_show(),
        }
    }

    pub fn policy_check(&mut self, p: &PolicyCheckParams) -> Result<PolicyCheckReply, ClientError> {
        match self {
            Self::Socket(c) => c.call(&Operation::PolicyCheck(p.clone())),
            Self::Bus(b) => b.policy_check(p),
        }
    }

    pub fn watch(
        &mut self,
        filter: &WatchParams,
        each: impl FnMut(WatchReply) -> bool,
    ) -> Result<(), ClientError> {
        match self {
            Self::Socket(c) => c.stream(&Operation::Watch(filter.clone()), each),
            Self::Bus(b) => b.watch(filter, each),
        }
    }
}
