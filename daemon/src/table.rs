//! The bounded in-memory connection table every query is answered from:
//! open connections plus recently closed ones, indexed by socket cookie,
//! pid, destination and local port.

use std::collections::{BTreeSet, VecDeque};
use std::hash::Hash;

// Every record inserts into and removes from five of these: SipHash was a
// tenth of the daemon's CPU under a connect flood. foldhash is seeded per
// process, which keeps crafted keys from degrading it.
type HashMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;
type HashSet<K> = std::collections::HashSet<K, foldhash::fast::RandomState>;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

pub use connectracer_proto::Connection;
use connectracer_proto::{ConnState, FailReason};
use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TableLimits {
    pub max_open: usize,
    pub max_closed: usize,
    pub closed_retention: Duration,
}

/// How a connection ended, as the kernel reported it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ending {
    pub state: ConnState,
    pub fail_reason: Option<FailReason>,
    pub duration_ns: u64,
    pub src: Option<SocketAddr>,
    pub bytes: Option<(u64, u64)>,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct TableStats {
    pub open: usize,
    pub closed: usize,
    pub evicted_open: u64,
    pub evicted_closed: u64,
}

#[derive(Debug)]
pub struct ConnTable {
    limits: TableLimits,
    next_id: u64,
    conns: HashMap<u64, Connection>,
    // Hash sets, not vectors or trees: one destination or one busy process
    // can own most of the table, and every connection is added and removed
    // once; queries sort what they return anyway.
    by_cookie: HashMap<u64, HashSet<u64>>,
    by_pid: HashMap<u32, HashSet<u64>>,
    by_dst_ip: HashMap<IpAddr, HashSet<u64>>,
    by_local_port: HashMap<u16, HashSet<u64>>,
    /// Ids are handed out in increasing order, so the first is the oldest.
    open: BTreeSet<u64>,
    closed: VecDeque<(Instant, u64)>,
    evicted_open: u64,
    evicted_closed: u64,
}

fn index_add<K: Hash + Eq>(idx: &mut HashMap<K, HashSet<u64>>, k: K, id: u64) {
    idx.entry(k).or_default().insert(id);
}

fn index_remove<K: Hash + Eq>(idx: &mut HashMap<K, HashSet<u64>>, k: K, id: u64) {
    if let Some(v) = idx.get_mut(&k) {
        v.remove(&id);
        if v.is_empty() {
            idx.remove(&k);
        }
    }
}

impl ConnTable {
    pub fn new(limits: TableLimits) -> Self {
        Self {
            limits,
            next_id: 1,
            conns: HashMap::default(),
            by_cookie: HashMap::default(),
            by_pid: HashMap::default(),
            by_dst_ip: HashMap::default(),
            by_local_port: HashMap::default(),
            open: BTreeSet::new(),
            closed: VecDeque::new(),
            evicted_open: 0,
            evicted_closed: 0,
        }
    }

    /// New limits apply from the next insert or expiry on.
    pub fn set_limits(&mut self, limits: TableLimits) {
        self.limits = limits;
    }

    pub fn stats(&self) -> TableStats {
        TableStats {
            open: self.open.len(),
            closed: self.closed.len(),
            evicted_open: self.evicted_open,
            evicted_closed: self.evicted_closed,
        }
    }

    pub fn len(&self) -> usize {
        self.conns.len()
    }

    pub fn is_empty(&self) -> bool {
        self.conns.is_empty()
    }

    /// Adds a new connection (its id is assigned here) and returns it.
    pub fn insert(&mut self, mut c: Connection) -> &Connection {
        let id = self.next_id;
        self.next_id += 1;
        c.id = id;
        if c.state.is_open() {
            self.open.insert(id);
        } else {
            // Born ended (refused by policy): expires like any closed one.
            self.closed.push_back((Instant::now(), id));
        }
        index_add(&mut self.by_cookie, c.cookie, id);
        index_add(&mut self.by_pid, c.process.pid, id);
        index_add(&mut self.by_dst_ip, c.dst.ip(), id);
        if let Some(src) = c.src {
            index_add(&mut self.by_local_port, src.port(), id);
        }
        self.conns.insert(id, c);
        while self.open.len() > self.limits.max_open {
            if let Some(oldest) = self.open.pop_first() {
                self.remove(oldest);
                self.evicted_open += 1;
            }
        }
        &self.conns[&id]
    }

    /// The TCP handshake completed: the local address is now known.
    pub fn established(&mut self, cookie: u64, src: SocketAddr) -> Option<&Connection> {
        // The socket's latest connection (a UDP socket may connect again).
        let id = *self.by_cookie.get(&cookie)?.iter().max()?;
        let c = self.conns.get_mut(&id)?;
        c.state = ConnState::Established;
        if c.src.is_none() {
            c.src = Some(src);
            index_add(&mut self.by_local_port, src.port(), id);
        }
        self.conns.get(&id)
    }

    /// Ends every open connection of the socket (an unconnected UDP socket
    /// has one per destination) and returns their ids.
    pub fn end(&mut self, cookie: u64, ending: Ending, now: Instant) -> Vec<u64> {
        // Expire first, so what ends now is still there for the caller to log.
        self.expire(now);
        let ids: Vec<u64> = self
            .by_cookie
            .get(&cookie)
            .into_iter()
            .flatten()
            .copied()
            .collect();
        let mut ended = Vec::new();
        for id in ids {
            if !self.open.remove(&id) {
                continue;
            }
            let Some(c) = self.conns.get_mut(&id) else {
                continue;
            };
            c.state = ending.state;
            c.fail_reason = ending.fail_reason;
            c.duration_ns = Some(ending.duration_ns);
            if let Some((sent, received)) = ending.bytes {
                c.bytes_sent = Some(sent);
                c.bytes_received = Some(received);
            }
            if c.src.is_none() {
                if let Some(src) = ending.src.filter(|s| s.port() != 0) {
                    c.src = Some(src);
                    index_add(&mut self.by_local_port, src.port(), id);
                }
            }
            self.closed.push_back((now, id));
            ended.push(id);
        }
        ended
    }

    pub fn get(&self, id: u64) -> Option<&Connection> {
        self.conns.get(&id)
    }

    /// Drops closed connections past the retention or over the limit.
    pub fn expire(&mut self, now: Instant) {
        while let Some(&(at, id)) = self.closed.front() {
            let too_many = self.closed.len() > self.limits.max_closed;
            if !too_many && now.duration_since(at) < self.limits.closed_retention {
                break;
            }
            self.closed.pop_front();
            self.remove(id);
            if too_many {
                self.evicted_closed += 1;
            }
        }
    }

    fn remove(&mut self, id: u64) {
        let Some(c) = self.conns.remove(&id) else { return };
        index_remove(&mut self.by_cookie, c.cookie, id);
        index_remove(&mut self.by_pid, c.process.pid, id);
        index_remove(&mut self.by_dst_ip, c.dst.ip(), id);
        if let Some(src) = c.src {
            index_remove(&mut self.by_local_port, src.port(), id);
        }
    }

    fn collect<'a>(&'a self, ids: Option<&'a HashSet<u64>>) -> impl Iterator<Item = &'a Connection> + 'a {
        ids.into_iter().flatten().filter_map(|id| self.conns.get(id))
    }

    pub fn by_pid(&self, pid: u32) -> impl Iterator<Item = &Connection> + '_ {
        self.collect(self.by_pid.get(&pid))
    }

    /// Connections to `ip`, on `port` when given.
    pub fn by_destination(&self, ip: IpAddr, port: Option<u16>) -> impl Iterator<Item = &Connection> + '_ {
        self.collect(self.by_dst_ip.get(&ip))
            .filter(move |c| port.is_none_or(|p| c.dst.port() == p))
    }

    pub fn by_local_port(&self, port: u16) -> impl Iterator<Item = &Connection> + '_ {
        self.collect(self.by_local_port.get(&port))
    }

    pub fn iter(&self) -> impl Iterator<Item = &Connection> + '_ {
        self.conns.values()
    }
}

/// A connection for tests elsewhere in the crate.
#[cfg(test)]
pub(crate) fn test_connection(cookie: u64, pid: u32, uid: u32, dst: &str) -> Connection {
    use std::sync::Arc;
    use std::time::SystemTime;

    use connectracer_proto::{Process, Protocol, Verdict};

    Connection {
        id: 0,
        cookie,
        protocol: Protocol::Tcp,
        state: ConnState::Connecting,
        fail_reason: None,
        verdict: Verdict::Allow,
        policy_rule: None,
        dst: dst.parse().expect("test address"),
        src: None,
        host_id: None,
        config_epoch: 1,
        host: None,
        label: None,
        started: SystemTime::now(),
        duration_ns: None,
        bytes_sent: None,
        bytes_received: None,
        process: Arc::new(Process {
            pid,
            tid: pid,
            ppid: None,
            uid,
            user: None,
            comm: "t".into(),
            exe: None,
            argv: vec![],
            cgroup_id: 0,
            cgroup: None,
            unit: None,
            user_unit: None,
            slice: None,
            container_runtime: None,
            container_id: None,
            pod_uid: None,
        }),
    }
}

#[cfg(test)]
mod tests {

    use super::*;

    fn conn(cookie: u64, pid: u32, dst: &str) -> Connection {
        test_connection(cookie, pid, 0, dst)
    }

    fn limits(max_open: usize, max_closed: usize) -> TableLimits {
        TableLimits {
            max_open,
            max_closed,
            closed_retention: Duration::from_secs(60),
        }
    }

    fn closed(duration_ns: u64) -> Ending {
        Ending {
            state: ConnState::Closed,
            fail_reason: None,
            duration_ns,
            src: None,
            bytes: Some((10, 20)),
        }
    }

    #[test]
    fn indexes_follow_the_connection_life() {
        let mut t = ConnTable::new(limits(10, 10));
        let now = Instant::now();
        t.insert(conn(1, 100, "10.0.0.1:443"));
        t.established(1, "10.0.0.9:40000".parse().unwrap()).unwrap();
        assert_eq!(t.by_local_port(40000).count(), 1);
        assert_eq!(t.by_pid(100).count(), 1);
        assert_eq!(
            t.by_destination("10.0.0.1".parse().unwrap(), Some(443)).count(),
            1
        );
        assert_eq!(t.by_destination("10.0.0.1".parse().unwrap(), Some(80)).count(), 0);
        let ended = t.end(1, closed(5), now);
        assert_eq!(ended.len(), 1);
        let c = t.get(ended[0]).unwrap();
        assert_eq!(
            (c.state, c.bytes_sent, c.duration_ns),
            (ConnState::Closed, Some(10), Some(5))
        );
        assert_eq!(t.stats().open, 0);
        assert_eq!(t.stats().closed, 1);
        t.expire(now + Duration::from_secs(61));
        assert!(t.is_empty());
        assert_eq!(t.by_pid(100).count(), 0);
        assert_eq!(t.by_local_port(40000).count(), 0);
    }

    #[test]
    fn one_udp_socket_many_destinations_all_end_together() {
        let mut t = ConnTable::new(limits(10, 10));
        for d in ["10.0.0.1:53", "10.0.0.2:53", "10.0.0.3:53"] {
            t.insert(conn(7, 1, d));
        }
        assert_eq!(t.end(7, closed(1), Instant::now()).len(), 3);
    }

    #[test]
    fn bounded_by_count() {
        let mut t = ConnTable::new(limits(100, 50));
        let now = Instant::now();
        for i in 0..1000u64 {
            t.insert(conn(i, (i % 7) as u32, "10.0.0.1:1"));
            if i % 2 == 0 {
                t.end(i, closed(1), now);
            }
        }
        let s = t.stats();
        assert!(s.open <= 100 && s.closed <= 51, "{s:?}");
        assert_eq!(t.len(), s.open + s.closed);
        assert!(s.evicted_open > 0 && s.evicted_closed > 0);
        // Indexes hold no more than the table.
        assert_eq!(t.by_cookie.values().map(HashSet::len).sum::<usize>(), t.len());
        assert_eq!(t.by_pid.values().map(HashSet::len).sum::<usize>(), t.len());
    }
}
