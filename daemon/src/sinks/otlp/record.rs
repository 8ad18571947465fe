//! An event as an OTLP log record, its attributes named by the
//! OpenTelemetry semantic conventions where one fits and `connectracer.*`
//! where none does; and the resource (who sends).

use std::net::SocketAddr;
use std::time::SystemTime;

use connectracer_proto::{ContainerMeta, Process};
use opentelemetry_proto::tonic::common::v1::{
    any_value, AnyValue, ArrayValue, InstrumentationScope, KeyValue,
};
use opentelemetry_proto::tonic::logs::v1::{LogRecord, SeverityNumber};
use opentelemetry_proto::tonic::resource::v1::Resource;

use super::super::format::Formatter;
use super::super::{EventKind, WatchEvent};

/// `service.name` of the resource, and the instrumentation scope's name.
pub const SERVICE_NAME: &str = "connectracerd";
const SCOPE_NAME: &str = "connectracer";

fn kv(key: &str, value: any_value::Value) -> KeyValue {
    KeyValue {
        key: key.to_string(),
        value: Some(AnyValue { value: Some(value) }),
        ..KeyValue::default()
    }
}

/// Appends attributes, leaving out those without a value.
#[derive(Default)]
struct Attributes(Vec<KeyValue>);

impl Attributes {
    fn str(&mut self, key: &str, v: &str) {
        self.0.push(kv(key, any_value::Value::StringValue(v.to_string())));
    }

    fn opt_str(&mut self, key: &str, v: Option<&str>) {
        if let Some(v) = v {
            self.str(key, v);
        }
    }

    fn int(&mut self, key: &str, v: impl Into<i64>) {
        self.0.push(kv(key, any_value::Value::IntValue(v.into())));
    }

    /// A u64 counter or id; beyond i64 (never in practice) it is left out
    /// rather than wrapped.
    fn uint(&mut self, key: &str, v: Option<u64>) {
        if let Some(v) = v.and_then(|v| i64::try_from(v).ok()) {
            self.int(key, v);
        }
    }

    fn strings(&mut self, key: &str, v: &[String]) {
        let values = v
            .iter()
            .map(|s| AnyValue {
                value: Some(any_value::Value::StringValue(s.clone())),
            })
            .collect();
        self.0
            .push(kv(key, any_value::Value::ArrayValue(ArrayValue { values })));
    }

    fn address(&mut self, prefix: &str, a: SocketAddr) {
        // The IP as written alone, without the brackets of `[::1]:443`.
        self.str(&format!("{prefix}.address"), &a.ip().to_string());
        self.int(&format!("{prefix}.port"), a.port());
    }
}

fn unix_nanos(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// The process's attributes.
fn process(a: &mut Attributes, p: &Process) {
    a.int("process.pid", p.pid);
    if let Some(ppid) = p.ppid {
        a.int("process.parent_pid", ppid);
    }
    a.opt_str("process.executable.path", p.exe.as_deref());
    let base = p.exe.as_deref().and_then(|e| e.rsplit('/').next());
    a.opt_str("process.executable.name", base.filter(|b| !b.is_empty()));
    a.opt_str("process.command", p.argv.first().map(String::as_str));
    if !p.argv.is_empty() {
        a.strings("process.command_args", &p.argv);
    }
    // comm is the task's name (what `ps` and `top` show, 15 bytes).
    a.int("thread.id", p.tid);
    a.str("thread.name", &p.comm);
    a.int("process.user.id", p.uid);
    a.opt_str("process.user.name", p.user.as_deref());
    a.opt_str("container.id", p.container_id.as_deref());
    a.opt_str("container.runtime.name", p.container_runtime.as_deref());
    a.opt_str("k8s.pod.uid", p.pod_uid.as_deref());
    a.uint("connectracer.cgroup_id", Some(p.cgroup_id));
    a.opt_str("connectracer.cgroup", p.cgroup.as_deref());
    a.opt_str("connectracer.unit", p.unit.as_deref());
    a.opt_str("connectracer.user_unit", p.user_unit.as_deref());
    a.opt_str("connectracer.slice", p.slice.as_deref());
}

/// Every attribute of an event: the connection's, then its process's.
/// What the container runtime said of the connection's container, under
/// the semantic conventions' names.
fn container(a: &mut Attributes, m: &ContainerMeta) {
    a.opt_str("container.name", m.container_name.as_deref());
    a.opt_str("container.image.name", m.container_image.as_deref());
    a.opt_str("k8s.pod.name", m.pod_name.as_deref());
    a.opt_str("k8s.namespace.name", m.pod_namespace.as_deref());
    for (k, v) in &m.pod_labels {
        a.str(&format!("k8s.pod.label.{k}"), v);
    }
}

pub fn attributes(ev: &WatchEvent) -> Vec<KeyValue> {
    let c = &ev.connection;
    let mut a = Attributes::default();
    a.str("connectracer.event", ev.kind.as_str());
    a.str("network.transport", c.protocol.as_str());
    let family = if c.dst.is_ipv4() { "ipv4" } else { "ipv6" };
    a.str("network.type", family);
    // The traced process is the client: the destination is the peer and
    // the server, named by what the process looked up where known.
    a.address("network.peer", c.dst);
    let server = c.dns_name.as_deref().or(c.host.as_deref());
    a.str(
        "server.address",
        &server.map_or_else(|| c.dst.ip().to_string(), str::to_string),
    );
    a.int("server.port", c.dst.port());
    if let Some(src) = c.src {
        a.address("network.local", src);
    }
    a.opt_str("connectracer.dns_name", c.dns_name.as_deref());
    a.opt_str("connectracer.dns_source", c.dns_source.map(|s| s.as_str()));
    a.opt_str("connectracer.host", c.host.as_deref());
    a.opt_str("connectracer.label", c.label.as_deref());
    a.str("connectracer.state", c.state.as_str());
    a.str("connectracer.verdict", c.verdict.as_str());
    a.uint("connectracer.policy_rule", c.policy_rule.map(u64::from));
    a.opt_str("connectracer.fail_reason", c.fail_reason.map(|r| r.as_str()));
    a.uint("connectracer.connection_id", Some(c.id));
    a.uint("connectracer.socket_cookie", Some(c.cookie));
    a.int("connectracer.config_epoch", c.config_epoch);
    a.uint("connectracer.started_unix_nano", Some(unix_nanos(c.started)));
    a.uint("connectracer.duration_ns", c.duration_ns);
    a.uint("connectracer.bytes_sent", c.bytes_sent);
    a.uint("connectracer.bytes_received", c.bytes_received);
    process(&mut a, &c.process);
    container(&mut a, &c.container);
    a.0
}

/// The record: the kernel's time, a severity (refusals and failures warn),
/// the text line as body, and the attributes.
pub fn log_record(f: &mut Formatter, ev: &WatchEvent, observed: SystemTime) -> LogRecord {
    let (severity, text) = match ev.kind {
        EventKind::Denied | EventKind::Failed => (SeverityNumber::Warn, "WARN"),
        _ => (SeverityNumber::Info, "INFO"),
    };
    let line = f.text_line(ev);
    // The line without its leading timestamp, which the record has.
    let body = line.split_once(' ').map_or(line.as_str(), |(_, rest)| rest);
    LogRecord {
        time_unix_nano: unix_nanos(ev.at),
        observed_time_unix_nano: unix_nanos(observed),
        severity_number: severity as i32,
        severity_text: text.to_string(),
        event_name: format!("connectracer.{}", ev.kind.as_str()),
        body: Some(AnyValue {
            value: Some(any_value::Value::StringValue(body.to_string())),
        }),
        attributes: attributes(ev),
        ..LogRecord::default()
    }
}

/// Who sends: the daemon on this host.
pub fn resource() -> Resource {
    let mut a = Attributes::default();
    a.str("service.name", SERVICE_NAME);
    a.str("service.version", env!("CARGO_PKG_VERSION"));
    // uname, not /proc/sys/kernel/hostname: the unit hides /proc/sys.
    let uts = nix::sys::utsname::uname().ok();
    a.opt_str("host.name", uts.as_ref().and_then(|u| u.nodename().to_str()));
    a.str("os.type", "linux");
    Resource {
        attributes: a.0,
        ..Resource::default()
    }
}

pub fn scope() -> InstrumentationScope {
    InstrumentationScope {
        name: SCOPE_NAME.to_string(),
        version: env!("CARGO_PKG_VERSION").to_string(),
        ..InstrumentationScope::default()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::Arc;

    use super::*;
    use crate::sinks::format::tests::event;

    fn value(kv: &KeyValue) -> String {
        match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
            Some(any_value::Value::StringValue(s)) => s.clone(),
            Some(any_value::Value::IntValue(i)) => i.to_string(),
            Some(any_value::Value::ArrayValue(a)) => {
                let items: Vec<String> = a
                    .values
                    .iter()
                    .map(|v| match &v.value {
                        Some(any_value::Value::StringValue(s)) => s.clone(),
                        other => panic!("{other:?}"),
                    })
                    .collect();
                format!("[{}]", items.join(","))
            }
            other => panic!("{}: {other:?}", kv.key),
        }
    }

    fn map(ev: &WatchEvent) -> BTreeMap<String, String> {
        let attrs = attributes(ev);
        let m: BTreeMap<String, String> = attrs.iter().map(|kv| (kv.key.clone(), value(kv))).collect();
        assert_eq!(m.len(), attrs.len(), "an attribute appears twice");
        m
    }

    #[test]
    fn an_event_maps_to_the_conventional_attributes() {
        let m = map(&event(EventKind::Closed));
        let want: BTreeMap<String, String> = [
            ("connectracer.event", "closed"),
            ("network.transport", "tcp"),
            ("network.type", "ipv4"),
            ("network.peer.address", "93.184.215.14"),
            ("network.peer.port", "443"),
            ("server.address", "example.com"),
            ("server.port", "443"),
            ("network.local.address", "10.0.2.15"),
            ("network.local.port", "51234"),
            ("connectracer.host", "example.com"),
            ("connectracer.state", "closed"),
            ("connectracer.verdict", "would_deny"),
            ("connectracer.policy_rule", "2"),
            ("connectracer.connection_id", "3"),
            ("connectracer.socket_cookie", "99"),
            ("connectracer.config_epoch", "4"),
            ("connectracer.started_unix_nano", "1795000000000000000"),
            ("connectracer.duration_ns", "245123456"),
            ("connectracer.bytes_sent", "517"),
            ("connectracer.bytes_received", "4821"),
            ("process.pid", "4242"),
            ("process.parent_pid", "1"),
            ("process.executable.path", "/usr/bin/curl"),
            ("process.executable.name", "curl"),
            ("process.command", "curl"),
            ("process.command_args", "[curl,-sI]"),
            ("thread.id", "4242"),
            ("thread.name", "curl"),
            ("process.user.id", "1000"),
            ("process.user.name", "alice"),
            ("connectracer.cgroup_id", "7"),
            ("connectracer.cgroup", "/user.slice/session-3.scope"),
            ("connectracer.unit", "session-3.scope"),
            ("connectracer.slice", "user.slice"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        assert_eq!(m, want);
    }

    #[test]
    fn names_containers_and_v6_and_prefers_the_looked_up_name() {
        let mut ev = event(EventKind::Denied);
        let c = &mut ev.connection;
        c.dst = "[2001:db8::1]:8443".parse().unwrap();
        c.src = None;
        c.dns_name = Some("api.example.net".into());
        c.dns_source = Some(connectracer_proto::NameSource::Process);
        let mut p = (*c.process).clone();
        p.container_runtime = Some("docker".into());
        p.container_id = Some("ab".repeat(32));
        p.pod_uid = Some("0f1e2d3c-0000-4000-8000-000000000001".into());
        p.exe = None;
        p.argv.clear();
        c.process = Arc::new(p);
        c.container = Arc::new(connectracer_proto::ContainerMeta {
            container_name: Some("web".into()),
            container_image: Some("shop/web:1.2".into()),
            pod_name: Some("web-7d4b9".into()),
            pod_namespace: Some("shop".into()),
            pod_labels: [("app".to_string(), "web".to_string())].into(),
        });
        let m = map(&ev);
        assert_eq!(m["container.name"], "web");
        assert_eq!(m["container.image.name"], "shop/web:1.2");
        assert_eq!(
            (
                &m["k8s.pod.name"],
                &m["k8s.namespace.name"],
                &m["k8s.pod.label.app"]
            ),
            (&"web-7d4b9".to_string(), &"shop".to_string(), &"web".to_string())
        );
        assert_eq!(m["network.type"], "ipv6");
        assert_eq!(m["network.peer.address"], "2001:db8::1");
        assert_eq!(m["server.address"], "api.example.net");
        assert_eq!(m["connectracer.dns_source"], "process");
        assert_eq!(m["container.id"], "ab".repeat(32));
        assert_eq!(m["container.runtime.name"], "docker");
        assert_eq!(m["k8s.pod.uid"], "0f1e2d3c-0000-4000-8000-000000000001");
        for absent in [
            "network.local.address",
            "process.executable.path",
            "process.executable.name",
            "process.command",
            "process.command_args",
        ] {
            assert!(!m.contains_key(absent), "{absent} without a value");
        }
    }

    #[test]
    fn the_record_has_the_kernel_time_severity_and_text_body() {
        let ev = event(EventKind::Denied);
        let observed = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_795_000_001);
        let r = log_record(&mut Formatter::default(), &ev, observed);
        assert_eq!(r.time_unix_nano, 1_795_000_000_123_000_000);
        assert_eq!(r.observed_time_unix_nano, 1_795_000_001_000_000_000);
        assert_eq!(
            (r.severity_number, r.severity_text.as_str()),
            (SeverityNumber::Warn as i32, "WARN")
        );
        assert_eq!(r.event_name, "connectracer.denied");
        let Some(any_value::Value::StringValue(body)) = r.body.and_then(|b| b.value) else {
            panic!("no body")
        };
        assert!(
            body.starts_with("denied tcp 10.0.2.15:51234 -> 93.184.215.14:443 pid=4242"),
            "{body}"
        );
        let info = log_record(&mut Formatter::default(), &event(EventKind::Connect), observed);
        assert_eq!(info.severity_number, SeverityNumber::Info as i32);
    }
}
