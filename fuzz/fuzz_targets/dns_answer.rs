//! DNS answers as the kernel copies them off the wire for a querying
//! socket: any bytes, parsed into names (hickory-proto) and remembered.
#![no_main]

use std::time::{Duration, Instant, SystemTime};

use connectracerd::answers::Answers;
use connectracerd::bpf::event::DnsRecord;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut answers = Answers::new(Duration::from_secs(1));
    let rec = DnsRecord {
        pid: 1,
        uid: 0,
        cgroup_id: 1,
        ts_ns: 0,
        cookie: 1,
        resolver: "127.0.0.1:53".parse().unwrap(),
        payload: data.to_vec(),
    };
    let now = Instant::now();
    answers.record(&rec, now, SystemTime::now(), None);
    let _ = answers.name_of(1, 1, "10.0.0.1".parse().unwrap(), now);
    let _ = answers.recent().count();
});
