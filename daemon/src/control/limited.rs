//! zlink's Unix socket with a cap on the size of one request.
//!
//! zlink's reader grows its buffer up to 100 MiB while it waits for the NUL
//! that ends a message; a client could make every connection hold that much.
//! This read half counts the bytes since the last NUL it passed on and
//! fails the read past [`MAX_MESSAGE`], so the server can say why and close.

use std::os::fd::{AsFd, AsRawFd};

use connectracer_proto::varlink::MAX_MESSAGE;
use zlink::connection::socket::{self, ReadResult, Socket};
use zlink::tokio::unix::Stream;

#[derive(Debug)]
pub struct Limited(Stream);

impl Limited {
    pub fn new(stream: tokio::net::UnixStream) -> zlink::Result<Self> {
        Ok(Self(Stream::try_from(stream)?))
    }
}

#[derive(Debug)]
pub struct ReadHalf {
    inner: <Stream as Socket>::ReadHalf,
    /// Bytes read since the last NUL, i.e. of the message being read.
    pending: usize,
    too_long: bool,
}

impl ReadHalf {
    /// The last read failed because the message ran past the cap.
    pub fn too_long(&self) -> bool {
        self.too_long
    }

    /// Reads and drops what the peer has already sent, up to a bound.
    /// Linux reports ECONNRESET to the peer, ahead of the replies queued
    /// for it, when a Unix stream socket is closed with unread input: an
    /// oversized request's error reply would never be read.
    pub fn discard_pending(&self) {
        let mut buf = [0u8; 8192];
        for _ in 0..(4 * MAX_MESSAGE / buf.len()) {
            let fd = self.as_fd().as_raw_fd();
            match nix::sys::socket::recv(fd, &mut buf, nix::sys::socket::MsgFlags::MSG_DONTWAIT) {
                Ok(n) if n > 0 => {}
                _ => return,
            }
        }
    }
}

impl Socket for Limited {
    type ReadHalf = ReadHalf;
    type WriteHalf = <Stream as Socket>::WriteHalf;

    const CAN_TRANSFER_FDS: bool = Stream::CAN_TRANSFER_FDS;

    fn split(self) -> (Self::ReadHalf, Self::WriteHalf) {
        let (inner, write) = self.0.split();
        let read = ReadHalf {
            inner,
            pending: 0,
            too_long: false,
        };
        (read, write)
    }
}

impl socket::ReadHalf for ReadHalf {
    async fn read(&mut self, buf: &mut [u8]) -> zlink::Result<ReadResult> {
        let result = socket::ReadHalf::read(&mut self.inner, buf).await?;
        let got = &buf[..result.bytes_read()];
        self.pending = match got.iter().rposition(|b| *b == 0) {
            Some(last_nul) => got.len() - last_nul - 1,
            None => self.pending + got.len(),
        };
        if self.pending > MAX_MESSAGE {
            self.too_long = true;
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("a request longer than {MAX_MESSAGE} bytes"),
            )
            .into());
        }
        Ok(result)
    }
}

impl AsFd for ReadHalf {
    fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.inner.as_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use socket::ReadHalf as _;
    use std::io::Write;

    #[tokio::test]
    async fn a_message_past_the_cap_fails_the_read_and_shorter_ones_do_not() {
        let (ours, theirs) = std::os::unix::net::UnixStream::pair().unwrap();
        ours.set_nonblocking(true).unwrap();
        let mut theirs = theirs;
        let (mut read, _write) = Limited::new(tokio::net::UnixStream::from_std(ours).unwrap())
            .unwrap()
            .split();
        let mut buf = vec![0u8; 8192];
        // Many whole messages, each under the cap, add up to more than it.
        let small = [vec![b' '; 1000], vec![0]].concat();
        for _ in 0..(2 * MAX_MESSAGE / small.len()) {
            theirs.write_all(&small).unwrap();
            read.read(&mut buf).await.unwrap();
        }
        assert!(!read.too_long());
        let big = vec![b' '; 4096];
        let mut failed = false;
        for _ in 0..(MAX_MESSAGE / big.len() + 2) {
            theirs.write_all(&big).unwrap();
            if read.read(&mut buf).await.is_err() {
                failed = true;
                break;
            }
        }
        assert!(failed && read.too_long());
    }
}
