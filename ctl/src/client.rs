//! A blocking varlink client for the control socket, over zlink: calls are
//! the API's [`Operation`]s, replies its typed answers.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use connectracer_proto::api::{CallError, Operation};
use serde::de::DeserializeOwned;
use zlink::varlink_service::Error as ServiceError;

use crate::socket::Patient;

type Connection = zlink::Connection<Patient>;

/// Why a call did not produce an answer; each maps to an exit code.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("connectracerd is not running (no control socket at {0})")]
    NotRunning(PathBuf),
    #[error("permission denied on {0}: the control socket is for root and members of group connectracer")]
    SocketDenied(PathBuf),
    #[error("{0}")]
    Call(CallError),
    #[error("writing {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("talking to connectracerd at {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("unexpected answer from connectracerd: {0}")]
    Protocol(String),
    #[error("connectracerd is not on the system bus (nobody owns org.connectracer.Tracer1): is it running, and is its D-Bus policy installed?")]
    NotOnBus,
    #[error("cannot reach the system bus ({0}): use the control socket (without --bus)")]
    NoBus(String),
    #[error("the system bus refused the call: {0}")]
    BusDenied(String),
    #[error("D-Bus: {0}")]
    Bus(zbus::Error),
    #[error("access denied: connectracerd's signals reach only root and members of group connectracer")]
    SignalsDenied,
}

#[derive(Debug)]
pub struct Client {
    path: PathBuf,
    rt: tokio::runtime::Runtime,
    conn: Connection,
    /// The read timeout's switch.
    timed: Arc<AtomicBool>,
}

impl Client {
    pub fn connect(path: &Path) -> Result<Self, ClientError> {
        let io = |source| ClientError::Io {
            path: path.to_path_buf(),
            source,
        };
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(io)?;
        let stream = rt
            .block_on(tokio::net::UnixStream::connect(path))
            .map_err(|e| match e.kind() {
                std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused => {
                    ClientError::NotRunning(path.to_path_buf())
                }
                std::io::ErrorKind::PermissionDenied => ClientError::SocketDenied(path.to_path_buf()),
                _ => io(e),
            })?;
        let (socket, timed) = Patient::new(stream).map_err(|e| ClientError::Protocol(e.to_string()))?;
        Ok(Self {
            path: path.to_path_buf(),
            rt,
            conn: Connection::new(socket),
            timed,
        })
    }

    fn error(&self, e: zlink::Error) -> ClientError {
        match e {
            zlink::Error::Io(source) => ClientError::Io {
                path: self.path.clone(),
                source,
            },
            // zlink hands org.varlink.service's errors over on their own.
            zlink::Error::VarlinkService(e) => match e.into_inner() {
                ServiceError::MethodNotFound { method } => ClientError::Call(CallError::MethodNotFound {
                    method: method.into_owned(),
                }),
                ServiceError::InterfaceNotFound { interface } => {
                    ClientError::Call(CallError::InterfaceNotFound {
                        interface: interface.into_owned(),
                    })
                }
                ServiceError::InvalidParameter { parameter } => {
                    ClientError::Call(CallError::InvalidParameter {
                        parameter: parameter.into_owned(),
                    })
                }
                other => ClientError::Protocol(other.to_string()),
            },
            zlink::Error::UnexpectedEof => {
                ClientError::Protocol("connection closed before the reply ended".into())
            }
            other => ClientError::Protocol(other.to_string()),
        }
    }

    pub fn call<R: DeserializeOwned + std::fmt::Debug>(&mut self, op: &Operation) -> Result<R, ClientError> {
        let call = zlink::Call::new(op);
        let replied = self.rt.block_on(async {
            self.conn.send_call(&call, Vec::new()).await?;
            self.conn.receive_reply::<R, CallError>().await
        });
        let (reply, _fds) = replied.map_err(|e| self.error(e))?;
        reply
            .map_err(ClientError::Call)?
            .into_parameters()
            .ok_or_else(|| ClientError::Protocol("a reply without parameters".into()))
    }

    /// A call whose answer may take longer than the read timeout allows
    /// (a profile answers when its recording ends).
    pub fn call_untimed<R: DeserializeOwned + std::fmt::Debug>(
        &mut self,
        op: &Operation,
    ) -> Result<R, ClientError> {
        self.timed.store(false, Ordering::Relaxed);
        let r = self.call(op);
        self.timed.store(true, Ordering::Relaxed);
        r
    }

    /// A streaming call (`more: true`): `each` gets every reply until it
    /// returns false or the daemon ends the stream.
    pub fn stream<R: DeserializeOwned + std::fmt::Debug>(
        &mut self,
        op: &Operation,
        mut each: impl FnMut(R) -> bool,
    ) -> Result<(), ClientError> {
        let call = zlink::Call::new(op).set_more(true);
        self.timed.store(false, Ordering::Relaxed);
        let Self { rt, conn, .. } = self;
        let result = rt.block_on(async {
            conn.send_call(&call, Vec::new()).await?;
            loop {
                let (reply, _fds) = conn.receive_reply::<R, CallError>().await?;
                let reply = match reply {
                    Ok(r) => r,
                    Err(e) => return Ok(Err(e)),
                };
                let more = reply.continues() == Some(true);
                let Some(params) = reply.into_parameters() else {
                    return Ok(Ok(()));
                };
                if !each(params) || !more {
                    return Ok(Ok(()));
                }
            }
        });
        match result {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(ClientError::Call(e)),
            // The daemon ended the stream by closing the connection.
            Err(zlink::Error::UnexpectedEof) => Ok(()),
            Err(e) => Err(self.error(e)),
        }
    }
}
