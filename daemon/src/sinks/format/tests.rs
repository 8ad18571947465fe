use super::*;
use crate::sinks::EventKind;
use crate::table::Connection;

pub fn process() -> Process {
    Process {
        pid: 4242,
        tid: 4242,
        ppid: Some(1),
        uid: 1000,
        user: Some("alice".into()),
        comm: "curl".into(),
        exe: Some("/usr/bin/curl".into()),
        argv: vec!["curl".into(), "-sI".into()],
        cgroup_id: 7,
        cgroup: Some("/user.slice/session-3.scope".into()),
        unit: Some("session-3.scope".into()),
        user_unit: None,
        slice: Some("user.slice".into()),
        container_runtime: None,
        container_id: None,
        pod_uid: None,
    }
}

pub fn event(kind: EventKind) -> WatchEvent {
    WatchEvent {
        kind,
        at: SystemTime::UNIX_EPOCH + Duration::from_millis(1_795_000_000_123),
        connection: Connection {
            id: 3,
            cookie: 99,
            protocol: Protocol::Tcp,
            state: ConnState::Closed,
            fail_reason: None,
            verdict: Verdict::WouldDeny,
            policy_rule: Some(2),
            dst: "93.184.215.14:443".parse().unwrap(),
            src: Some("10.0.2.15:51234".parse().unwrap()),
            host_id: Some(1),
            config_epoch: 4,
            host: Some("example.com".into()),
            label: None,
            dns_name: None,
            dns_source: None,
            started: SystemTime::UNIX_EPOCH + Duration::from_secs(1_795_000_000),
            duration_ns: Some(245_123_456),
            bytes_sent: Some(517),
            bytes_received: Some(4821),
            container: Default::default(),
            process: Arc::new(process()),
        },
    }
}

#[test]
fn json_line_is_the_connection_plus_timestamp_and_event() {
    let ev = event(EventKind::Closed);
    let mut out = Vec::new();
    let mut f = Formatter::default();
    f.json(&ev, &mut out);
    f.json(&ev, &mut out);
    let text = String::from_utf8(out).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[0], lines[1], "the cached attribution gives the same line");
    let got: serde_json::Value = serde_json::from_str(lines[0]).unwrap();
    let mut want = serde_json::to_value(&ev.connection).unwrap();
    want["timestamp"] = "2026-11-18T11:06:40.123000Z".into();
    want["event"] = "closed".into();
    let no_nulls = |v: &mut serde_json::Value| {
        v.as_object_mut().unwrap().retain(|_, v| !v.is_null());
    };
    no_nulls(&mut want);
    no_nulls(&mut want["process"]);
    assert!(want.get("label").is_none() && want["process"].get("pod_uid").is_none());
    assert_eq!(got, want);
}

#[test]
fn text_line_reads_like_before_with_a_human_duration() {
    let mut f = Formatter::default();
    assert_eq!(
        f.text_line(&event(EventKind::Closed)),
        "2026-11-18T11:06:40.123Z closed tcp 10.0.2.15:51234 -> 93.184.215.14:443 pid=4242 comm=\"curl\" uid=1000(alice) exe=\"/usr/bin/curl\" unit=\"session-3.scope\" cgroup=\"/user.slice/session-3.scope\" host=\"example.com\" verdict=\"would_deny\" rule=2 duration=245.1ms sent=517 received=4821"
    );
}

#[test]
fn text_line_carries_the_container_names() {
    let mut f = Formatter::default();
    let mut ev = event(EventKind::Connect);
    ev.connection.container = Arc::new(ContainerMeta {
        container_name: Some("web".into()),
        container_image: Some("nginx:1.25".into()),
        pod_name: Some("web-7d4b9".into()),
        pod_namespace: Some("shop".into()),
        pod_labels: [("app".into(), "web".into()), ("tier".into(), "front".into())].into(),
    });
    let line = f.text_line(&ev);
    assert!(
        line.contains(" cgroup=\"/user.slice/session-3.scope\" container_name=\"web\" image=\"nginx:1.25\" pod=\"shop/web-7d4b9\" pod_labels=\"app=web,tier=front\" host="),
        "{line}"
    );
}

/// What serde writes for the event: the reference.
fn serde_line(ev: &WatchEvent) -> String {
    let c = &ev.connection;
    let mut clock = Clock::default();
    let process = process_json(&c.process);
    let line = JsonLine {
        timestamp: clock.stamp(ev.at),
        event: ev.kind.as_str(),
        id: c.id,
        cookie: c.cookie,
        protocol: c.protocol,
        state: c.state,
        fail_reason: c.fail_reason,
        verdict: c.verdict,
        policy_rule: c.policy_rule,
        dst: c.dst,
        src: c.src,
        host_id: c.host_id,
        config_epoch: c.config_epoch,
        host: c.host.as_deref(),
        label: c.label.as_deref(),
        dns_name: c.dns_name.as_deref(),
        dns_source: c.dns_source,
        started: clock.stamp(c.started),
        duration_ns: c.duration_ns,
        bytes_sent: c.bytes_sent,
        bytes_received: c.bytes_received,
        container: &c.container,
        process: &process,
    };
    serde_json::to_string(&line).unwrap()
}

#[test]
fn the_direct_json_writer_matches_serde_for_every_variant() {
    use connectracer_proto::{ConnState as S, FailReason as F, NameSource, Protocol as P, Verdict as V};
    let mut f = Formatter::default();
    let mut n = 0;
    for (i, kind) in EventKind::ALL.into_iter().enumerate() {
        for state in [S::Connecting, S::Established, S::Failed, S::Closed] {
            for verdict in [V::Allow, V::Deny, V::WouldDeny] {
                let mut ev = event(kind);
                let c = &mut ev.connection;
                c.state = state;
                c.verdict = verdict;
                c.protocol = if i % 2 == 0 { P::Tcp } else { P::Udp };
                c.fail_reason = [None, Some(F::Denied), Some(F::from_errno(111))][n % 3];
                if n % 2 == 0 {
                    c.dst = "[2001:db8::1%3]:8443".parse().unwrap();
                    c.src = None;
                    c.host = Some("we\"ird\\name\u{1}é".into());
                    c.label = Some("a\nb".into());
                    c.dns_name = Some("cdn.\"x\".test".into());
                    c.dns_source = [Some(NameSource::Process), Some(NameSource::Cgroup), None][n % 3];
                    c.policy_rule = None;
                    c.host_id = None;
                    c.duration_ns = None;
                    c.bytes_sent = None;
                    c.bytes_received = Some(u64::MAX);
                }
                let mut out = Vec::new();
                f.json(&ev, &mut out);
                assert_eq!(out.pop(), Some(b'\n'));
                // Byte for byte: same keys, order, escapes and numbers.
                assert_eq!(String::from_utf8(out).unwrap(), serde_line(&ev));
                n += 1;
            }
        }
    }
}

#[test]
fn timestamps_match_humantime_across_seconds_and_days() {
    let mut clock = Clock::default();
    let base = SystemTime::UNIX_EPOCH + Duration::from_secs(1_795_000_000);
    for offset_us in [
        0u64,
        1,
        999_999,
        1_000_000,
        1_000_001,
        86_399_999_999,
        86_400_000_000,
    ] {
        let t = base + Duration::from_micros(offset_us);
        let got = clock.stamp(t);
        let want = humantime::format_rfc3339_micros(t).to_string();
        assert_eq!(std::str::from_utf8(&got.0).unwrap(), want);
    }
}

#[test]
fn durations_read_as_people_write_them() {
    let h = |ns: u64| human_duration(Duration::from_nanos(ns)).to_string();
    assert_eq!(h(0), "0ns");
    assert_eq!(h(12_500), "12.5µs");
    assert_eq!(h(122_859_000), "122.9ms");
    assert_eq!(h(12_400_000_000), "12.4s");
    assert_eq!(h(185_000_000_000), "3m05s");
    assert_eq!(h(7_500_000_000_000), "2h05m");
}
