//! The varlink socket server: admission, parsing, authorization, dispatch.
//!
//! zlink does the wire work: framing, the call and reply envelopes, the
//! `org.varlink.service` types. Its `Server` is not used, because it serves
//! every connection from one task and awaits each call's handler in turn:
//! one `Reload` (or a call waiting for the row budget) would stall every
//! other client, and it has no place for what this server must do per
//! connection: admit by peer credentials before reading anything (slots,
//! per-uid caps), close idle connections and ones that do not read their
//! replies, cap the size of a request, and answer a malformed message with
//! a typed error while keeping the connection. So each admitted connection
//! gets a task of its own that reads calls with zlink's `ReadConnection`.
//!
//! Replies are written here, not by zlink's `WriteConnection`: in zlink
//! 0.8.0 it serializes into a buffer that grows by 256 bytes per failed
//! attempt, starting the serialization over each time. That is quadratic:
//! a 30,000-row answer (tens of MB) kept a worker thread busy for good.
//! `serde_json::to_vec` writes the same envelope (`zlink::Reply`, or the
//! error) in linear time; the socket's write half is still zlink's.

use std::os::unix::fs::{chown, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use connectracer_proto::api::{Answer, CallError, Operation, WatchParams, WatchReply};
use connectracer_proto::varlink::{
    Method, RawMethod, DESCRIPTION, INTERFACE, MAX_MESSAGE, SERVICE_INTERFACE,
};
use serde::Serialize;
use tokio::net::UnixListener;
use tokio::sync::mpsc;
use zlink::connection::socket::{self, Socket};
use zlink::varlink_service::Info;

use super::admission::Admission;
use super::authz::ADMIN_GROUP;
use super::limited::Limited;
use super::{Caller, Request};
use crate::pipeline::WatchEvent;

/// One client's connection: zlink reads and decodes its calls; replies go
/// straight to the socket's write half (see the module's comment).
pub(super) struct Conn {
    pub(super) read: zlink::connection::ReadConnection<super::limited::ReadHalf>,
    pub(super) write: WriteHalf,
}

pub(super) type WriteHalf = <Limited as Socket>::WriteHalf;

/// One message, NUL-terminated. A client that does not read it within the
/// write timeout is dropped, releasing what the reply held.
pub(super) async fn send_on<M: Serialize>(write: &mut WriteHalf, message: &M) -> zlink::Result<()> {
    let mut bytes = serde_json::to_vec(message)?;
    bytes.push(0);
    let no_fds: &[std::os::fd::OwnedFd] = &[];
    let written = socket::WriteHalf::write(write, &bytes, no_fds, None);
    tokio::time::timeout(WRITE_TIMEOUT, written)
        .await
        .map_err(|_| not_reading())?
}

impl Conn {
    fn new(socket: Limited) -> Self {
        let (read, write) = zlink::Connection::new(socket).split();
        Self {
            read,
            write: write.into_write_half(),
        }
    }

    pub(super) async fn send<M: Serialize>(&mut self, message: &M) -> zlink::Result<()> {
        send_on(&mut self.write, message).await
    }
}

/// A connection with no request for this long is closed: idle connections
/// must not hold slots for ever.
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// A reply the client does not read within this long closes the
/// connection, releasing what the reply held.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("creating {path}")]
    Dir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("another connectracerd already serves {0}")]
    InUse(PathBuf),
    #[error("binding {path}")]
    Bind {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Binds the control socket, 0660 root:connectracer (root-only if the
/// group does not exist). A stale socket from a dead instance is replaced.
pub fn bind(path: &Path) -> Result<UnixListener, ControlError> {
    let listener = bind_mode(path, 0o660)?;
    match nix::unistd::Group::from_name(ADMIN_GROUP) {
        Ok(Some(g)) => chown(path, Some(0), Some(g.gid.as_raw())).map_err(|source| ControlError::Bind {
            path: path.to_path_buf(),
            source,
        })?,
        _ => tracing::warn!(
            "group {ADMIN_GROUP} does not exist: only root can use {}; create it (systemd-sysusers) to delegate",
            path.display()
        ),
    }
    Ok(listener)
}

/// Binds the sandbox socket, 0666: anyone may place their own commands in
/// a sandbox, and it serves nothing else.
pub fn bind_sandbox(path: &Path) -> Result<UnixListener, ControlError> {
    bind_mode(path, 0o666)
}

fn bind_mode(path: &Path, mode: u32) -> Result<UnixListener, ControlError> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|source| ControlError::Dir {
            path: dir.to_path_buf(),
            source,
        })?;
    }
    if std::os::unix::net::UnixStream::connect(path).is_ok() {
        return Err(ControlError::InUse(path.to_path_buf()));
    }
    let _ = std::fs::remove_file(path);
    let bind_err = |source| ControlError::Bind {
        path: path.to_path_buf(),
        source,
    };
    let listener = UnixListener::bind(path).map_err(bind_err)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(bind_err)?;
    Ok(listener)
}

pub type Watchers = tokio::sync::broadcast::Sender<std::sync::Arc<WatchEvent>>;

/// What a connection's calls are sent to.
#[derive(Debug, Clone)]
pub struct Owner {
    pub requests: mpsc::Sender<Request>,
    pub sandboxes: mpsc::Sender<super::sandbox::Command>,
    /// Makes sandboxes' cgroups (the owner removes them with the same).
    pub placer: std::sync::Arc<crate::sandbox::placer::Placer>,
    pub watchers: Watchers,
}

/// Which socket: the control socket serves everything; the sandbox
/// socket, which anyone may connect to, only Sandbox (and what describes
/// the service).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Surface {
    Control,
    Sandbox,
}

pub async fn serve(listener: UnixListener, owner: Owner, surface: Surface) {
    let admission = std::sync::Arc::new(Admission::default());
    loop {
        let stream = match listener.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                tracing::warn!("control socket accept: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(cred) = stream.peer_cred() else {
            continue;
        };
        let caller = Caller::from_peer(cred.uid(), cred.gid(), cred.pid());
        let admitted = admission.admit(cred.uid());
        let (owner, admission) = (owner.clone(), admission.clone());
        // Off the accept loop, refusals included: a refused client that
        // does not read must not hold up the next one.
        tokio::spawn(async move {
            let Ok(mut conn) = Limited::new(stream).map(Conn::new) else {
                return;
            };
            let slot = match admitted {
                Ok(slot) => slot,
                Err(reason) => return drop(send_error(&mut conn, &invalid("connection", reason)).await),
            };
            let client = Client {
                caller,
                owner,
                surface,
                admission: &admission,
            };
            if let Err(e) = client.serve(&mut conn).await {
                tracing::debug!("control client: {e}");
            }
            drop(slot);
        });
    }
}

/// One admitted connection and what its calls need.
struct Client<'a> {
    caller: Caller,
    owner: Owner,
    surface: Surface,
    admission: &'a Admission,
}

/// A reply's parameters: the service interface's or a typed answer.
#[derive(Debug, Serialize)]
#[serde(untagged)]
enum Params {
    Info(Info<'static>),
    Description { description: String },
    Answer(Answer),
}

impl Client<'_> {
    async fn serve(&self, conn: &mut Conn) -> zlink::Result<()> {
        loop {
            let received = tokio::time::timeout(IDLE_TIMEOUT, conn.read.receive_call::<RawMethod>()).await;
            let (call, fds) = match received {
                Err(_) => {
                    let e = invalid("connection", format!("idle for {IDLE_TIMEOUT:?}: closed"));
                    return send_error(conn, &e).await;
                }
                Ok(Ok((call, fds))) => (call, fds),
                // The message is consumed up to its NUL: the connection goes on.
                Ok(Err(zlink::Error::Json(e))) => {
                    send_error(conn, &invalid("message", format!("not a varlink call: {e}"))).await?;
                    continue;
                }
                Ok(Err(_)) if conn.read.read_half().too_long() => {
                    let e = invalid("message", format!("longer than {MAX_MESSAGE} bytes"));
                    let sent = send_error(conn, &e).await;
                    conn.read.read_half().discard_pending();
                    return sent;
                }
                // The peer hung up, between messages or in the middle of one.
                Ok(Err(zlink::Error::UnexpectedEof)) => return Ok(()),
                Ok(Err(e)) => return Err(e),
            };
            if call.upgrade() {
                // No method upgrades its connection to another protocol.
                let e = CallError::InvalidParameter {
                    parameter: "upgrade".into(),
                };
                send_error(conn, &e).await?;
                continue;
            }
            let reply = match Method::parse(call.method()) {
                Ok(Method::Operation(op)) => match *op {
                    op if !self.serves(&op) => Err(sandbox_socket_only()),
                    Operation::Watch(filter) if call.more() => {
                        // A stream takes over the connection until the client leaves.
                        return self.watch(conn, &filter).await;
                    }
                    Operation::Sandbox(params) if call.more() => {
                        let o = &self.owner;
                        let caller = self.caller;
                        return super::sandbox::serve(
                            conn,
                            caller,
                            fds,
                            params,
                            &o.sandboxes,
                            &o.placer,
                            &o.watchers,
                        )
                        .await;
                    }
                    Operation::Watch(_) | Operation::Sandbox(_) => Err(super::watch_needs_more()),
                    op @ Operation::Profile(_) => {
                        // Answered when the recording ends. A client that
                        // hangs up meanwhile (tracectl's Ctrl-C) ends it
                        // early: the owner sees the answer's receiver gone.
                        // So does one that sends another call first.
                        tokio::select! {
                            r = self.ask(op) => r,
                            _ = conn.read.receive_call::<RawMethod>() => return Ok(()),
                        }
                    }
                    op => self.ask(op).await,
                },
                Ok(Method::GetInfo) => info(),
                Ok(Method::GetInterfaceDescription { interface }) => describe(&interface),
                Err(e) => Err(e),
            };
            if call.oneway() {
                continue;
            }
            match reply {
                Ok(params) => send(conn, &zlink::Reply::new(Some(params))).await?,
                Err(e) => send_error(conn, &e).await?,
            }
        }
    }

    fn serves(&self, op: &Operation) -> bool {
        self.surface == Surface::Control || matches!(op, Operation::GetVersion | Operation::Sandbox(_))
    }

    /// The owner's answer, within the row budget for answers that list
    /// connections (held until the answer is written or dropped).
    async fn ask(&self, op: Operation) -> Result<Params, CallError> {
        super::authz::authorize(&self.caller, &op)?;
        let _budget =
            match super::query::rows(&op) {
                Some(rows) => Some(self.admission.rows(self.caller.uid, rows).await.ok_or_else(|| {
                    invalid("daemon", "too many large answers in flight; try again".into())
                })?),
                None => None,
            };
        super::ask(&self.owner.requests, op, self.caller)
            .await
            .map(Params::Answer)
    }

    /// Streams events matching `filter` that the caller may see, until the
    /// client goes away. A client that falls behind is told how many it missed.
    async fn watch(&self, conn: &mut Conn, filter: &WatchParams) -> zlink::Result<()> {
        use tokio::sync::broadcast::error::RecvError;
        let matcher = match filter.matcher() {
            Ok(m) => m,
            Err(e) => return send_error(conn, &e).await,
        };
        let mut events = self.owner.watchers.subscribe();
        loop {
            let reply = match events.recv().await {
                Ok(ev) => {
                    let c = &ev.connection;
                    if !self.caller.may_see(c) || !matcher.matches(ev.kind.as_str(), c) {
                        continue;
                    }
                    WatchReply::Event {
                        event: ev.kind.as_str().to_string(),
                        time: Some(humantime::format_rfc3339_micros(ev.at).to_string()),
                        connection: Box::new(c.clone()),
                    }
                }
                Err(RecvError::Lagged(missed)) => WatchReply::Missed { missed },
                Err(RecvError::Closed) => return Ok(()),
            };
            send(conn, &zlink::Reply::new(Some(reply)).set_continues(Some(true))).await?;
        }
    }
}

async fn send<P: Serialize>(conn: &mut Conn, reply: &zlink::Reply<P>) -> zlink::Result<()> {
    conn.send(reply).await
}

async fn send_error(conn: &mut Conn, e: &CallError) -> zlink::Result<()> {
    conn.send(e).await
}

fn sandbox_socket_only() -> CallError {
    CallError::AccessDenied {
        reason: "the sandbox socket serves Sandbox only: use the control socket".into(),
    }
}

fn not_reading() -> zlink::Error {
    std::io::Error::new(std::io::ErrorKind::TimedOut, "client not reading").into()
}

fn invalid(field: &str, reason: String) -> CallError {
    CallError::InvalidArgument {
        field: field.into(),
        reason,
    }
}

fn info() -> Result<Params, CallError> {
    Info::new(
        "connectracer",
        "connectracerd",
        env!("CARGO_PKG_VERSION"),
        "https://github.com/connectracer/connectracer",
        [SERVICE_INTERFACE, INTERFACE],
    )
    .map(Params::Info)
    .map_err(|e| invalid("daemon", e.to_string()))
}

fn describe(interface: &str) -> Result<Params, CallError> {
    let description = match interface {
        INTERFACE => DESCRIPTION.to_string(),
        SERVICE_INTERFACE => zlink::varlink_service::DESCRIPTION.to_string(),
        other => {
            return Err(CallError::InterfaceNotFound {
                interface: other.to_string(),
            })
        }
    };
    Ok(Params::Description { description })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_service_interface_describes_itself() {
        assert!(matches!(info(), Ok(Params::Info(i)) if i.interfaces.len() == 2));
        let Ok(Params::Description { description }) = describe(SERVICE_INTERFACE) else {
            panic!("no description of {SERVICE_INTERFACE}");
        };
        assert!(
            description.contains("method GetInterfaceDescription("),
            "{description}"
        );
        assert!(matches!(
            describe("com.example.Other"),
            Err(CallError::InterfaceNotFound { .. })
        ));
    }
}

#[cfg(test)]
mod wire_tests {
    use super::*;
    use connectracer_proto::api::ConnectionsReply;
    use std::io::{Read, Write};

    /// Serves one connection of a socket pair with an owner that never
    /// answers; returns the client's end.
    fn serve_pair() -> std::os::unix::net::UnixStream {
        let (ours, theirs) = std::os::unix::net::UnixStream::pair().unwrap();
        ours.set_nonblocking(true).unwrap();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let (requests, mut owner) = mpsc::channel::<Request>(1);
                // An owner with fixed answers.
                tokio::spawn(async move {
                    while let Some(req) = owner.recv().await {
                        let answer = match req.op {
                            Operation::GetVersion => {
                                Ok(Answer::from(connectracer_proto::api::VersionReply {
                                    version: "1.2.3".into(),
                                    kernel: "6.1.0".into(),
                                }))
                            }
                            Operation::Connections(_) => Ok(Answer::from(ConnectionsReply {
                                connections: (0..20_000)
                                    .map(|i| crate::table::test_connection(i, 1, 0, "10.0.0.1:443"))
                                    .collect(),
                            })),
                            _ => Err(CallError::ConfigInvalid {
                                errors: vec!["a.toml:1:1: bad".into()],
                            }),
                        };
                        let _ = req.reply.send(answer);
                    }
                });
                let admission = Admission::default();
                let client = Client {
                    caller: Caller::from_peer(0, 0, None),
                    owner: Owner {
                        requests,
                        sandboxes: mpsc::channel(1).0,
                        placer: std::sync::Arc::new(crate::sandbox::placer::Placer::choose(
                            std::path::Path::new("/"),
                            std::path::Path::new("/sandbox-test"),
                        )),
                        watchers: tokio::sync::broadcast::channel(1).0,
                    },
                    surface: Surface::Control,
                    admission: &admission,
                };
                let stream = tokio::net::UnixStream::from_std(ours).unwrap();
                let mut conn = Conn::new(Limited::new(stream).unwrap());
                let _ = client.serve(&mut conn).await;
            });
        });
        theirs
    }

    fn read_reply(s: &mut std::os::unix::net::UnixStream) -> serde_json::Value {
        let mut buf = Vec::new();
        let mut byte = [0u8];
        loop {
            s.read_exact(&mut byte).unwrap();
            if byte[0] == 0 {
                break;
            }
            buf.push(byte[0]);
        }
        serde_json::from_slice(&buf).unwrap()
    }

    /// Byte for byte what a varlink client such as systemd's `varlinkctl`
    /// exchanges: NUL-terminated JSON, `parameters` present or not, `oneway`
    /// calls unanswered, and the connection kept after every error.
    #[test]
    fn the_wire_protocol_byte_for_byte() {
        let mut s = serve_pair();
        let exchange = |s: &mut std::os::unix::net::UnixStream, call: &[u8]| -> String {
            s.write_all(call).unwrap();
            let mut out = Vec::new();
            let mut byte = [0u8];
            loop {
                s.read_exact(&mut byte).unwrap();
                out.push(byte[0]);
                if byte[0] == 0 {
                    return String::from_utf8(out).unwrap();
                }
            }
        };
        assert_eq!(
            exchange(&mut s, b"{\"method\":\"org.varlink.service.GetInfo\",\"parameters\":{}}\0"),
            format!(
                "{{\"parameters\":{{\"vendor\":\"connectracer\",\"product\":\"connectracerd\",\"version\":\"{}\",\"url\":\"https://github.com/connectracer/connectracer\",\"interfaces\":[\"org.varlink.service\",\"org.connectracer.Tracer\"]}}}}\0",
                env!("CARGO_PKG_VERSION")
            )
        );
        // A oneway call gets no reply: the next reply is the next call's.
        s.write_all(b"{\"method\":\"org.connectracer.Tracer.GetVersion\",\"oneway\":true}\0")
            .unwrap();
        assert_eq!(
            exchange(
                &mut s,
                b"{\"method\":\"org.connectracer.Tracer.GetVersion\",\"parameters\":{}}\0"
            ),
            "{\"parameters\":{\"version\":\"1.2.3\",\"kernel\":\"6.1.0\"}}\0"
        );
        assert_eq!(
            exchange(&mut s, b"{\"method\":\"org.connectracer.Tracer.Reload\"}\0"),
            "{\"error\":\"org.connectracer.Tracer.ConfigInvalid\",\"parameters\":{\"errors\":[\"a.toml:1:1: bad\"]}}\0"
        );
        assert_eq!(
            exchange(&mut s, b"{\"method\":\"org.connectracer.Tracer.Nope\"}\0"),
            "{\"error\":\"org.varlink.service.MethodNotFound\",\"parameters\":{\"method\":\"org.connectracer.Tracer.Nope\"}}\0"
        );
        assert_eq!(
            exchange(&mut s, b"{\"method\":\"org.connectracer.Tracer.GetVersion\",\"upgrade\":true}\0"),
            "{\"error\":\"org.varlink.service.InvalidParameter\",\"parameters\":{\"parameter\":\"upgrade\"}}\0"
        );
        let bad = exchange(&mut s, b"{not json\0");
        assert!(
            bad.starts_with("{\"error\":\"org.connectracer.Tracer.InvalidArgument\",\"parameters\":{\"field\":\"message\""),
            "{bad}"
        );
        // Two calls in one write, answered in order.
        s.write_all(b"{\"method\":\"org.connectracer.Tracer.GetVersion\"}\0{\"method\":\"org.connectracer.Tracer.Reload\"}\0")
            .unwrap();
        let first = read_reply(&mut s);
        let second = read_reply(&mut s);
        assert_eq!(
            (first["parameters"]["version"].as_str(), second["error"].as_str()),
            (Some("1.2.3"), Some("org.connectracer.Tracer.ConfigInvalid"))
        );
    }

    /// A large answer is written in time linear in its size (zlink's
    /// writer would take quadratic time over it).
    #[test]
    fn a_twenty_thousand_row_answer_arrives_whole() {
        let mut s = serve_pair();
        s.set_read_timeout(Some(std::time::Duration::from_secs(20)))
            .unwrap();
        s.write_all(b"{\"method\":\"org.connectracer.Tracer.Connections\"}\0")
            .unwrap();
        let mut all = Vec::new();
        let mut buf = vec![0u8; 1 << 16];
        while all.last() != Some(&0) {
            let n = s.read(&mut buf).unwrap();
            assert!(n > 0, "closed before the reply ended");
            all.extend_from_slice(&buf[..n]);
        }
        all.pop();
        let reply: serde_json::Value = serde_json::from_slice(&all).unwrap();
        assert_eq!(
            reply["parameters"]["connections"].as_array().unwrap().len(),
            20_000
        );
    }

    #[test]
    fn an_oversized_request_is_answered_then_closed() {
        let mut s = serve_pair();
        let _ = s.write_all(&vec![b' '; 70 * 1024]);
        let reply = read_reply(&mut s);
        assert_eq!(reply["parameters"]["field"], "message", "{reply}");
        let mut rest = Vec::new();
        assert_eq!(s.read_to_end(&mut rest).unwrap(), 0);
    }
}
