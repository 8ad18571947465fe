use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use connectracer_proto::api::SuggestParams;
use connectracer_proto::{ConnState, Connection, Process, Protocol, Verdict};

use super::*;

fn conn(cgroup: &str, unit: &str, uid: u32, dst: &str, name: Option<&str>, at_s: u64) -> Connection {
    Connection {
        id: 0,
        cookie: 1,
        protocol: Protocol::Tcp,
        state: ConnState::Connecting,
        fail_reason: None,
        verdict: Verdict::Allow,
        policy_rule: None,
        dst: dst.parse().unwrap(),
        src: None,
        host_id: None,
        config_epoch: 1,
        host: None,
        label: None,
        dns_name: name.map(str::to_string),
        dns_source: None,
        started: UNIX_EPOCH + Duration::from_secs(at_s),
        duration_ns: None,
        bytes_sent: None,
        bytes_received: None,
        container: Arc::default(),
        process: Arc::new(Process {
            pid: 1,
            tid: 1,
            ppid: None,
            uid,
            user: None,
            comm: "t".into(),
            exe: None,
            argv: Vec::new(),
            cgroup_id: cgroup
                .bytes()
                .fold(7u64, |h, b| h.wrapping_mul(31).wrapping_add(u64::from(b))),
            cgroup: Some(cgroup.into()),
            unit: Some(unit.into()),
            user_unit: None,
            slice: None,
            container_runtime: None,
            container_id: None,
            pod_uid: None,
        }),
    }
}

fn filled() -> EgressSeen {
    let mut s = EgressSeen::new();
    s.record(&conn(
        "/x.slice/app.service",
        "app.service",
        0,
        "127.0.0.5:80",
        None,
        10,
    ));
    s.record(&conn(
        "/x.slice/app.service",
        "app.service",
        0,
        "127.0.0.5:80",
        None,
        20,
    ));
    s.record(&conn(
        "/x.slice/app.service",
        "app.service",
        0,
        "127.0.0.6:443",
        Some("b.test"),
        30,
    ));
    s.record(&conn(
        "/y.slice/db.service",
        "db.service",
        1000,
        "10.0.0.1:5432",
        None,
        40,
    ));
    let mut denied = conn("/x.slice/app.service", "app.service", 0, "127.0.0.7:80", None, 50);
    denied.verdict = Verdict::Deny;
    s.record(&denied);
    s
}

fn query(unit: Option<&str>, cgroup: Option<&str>, uid: Option<u32>) -> SuggestParams {
    SuggestParams {
        unit: unit.map(Into::into),
        cgroup: cgroup.map(Into::into),
        uid,
        container: None,
        since_ms: None,
    }
}

#[test]
fn a_scope_gets_its_destinations_counted_and_nothing_refused() {
    let s = filled();
    let now = UNIX_EPOCH + Duration::from_secs(100);
    let r = s.suggest(&query(Some("app.service"), None, None), now);
    let got: Vec<_> = r
        .destinations
        .iter()
        .map(|d| {
            (
                d.name.as_deref(),
                d.address.to_string(),
                d.port,
                d.count,
                d.first_seen_ms,
                d.last_seen_ms,
            )
        })
        .collect();
    assert_eq!(
        got,
        [
            (None, "127.0.0.5".into(), 80, 2, 10_000, 20_000),
            (Some("b.test"), "127.0.0.6".into(), 443, 1, 30_000, 30_000)
        ]
    );
    assert_eq!(r.dropped, 0);
    // A cgroup includes what is below it, and only on a path boundary.
    assert_eq!(
        s.suggest(&query(None, Some("/x.slice"), None), now)
            .destinations
            .len(),
        2
    );
    assert_eq!(
        s.suggest(&query(None, Some("/x.sli"), None), now)
            .destinations
            .len(),
        0
    );
    assert_eq!(
        s.suggest(&query(None, Some("/"), None), now).destinations.len(),
        3
    );
    assert_eq!(
        s.suggest(&query(None, None, Some(1000)), now).destinations.len(),
        1
    );
    // --since: only what was last seen within it.
    let recent = SuggestParams {
        since_ms: Some(75_000),
        ..query(Some("app.service"), None, None)
    };
    assert_eq!(s.suggest(&recent, now).destinations.len(), 1);
}

#[test]
fn past_the_bound_the_least_recently_seen_are_forgotten_and_counted() {
    let mut s = EgressSeen::new();
    // One cgroup per 1000 destinations, each seen at its own second.
    let record = |s: &mut EgressSeen, i: usize| {
        let cgroup = format!("/c{}", i / 1000);
        let dst = format!("10.0.{}.{}:{}", i / 60_000, (i / 250) % 240, (i % 250) + 1);
        s.record(&conn(&cgroup, "a.service", 0, &dst, None, i as u64));
    };
    for i in 0..MAX_ENTRIES {
        record(&mut s, i);
    }
    // The oldest is seen again: the most recent now, so it is kept.
    let mut again = conn("/c0", "a.service", 0, "10.0.0.0:1", None, 0);
    again.started = UNIX_EPOCH + Duration::from_secs(MAX_ENTRIES as u64);
    s.record(&again);
    let now = UNIX_EPOCH + Duration::from_secs(1_000_000);
    let of = |s: &EgressSeen, cg: &str| s.suggest(&query(None, Some(cg), None), now).destinations;
    assert_eq!(
        (s.len(), s.dropped(), of(&s, "/c0").len()),
        (MAX_ENTRIES, 0, 1000)
    );
    for i in MAX_ENTRIES..MAX_ENTRIES + 10 {
        record(&mut s, i);
    }
    let forgot = MAX_ENTRIES / 8;
    assert_eq!(s.dropped(), forgot as u64);
    assert_eq!(s.len(), MAX_ENTRIES - forgot + 10);
    // /c0's first destination was seen again last; the rest of /c0 and
    // /c1 are gone, scopes and all; /c2 kept what came after the cut.
    assert_eq!(of(&s, "/c0").len(), 1);
    assert_eq!(of(&s, "/c1").len(), 0);
    assert_eq!(of(&s, "/c2").len(), 3 * 1000 - forgot - 1);
    assert_eq!(of(&s, "/c16").len(), MAX_ENTRIES + 10 - 16_000);
    assert!(!s.scopes.iter().any(|sc| sc.cgroup == "/c1"));
}

#[test]
fn a_save_loads_back_whole() {
    let mut s = filled();
    let bytes = s.snapshot().expect("dirty after records");
    assert!(s.snapshot().is_none(), "nothing changed since");
    let dir = std::env::temp_dir().join(format!("egress-seen-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(saved::FILE);
    let saver = saved::Saver::spawn(path.clone()).unwrap();
    saver.finish(Some(bytes));
    let back = EgressSeen::load(&path).unwrap();
    let now = UNIX_EPOCH + Duration::from_secs(100);
    for q in [
        query(Some("app.service"), None, None),
        query(None, None, Some(1000)),
    ] {
        assert_eq!(back.suggest(&q, now), s.suggest(&q, now));
    }
    std::fs::write(
        &path,
        b"{\"version\": 2, \"scopes\": [], \"entries\": [], \"dropped\": 0}",
    )
    .unwrap();
    let e = EgressSeen::load(&path).unwrap_err().to_string();
    assert!(e.contains("version 2"), "{e}");
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(EgressSeen::load(&path).unwrap().is_empty());
}
