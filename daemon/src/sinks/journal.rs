//! The journal sink: journald's native protocol, one datagram per event,
//! MESSAGE being the text line and the connection's attribution in fields
//! to filter on (`journalctl -u connectracer DEST=10.0.0.1:443`). A slow
//! journald blocks this thread only; its queue then sheds, counted.

use std::os::unix::net::UnixDatagram;

use super::format::Formatter;
use super::writer::Outcome;
use super::WatchEvent;

const SOCKET: &str = "/run/systemd/journal/socket";

#[derive(Debug)]
pub struct Journal {
    socket: Result<UnixDatagram, String>,
    path: String,
    buf: Vec<u8>,
}

/// `KEY=value\n`, or the binary-safe form for values with a newline.
fn field(out: &mut Vec<u8>, key: &str, value: &str) {
    out.extend_from_slice(key.as_bytes());
    if value.contains('\n') {
        out.push(b'\n');
        out.extend_from_slice(&(value.len() as u64).to_le_bytes());
    } else {
        out.push(b'=');
    }
    out.extend_from_slice(value.as_bytes());
    out.push(b'\n');
}

impl Journal {
    pub fn new() -> Self {
        Self {
            socket: UnixDatagram::unbound().map_err(|e| format!("journal socket: {e}")),
            path: SOCKET.to_string(),
            buf: Vec::with_capacity(1024),
        }
    }

    pub fn write<'a>(&mut self, f: &mut Formatter, events: impl Iterator<Item = &'a WatchEvent>) -> Outcome {
        let socket = match &self.socket {
            Ok(s) => s,
            Err(e) => {
                return Outcome {
                    written: 0,
                    error: Some(e.clone()),
                }
            }
        };
        let mut written = 0;
        for ev in events {
            let b = &mut self.buf;
            b.clear();
            entry(b, f, ev);
            if let Err(e) = socket.send_to(b, &self.path) {
                return Outcome {
                    written,
                    error: Some(format!("journal {}: {e}", self.path)),
                };
            }
            written += 1;
        }
        Outcome { written, error: None }
    }
}

fn entry(b: &mut Vec<u8>, f: &mut Formatter, ev: &WatchEvent) {
    let c = &ev.connection;
    let p = &c.process;
    field(b, "MESSAGE", &f.text_line(ev));
    field(b, "PRIORITY", "6");
    field(b, "SYSLOG_IDENTIFIER", "connectracerd");
    field(b, "EVENT", ev.kind.as_str());
    field(b, "PID", &p.pid.to_string());
    field(b, "COMM", &p.comm);
    field(b, "UID", &p.uid.to_string());
    field(b, "DEST", &c.dst.to_string());
    field(b, "PROTOCOL", c.protocol.as_str());
    field(b, "VERDICT", c.verdict.as_str());
    for (k, v) in [
        ("EXE", &p.exe),
        ("HOST", &c.host),
        ("UNIT", &p.unit),
        ("CONTAINER", &p.container_id),
    ] {
        if let Some(v) = v {
            field(b, k, v);
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn fields_with_newlines_use_the_binary_form() {
        let mut b = Vec::new();
        super::field(&mut b, "A", "x");
        super::field(&mut b, "B", "y\nz");
        let mut want = b"A=x\nB\n".to_vec();
        want.extend_from_slice(&3u64.to_le_bytes());
        want.extend_from_slice(b"y\nz\n");
        assert_eq!(b, want);
    }
}
