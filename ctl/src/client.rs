//! A blocking varlink client for the control socket.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use connectracer_proto::varlink::{to_parameters, Call, CallError, Reply};
use serde::de::DeserializeOwned;
use serde::Serialize;

/// Replies are bounded by the daemon's cap on connections per answer; this
/// only guards against a runaway peer.
const MAX_REPLY: u64 = 256 << 20;

/// Why a call did not produce an answer; each maps to an exit code.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("connectracerd is not running (no control socket at {0})")]
    NotRunning(PathBuf),
    #[error("permission denied on {0}: the control socket is for root and members of group connectracer")]
    SocketDenied(PathBuf),
    #[error("{0}")]
    Call(CallError),
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
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

impl Client {
    pub fn connect(path: &Path) -> Result<Self, ClientError> {
        let stream = UnixStream::connect(path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused => {
                ClientError::NotRunning(path.to_path_buf())
            }
            std::io::ErrorKind::PermissionDenied => ClientError::SocketDenied(path.to_path_buf()),
            _ => ClientError::Io {
                path: path.to_path_buf(),
                source: e,
            },
        })?;
        let io = |source| ClientError::Io {
            path: path.to_path_buf(),
            source,
        };
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .map_err(io)?;
        let writer = stream.try_clone().map_err(io)?;
        Ok(Self {
            path: path.to_path_buf(),
            reader: BufReader::new(stream),
            writer,
        })
    }

    /// A streaming call (`more: true`): `each` gets every reply until it
    /// returns false or the daemon ends the stream.
    pub fn stream<P: Serialize, R: DeserializeOwned>(
        &mut self,
        method: &str,
        params: &P,
        mut each: impl FnMut(R) -> bool,
    ) -> Result<(), ClientError> {
        let call = Call {
            method: method.to_string(),
            parameters: to_parameters(params),
            more: true,
            oneway: false,
        };
        let path = self.path.clone();
        let io = |source| ClientError::Io {
            path: path.clone(),
            source,
        };
        // Events may be minutes apart.
        self.writer.set_read_timeout(None).map_err(io)?;
        let mut bytes = serde_json::to_vec(&call).map_err(|e| ClientError::Protocol(e.to_string()))?;
        bytes.push(0);
        self.writer.write_all(&bytes).map_err(io)?;
        loop {
            let mut buf = Vec::new();
            (&mut self.reader)
                .take(MAX_REPLY)
                .read_until(0, &mut buf)
                .map_err(io)?;
            if buf.pop() != Some(0) {
                return Ok(());
            }
            let reply: Reply =
                serde_json::from_slice(&buf).map_err(|e| ClientError::Protocol(e.to_string()))?;
            if let Some(err) = CallError::from_reply(&reply) {
                return Err(ClientError::Call(err));
            }
            let value = serde_json::from_value(serde_json::Value::Object(reply.parameters))
                .map_err(|e| ClientError::Protocol(e.to_string()))?;
            if !each(value) || !reply.continues {
                return Ok(());
            }
        }
    }

    pub fn call<P: Serialize, R: DeserializeOwned>(
        &mut self,
        method: &str,
        params: &P,
    ) -> Result<R, ClientError> {
        let call = Call {
            method: method.to_string(),
            parameters: to_parameters(params),
            more: false,
            oneway: false,
        };
        let io = |source| ClientError::Io {
            path: self.path.clone(),
            source,
        };
        let mut bytes = serde_json::to_vec(&call).map_err(|e| ClientError::Protocol(e.to_string()))?;
        bytes.push(0);
        self.writer.write_all(&bytes).map_err(io)?;
        let mut buf = Vec::new();
        let mut limited = (&mut self.reader).take(MAX_REPLY);
        limited.read_until(0, &mut buf).map_err(io)?;
        if buf.pop() != Some(0) {
            return Err(ClientError::Protocol(
                "connection closed before the reply ended".into(),
            ));
        }
        let reply: Reply = serde_json::from_slice(&buf).map_err(|e| ClientError::Protocol(e.to_string()))?;
        if let Some(err) = CallError::from_reply(&reply) {
            return Err(ClientError::Call(err));
        }
        serde_json::from_value(serde_json::Value::Object(reply.parameters))
            .map_err(|e| ClientError::Protocol(e.to_string()))
    }
}
