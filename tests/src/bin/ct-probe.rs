//! Test client run inside the test cgroup: makes exactly the connections the
//! integration tests expect to see traced, and prints what it did as JSON.
//!
//! ct-probe tcp ADDR SEND RECV          connect, send SEND bytes, read RECV bytes, close
//! ct-probe connect ADDR...             connect to each (refused is fine), close
//! ct-probe udp COUNT ADDR...           COUNT unconnected sendto()s to each ADDR, one socket
//! ct-probe flood ADDR N [rst]          N connect+close to ADDR as fast as possible
//!                                      (rst: close with SO_LINGER 0, leaving no TIME_WAIT)
//! ct-probe hold ADDR SECONDS           connect, print the local address, keep it open
//! ct-probe alternate A B N             N rounds of one connect to A then one to B
//! ct-probe lookups RESOLVER NAME N    N lookups of NAME in a row over one UDP socket
//! ct-probe resolve RESOLVER NAME PORT [FORGED_IP]
//!                                      look NAME up over UDP with a query built here
//!                                      (no libc resolver; NAME aaaa:HOST asks for AAAA),
//!                                      connect to its first address on PORT;
//!                                      with FORGED_IP, first have
//!                                      another local socket send this one a fake
//!                                      answer (NAME -> FORGED_IP), then connect there

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::process::ExitCode;

use anyhow::{bail, Context};

fn addr(s: &str) -> anyhow::Result<SocketAddr> {
    s.parse().with_context(|| format!("`{s}` is not ADDR:PORT"))
}

fn tcp(dst: SocketAddr, send: usize, recv: usize) -> anyhow::Result<serde_json::Value> {
    let mut s = TcpStream::connect(dst).with_context(|| format!("connecting to {dst}"))?;
    let local = s.local_addr()?;
    s.write_all(&vec![b'x'; send])?;
    let mut buf = vec![0; recv];
    s.read_exact(&mut buf).context("reading the server's bytes")?;
    // Wait for the server's FIN so both directions are complete at close.
    let mut rest = Vec::new();
    s.read_to_end(&mut rest)?;
    if !rest.is_empty() {
        bail!("server sent {} bytes more than expected", rest.len());
    }
    drop(s);
    Ok(serde_json::json!({ "pid": std::process::id(), "local": local.to_string() }))
}

fn connect_all(dsts: &[SocketAddr]) -> serde_json::Value {
    let results: Vec<_> = dsts
        .iter()
        .map(|d| {
            let r = TcpStream::connect(d);
            let errno = r.as_ref().err().and_then(std::io::Error::raw_os_error);
            serde_json::json!({ "dst": d.to_string(), "ok": r.is_ok(), "errno": errno })
        })
        .collect();
    serde_json::json!({ "pid": std::process::id(), "results": results })
}

fn udp(count: usize, dsts: &[SocketAddr]) -> anyhow::Result<serde_json::Value> {
    let bind: SocketAddr = if dsts.iter().all(SocketAddr::is_ipv4) {
        "0.0.0.0:0"
    } else {
        "[::]:0"
    }
    .parse()?;
    let s = UdpSocket::bind(bind)?;
    let mut denied = Vec::new();
    for _ in 0..count {
        for d in dsts {
            if let Err(e) = s.send_to(b"ping", d) {
                // A refusal is an outcome to report, not a failure of the probe.
                if e.raw_os_error() == Some(libc::EPERM) {
                    denied.push(d.to_string());
                    continue;
                }
                return Err(e).with_context(|| format!("sendto {d}"));
            }
        }
    }
    Ok(
        serde_json::json!({ "pid": std::process::id(), "local": s.local_addr()?.to_string(), "denied": denied }),
    )
}

fn flood(dst: SocketAddr, n: usize, rst: bool) -> serde_json::Value {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    let mut ok = 0;
    for _ in 0..n {
        if let Ok(s) = TcpStream::connect(dst) {
            ok += 1;
            if rst {
                let _ = nix::sys::socket::setsockopt(&s, nix::sys::socket::sockopt::Linger, &linger);
            }
        }
    }
    serde_json::json!({ "pid": std::process::id(), "attempts": n, "ok": ok })
}

/// Reports the connection before holding it, so the test can query the
/// daemon while it is open.
fn hold(dst: SocketAddr, secs: u64) -> anyhow::Result<serde_json::Value> {
    let s = TcpStream::connect(dst).with_context(|| format!("connecting to {dst}"))?;
    let first = serde_json::json!({ "pid": std::process::id(), "local": s.local_addr()?.to_string() });
    let mut out = std::io::stdout().lock();
    writeln!(out, "{first}")?;
    out.flush()?;
    std::thread::sleep(std::time::Duration::from_secs(secs));
    Ok(serde_json::json!({ "held": secs }))
}

mod dns {
    use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};

    use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query};
    use hickory_proto::rr::rdata::A;
    use hickory_proto::rr::{Name, RData, Record, RecordType};

    /// `aaaa:NAME` asks for AAAA records, `NAME` for A.
    fn question(name: &str) -> (&str, RecordType) {
        match name.strip_prefix("aaaa:") {
            Some(n) => (n, RecordType::AAAA),
            None => (name, RecordType::A),
        }
    }

    fn query(id: u16, name: &str) -> anyhow::Result<Message> {
        let (name, rtype) = question(name);
        let mut m = Message::new(id, MessageType::Query, OpCode::Query);
        m.metadata.recursion_desired = true;
        m.add_query(Query::query(Name::from_ascii(name)?, rtype));
        // EDNS, as resolvers send it: answers past 512 bytes come whole.
        let mut edns = Edns::new();
        edns.set_max_payload(1232);
        m.set_edns(edns);
        Ok(m)
    }

    /// The first A (or AAAA) address of the answer to `id` read from `s`,
    /// skipping anything else that arrives.
    fn first_a(s: &UdpSocket, id: u16) -> anyhow::Result<Option<IpAddr>> {
        let mut buf = [0u8; 4096];
        loop {
            let n = s.recv(&mut buf)?;
            let Ok(m) = Message::from_vec(&buf[..n]) else {
                continue;
            };
            if m.metadata.id != id || m.metadata.message_type != MessageType::Response {
                continue;
            }
            return Ok(m.answers.iter().find_map(|r| match &r.data {
                RData::A(a) => Some(IpAddr::V4(a.0)),
                RData::AAAA(a) => Some(IpAddr::V6(a.0)),
                _ => None,
            }));
        }
    }

    /// `n` lookups of `name`, one after another on one socket.
    pub fn lookups(resolver: SocketAddr, name: &str, n: u32) -> anyhow::Result<u32> {
        let s = UdpSocket::bind("127.0.0.1:0")?;
        s.set_read_timeout(Some(std::time::Duration::from_secs(3)))?;
        let mut answered = 0;
        for i in 0..n {
            let id = (i & 0xffff) as u16;
            s.send_to(&query(id, name)?.to_vec()?, resolver)?;
            if first_a(&s, id)?.is_some() {
                answered += 1;
            }
        }
        Ok(answered)
    }

    /// Resolves `name` at `resolver`; with `forged`, a second local socket
    /// first sends a fake answer to the querying socket, which is read and
    /// used instead.
    pub fn resolve(resolver: SocketAddr, name: &str, forged: Option<Ipv4Addr>) -> anyhow::Result<IpAddr> {
        let s = UdpSocket::bind("127.0.0.1:0")?;
        s.set_read_timeout(Some(std::time::Duration::from_secs(3)))?;
        let id = (std::process::id() & 0xffff) as u16;
        s.send_to(&query(id, name)?.to_vec()?, resolver)?;
        if let Some(ip) = forged {
            let mut fake = query(id, name)?;
            fake.metadata.message_type = MessageType::Response;
            fake.add_answer(Record::from_rdata(
                Name::from_ascii(question(name).0)?,
                300,
                RData::A(A(ip)),
            ));
            let forger = UdpSocket::bind("127.0.0.1:0")?;
            forger.send_to(&fake.to_vec()?, s.local_addr()?)?;
            // Both answers reach this socket, in either order.
            first_a(&s, id)?;
            first_a(&s, id)?;
            return Ok(IpAddr::V4(ip));
        }
        first_a(&s, id)?.ok_or_else(|| anyhow::anyhow!("{name}: no address"))
    }
}

fn resolve_connect(
    resolver: SocketAddr,
    name: &str,
    port: u16,
    forged: Option<&String>,
) -> anyhow::Result<serde_json::Value> {
    let forged = forged.map(|f| f.parse()).transpose()?;
    let ip = dns::resolve(resolver, name, forged)?;
    let dst = SocketAddr::from((ip, port));
    let r = TcpStream::connect(dst);
    let errno = r.as_ref().err().and_then(std::io::Error::raw_os_error);
    Ok(
        serde_json::json!({ "pid": std::process::id(), "dst": dst.to_string(), "ok": r.is_ok(), "errno": errno }),
    )
}

fn run(args: &[String]) -> anyhow::Result<serde_json::Value> {
    let addrs = |v: &[String]| v.iter().map(|s| addr(s)).collect::<anyhow::Result<Vec<_>>>();
    match args {
        [cmd, dst, send, recv, ..] if cmd == "tcp" => tcp(addr(dst)?, send.parse()?, recv.parse()?),
        [cmd, rest @ ..] if cmd == "connect" => Ok(connect_all(&addrs(rest)?)),
        [cmd, count, rest @ ..] if cmd == "udp" => udp(count.parse()?, &addrs(rest)?),
        [cmd, dst, n] if cmd == "flood" => Ok(flood(addr(dst)?, n.parse()?, false)),
        [cmd, dst, n, rst] if cmd == "flood" && rst == "rst" => Ok(flood(addr(dst)?, n.parse()?, true)),
        [cmd, dst, secs] if cmd == "hold" => hold(addr(dst)?, secs.parse()?),
        [cmd, a, b, n] if cmd == "alternate" => {
            let (a, b, n) = (addr(a)?, addr(b)?, n.parse::<usize>()?);
            for _ in 0..n {
                let _ = TcpStream::connect(a);
                let _ = TcpStream::connect(b);
            }
            Ok(serde_json::json!({ "pid": std::process::id(), "rounds": n }))
        }
        [cmd, resolver, name, n] if cmd == "lookups" => {
            let t = std::time::Instant::now();
            let answered = dns::lookups(addr(resolver)?, name, n.parse()?)?;
            Ok(
                serde_json::json!({ "pid": std::process::id(), "answered": answered, "secs": t.elapsed().as_secs_f64() }),
            )
        }
        [cmd, resolver, name, port, forged @ ..] if cmd == "resolve" && forged.len() <= 1 => {
            resolve_connect(addr(resolver)?, name, port.parse()?, forged.first())
        }
        _ => bail!("usage: ct-probe tcp|connect|udp|flood|hold|alternate|resolve ... (see the source)"),
    }
}

fn main() -> ExitCode {
    // Tests tell processes apart by comm: CT_PROBE_COMM renames this one.
    if let Ok(comm) = std::env::var("CT_PROBE_COMM") {
        if let Ok(c) = std::ffi::CString::new(comm) {
            let _ = nix::sys::prctl::set_name(&c);
        }
    }
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(&args) {
        Ok(v) => {
            println!("{v}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("ct-probe: {e:#}");
            ExitCode::FAILURE
        }
    }
}
