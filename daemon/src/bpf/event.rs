//! Ring-buffer records, decoded from the skeleton's generated types into
//! plain Rust values right at the boundary.

use std::ffi::CStr;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::num::NonZeroU32;

use connectracer_proto::{Protocol, Verdict};

use super::types::{ct_conn_event, ct_dns_event, ct_event_kind, ct_proc_event, ct_verdict};

// SAFETY: both are repr(C) structs of integers and byte arrays generated from
// connectracer.h; every bit pattern is a valid value.
unsafe impl plain::Plain for ct_conn_event {}
// SAFETY: as above.
unsafe impl plain::Plain for ct_proc_event {}
// SAFETY: as above.
unsafe impl plain::Plain for ct_dns_event {}

const AF_INET: u16 = libc::AF_INET as u16;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnKind {
    Connect,
    Sendmsg,
    Established,
    Failed,
    Closed,
}

/// A connection record from connect/sendmsg, the TCP state tracepoint or
/// socket release.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnRecord {
    pub kind: ConnKind,
    /// 0 on state events: they run in whatever context the kernel is in.
    pub pid: u32,
    pub tid: u32,
    pub uid: u32,
    pub gid: u32,
    pub protocol: Protocol,
    pub verdict: Verdict,
    pub ts_ns: u64,
    pub cookie: u64,
    pub cgroup_id: u64,
    pub netns_cookie: u64,
    pub dst: SocketAddr,
    pub src: SocketAddr,
    pub host_id: Option<NonZeroU32>,
    pub policy_rule: u32,
    /// Configuration generation the connect was judged against.
    pub epoch: u32,
    pub error: i32,
    pub duration_ns: u64,
    pub bytes_sent: u64,
    pub bytes_received: u64,
    pub comm: Comm,
}

/// A task's comm as the kernel reported it: kept inline (every connection
/// record carries one; a String each was an allocation per record on two
/// threads) and made a string only for a new attribution.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Comm([u8; 16]);

impl Comm {
    pub fn from_c(bytes: &[i8]) -> Self {
        let mut out = [0u8; 16];
        for (d, s) in out.iter_mut().zip(bytes) {
            *d = *s as u8;
        }
        Self(out)
    }

    /// Up to the first NUL, invalid UTF-8 replaced.
    pub fn to_string_lossy(&self) -> String {
        let end = self.0.iter().position(|b| *b == 0).unwrap_or(self.0.len());
        String::from_utf8_lossy(&self.0[..end]).into_owned()
    }
}

impl std::fmt::Debug for Comm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", self.to_string_lossy())
    }
}

impl PartialEq<&str> for Comm {
    fn eq(&self, other: &&str) -> bool {
        self.to_string_lossy() == *other
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProcRecord {
    Exec {
        pid: u32,
        ppid: u32,
        uid: u32,
        start_ns: u64,
        comm: String,
        filename: String,
        argv: Vec<String>,
        /// The path filled the record's buffer: it may go on.
        filename_cut: bool,
        /// The argv did not fit in the record.
        argv_cut: bool,
        /// The cgroup the new image starts in.
        cgroup_id: u64,
    },
    Fork {
        pid: u32,
        ppid: u32,
        uid: u32,
        start_ns: u64,
        comm: String,
    },
    Exit {
        pid: u32,
        exit_code: i32,
    },
}

/// A DNS answer a socket received from the resolver it queried.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsRecord {
    /// The process that sent the query, and its uid.
    pub pid: u32,
    pub uid: u32,
    pub cgroup_id: u64,
    pub ts_ns: u64,
    pub cookie: u64,
    pub resolver: SocketAddr,
    /// The DNS message as received (cut at CT_DNS_LEN bytes).
    pub payload: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    Conn(ConnRecord),
    Proc(ProcRecord),
    Dns(DnsRecord),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("record of {0} bytes is too short")]
    Short(usize),
    #[error("unknown record kind {0}")]
    UnknownKind(u32),
}

fn c_string(bytes: &[i8]) -> String {
    // SAFETY: i8 and u8 have the same size and alignment.
    let bytes: &[u8] = unsafe { std::slice::from_raw_parts(bytes.as_ptr().cast(), bytes.len()) };
    CStr::from_bytes_until_nul(bytes)
        .map(|c| c.to_string_lossy().into_owned())
        .unwrap_or_else(|_| String::from_utf8_lossy(bytes).into_owned())
}

fn addr(family: u16, bytes: &[u8; 16], port: u16) -> SocketAddr {
    let ip = if family == AF_INET {
        IpAddr::V4(Ipv4Addr::new(bytes[0], bytes[1], bytes[2], bytes[3]))
    } else {
        IpAddr::V6(Ipv6Addr::from(*bytes))
    };
    SocketAddr::new(ip, port)
}

impl Record {
    pub fn decode(data: &[u8]) -> Result<Record, DecodeError> {
        let kind = data
            .get(..4)
            .map(|b| u32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
            .ok_or(DecodeError::Short(data.len()))?;
        match ct_event_kind(kind) {
            ct_event_kind::CT_EV_EXEC | ct_event_kind::CT_EV_FORK | ct_event_kind::CT_EV_EXIT => {
                let mut e = ct_proc_event::default();
                plain::copy_from_bytes(&mut e, data).map_err(|_| DecodeError::Short(data.len()))?;
                Ok(Record::Proc(decode_proc(&e)))
            }
            ct_event_kind::CT_EV_DNS => {
                let mut e = ct_dns_event::default();
                plain::copy_from_bytes(&mut e, data).map_err(|_| DecodeError::Short(data.len()))?;
                Ok(Record::Dns(decode_dns(&e)))
            }
            k @ (ct_event_kind::CT_EV_CONNECT
            | ct_event_kind::CT_EV_SENDMSG
            | ct_event_kind::CT_EV_ESTABLISHED
            | ct_event_kind::CT_EV_FAILED
            | ct_event_kind::CT_EV_CLOSED) => {
                let mut e = ct_conn_event::default();
                plain::copy_from_bytes(&mut e, data).map_err(|_| DecodeError::Short(data.len()))?;
                Ok(Record::Conn(decode_conn(k, &e)))
            }
            _ => Err(DecodeError::UnknownKind(kind)),
        }
    }
}

fn decode_conn(kind: ct_event_kind, e: &ct_conn_event) -> ConnRecord {
    let kind = match kind {
        ct_event_kind::CT_EV_CONNECT => ConnKind::Connect,
        ct_event_kind::CT_EV_SENDMSG => ConnKind::Sendmsg,
        ct_event_kind::CT_EV_ESTABLISHED => ConnKind::Established,
        ct_event_kind::CT_EV_FAILED => ConnKind::Failed,
        _ => ConnKind::Closed,
    };
    let verdict = match ct_verdict(u32::from(e.verdict)) {
        ct_verdict::CT_VERDICT_DENY => Verdict::Deny,
        ct_verdict::CT_VERDICT_AUDIT => Verdict::WouldDeny,
        _ => Verdict::Allow,
    };
    ConnRecord {
        kind,
        pid: e.pid,
        tid: e.tid,
        uid: e.uid,
        gid: e.gid,
        protocol: if e.protocol == libc::IPPROTO_UDP as u8 {
            Protocol::Udp
        } else {
            Protocol::Tcp
        },
        verdict,
        ts_ns: e.ts_ns,
        cookie: e.cookie,
        cgroup_id: e.cgroup_id,
        netns_cookie: e.netns_cookie,
        dst: addr(e.family, &e.daddr, e.dport),
        src: addr(e.family, &e.saddr, e.sport),
        host_id: NonZeroU32::new(e.host_id),
        policy_rule: e.policy_rule,
        epoch: e.epoch,
        error: e.error,
        duration_ns: e.duration_ns,
        bytes_sent: e.bytes_sent,
        bytes_received: e.bytes_received,
        comm: Comm::from_c(&e.comm),
    }
}

fn decode_dns(e: &ct_dns_event) -> DnsRecord {
    let len = usize::from(e.len).min(e.payload.len());
    DnsRecord {
        pid: e.pid,
        uid: e.uid,
        cgroup_id: e.cgroup_id,
        ts_ns: e.ts_ns,
        cookie: e.cookie,
        resolver: addr(e.family, &e.raddr, e.rport),
        payload: e.payload[..len].to_vec(),
    }
}

fn decode_proc(e: &ct_proc_event) -> ProcRecord {
    match ct_event_kind(e.kind) {
        ct_event_kind::CT_EV_EXEC => {
            // SAFETY: i8 and u8 have the same size and alignment.
            let args: &[u8] = unsafe { std::slice::from_raw_parts(e.args.as_ptr().cast(), e.args.len()) };
            let len = (e.args_len as usize).min(args.len());
            let argv = args[..len]
                .split(|b| *b == 0)
                .filter(|a| !a.is_empty())
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect();
            ProcRecord::Exec {
                pid: e.pid,
                ppid: e.ppid,
                uid: e.uid,
                start_ns: e.start_ns,
                comm: c_string(&e.comm),
                filename: c_string(&e.filename),
                argv,
                filename_cut: e.filename_len as usize + 1 >= e.filename.len(),
                argv_cut: e.args_total > e.args_len,
                cgroup_id: e.cgroup_id,
            }
        }
        ct_event_kind::CT_EV_FORK => ProcRecord::Fork {
            pid: e.pid,
            ppid: e.ppid,
            uid: e.uid,
            start_ns: e.start_ns,
            comm: c_string(&e.comm),
        },
        _ => ProcRecord::Exit {
            pid: e.pid,
            exit_code: e.exit_code,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes_of<T: plain::Plain>(v: &T) -> Vec<u8> {
        // SAFETY: T is Plain: plain old data with no padding invariants.
        unsafe { plain::as_bytes(v) }.to_vec()
    }

    #[test]
    fn decodes_v4_connect() {
        let mut e = ct_conn_event {
            kind: ct_event_kind::CT_EV_CONNECT.0,
            pid: 42,
            family: AF_INET,
            protocol: libc::IPPROTO_TCP as u8,
            dport: 443,
            host_id: 3,
            ..Default::default()
        };
        e.daddr[..4].copy_from_slice(&[10, 20, 1, 2]);
        for (d, s) in e.comm.iter_mut().zip(b"curl\0") {
            *d = *s as i8;
        }
        let Record::Conn(c) = Record::decode(&bytes_of(&e)).unwrap() else {
            panic!("not a connection record");
        };
        assert_eq!(c.kind, ConnKind::Connect);
        assert_eq!(c.dst, "10.20.1.2:443".parse().unwrap());
        assert_eq!(c.host_id, NonZeroU32::new(3));
        assert_eq!(c.comm, "curl");
        assert_eq!(c.protocol, Protocol::Tcp);
    }

    #[test]
    fn decodes_exec_argv() {
        let mut e = ct_proc_event {
            kind: ct_event_kind::CT_EV_EXEC.0,
            pid: 7,
            ..Default::default()
        };
        let args = b"/bin/echo\0hello\0world\0";
        for (d, s) in e.args.iter_mut().zip(args) {
            *d = *s as i8;
        }
        e.args_len = args.len() as u32;
        let Record::Proc(ProcRecord::Exec { argv, .. }) = Record::decode(&bytes_of(&e)).unwrap() else {
            panic!("not an exec record");
        };
        assert_eq!(argv, ["/bin/echo", "hello", "world"]);
    }

    #[test]
    fn rejects_short_and_unknown() {
        assert_eq!(Record::decode(&[1, 0]), Err(DecodeError::Short(2)));
        assert_eq!(Record::decode(&[99, 0, 0, 0]), Err(DecodeError::UnknownKind(99)));
        assert!(Record::decode(&[1, 0, 0, 0, 0]).is_err());
    }
}
