//! zlink's Unix socket with a timeout on each read, as the blocking client
//! had with SO_RCVTIMEO: a daemon that stops sending fails the call, while
//! a large answer that keeps arriving (65,536 hosts) takes as long as it
//! needs. Watch streams turn the timeout off: events may be minutes apart.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use zlink::connection::socket::{self, ReadResult, Socket};
use zlink::tokio::unix::Stream;

/// How long one read may wait for data.
const READ_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug)]
pub struct Patient {
    stream: Stream,
    timed: Arc<AtomicBool>,
}

impl Patient {
    /// The socket, and the switch for its read timeout (on at first).
    pub fn new(stream: tokio::net::UnixStream) -> zlink::Result<(Self, Arc<AtomicBool>)> {
        let timed = Arc::new(AtomicBool::new(true));
        let stream = Stream::try_from(stream)?;
        Ok((
            Self {
                stream,
                timed: timed.clone(),
            },
            timed,
        ))
    }
}

#[derive(Debug)]
pub struct ReadHalf {
    inner: <Stream as Socket>::ReadHalf,
    timed: Arc<AtomicBool>,
}

impl Socket for Patient {
    type ReadHalf = ReadHalf;
    type WriteHalf = <Stream as Socket>::WriteHalf;

    const CAN_TRANSFER_FDS: bool = Stream::CAN_TRANSFER_FDS;

    fn split(self) -> (Self::ReadHalf, Self::WriteHalf) {
        let (inner, write) = self.stream.split();
        let read = ReadHalf {
            inner,
            timed: self.timed,
        };
        (read, write)
    }
}

impl socket::ReadHalf for ReadHalf {
    async fn read(&mut self, buf: &mut [u8]) -> zlink::Result<ReadResult> {
        let read = socket::ReadHalf::read(&mut self.inner, buf);
        if !self.timed.load(Ordering::Relaxed) {
            return read.await;
        }
        tokio::time::timeout(READ_TIMEOUT, read)
            .await
            .unwrap_or_else(|_| {
                let e = std::io::Error::new(std::io::ErrorKind::TimedOut, "no reply in time");
                Err(e.into())
            })
    }
}
