//! The D-Bus interface `org.connectracer.Tracer1`, defined once: the daemon
//! serves [`Tracer`] over its own [`Backend`], and the `interface` macro
//! generates [`TracerProxy`] from the same definition for clients.
//!
//! The interface only turns D-Bus arguments into the varlink operations and
//! the answers back into D-Bus types; who the caller is comes from the bus
//! (`GetConnectionCredentials` of the message's sender), and what they may do
//! is the backend's decision.

mod error;
mod filter;
mod types;

use std::collections::HashMap;
use std::future::Future;

use serde::de::DeserializeOwned;
use serde_json::Value;
use zbus::fdo::DBusProxy;
use zbus::message::Header;
use zbus::names::OwnedUniqueName;
use zbus::object_server::SignalEmitter;
use zbus::{interface, Connection};

pub use error::{error_reply, TracerError};
pub use types::{
    ConnectionInfo, ConversionError, HostEntry, PolicyDecision, PolicyRuleEntry, PolicyScopeEntry,
    PolicyShowInfo, ProcessInfo, SinkStatsInfo, StatsInfo,
};

use crate::api::{
    AddHostParams, Answer, CallError, ConnectionsParams, ConnectionsReply, HostsReply, Operation,
    PolicyCheckParams, PolicyCheckReply, PolicyShowReply, PsParams, ReloadReply, RemoveHostParams,
    StatsReply, VersionReply, WhoParams, WrongAnswer,
};
use crate::{ConnState, Protocol};

/// Well-known name, object path and interface name: all the same string
/// family, versioned by the trailing 1.
pub const NAME: &str = "org.connectracer.Tracer1";
pub const PATH: &str = "/org/connectracer/Tracer1";
pub const INTERFACE: &str = "org.connectracer.Tracer1";
/// The polkit action D-Bus mutations (add/remove host, reload) need.
pub const MANAGE_ACTION: &str = "org.connectracer.manage";
/// The introspection XML shipped in packaging/dbus (checked against the
/// served interface by a drift test).
pub const INTROSPECTION_XML: &str = include_str!("../../../packaging/dbus/org.connectracer.Tracer1.xml");

/// The caller of a D-Bus method, as the bus daemon reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    pub sender: OwnedUniqueName,
    pub uid: u32,
    pub pid: Option<u32>,
    /// All of the process's groups (primary and supplementary).
    pub groups: Vec<u32>,
}

/// What answers the interface's operations: the daemon authorizes `peer`
/// (the header is there for polkit's system-bus-name subject) and returns
/// the same typed answer as on the control socket.
pub trait Backend: Send + Sync + 'static {
    fn call(
        &self,
        conn: &Connection,
        header: &Header<'_>,
        peer: &Peer,
        op: Operation,
    ) -> impl Future<Output = Result<Answer, CallError>> + Send;
}

/// Values behind the properties; the daemon refreshes them.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Status {
    /// `trace` of the configuration in force: "all" or "watched".
    pub mode: String,
    pub config_epoch: u32,
    pub events: u64,
    pub drops: u64,
    pub connections: u64,
}

/// The served object.
#[derive(Debug)]
pub struct Tracer<B> {
    backend: B,
    status: Status,
    /// Credentials by unique name. The bus never reuses a unique name and
    /// a connection's credentials are fixed when it connects, so an entry
    /// cannot go stale; it saves a bus round trip per call.
    peers: std::sync::Mutex<HashMap<OwnedUniqueName, Peer>>,
}

/// Cached callers before the cache is emptied and starts over.
const MAX_PEERS: usize = 1024;

impl<B> Tracer<B> {
    pub fn new(backend: B) -> Self {
        Self {
            backend,
            status: Status::default(),
            peers: std::sync::Mutex::default(),
        }
    }

    pub fn status(&self) -> &Status {
        &self.status
    }

    /// Replaces the property values; the caller emits PropertiesChanged for
    /// those that announce changes.
    pub fn set_status(&mut self, status: Status) {
        self.status = status;
    }
}

fn invalid(field: &str, reason: impl std::fmt::Display) -> TracerError {
    TracerError::InvalidArgument(format!("{field}: {reason}"))
}

/// The answer as the reply type the operation has.
fn typed<T: TryFrom<Answer, Error = WrongAnswer>>(answer: Answer) -> Result<T, TracerError> {
    T::try_from(answer).map_err(|e| TracerError::Unavailable(e.to_string()))
}

fn non_empty(s: &str) -> Option<String> {
    (!s.is_empty()).then(|| s.to_string())
}

/// `""` means any; otherwise the same lowercase names as on the socket.
fn parse_filter<T: DeserializeOwned>(field: &str, v: &str) -> Result<Option<T>, TracerError> {
    if v.is_empty() {
        return Ok(None);
    }
    serde_json::from_value(Value::String(v.to_string()))
        .map(Some)
        .map_err(|_| invalid(field, format!("`{v}` is not one of the accepted values")))
}

async fn peer(conn: &Connection, header: &Header<'_>) -> Result<Peer, TracerError> {
    let denied = |why: &str| TracerError::AccessDenied(format!("cannot identify the caller: {why}"));
    let sender = header
        .sender()
        .ok_or_else(|| denied("the message has no sender"))?;
    // No property cache: it would cost a GetAll round trip on every call.
    let creds = DBusProxy::builder(conn)
        .cache_properties(zbus::proxy::CacheProperties::No)
        .build()
        .await?
        .get_connection_credentials(sender.clone().into())
        .await
        .map_err(|e| denied(&e.to_string()))?;
    Ok(Peer {
        sender: sender.to_owned().into(),
        uid: creds
            .unix_user_id()
            .ok_or_else(|| denied("the bus did not report its uid"))?,
        pid: creds.process_id(),
        groups: creds.unix_group_ids().cloned().unwrap_or_default(),
    })
}

impl<B: Backend> Tracer<B> {
    async fn peer(&self, conn: &Connection, header: &Header<'_>) -> Result<Peer, TracerError> {
        let cached = header.sender().and_then(|s| {
            let peers = self
                .peers
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            peers.get(&OwnedUniqueName::from(s.to_owned())).cloned()
        });
        if let Some(p) = cached {
            return Ok(p);
        }
        let p = peer(conn, header).await?;
        let mut peers = self
            .peers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if peers.len() >= MAX_PEERS {
            peers.clear();
        }
        peers.insert(p.sender.clone(), p.clone());
        Ok(p)
    }

    async fn run(
        &self,
        conn: &Connection,
        header: &Header<'_>,
        op: Operation,
    ) -> Result<Answer, TracerError> {
        let peer = self.peer(conn, header).await?;
        Ok(self.backend.call(conn, header, &peer, op).await?)
    }

    async fn list(
        &self,
        conn: &Connection,
        header: &Header<'_>,
        op: Operation,
    ) -> Result<Vec<ConnectionInfo>, TracerError> {
        let r: ConnectionsReply = typed(self.run(conn, header, op).await?)?;
        Ok(r.connections.iter().map(ConnectionInfo::from).collect())
    }

    async fn reload_like(
        &self,
        conn: &Connection,
        header: &Header<'_>,
        op: Operation,
    ) -> Result<(u32, Vec<String>), TracerError> {
        let r: ReloadReply = typed(self.run(conn, header, op).await?)?;
        Ok((r.epoch, r.needs_restart))
    }
}

/// What connectracerd traces and who owns it. Connections are visible to
/// root and group connectracer in full, to anyone else only for their own
/// processes. Optional values are arrays of zero or one element.
#[interface(
    name = "org.connectracer.Tracer1",
    proxy(
        default_service = "org.connectracer.Tracer1",
        default_path = "/org/connectracer/Tracer1"
    )
)]
impl<B: Backend> Tracer<B> {
    /// The daemon's version and the kernel it runs on.
    #[zbus(out_args("version", "kernel"))]
    async fn get_version(
        &self,
        #[zbus(connection)] conn: &Connection,
        #[zbus(header)] header: Header<'_>,
    ) -> Result<(String, String), TracerError> {
        let r: VersionReply = typed(self.run(conn, &header, Operation::GetVersion).await?)?;
        Ok((r.version, r.kernel))
    }

    /// Counters from the kernel programs and the daemon.
    #[zbus(out_args("stats"))]
    async fn get_stats(
        &self,
        #[zbus(connection)] conn: &Connection,
        #[zbus(header)] header: Header<'_>,
    ) -> Result<(StatsInfo,), TracerError> {
        let r: StatsReply = typed(self.run(conn, &header, Operation::GetStats).await?)?;
        Ok((StatsInfo::from(&r.stats),))
    }

    /// Connections to a destination: an IP address or ADDRESS:PORT, and a
    /// port (0: any).
    #[zbus(out_args("connections"))]
    async fn who(
        &self,
        #[zbus(connection)] conn: &Connection,
        #[zbus(header)] header: Header<'_>,
        address: &str,
        port: u16,
    ) -> Result<Vec<ConnectionInfo>, TracerError> {
        let p = WhoParams {
            address: Some(address.to_string()),
            port: (port != 0).then_some(port),
            local_port: None,
            limit: None,
            filter: Default::default(),
        };
        self.list(conn, &header, Operation::Who(p)).await
    }

    /// The connection from a local (source) port.
    #[zbus(out_args("connections"))]
    async fn who_local_port(
        &self,
        #[zbus(connection)] conn: &Connection,
        #[zbus(header)] header: Header<'_>,
        local_port: u16,
    ) -> Result<Vec<ConnectionInfo>, TracerError> {
        if local_port == 0 {
            return Err(invalid("local_port", "0 is not a port"));
        }
        let p = WhoParams {
            address: None,
            port: None,
            local_port: Some(local_port),
            limit: None,
            filter: Default::default(),
        };
        self.list(conn, &header, Operation::Who(p)).await
    }

    /// Open and recently closed connections of one process.
    #[zbus(out_args("connections"))]
    async fn ps(
        &self,
        #[zbus(connection)] conn: &Connection,
        #[zbus(header)] header: Header<'_>,
        pid: u32,
    ) -> Result<Vec<ConnectionInfo>, TracerError> {
        self.list(conn, &header, Operation::Ps(PsParams { pid, limit: None }))
            .await
    }

    /// Connections in the table, newest first. state: connecting,
    /// established, failed, closed or "" (any); protocol: tcp, udp or "";
    /// limit 0: the default (1000).
    #[zbus(out_args("connections"))]
    async fn connections(
        &self,
        #[zbus(connection)] conn: &Connection,
        #[zbus(header)] header: Header<'_>,
        state: &str,
        protocol: &str,
        limit: u32,
    ) -> Result<Vec<ConnectionInfo>, TracerError> {
        let p = ConnectionsParams {
            state: parse_filter::<ConnState>("state", state)?,
            protocol: parse_filter::<Protocol>("protocol", protocol)?,
            limit: (limit != 0).then_some(limit),
            filter: Default::default(),
        };
        self.list(conn, &header, Operation::Connections(p)).await
    }

    /// Connections matching a filter: keys state, protocol, unit,
    /// container, comm, exe, user, dest (address or CIDR), port, verdict
    /// and name (globs where tracectl takes globs); the newest limit (0:
    /// the default, 1000).
    #[zbus(out_args("connections"))]
    async fn find_connections(
        &self,
        #[zbus(connection)] conn: &Connection,
        #[zbus(header)] header: Header<'_>,
        filter: HashMap<String, String>,
        limit: u32,
    ) -> Result<Vec<ConnectionInfo>, TracerError> {
        let p = filter::connections_params(filter, limit)?;
        self.list(conn, &header, Operation::Connections(p)).await
    }

    /// Every watched host with its addresses and DNS state.
    #[zbus(out_args("hosts"))]
    async fn hosts(
        &self,
        #[zbus(connection)] conn: &Connection,
        #[zbus(header)] header: Header<'_>,
    ) -> Result<Vec<HostEntry>, TracerError> {
        let r: HostsReply = typed(self.run(conn, &header, Operation::Hosts).await?)?;
        Ok(r.hosts.iter().map(HostEntry::from).collect())
    }

    /// Watches a hostname, IP or CIDR on ports ("443", "8000-8100"; none:
    /// every port), with a label ("": none); persisted unless runtime.
    /// Root and group connectracer, with polkit action org.connectracer.manage.
    #[zbus(out_args("epoch", "needs_restart"))]
    async fn add_host(
        &self,
        #[zbus(connection)] conn: &Connection,
        #[zbus(header)] header: Header<'_>,
        name: &str,
        ports: Vec<String>,
        label: &str,
        runtime: bool,
    ) -> Result<(u32, Vec<String>), TracerError> {
        let p = AddHostParams {
            name: name.to_string(),
            ports,
            label: non_empty(label),
            runtime,
        };
        self.reload_like(conn, &header, Operation::AddHost(p)).await
    }

    /// Stops watching a host added with AddHost. Same authorization as AddHost.
    #[zbus(out_args("epoch", "needs_restart"))]
    async fn remove_host(
        &self,
        #[zbus(connection)] conn: &Connection,
        #[zbus(header)] header: Header<'_>,
        name: &str,
    ) -> Result<(u32, Vec<String>), TracerError> {
        let p = RemoveHostParams {
            name: name.to_string(),
        };
        self.reload_like(conn, &header, Operation::RemoveHost(p)).await
    }

    /// Re-reads the configuration and applies it; an invalid one leaves the
    /// running one in force. Same authorization as AddHost.
    #[zbus(out_args("epoch", "needs_restart"))]
    async fn reload(
        &self,
        #[zbus(connection)] conn: &Connection,
        #[zbus(header)] header: Header<'_>,
    ) -> Result<(u32, Vec<String>), TracerError> {
        self.reload_like(conn, &header, Operation::Reload).await
    }

    /// The egress policy in force after merging every file: mode, built-in
    /// exceptions, scopes in precedence order and numbered rules. Root and
    /// group connectracer.
    #[zbus(out_args("policy"))]
    async fn policy_show(
        &self,
        #[zbus(connection)] conn: &Connection,
        #[zbus(header)] header: Header<'_>,
    ) -> Result<PolicyShowInfo, TracerError> {
        let r: PolicyShowReply = typed(self.run(conn, &header, Operation::PolicyShow).await?)?;
        Ok(PolicyShowInfo::from(&r))
    }

    /// What the policy decides for a caller connecting to address:port
    /// (protocol tcp, udp or "": tcp). The caller is named by kind: unit,
    /// pid, uid, cgroup, exe, or "" for one no scope selects. Root and group
    /// connectracer.
    #[zbus(out_args("decision"))]
    #[allow(clippy::too_many_arguments)]
    async fn policy_check(
        &self,
        #[zbus(connection)] conn: &Connection,
        #[zbus(header)] header: Header<'_>,
        subject_kind: &str,
        subject: &str,
        address: &str,
        port: u16,
        protocol: &str,
    ) -> Result<PolicyDecision, TracerError> {
        let mut p = PolicyCheckParams {
            address: address.to_string(),
            port,
            protocol: parse_filter::<Protocol>("protocol", protocol)?,
            ..Default::default()
        };
        let number = |field: &str| {
            subject
                .parse::<u32>()
                .map_err(|_| invalid(field, format!("`{subject}` is not a number")))
        };
        match subject_kind {
            "" => {}
            "unit" => p.unit = Some(subject.to_string()),
            "pid" => p.pid = Some(number("pid")?),
            "uid" => p.uid = Some(number("uid")?),
            "cgroup" => p.cgroup = Some(subject.to_string()),
            "exe" => p.exe = Some(subject.to_string()),
            other => {
                return Err(invalid(
                    "subject_kind",
                    format!("`{other}`: expected unit, pid, uid, cgroup, exe or \"\""),
                ))
            }
        }
        let r: PolicyCheckReply = typed(self.run(conn, &header, Operation::PolicyCheck(p)).await?)?;
        Ok(PolicyDecision::from(&r))
    }

    /// The daemon's version.
    #[zbus(property(emits_changed_signal = "const"))]
    async fn version(&self) -> String {
        env!("CARGO_PKG_VERSION").to_string()
    }

    /// The trace mode in force: "all" or "watched".
    #[zbus(property)]
    async fn mode(&self) -> String {
        self.status.mode.clone()
    }

    /// Generation of the configuration in force; changes with every reload.
    #[zbus(property)]
    async fn config_epoch(&self) -> u32 {
        self.status.config_epoch
    }

    /// Events the kernel programs submitted (refreshed every second).
    #[zbus(property(emits_changed_signal = "false"))]
    async fn events(&self) -> u64 {
        self.status.events
    }

    /// Events lost because the ring buffer was full.
    #[zbus(property(emits_changed_signal = "false"))]
    async fn drops(&self) -> u64 {
        self.status.drops
    }

    /// Connections traced since start.
    #[zbus(property(emits_changed_signal = "false"))]
    async fn connections_total(&self) -> u64 {
        self.status.connections
    }

    /// A connection to a watched host changed state (connect, send,
    /// established, failed, closed). Delivered to root and group
    /// connectracer only (bus policy).
    #[zbus(signal)]
    pub async fn connection_event(
        emitter: &SignalEmitter<'_>,
        event: &str,
        connection: ConnectionInfo,
    ) -> zbus::Result<()>;

    /// A connection the egress policy denied (verdict deny) or would deny in
    /// audit mode (would_deny). Same delivery as ConnectionEvent.
    #[zbus(signal)]
    pub async fn denied(
        emitter: &SignalEmitter<'_>,
        event: &str,
        connection: ConnectionInfo,
    ) -> zbus::Result<()>;
}

/// Introspection needs an instance; this one is never called.
struct Unserved;

impl Backend for Unserved {
    async fn call(
        &self,
        _: &Connection,
        _: &Header<'_>,
        _: &Peer,
        _: Operation,
    ) -> Result<Answer, CallError> {
        Err(CallError::InvalidArgument {
            field: "daemon".into(),
            reason: "introspection only".into(),
        })
    }
}

/// The interface's introspection document, as the served object describes
/// it (what packaging/dbus/org.connectracer.Tracer1.xml must contain).
pub fn introspection() -> String {
    use zbus::object_server::Interface;
    let mut body = String::new();
    Tracer::new(Unserved).introspect_to_writer(&mut body, 2);
    format!(
        "<!DOCTYPE node PUBLIC \"-//freedesktop//DTD D-BUS Object Introspection 1.0//EN\"\n \"http://www.freedesktop.org/standards/dbus/1.0/introspect.dtd\">\n<node name=\"{PATH}\">\n{body}</node>\n"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The shipped XML is generated from the interface; UPDATE_XML=1
    /// regenerates it, otherwise any drift fails.
    #[test]
    fn shipped_introspection_matches_the_interface() {
        let xml = introspection();
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../packaging/dbus/org.connectracer.Tracer1.xml"
        );
        if std::env::var_os("UPDATE_XML").is_some() {
            std::fs::write(path, &xml).unwrap();
        }
        assert!(
            INTROSPECTION_XML == xml,
            "{path} is stale: run `UPDATE_XML=1 cargo test -p connectracer-proto introspection`"
        );
    }
}
