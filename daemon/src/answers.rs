//! The names processes resolved, from the DNS answers the kernel copied
//! for their sockets (bpf/dns.bpf.h). A connection is named from its own
//! process's answers first, then from its cgroup's, then from any answer on
//! the host: two processes that resolved different names to one address
//! (a CDN) each see their own, where a host-wide reverse map would show
//! whichever answer came last.

// Looked up for every new connection; foldhash is seeded per process, so
// addresses an answer chose cannot be crafted to collide.
type HashMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;
use std::collections::VecDeque;
use std::hash::Hash;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use connectracer_proto::NameSource;
use hickory_proto::op::{Message, MessageType};
use hickory_proto::rr::RData;

use crate::bpf::event::DnsRecord;

/// Addresses remembered per scope (process, cgroup, host); at the bound,
/// expired ones are dropped first, then new answers are not kept (counted).
const MAX_ENTRIES: usize = 65536;

/// Answers kept for `tracectl dns`, the oldest forgotten first.
const RECENT: usize = 1024;

/// One answer as `tracectl dns` lists it.
#[derive(Debug, Clone)]
pub struct Recent {
    pub at: SystemTime,
    pub pid: u32,
    pub uid: u32,
    pub name: Arc<str>,
    pub addresses: Vec<IpAddr>,
    pub ttl: u32,
    pub resolver: SocketAddr,
    /// Where the asking task was, as the attribution cache resolved it.
    pub asker: Option<Arc<Asker>>,
}

/// The cgroup (below the cgroup2 mount) of a task that asked, and its units.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Asker {
    pub cgroup: String,
    pub unit: Option<String>,
    pub user_unit: Option<String>,
}

#[derive(Debug, Clone)]
struct Entry {
    name: Arc<str>,
    expires: Instant,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct AnswerStats {
    /// Answers received and parsed.
    pub answers: u64,
    /// Answers that were not DNS messages hickory could read.
    pub undecodable: u64,
    /// Addresses not remembered because a scope was full.
    pub not_kept: u64,
}

#[derive(Debug)]
pub struct Answers {
    by_process: HashMap<(u32, IpAddr), Entry>,
    by_cgroup: HashMap<(u64, IpAddr), Entry>,
    by_host: HashMap<IpAddr, Entry>,
    /// Kept past the TTL: a client may connect a little after its cached
    /// answer expired.
    grace: Duration,
    stats: AnswerStats,
    recent: VecDeque<Recent>,
}

/// An answer: the name asked for and the addresses it resolved to (through
/// any CNAME chain), each with its TTL.
type Resolution = (Arc<str>, Vec<(IpAddr, u32)>);

fn addresses(payload: &[u8]) -> Option<Resolution> {
    let msg = Message::from_vec(payload).ok()?;
    if msg.metadata.message_type != MessageType::Response {
        return None;
    }
    let question = msg.queries.first()?.name();
    let name: Arc<str> = question.to_lowercase().to_utf8().trim_end_matches('.').into();
    let addrs = msg
        .answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(a) => Some((IpAddr::V4(a.0), r.ttl)),
            RData::AAAA(a) => Some((IpAddr::V6(a.0), r.ttl)),
            _ => None,
        })
        .collect();
    Some((name, addrs))
}

fn keep<K: Hash + Eq>(map: &mut HashMap<K, Entry>, key: K, entry: Entry, now: Instant) -> bool {
    if map.len() >= MAX_ENTRIES && !map.contains_key(&key) {
        map.retain(|_, e| e.expires > now);
        if map.len() >= MAX_ENTRIES {
            return false;
        }
    }
    map.insert(key, entry);
    true
}

fn live<'a, K: Hash + Eq>(map: &'a HashMap<K, Entry>, key: &K, now: Instant) -> Option<&'a Arc<str>> {
    map.get(key).filter(|e| e.expires > now).map(|e| &e.name)
}

impl Answers {
    pub fn new(grace: Duration) -> Self {
        Self {
            by_process: HashMap::default(),
            by_cgroup: HashMap::default(),
            by_host: HashMap::default(),
            grace,
            stats: AnswerStats::default(),
            recent: VecDeque::new(),
        }
    }

    pub fn set_grace(&mut self, grace: Duration) {
        self.grace = grace;
    }

    pub fn stats(&self) -> AnswerStats {
        self.stats
    }

    /// The answers kept for listing, newest first.
    pub fn recent(&self) -> impl Iterator<Item = &Recent> + '_ {
        self.recent.iter().rev()
    }

    /// Remembers the addresses of one answer for its process, its cgroup
    /// and the host, until their TTL (plus the grace) runs out; `at` is its
    /// wall-clock arrival.
    pub fn record(&mut self, rec: &DnsRecord, now: Instant, at: SystemTime, asker: Option<Arc<Asker>>) {
        let Some((name, addrs)) = addresses(&rec.payload) else {
            self.stats.undecodable += 1;
            return;
        };
        self.stats.answers += 1;
        if self.recent.len() >= RECENT {
            self.recent.pop_front();
        }
        self.recent.push_back(Recent {
            at,
            pid: rec.pid,
            uid: rec.uid,
            name: name.clone(),
            addresses: addrs.iter().map(|a| a.0).collect(),
            ttl: addrs.iter().map(|a| a.1).min().unwrap_or(0),
            resolver: rec.resolver,
            asker,
        });
        for (ip, ttl) in addrs {
            let entry = Entry {
                name: name.clone(),
                expires: now + Duration::from_secs(ttl.into()) + self.grace,
            };
            let kept = keep(&mut self.by_process, (rec.pid, ip), entry.clone(), now)
                & keep(&mut self.by_cgroup, (rec.cgroup_id, ip), entry.clone(), now)
                & keep(&mut self.by_host, ip, entry, now);
            if !kept {
                self.stats.not_kept += 1;
            }
        }
    }

    /// The name `pid` (in `cgroup_id`) resolved to `dst`, and whose answer
    /// it was.
    pub fn name_of(
        &self,
        pid: u32,
        cgroup_id: u64,
        dst: IpAddr,
        now: Instant,
    ) -> Option<(Arc<str>, NameSource)> {
        if let Some(n) = live(&self.by_process, &(pid, dst), now) {
            return Some((n.clone(), NameSource::Process));
        }
        if let Some(n) = live(&self.by_cgroup, &(cgroup_id, dst), now) {
            return Some((n.clone(), NameSource::Cgroup));
        }
        live(&self.by_host, &dst, now).map(|n| (n.clone(), NameSource::Host))
    }

    /// Drops what expired.
    pub fn prune(&mut self, now: Instant) {
        self.by_process.retain(|_, e| e.expires > now);
        self.by_cgroup.retain(|_, e| e.expires > now);
        self.by_host.retain(|_, e| e.expires > now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::op::{Message, MessageType, Query};
    use hickory_proto::rr::rdata::{A, AAAA, CNAME};
    use hickory_proto::rr::{Name, RecordType};

    fn answer(question: &str, records: Vec<hickory_proto::rr::Record>) -> Vec<u8> {
        let mut m = Message::new(7, MessageType::Response, hickory_proto::op::OpCode::Query);
        m.add_query(Query::query(Name::from_ascii(question).unwrap(), RecordType::A));
        for r in records {
            m.add_answer(r);
        }
        m.to_vec().unwrap()
    }

    impl Answers {
        fn record_now(&mut self, rec: &DnsRecord, now: Instant) {
            self.record(rec, now, SystemTime::now(), None);
        }
    }

    fn rec(pid: u32, cgroup_id: u64, payload: Vec<u8>) -> DnsRecord {
        DnsRecord {
            pid,
            uid: 0,
            cgroup_id,
            ts_ns: 0,
            cookie: 1,
            resolver: "127.0.0.1:53".parse().unwrap(),
            payload,
        }
    }

    fn a(name: &str, ip: &str, ttl: u32) -> hickory_proto::rr::Record {
        hickory_proto::rr::Record::from_rdata(
            Name::from_ascii(name).unwrap(),
            ttl,
            RData::A(A(ip.parse().unwrap())),
        )
    }

    #[test]
    fn each_process_sees_its_own_name_for_a_shared_address() {
        let mut x = Answers::new(Duration::ZERO);
        let now = Instant::now();
        x.record_now(
            &rec(10, 5, answer("one.test.", vec![a("one.test.", "10.0.0.1", 60)])),
            now,
        );
        x.record_now(
            &rec(11, 5, answer("Two.Test.", vec![a("two.test.", "10.0.0.1", 60)])),
            now,
        );
        let ip = "10.0.0.1".parse().unwrap();
        assert_eq!(
            x.name_of(10, 5, ip, now),
            Some(("one.test".into(), NameSource::Process))
        );
        assert_eq!(
            x.name_of(11, 5, ip, now),
            Some(("two.test".into(), NameSource::Process))
        );
        // Another process of the cgroup: the cgroup's latest; elsewhere: the host's.
        assert_eq!(
            x.name_of(12, 5, ip, now),
            Some(("two.test".into(), NameSource::Cgroup))
        );
        assert_eq!(
            x.name_of(13, 6, ip, now),
            Some(("two.test".into(), NameSource::Host))
        );
        assert_eq!(x.name_of(10, 5, "10.0.0.2".parse().unwrap(), now), None);
    }

    #[test]
    fn cname_chains_and_aaaa_name_the_question_and_expire_with_the_ttl() {
        let mut x = Answers::new(Duration::from_secs(1));
        let now = Instant::now();
        let cname = hickory_proto::rr::Record::from_rdata(
            Name::from_ascii("www.test.").unwrap(),
            300,
            RData::CNAME(CNAME(Name::from_ascii("edge.cdn.test.").unwrap())),
        );
        let aaaa = hickory_proto::rr::Record::from_rdata(
            Name::from_ascii("edge.cdn.test.").unwrap(),
            2,
            RData::AAAA(AAAA("2001:db8::7".parse().unwrap())),
        );
        x.record_now(
            &rec(
                1,
                1,
                answer("www.test.", vec![cname, a("edge.cdn.test.", "10.9.9.9", 2), aaaa]),
            ),
            now,
        );
        for ip in ["10.9.9.9", "2001:db8::7"] {
            let ip = ip.parse().unwrap();
            assert_eq!(x.name_of(1, 1, ip, now).unwrap().0.as_ref(), "www.test");
            // TTL 2 s + grace 1 s.
            assert!(x.name_of(1, 1, ip, now + Duration::from_millis(2900)).is_some());
            assert!(x.name_of(1, 1, ip, now + Duration::from_secs(3)).is_none());
        }
        x.prune(now + Duration::from_secs(3));
        assert!(x.by_process.is_empty() && x.by_host.is_empty());
    }

    #[test]
    fn garbage_and_queries_are_counted_not_kept() {
        let mut x = Answers::new(Duration::ZERO);
        x.record_now(&rec(1, 1, vec![0xff; 40]), Instant::now());
        let mut q = Message::new(7, MessageType::Query, hickory_proto::op::OpCode::Query);
        q.add_query(Query::query(Name::from_ascii("x.test.").unwrap(), RecordType::A));
        x.record_now(&rec(1, 1, q.to_vec().unwrap()), Instant::now());
        assert_eq!((x.stats().answers, x.stats().undecodable), (0, 2));
    }
}
