//! Loopback servers, ports, and HTTP GETs of the daemon's `/metrics`.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};

/// A loopback TCP server: reads until the client's bytes are in, answers
/// with `reply` bytes, closes. Returns its address.
pub fn tcp_server(bind: &str, expect: usize, reply: usize) -> SocketAddr {
    let l = TcpListener::bind(bind).expect("bind");
    let a = l.local_addr().expect("addr");
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { return };
            std::thread::spawn(move || {
                let mut buf = vec![0; expect];
                if s.read_exact(&mut buf).is_ok() {
                    let _ = s.write_all(&vec![b'y'; reply]);
                }
                let _ = s.shutdown(std::net::Shutdown::Write);
                let mut rest = Vec::new();
                let _ = s.read_to_end(&mut rest);
            });
        }
    });
    a
}

/// A loopback port with nothing listening (refused connects).
pub fn closed_port(bind: &str) -> SocketAddr {
    let l = TcpListener::bind(bind).expect("bind");
    l.local_addr().expect("addr")
}

/// A loopback port free at the moment of asking.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free loopback port")
        .port()
}

/// The whole HTTP/1.0 response (status line and headers included) to a GET
/// of `path` on loopback; None when nothing answers.
pub fn http_get_raw(port: u16, path: &str) -> Option<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    Some(out)
}

/// The body of a GET of `path` on loopback.
pub fn http_get(port: u16, path: &str) -> Option<String> {
    Some(http_get_raw(port, path)?.split_once("\r\n\r\n")?.1.to_string())
}

/// The value of the first `/metrics` line that starts with `series` (a
/// metric name with its labels, as the exporter writes them).
pub fn metric(port: u16, series: &str) -> Option<u64> {
    http_get_raw(port, "/metrics")?
        .lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
}
