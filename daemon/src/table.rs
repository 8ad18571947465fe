//! The bounded in-memory connection table every query is answered from:
//! open connections plus recently closed ones, indexed by socket cookie.
//!
//! Only the cookie, which every kernel record carries, is indexed. Queries
//! by process, destination or local port scan the table instead: a query
//! is rare and a scan of the largest table takes well under a millisecond,
//! while every connection would otherwise pay for inserting into and
//! removing from three more indexes (a quarter of the daemon's CPU under a
//! connect flood).

use std::collections::VecDeque;

// SipHash was a tenth of the daemon's CPU under a connect flood. foldhash
// is seeded per process, which keeps crafted keys from degrading it.
type HashMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

pub use connectracer_proto::Connection;
use connectracer_proto::{ConnState, FailReason};
use serde::Serialize;
use smallvec::SmallVec;

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

/// Where a connection lives in the table; valid until the table changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Slot(u32);

/// The connections of one socket: nearly always one, several for an
/// unconnected UDP socket (one per destination).
type CookieSlots = SmallVec<[Slot; 2]>;

#[derive(Debug)]
pub struct ConnTable {
    limits: TableLimits,
    next_id: u64,
    /// Connections in a slab: a slot freed by an expired connection is the
    /// next one filled, so a flood keeps writing to memory still in cache
    /// (a hash map keyed by id scattered them over megabytes).
    slots: Vec<Option<Connection>>,
    free: Vec<Slot>,
    /// Open connections only: the kernel's state records (established,
    /// closed) concern open ones, and an index of the few open ones stays
    /// in cache where one of every retained connection did not (its
    /// lookups were two cache misses per connection under a flood).
    by_cookie: HashMap<u64, CookieSlots>,
    /// Open connections in the order they opened, so the oldest is evicted
    /// first; entries of ended ones are skipped (the id no longer matches
    /// or the connection is no longer open) and swept out once they
    /// outnumber the open ones.
    open_order: VecDeque<(Slot, u64)>,
    open: usize,
    closed: VecDeque<(Instant, Slot)>,
    evicted_open: u64,
    evicted_closed: u64,
}

impl ConnTable {
    pub fn new(limits: TableLimits) -> Self {
        Self {
            limits,
            next_id: 1,
            slots: Vec::new(),
            free: Vec::new(),
            by_cookie: HashMap::default(),
            open_order: VecDeque::new(),
            open: 0,
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
            open: self.open,
            closed: self.closed.len(),
            evicted_open: self.evicted_open,
            evicted_closed: self.evicted_closed,
        }
    }

    pub fn len(&self) -> usize {
        self.slots.len() - self.free.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn at(&self, slot: Slot) -> Option<&Connection> {
        self.slots.get(slot.0 as usize)?.as_ref()
    }

    fn at_mut(&mut self, slot: Slot) -> Option<&mut Connection> {
        self.slots.get_mut(slot.0 as usize)?.as_mut()
    }

    /// Adds a new connection (its id is assigned here) and returns it.
    pub fn insert(&mut self, mut c: Connection) -> &Connection {
        let id = self.next_id;
        self.next_id += 1;
        c.id = id;
        // Evict before placing, so the slot freed is the one filled.
        if c.state.is_open() {
            while self.open >= self.limits.max_open.max(1) {
                self.evict_oldest_open();
            }
        }
        let cookie = c.cookie;
        let open = c.state.is_open();
        let slot = match self.free.pop() {
            Some(s) => {
                self.slots[s.0 as usize] = Some(c);
                s
            }
            None => {
                self.slots.push(Some(c));
                Slot((self.slots.len() - 1) as u32)
            }
        };
        if open {
            self.open_order.push_back((slot, id));
            self.open += 1;
            self.by_cookie.entry(cookie).or_default().push(slot);
        } else {
            // Born ended (refused by policy): expires like any closed one.
            self.closed.push_back((Instant::now(), slot));
        }
        self.slots[slot.0 as usize].as_ref().expect("just placed")
    }

    fn evict_oldest_open(&mut self) {
        while let Some((slot, id)) = self.open_order.pop_front() {
            if self.at(slot).is_some_and(|c| c.id == id && c.state.is_open()) {
                self.open -= 1;
                self.remove(slot);
                self.evicted_open += 1;
                return;
            }
        }
        // The queue holds every open connection; this is unreachable
        // unless the count is wrong, and then it must not spin.
        self.open = 0;
    }

    /// One connection stopped being open; the order queue is swept when
    /// mostly stale, which keeps it within twice the open count.
    fn closing(&mut self) {
        self.open -= 1;
        if self.open_order.len() > 2 * self.open + 64 {
            let slots = &self.slots;
            self.open_order.retain(|(s, id)| {
                slots[s.0 as usize]
                    .as_ref()
                    .is_some_and(|c| c.id == *id && c.state.is_open())
            });
        }
    }

    /// The TCP handshake completed: the local address is now known.
    pub fn established(&mut self, cookie: u64, src: SocketAddr) -> Option<&mut Connection> {
        // The socket's latest connection (a UDP socket may connect again).
        let slot = *self
            .by_cookie
            .get(&cookie)?
            .iter()
            .max_by_key(|s| self.at(**s).map_or(0, |c| c.id))?;
        let c = self.at_mut(slot)?;
        c.state = ConnState::Established;
        if c.src.is_none() {
            c.src = Some(src);
        }
        Some(c)
    }

    /// Ends every open connection of the socket (an unconnected UDP socket
    /// has one per destination) and returns where they are, for `get`.
    pub fn end(&mut self, cookie: u64, ending: Ending, now: Instant) -> SmallVec<[Slot; 2]> {
        // Expire first, so what ends now is still there for the caller to log.
        self.expire(now);
        let mut ended = CookieSlots::new();
        let Some(slots) = self.by_cookie.remove(&cookie) else {
            return ended;
        };
        for slot in slots {
            let Some(c) = self.slots[slot.0 as usize].as_mut() else {
                continue;
            };
            if !c.state.is_open() {
                continue;
            }
            c.state = ending.state;
            c.fail_reason = ending.fail_reason;
            c.duration_ns = Some(ending.duration_ns);
            if let Some((sent, received)) = ending.bytes {
                c.bytes_sent = Some(sent);
                c.bytes_received = Some(received);
            }
            if c.src.is_none() {
                c.src = ending.src.filter(|s| s.port() != 0);
            }
            self.closed.push_back((now, slot));
            ended.push(slot);
        }
        for _ in &ended {
            self.closing();
        }
        ended
    }

    /// A connection `end` returned, until the table next changes.
    pub fn get(&self, slot: Slot) -> Option<&Connection> {
        self.at(slot)
    }

    pub fn get_mut(&mut self, slot: Slot) -> Option<&mut Connection> {
        self.at_mut(slot)
    }

    /// Drops closed connections past the retention or over the limit.
    pub fn expire(&mut self, now: Instant) {
        while let Some(&(at, slot)) = self.closed.front() {
            let too_many = self.closed.len() > self.limits.max_closed;
            if !too_many && now.duration_since(at) < self.limits.closed_retention {
                break;
            }
            self.closed.pop_front();
            self.remove(slot);
            if too_many {
                self.evicted_closed += 1;
            }
        }
    }

    fn remove(&mut self, slot: Slot) {
        let Some(c) = self.slots[slot.0 as usize].take() else {
            return;
        };
        self.free.push(slot);
        if !c.state.is_open() {
            return;
        }
        if let Some(slots) = self.by_cookie.get_mut(&c.cookie) {
            slots.retain(|s| *s != slot);
            if slots.is_empty() {
                self.by_cookie.remove(&c.cookie);
            }
        }
    }

    pub fn by_pid(&self, pid: u32) -> impl Iterator<Item = &Connection> + '_ {
        self.iter().filter(move |c| c.process.pid == pid)
    }

    /// Connections to `ip`, on `port` when given.
    pub fn by_destination(&self, ip: IpAddr, port: Option<u16>) -> impl Iterator<Item = &Connection> + '_ {
        self.iter()
            .filter(move |c| c.dst.ip() == ip && port.is_none_or(|p| c.dst.port() == p))
    }

    pub fn by_local_port(&self, port: u16) -> impl Iterator<Item = &Connection> + '_ {
        self.iter()
            .filter(move |c| c.src.is_some_and(|s| s.port() == port))
    }

    pub fn iter(&self) -> impl Iterator<Item = &Connection> + '_ {
        self.slots.iter().flatten()
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
        dns_name: None,
        dns_source: None,
        started: SystemTime::now(),
        duration_ns: None,
        bytes_sent: None,
        bytes_received: None,
        container: Default::default(),
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
        assert_eq!(c.id, 1);
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
    fn a_reused_slot_is_not_evicted_for_the_connection_it_held_before() {
        let mut t = ConnTable::new(limits(2, 10));
        let now = Instant::now();
        t.insert(conn(1, 1, "10.0.0.1:1"));
        t.end(1, closed(1), now);
        t.expire(now + Duration::from_secs(61));
        // Cookie 2 takes cookie 1's slot; cookie 1's stale queue entry
        // must not make it look like the oldest.
        assert_eq!(t.insert(conn(2, 1, "10.0.0.1:1")).id, 2);
        t.insert(conn(3, 1, "10.0.0.1:1"));
        t.insert(conn(4, 1, "10.0.0.1:1"));
        let mut ids: Vec<u64> = t.iter().map(|c| c.id).collect();
        ids.sort_unstable();
        assert_eq!(ids, [3, 4]);
        assert_eq!(t.stats().evicted_open, 1);
        assert!(t.established(2, "10.0.0.9:1".parse().unwrap()).is_none());
        assert_eq!(t.established(4, "10.0.0.9:1".parse().unwrap()).unwrap().id, 4);
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
        // The index holds the open ones, the queue no more than twice
        // them, and freed slots are reused.
        assert_eq!(t.by_cookie.values().map(|v| v.len()).sum::<usize>(), s.open);
        assert!(t.slots.len() <= 100 + 51 + 1, "{}", t.slots.len());
        assert!(t.open_order.len() <= 2 * s.open + 64, "{}", t.open_order.len());
    }
}
