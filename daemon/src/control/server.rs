//! The varlink socket server: framing, parsing, authorization, dispatch.

use std::os::unix::fs::{chown, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use connectracer_proto::varlink::{
    to_parameters, Call, CallError, Reply, WatchParams, WatchReply, DESCRIPTION, INTERFACE, MAX_MESSAGE,
    SERVICE_INTERFACE,
};
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::mpsc;

use super::admission::Admission;
use super::authz::ADMIN_GROUP;
use super::{Answer, Caller, Method, Request};
use crate::pipeline::WatchEvent;

/// A connection with no request for this long is closed: idle connections
/// must not hold slots for ever.
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// A reply the client does not read within this long closes the
/// connection, releasing what the reply held.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

const SERVICE_DESCRIPTION: &str = "interface org.varlink.service
method GetInfo() -> (vendor: string, product: string, version: string, url: string, interfaces: []string)
method GetInterfaceDescription(interface: string) -> (description: string)
error InterfaceNotFound (interface: string)
error MethodNotFound (method: string)
error MethodNotImplemented (method: string)
error InvalidParameter (parameter: string)
";

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

/// Binds the socket, 0660 root:connectracer (root-only if the group does
/// not exist). A stale socket from a dead instance is replaced.
pub fn bind(path: &Path) -> Result<UnixListener, ControlError> {
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
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660)).map_err(bind_err)?;
    match nix::unistd::Group::from_name(ADMIN_GROUP) {
        Ok(Some(g)) => chown(path, Some(0), Some(g.gid.as_raw())).map_err(bind_err)?,
        _ => tracing::warn!(
            "group {ADMIN_GROUP} does not exist: only root can use {}; create it (systemd-sysusers) to delegate",
            path.display()
        ),
    }
    Ok(listener)
}

pub async fn serve(listener: UnixListener, requests: mpsc::Sender<Request>, watchers: Watchers) {
    let admission = std::sync::Arc::new(Admission::default());
    loop {
        let (mut stream, _) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!("control socket accept: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(cred) = stream.peer_cred() else {
            continue;
        };
        let slot = match admission.admit(cred.uid()) {
            Ok(slot) => slot,
            Err(reason) => {
                // Told why, off the accept loop: a refused client that does
                // not read must not hold up the next one.
                tokio::spawn(async move {
                    let e = CallError::InvalidArgument {
                        field: "connection".into(),
                        reason,
                    };
                    let _ = write(&mut stream, &e.into_reply()).await;
                });
                continue;
            }
        };
        let requests = requests.clone();
        let watchers = watchers.clone();
        let admission = admission.clone();
        tokio::spawn(async move {
            if let Err(e) = client(stream, requests, watchers, &admission).await {
                tracing::debug!("control client: {e}");
            }
            drop(slot);
        });
    }
}

async fn client(
    stream: UnixStream,
    requests: mpsc::Sender<Request>,
    watchers: Watchers,
    admission: &Admission,
) -> std::io::Result<()> {
    let cred = stream.peer_cred()?;
    let caller = Caller::from_peer(cred.uid(), cred.gid(), cred.pid());
    let (rd, mut wr) = stream.into_split();
    let mut rd = BufReader::new(rd);
    loop {
        let mut buf = Vec::new();
        let mut limited = (&mut rd).take(MAX_MESSAGE as u64 + 1);
        let Ok(n) = tokio::time::timeout(IDLE_TIMEOUT, limited.read_until(0, &mut buf)).await else {
            let e = invalid("connection", format!("idle for {IDLE_TIMEOUT:?}: closed"));
            return write(&mut wr, &e.into_reply()).await;
        };
        let n = n?;
        if n == 0 {
            return Ok(());
        }
        if buf.last() != Some(&0) {
            if buf.len() > MAX_MESSAGE {
                let e = invalid("message", format!("longer than {MAX_MESSAGE} bytes"));
                write(&mut wr, &e.into_reply()).await?;
            }
            // Oversized, or the peer hung up mid-message: nothing more to read.
            return Ok(());
        }
        buf.pop();
        let (reply, oneway, _budget) = match serde_json::from_slice::<Call>(&buf) {
            Ok(call) if call.method == format!("{INTERFACE}.Watch") => {
                // A stream takes over the connection until the client leaves.
                return match (call.more, params::<WatchParams>(&call)) {
                    (true, Ok(filter)) => watch(&mut wr, caller, &filter, watchers.subscribe()).await,
                    (false, _) => {
                        let e = invalid("more", "Watch streams events: call it with \"more\": true".into());
                        write(&mut wr, &e.into_reply()).await
                    }
                    (_, Err(e)) => write(&mut wr, &e.into_reply()).await,
                };
            }
            Ok(call) => match parse_call(&call) {
                Parsed::Answered(answer) => (answer, call.oneway, None),
                Parsed::Method(method) => {
                    // Held until the answer is written (or the client is dropped).
                    let budget = match super::query::rows(&method) {
                        Some(rows) => match admission.rows(caller.uid, rows).await {
                            Some(permit) => Some(permit),
                            None => {
                                let e =
                                    invalid("daemon", "too many large answers in flight; try again".into());
                                write(&mut wr, &e.into_reply()).await?;
                                continue;
                            }
                        },
                        None => None,
                    };
                    let answer = super::ask(&requests, method, caller).await;
                    (answer, call.oneway, budget)
                }
            },
            Err(e) => (
                Err(invalid("message", format!("not a varlink call: {e}"))),
                false,
                None,
            ),
        };
        if !oneway {
            let reply = match reply {
                Ok(parameters) => Reply {
                    error: None,
                    parameters,
                    continues: false,
                },
                Err(e) => e.into_reply(),
            };
            write(&mut wr, &reply).await?;
        }
    }
}

pub type Watchers = tokio::sync::broadcast::Sender<std::sync::Arc<WatchEvent>>;

/// Streams events matching `filter` that the caller may see, until the
/// client goes away. A client that falls behind is told how many it missed.
async fn watch(
    wr: &mut (impl AsyncWriteExt + Unpin),
    caller: Caller,
    filter: &WatchParams,
    mut events: tokio::sync::broadcast::Receiver<std::sync::Arc<WatchEvent>>,
) -> std::io::Result<()> {
    use tokio::sync::broadcast::error::RecvError;
    loop {
        let reply = match events.recv().await {
            Ok(ev) => {
                let c = &ev.connection;
                let host_ok = filter
                    .host
                    .as_ref()
                    .is_none_or(|h| c.host.as_ref() == Some(h) || c.label.as_ref() == Some(h));
                if !caller.may_see(c) || filter.pid.is_some_and(|p| p != c.process.pid) || !host_ok {
                    continue;
                }
                WatchReply::Event {
                    event: ev.kind.as_str().to_string(),
                    connection: Box::new(c.clone()),
                }
            }
            Err(RecvError::Lagged(missed)) => WatchReply::Missed { missed },
            Err(RecvError::Closed) => return Ok(()),
        };
        let reply = Reply {
            error: None,
            parameters: to_parameters(&reply),
            continues: true,
        };
        write(wr, &reply).await?;
    }
}

async fn write(wr: &mut (impl AsyncWriteExt + Unpin), reply: &Reply) -> std::io::Result<()> {
    let mut bytes = serde_json::to_vec(reply).map_err(std::io::Error::other)?;
    bytes.push(0);
    tokio::time::timeout(WRITE_TIMEOUT, wr.write_all(&bytes))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "client not reading"))?
}

fn invalid(field: &str, reason: String) -> CallError {
    CallError::InvalidArgument {
        field: field.into(),
        reason,
    }
}

fn params<T: DeserializeOwned>(call: &Call) -> Result<T, CallError> {
    serde_json::from_value(Value::Object(call.parameters.clone()))
        .map_err(|e| invalid("parameters", e.to_string()))
}

/// What a call asks for, decoded and checked: answered here (the service
/// interface) or a method for the state owner. Pure, so it can be fuzzed.
#[derive(Debug)]
pub enum Parsed {
    Answered(Answer),
    Method(Method),
}

pub fn parse_call(call: &Call) -> Parsed {
    let (interface, name) = call.method.rsplit_once('.').unwrap_or(("", call.method.as_str()));
    let method = match (interface, name) {
        (SERVICE_INTERFACE, "GetInfo") => return Parsed::Answered(Ok(info())),
        (SERVICE_INTERFACE, "GetInterfaceDescription") => return Parsed::Answered(describe(call)),
        (INTERFACE, "GetVersion") => Ok(Method::GetVersion),
        (INTERFACE, "GetStats") => Ok(Method::GetStats),
        (INTERFACE, "Who") => params(call).map(Method::Who),
        (INTERFACE, "Ps") => params(call).map(Method::Ps),
        (INTERFACE, "Connections") => params(call).map(Method::Connections),
        (INTERFACE, "Reload") => Ok(Method::Reload),
        (INTERFACE, "AddHost") => params(call).map(Method::AddHost),
        (INTERFACE, "RemoveHost") => params(call).map(Method::RemoveHost),
        (INTERFACE, "Hosts") => Ok(Method::Hosts),
        (INTERFACE, "PolicyShow") => Ok(Method::PolicyShow),
        (INTERFACE, "PolicyCheck") => params(call).map(Method::PolicyCheck),
        (SERVICE_INTERFACE | INTERFACE, _) => Err(CallError::MethodNotFound {
            method: call.method.clone(),
        }),
        _ => Err(CallError::InterfaceNotFound {
            interface: interface.to_string(),
        }),
    };
    match method {
        Ok(m) => Parsed::Method(m),
        Err(e) => Parsed::Answered(Err(e)),
    }
}

fn info() -> Map<String, Value> {
    to_parameters(&serde_json::json!({
        "vendor": "connectracer",
        "product": "connectracerd",
        "version": env!("CARGO_PKG_VERSION"),
        "url": "https://github.com/connectracer/connectracer",
        "interfaces": [SERVICE_INTERFACE, INTERFACE],
    }))
}

fn describe(call: &Call) -> Answer {
    let wanted = call
        .parameters
        .get("interface")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let description = match wanted {
        INTERFACE => DESCRIPTION,
        SERVICE_INTERFACE => SERVICE_DESCRIPTION,
        other => {
            return Err(CallError::InterfaceNotFound {
                interface: other.to_string(),
            })
        }
    };
    Ok(to_parameters(&serde_json::json!({ "description": description })))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(name: &str) -> Call {
        Call {
            method: format!("{INTERFACE}.{name}"),
            parameters: Map::new(),
            more: false,
            oneway: false,
        }
    }

    /// The varlink name of each operation the owner answers; the match is
    /// exhaustive, so a new operation must be named (and declared) here.
    fn name(m: &Method) -> &'static str {
        match m {
            Method::GetVersion => "GetVersion",
            Method::GetStats => "GetStats",
            Method::Who(_) => "Who",
            Method::Ps(_) => "Ps",
            Method::Connections(_) => "Connections",
            Method::Reload => "Reload",
            Method::AddHost(_) => "AddHost",
            Method::RemoveHost(_) => "RemoveHost",
            Method::Hosts => "Hosts",
            Method::PolicyShow => "PolicyShow",
            Method::PolicyCheck(_) => "PolicyCheck",
        }
    }

    /// The shipped IDL and the server agree: every declared method is
    /// served (Watch by the streaming path), under its own name, and a name
    /// the IDL does not declare is refused.
    #[test]
    fn every_method_in_the_idl_is_served_and_no_other() {
        let declared: Vec<&str> = DESCRIPTION
            .lines()
            .filter_map(|l| l.strip_prefix("method ")?.split('(').next())
            .collect();
        assert_eq!(declared.len(), 12, "{declared:?}");
        for m in declared.iter().filter(|m| **m != "Watch") {
            match parse_call(&call(m)) {
                Parsed::Method(method) => assert_eq!(name(&method), *m),
                // Methods with required parameters fail on the empty call,
                // but as a bad parameter of a known method.
                Parsed::Answered(Err(CallError::InvalidArgument { field, .. })) => {
                    assert_eq!(field, "parameters", "{m}")
                }
                other => panic!("{m} is declared but not served: {other:?}"),
            }
        }
        assert!(matches!(
            parse_call(&call("Undeclared")),
            Parsed::Answered(Err(CallError::MethodNotFound { .. }))
        ));
        // And every operation is declared.
        use connectracer_proto::varlink::{
            AddHostParams, ConnectionsParams, PolicyCheckParams, PsParams, RemoveHostParams, WhoParams,
        };
        let all = [
            Method::GetVersion,
            Method::GetStats,
            Method::Who(WhoParams::default()),
            Method::Ps(PsParams { pid: 1, limit: None }),
            Method::Connections(ConnectionsParams::default()),
            Method::Reload,
            Method::AddHost(AddHostParams::default()),
            Method::RemoveHost(RemoveHostParams { name: "x".into() }),
            Method::Hosts,
            Method::PolicyShow,
            Method::PolicyCheck(PolicyCheckParams::default()),
        ];
        for m in &all {
            assert!(
                declared.contains(&name(m)),
                "{} is served but not declared",
                name(m)
            );
        }
        assert_eq!(
            all.len() + 1,
            declared.len(),
            "every declared method but Watch is an operation"
        );
    }
}
