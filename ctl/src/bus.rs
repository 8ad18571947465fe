//! The same calls over the system bus, through the proxy generated from the
//! daemon's interface definition. Answers are turned back into the varlink
//! types so that output, `--json` and exit codes do not depend on the
//! transport.

use connectracer_proto::api::{
    AddHostParams, CallError, ConnectionsParams, ConnectionsReply, Filter, HostsReply, PolicyCheckParams,
    PolicyCheckReply, PolicyShowReply, ReloadReply, StatsReply, VersionReply, WatchParams, WatchReply,
    WhoParams,
};
use connectracer_proto::dbus::{error_reply, ConnectionInfo, TracerError, TracerProxy};
use connectracer_proto::Connection;
use futures_util::StreamExt;

use crate::client::ClientError;

#[derive(Debug)]
pub struct BusClient {
    rt: tokio::runtime::Runtime,
    proxy: TracerProxy<'static>,
}

/// Bus-level failures: whoever answered, it was not connectracerd.
fn bus_error(e: zbus::Error) -> ClientError {
    match error_reply(&e) {
        Some((name, _))
            if name == "org.freedesktop.DBus.Error.ServiceUnknown"
                || name == "org.freedesktop.DBus.Error.NameHasNoOwner" =>
        {
            ClientError::NotOnBus
        }
        Some((name, detail)) if name == "org.freedesktop.DBus.Error.AccessDenied" => {
            ClientError::BusDenied(detail)
        }
        _ => ClientError::Bus(e),
    }
}

fn tracer_error(e: TracerError) -> ClientError {
    match e.into_call_error() {
        Ok(call) => ClientError::Call(call),
        Err(bus) => bus_error(bus),
    }
}

fn connections(list: Vec<ConnectionInfo>) -> Result<ConnectionsReply, ClientError> {
    let connections = list
        .into_iter()
        .map(Connection::try_from)
        .collect::<Result<_, _>>()
        .map_err(|e| ClientError::Protocol(e.to_string()))?;
    Ok(ConnectionsReply { connections })
}

/// Who takes no filter over the bus: it is applied to its answer here
/// (after the daemon's limit, so a filtered answer may be shorter).
fn filtered(mut r: ConnectionsReply, f: &Filter) -> Result<ConnectionsReply, ClientError> {
    let m = f.matcher().map_err(ClientError::Call)?;
    r.connections.retain(|c| m.matches(c));
    Ok(r)
}

fn reload((epoch, needs_restart): (u32, Vec<String>)) -> ReloadReply {
    ReloadReply { epoch, needs_restart }
}

impl BusClient {
    /// `DBUS_SYSTEM_BUS_ADDRESS` or the standard system bus socket.
    pub fn connect() -> Result<Self, ClientError> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| ClientError::Protocol(format!("starting the async runtime: {e}")))?;
        let proxy = rt.block_on(async {
            let conn = zbus::Connection::system()
                .await
                .map_err(|e| ClientError::NoBus(e.to_string()))?;
            // Properties are not needed for calls: no GetAll round trip.
            TracerProxy::builder(&conn)
                .cache_properties(zbus::proxy::CacheProperties::No)
                .build()
                .await
                .map_err(bus_error)
        })?;
        Ok(Self { rt, proxy })
    }

    pub fn version(&self) -> Result<VersionReply, ClientError> {
        let (version, kernel) = self.rt.block_on(self.proxy.get_version()).map_err(tracer_error)?;
        Ok(VersionReply { version, kernel })
    }

    pub fn stats(&self) -> Result<StatsReply, ClientError> {
        let stats = self.rt.block_on(self.proxy.get_stats()).map_err(tracer_error)?;
        Ok(StatsReply {
            stats: stats.0.into(),
        })
    }

    pub fn who(&self, p: &WhoParams) -> Result<ConnectionsReply, ClientError> {
        let list = match (&p.address, p.local_port) {
            (_, Some(lport)) => self.rt.block_on(self.proxy.who_local_port(lport)),
            (Some(a), None) => self.rt.block_on(self.proxy.who(a, p.port.unwrap_or(0))),
            (None, None) => {
                return Err(ClientError::Call(CallError::InvalidArgument {
                    field: "address".into(),
                    reason: "give a destination address or a local_port".into(),
                }))
            }
        };
        filtered(connections(list.map_err(tracer_error)?)?, &p.filter)
    }

    pub fn ps(&self, pid: u32) -> Result<ConnectionsReply, ClientError> {
        connections(self.rt.block_on(self.proxy.ps(pid)).map_err(tracer_error)?)
    }

    /// Through FindConnections, so that the daemon filters before its
    /// limit, as over the socket.
    pub fn connections(&self, p: &ConnectionsParams) -> Result<ConnectionsReply, ClientError> {
        let f = &p.filter;
        let mut d = std::collections::HashMap::new();
        let mut put = |k: &str, v: Option<String>| {
            if let Some(v) = v {
                d.insert(k.to_string(), v);
            }
        };
        put("state", p.state.map(|s| s.as_str().to_string()));
        put("protocol", p.protocol.map(|s| s.as_str().to_string()));
        put("unit", f.unit.clone());
        put("container", f.container.clone());
        put("comm", f.comm.clone());
        put("exe", f.exe.clone());
        put("user", f.user.clone());
        put("dest", f.dest.clone());
        put("port", f.port.map(|p| p.to_string()));
        put("verdict", f.verdict.map(|v| v.as_str().to_string()));
        put("name", f.name.clone());
        let list = self
            .rt
            .block_on(self.proxy.find_connections(d, p.limit.unwrap_or(0)))
            .map_err(tracer_error)?;
        connections(list)
    }

    pub fn hosts(&self) -> Result<HostsReply, ClientError> {
        let hosts = self.rt.block_on(self.proxy.hosts()).map_err(tracer_error)?;
        Ok(HostsReply {
            hosts: hosts.into_iter().map(Into::into).collect(),
        })
    }

    pub fn add_host(&self, p: &AddHostParams) -> Result<ReloadReply, ClientError> {
        let label = p.label.as_deref().unwrap_or("");
        let r = self
            .rt
            .block_on(self.proxy.add_host(&p.name, p.ports.clone(), label, p.runtime));
        Ok(reload(r.map_err(tracer_error)?))
    }

    pub fn remove_host(&self, name: &str) -> Result<ReloadReply, ClientError> {
        Ok(reload(
            self.rt
                .block_on(self.proxy.remove_host(name))
                .map_err(tracer_error)?,
        ))
    }

    pub fn policy_show(&self) -> Result<PolicyShowReply, ClientError> {
        let p = self.rt.block_on(self.proxy.policy_show()).map_err(tracer_error)?;
        PolicyShowReply::try_from(p).map_err(|e| ClientError::Protocol(e.to_string()))
    }

    pub fn policy_check(&self, p: &PolicyCheckParams) -> Result<PolicyCheckReply, ClientError> {
        let (kind, subject) = if let Some(u) = &p.unit {
            ("unit", u.clone())
        } else if let Some(pid) = p.pid {
            ("pid", pid.to_string())
        } else if let Some(uid) = p.uid {
            ("uid", uid.to_string())
        } else if let Some(c) = &p.cgroup {
            ("cgroup", c.clone())
        } else if let Some(e) = &p.exe {
            ("exe", e.clone())
        } else {
            ("", String::new())
        };
        let protocol = p.protocol.map_or("", |x| x.as_str());
        let d = self
            .rt
            .block_on(
                self.proxy
                    .policy_check(kind, &subject, &p.address, p.port, protocol),
            )
            .map_err(tracer_error)?;
        PolicyCheckReply::try_from(d).map_err(|e| ClientError::Protocol(e.to_string()))
    }

    pub fn reload(&self) -> Result<ReloadReply, ClientError> {
        Ok(reload(
            self.rt.block_on(self.proxy.reload()).map_err(tracer_error)?,
        ))
    }

    /// Follows the ConnectionEvent and Denied signals until `each` returns
    /// false. A denied connection to a watched host raises both signals; it
    /// is shown once.
    pub fn watch(
        &self,
        filter: &WatchParams,
        mut each: impl FnMut(WatchReply) -> bool,
    ) -> Result<(), ClientError> {
        // Signals are broadcast: the filter is applied here, by the same
        // matcher the daemon applies to the control socket's stream.
        let matcher = filter.matcher().map_err(ClientError::Call)?;
        self.rt.block_on(async {
            let events = self.proxy.receive_connection_event().await.map_err(bus_error)?;
            let denials = self.proxy.receive_denied().await.map_err(bus_error)?;
            let events = events.map(|s| {
                s.args()
                    .map(|a| (a.event.to_string(), a.connection.clone(), false))
            });
            let denials = denials.map(|s| {
                s.args()
                    .map(|a| (a.event.to_string(), a.connection.clone(), true))
            });
            let mut all = futures_util::stream::select(events, denials);
            while let Some(args) = all.next().await {
                let (event, info, denial) = args.map_err(bus_error)?;
                let c = Connection::try_from(info).map_err(|e| ClientError::Protocol(e.to_string()))?;
                let duplicate = denial && c.host.is_some();
                if duplicate || !matcher.matches(&event, &c) {
                    continue;
                }
                // The D-Bus signal carries no time: tracectl's own is shown.
                let reply = WatchReply::Event {
                    event,
                    time: None,
                    connection: Box::new(c),
                };
                if !each(reply) {
                    break;
                }
            }
            Ok(())
        })
    }
}

/// Signals reach only root and group connectracer (bus policy); anyone else
/// would wait forever, so say so up front.
pub fn may_receive_signals() -> bool {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .map(|v| v.split_whitespace().map(String::from).collect::<Vec<_>>())
            .unwrap_or_default()
    };
    if field("Uid:").get(1).is_some_and(|euid| euid == "0") {
        return true;
    }
    let groups = std::fs::read_to_string("/etc/group").unwrap_or_default();
    let Some(gid) = groups.lines().find_map(|l| {
        let mut f = l.split(':');
        (f.next() == Some("connectracer")).then(|| f.nth(1).map(String::from))?
    }) else {
        return false;
    };
    field("Groups:").contains(&gid) || field("Gid:").first() == Some(&gid)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_owner_is_not_running_and_policy_denial_is_access_denied() {
        // zbus hands the standard org.freedesktop.DBus.Error names over as fdo errors.
        let fdo = |e: zbus::fdo::Error| zbus::Error::FDO(Box::new(e));
        assert!(matches!(
            bus_error(fdo(zbus::fdo::Error::ServiceUnknown("no .service file".into()))),
            ClientError::NotOnBus
        ));
        assert!(matches!(
            bus_error(fdo(zbus::fdo::Error::AccessDenied("policy".into()))),
            ClientError::BusDenied(d) if d == "policy"
        ));
        assert!(matches!(
            tracer_error(TracerError::AccessDenied("needs root".into())),
            ClientError::Call(CallError::AccessDenied { reason }) if reason == "needs root"
        ));
    }
}
