//! A sink's filter: event kinds, verdicts, and globs over the process's
//! unit, container and executable. Every given condition must hold.

use super::EventKind;
use crate::config::SinkFilter;
use crate::table::Connection;

pub fn matches(f: &SinkFilter, kind: EventKind, c: &Connection) -> bool {
    if f.events.as_ref().is_some_and(|k| !k.contains(&kind)) {
        return false;
    }
    if f.verdicts.as_ref().is_some_and(|v| !v.contains(&c.verdict)) {
        return false;
    }
    let p = &c.process;
    // A system unit or, for user services, the user unit.
    let unit = |g: &glob::Pattern| {
        [&p.unit, &p.user_unit]
            .into_iter()
            .flatten()
            .any(|u| g.matches(u))
    };
    let opt = |g: &glob::Pattern, v: &Option<String>| v.as_deref().is_some_and(|v| g.matches(v));
    f.unit.as_ref().is_none_or(unit)
        && f.container.as_ref().is_none_or(|g| opt(g, &p.container_id))
        && f.exe.as_ref().is_none_or(|g| opt(g, &p.exe))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use connectracer_proto::{ConnState, Process, Protocol, Verdict};

    use super::*;

    fn conn(verdict: Verdict, unit: Option<&str>, exe: Option<&str>) -> Connection {
        Connection {
            id: 1,
            cookie: 1,
            protocol: Protocol::Tcp,
            state: ConnState::Connecting,
            fail_reason: None,
            verdict,
            policy_rule: None,
            dst: "127.0.0.1:80".parse().unwrap(),
            src: None,
            host_id: None,
            config_epoch: 1,
            host: None,
            label: None,
            dns_name: None,
            dns_source: None,
            started: std::time::SystemTime::UNIX_EPOCH,
            duration_ns: None,
            bytes_sent: None,
            bytes_received: None,
            container: Default::default(),
            process: Arc::new(Process {
                unit: unit.map(String::from),
                exe: exe.map(String::from),
                ..super::super::format::tests::process()
            }),
        }
    }

    #[test]
    fn every_condition_must_hold() {
        let f = SinkFilter {
            events: Some(vec![EventKind::Connect, EventKind::Denied]),
            verdicts: Some(vec![Verdict::Deny]),
            unit: Some(glob::Pattern::new("backup*.service").unwrap()),
            container: None,
            exe: Some(glob::Pattern::new("/usr/bin/*").unwrap()),
        };
        let c = conn(
            Verdict::Deny,
            Some("backup-daily.service"),
            Some("/usr/bin/rsync"),
        );
        assert!(matches(&f, EventKind::Denied, &c));
        assert!(!matches(&f, EventKind::Closed, &c), "kind");
        let allowed = conn(
            Verdict::Allow,
            Some("backup-daily.service"),
            Some("/usr/bin/rsync"),
        );
        assert!(!matches(&f, EventKind::Connect, &allowed), "verdict");
        let other = conn(Verdict::Deny, Some("cron.service"), Some("/usr/bin/rsync"));
        assert!(!matches(&f, EventKind::Connect, &other), "unit");
        let no_exe = conn(Verdict::Deny, Some("backup.service"), None);
        assert!(
            !matches(&f, EventKind::Connect, &no_exe),
            "a glob never matches a missing value"
        );
        assert!(matches(&SinkFilter::default(), EventKind::Closed, &no_exe));
    }
}
