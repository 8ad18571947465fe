//! The one connection filter `Who`, `Connections` and `Watch` share: what
//! the daemon applies before answering, and what a D-Bus client applies to
//! signals (which the bus broadcasts unfiltered). Defined here so both sides
//! judge a connection the same way.

use std::net::IpAddr;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use super::CallError;
use crate::{Connection, Verdict};

/// Every given field must match. Globs (`*`, `?`, `[...]`) are matched
/// case-sensitively except `name`, which DNS makes case-insensitive.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Filter {
    /// Glob over the systemd unit (system or user): `nginx.service`, `*.scope`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unit: Option<String>,
    /// A container id or its prefix (as `docker ps` shortens it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<String>,
    /// Glob over the process's command name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comm: Option<String>,
    /// Glob over the executable's path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exe: Option<String>,
    /// A user name or a numeric uid.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// Destination address or CIDR.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dest: Option<String>,
    /// Destination port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verdict: Option<Verdict>,
    /// Glob over the name the process resolved (dns_name) or the watched
    /// host it matched: `*.example.com`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Glob over the container's name, as its runtime reports it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container_name: Option<String>,
    /// Glob over the Kubernetes pod's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<String>,
    /// Glob over the Kubernetes pod's namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
}

/// A [`Filter`] with its globs and CIDR parsed once, for many connections.
#[derive(Debug, Clone, Default)]
pub struct Matcher {
    unit: Option<glob::Pattern>,
    container: Option<String>,
    comm: Option<glob::Pattern>,
    exe: Option<glob::Pattern>,
    user: Option<User>,
    dest: Option<IpNet>,
    port: Option<u16>,
    verdict: Option<Verdict>,
    name: Option<glob::Pattern>,
    container_name: Option<glob::Pattern>,
    pod: Option<glob::Pattern>,
    namespace: Option<glob::Pattern>,
}

#[derive(Debug, Clone)]
enum User {
    Uid(u32),
    Name(String),
}

fn invalid(field: &str, reason: String) -> CallError {
    CallError::InvalidArgument {
        field: field.into(),
        reason,
    }
}

fn pattern(field: &str, g: Option<&str>) -> Result<Option<glob::Pattern>, CallError> {
    g.map(glob::Pattern::new)
        .transpose()
        .map_err(|e| invalid(field, format!("not a glob: {e}")))
}

fn glob_ok(p: &Option<glob::Pattern>, value: Option<&str>) -> bool {
    p.as_ref().is_none_or(|g| value.is_some_and(|v| g.matches(v)))
}

impl Filter {
    /// True when no field is set: everything matches.
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }

    pub fn matcher(&self) -> Result<Matcher, CallError> {
        let dest = self
            .dest
            .as_deref()
            .map(|d| {
                d.parse::<IpNet>()
                    .or_else(|_| d.parse::<IpAddr>().map(IpNet::from))
                    .map_err(|_| invalid("dest", format!("`{d}` is not an address or CIDR")))
            })
            .transpose()?;
        let user = self.user.as_deref().map(|u| match u.parse::<u32>() {
            Ok(uid) => User::Uid(uid),
            Err(_) => User::Name(u.to_string()),
        });
        Ok(Matcher {
            unit: pattern("unit", self.unit.as_deref())?,
            container: self.container.clone(),
            comm: pattern("comm", self.comm.as_deref())?,
            exe: pattern("exe", self.exe.as_deref())?,
            user,
            dest,
            port: self.port,
            verdict: self.verdict,
            name: pattern(
                "name",
                self.name.as_deref().map(str::to_ascii_lowercase).as_deref(),
            )?,
            container_name: pattern("container_name", self.container_name.as_deref())?,
            pod: pattern("pod", self.pod.as_deref())?,
            namespace: pattern("namespace", self.namespace.as_deref())?,
        })
    }
}

impl Matcher {
    pub fn matches(&self, c: &Connection) -> bool {
        let p = &c.process;
        let unit = self.unit.as_ref().is_none_or(|g| {
            [p.unit.as_deref(), p.user_unit.as_deref()]
                .into_iter()
                .flatten()
                .any(|u| g.matches(u))
        });
        let container = self.container.as_ref().is_none_or(|want| {
            p.container_id
                .as_deref()
                .is_some_and(|id| !want.is_empty() && id.starts_with(want.as_str()))
        });
        let user = match &self.user {
            None => true,
            Some(User::Uid(uid)) => p.uid == *uid,
            Some(User::Name(n)) => p.user.as_deref() == Some(n.as_str()),
        };
        // v4-mapped destinations are recorded as IPv4; a v4 CIDR matches them.
        let dest = self.dest.is_none_or(|net| net.contains(&c.dst.ip()));
        let name = self.name.as_ref().is_none_or(|g| {
            [c.dns_name.as_deref(), c.host.as_deref()]
                .into_iter()
                .flatten()
                .any(|n| g.matches(&n.to_ascii_lowercase()))
        });
        unit && container
            && user
            && dest
            && name
            && glob_ok(&self.comm, Some(&p.comm))
            && glob_ok(&self.container_name, c.container.container_name.as_deref())
            && glob_ok(&self.pod, c.container.pod_name.as_deref())
            && glob_ok(&self.namespace, c.container.pod_namespace.as_deref())
            && glob_ok(&self.exe, p.exe.as_deref())
            && self.port.is_none_or(|pt| c.dst.port() == pt)
            && self.verdict.is_none_or(|v| c.verdict == v)
    }
}

/// The kinds of event a Watch stream carries.
pub const EVENT_KINDS: [&str; 6] = ["connect", "send", "established", "failed", "closed", "denied"];

/// A Watch stream's filters, checked once before the stream starts: by the
/// daemon for the control socket, by the client for D-Bus signals.
#[derive(Debug)]
pub struct WatchMatcher {
    pid: Option<u32>,
    host: Option<String>,
    events: Vec<String>,
    filter: Matcher,
}

impl super::WatchParams {
    pub fn matcher(&self) -> Result<WatchMatcher, CallError> {
        if let Some(bad) = self.events.iter().find(|e| !EVENT_KINDS.contains(&e.as_str())) {
            return Err(invalid(
                "events",
                format!("`{bad}` is not an event kind: {}", EVENT_KINDS.join(", ")),
            ));
        }
        Ok(WatchMatcher {
            pid: self.pid,
            host: self.host.clone(),
            events: self.events.clone(),
            filter: self.filter.matcher()?,
        })
    }
}

impl WatchMatcher {
    pub fn matches(&self, kind: &str, c: &Connection) -> bool {
        let host_ok = self
            .host
            .as_ref()
            .is_none_or(|h| c.host.as_ref() == Some(h) || c.label.as_ref() == Some(h));
        host_ok
            && self.pid.is_none_or(|p| p == c.process.pid)
            && (self.events.is_empty() || self.events.iter().any(|e| e == kind))
            && self.filter.matches(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conn() -> Connection {
        serde_json::from_value(serde_json::json!({
            "id": 1, "cookie": 2, "protocol": "tcp", "state": "established",
            "fail_reason": null, "verdict": "allow", "dst": "10.1.2.3:443",
            "src": "10.0.0.1:40000", "host_id": null, "config_epoch": 1,
            "host": "api.example.com", "label": "api", "dns_name": "API.example.com",
            "started": "2026-01-01T00:00:00Z", "duration_ns": null,
            "bytes_sent": null, "bytes_received": null,
            "container_name": "web-1", "container_image": "nginx:1.25",
            "pod_name": "web-7d4b9", "pod_namespace": "shop", "pod_labels": {"app": "web"},
            "process": {"pid": 7, "tid": 7, "ppid": 1, "uid": 1000, "user": "alice",
                "comm": "curl", "exe": "/usr/bin/curl", "argv": [], "cgroup_id": 9,
                "cgroup": null, "unit": "backup.service", "user_unit": null, "slice": null,
                "container_runtime": "docker", "container_id": "0123456789abcdef",
                "pod_uid": null}
        }))
        .unwrap()
    }

    fn matches(f: Filter) -> bool {
        f.matcher().unwrap().matches(&conn())
    }

    /// A filter with one field set.
    fn with(set: impl FnOnce(&mut Filter)) -> Filter {
        let mut f = Filter::default();
        set(&mut f);
        f
    }

    fn s(v: &str) -> Option<String> {
        Some(v.to_string())
    }

    #[test]
    fn each_field_matches_and_refuses() {
        assert!(matches(Filter::default()));
        let cases = [
            (
                with(|f| f.unit = s("*.service")),
                with(|f| f.unit = s("web.service")),
            ),
            (
                with(|f| f.container = s("0123")),
                with(|f| f.container = s("1234")),
            ),
            (with(|f| f.comm = s("cu*")), with(|f| f.comm = s("wget"))),
            (with(|f| f.exe = s("/usr/bin/*")), with(|f| f.exe = s("/bin/*"))),
            (with(|f| f.user = s("1000")), with(|f| f.user = s("bob"))),
            (with(|f| f.user = s("alice")), with(|f| f.user = s("1001"))),
            (
                with(|f| f.dest = s("10.0.0.0/8")),
                with(|f| f.dest = s("10.1.2.4")),
            ),
            (with(|f| f.port = Some(443)), with(|f| f.port = Some(80))),
            (
                with(|f| f.verdict = Some(Verdict::Allow)),
                with(|f| f.verdict = Some(Verdict::Deny)),
            ),
            (
                with(|f| f.name = s("*.EXAMPLE.com")),
                with(|f| f.name = s("*.example.org")),
            ),
            (
                with(|f| f.container_name = s("web-?")),
                with(|f| f.container_name = s("db*")),
            ),
            (with(|f| f.pod = s("web-*")), with(|f| f.pod = s("web"))),
            (
                with(|f| f.namespace = s("sh[o]p")),
                with(|f| f.namespace = s("kube-*")),
            ),
        ];
        for (yes, no) in cases {
            assert!(matches(yes.clone()), "{yes:?}");
            assert!(!matches(no.clone()), "{no:?}");
        }
    }

    #[test]
    fn outside_a_container_the_container_globs_match_nothing() {
        let mut c = conn();
        c.container = Default::default();
        for f in [
            with(|f| f.container_name = s("*")),
            with(|f| f.pod = s("*")),
            with(|f| f.namespace = s("*")),
        ] {
            assert!(!f.matcher().unwrap().matches(&c), "{f:?}");
        }
    }

    #[test]
    fn bad_values_name_their_field() {
        let bad = with(|f| f.dest = s("10.0.0.0/99"));
        assert_eq!(
            bad.matcher().unwrap_err(),
            invalid("dest", "`10.0.0.0/99` is not an address or CIDR".into())
        );
        let bad = with(|f| f.comm = s("["));
        assert!(matches!(bad.matcher(), Err(CallError::InvalidArgument { field, .. }) if field == "comm"));
        let bad = with(|f| f.pod = s("web-["));
        assert!(matches!(bad.matcher(), Err(CallError::InvalidArgument { field, .. }) if field == "pod"));
    }

    #[test]
    fn watch_takes_known_event_kinds_and_matches_them() {
        let p = super::super::WatchParams {
            events: vec!["closed".into()],
            host: s("api"),
            ..Default::default()
        };
        let m = p.matcher().unwrap();
        assert!(m.matches("closed", &conn()));
        assert!(!m.matches("connect", &conn()));
        let bad = super::super::WatchParams {
            events: vec!["exploded".into()],
            ..Default::default()
        };
        assert!(matches!(bad.matcher(), Err(CallError::InvalidArgument { field, .. }) if field == "events"));
    }
}
