//! Stage one: the file as written. Every key is optional and spanned so that
//! validation can point at the line that holds a bad value.

use serde::Deserialize;
use toml::Spanned;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    pub trace: Option<Spanned<String>>,
    pub cgroup: Option<Spanned<String>>,
    #[serde(default)]
    pub host: Vec<RawHost>,
    pub dns: Option<RawDns>,
    pub bpf: Option<RawBpf>,
    pub metrics: Option<RawMetrics>,
    pub table: Option<RawTable>,
    pub log: Option<RawLog>,
    #[serde(default)]
    pub event_sink: Vec<RawEventSink>,
    /// Egress policy mode: "audit" or "enforce".
    pub mode: Option<Spanned<String>>,
    pub policy: Option<RawPolicy>,
    #[serde(default)]
    pub rule: Vec<RawRule>,
    #[serde(default)]
    pub scope: Vec<RawScope>,
    pub gpu: Option<RawGpu>,
    pub containers: Option<RawContainers>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawGpu {
    /// `"auto"`, `true` or `false` (checked by hand: spans do not survive
    /// serde's untagged enums).
    pub enabled: Option<Spanned<toml::Value>>,
    pub poll_interval: Option<Spanned<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawContainers {
    pub enabled: Option<Spanned<bool>>,
    /// A path or "off".
    pub docker_socket: Option<Spanned<String>>,
    pub podman_socket: Option<Spanned<String>>,
    pub containerd_socket: Option<Spanned<String>>,
    pub crio_socket: Option<Spanned<String>>,
    pub pod_labels: Option<Vec<Spanned<String>>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPolicy {
    pub default: Option<Spanned<String>>,
    pub allow_loopback: Option<Spanned<bool>>,
    pub allow_dns: Option<Spanned<bool>>,
    pub block_ipv6: Option<Spanned<bool>>,
}

/// `1000` or `"alice"`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum RawUser {
    Id(i64),
    Name(String),
}

/// Selector keys shared by rules and scopes (serde cannot flatten them
/// together with deny_unknown_fields).
#[derive(Debug, Default)]
pub struct RawSelector<'a> {
    pub unit: Option<&'a Spanned<String>>,
    pub cgroup: Option<&'a Spanned<String>>,
    pub container: Option<&'a Spanned<String>>,
    pub container_name: Option<&'a Spanned<String>>,
    pub pod: Option<&'a Spanned<String>>,
    pub namespace: Option<&'a Spanned<String>>,
    pub user: Option<&'a Spanned<RawUser>>,
    pub exe: Option<&'a Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRule {
    pub action: Spanned<String>,
    /// `"tracker.example.net"` or a list of destinations (spans do not
    /// survive serde's untagged enums, so the shape is checked by hand).
    pub dest: Option<Spanned<toml::Value>>,
    pub ports: Option<Vec<Spanned<RawPort>>>,
    pub protocol: Option<Spanned<String>>,
    pub unit: Option<Spanned<String>>,
    pub cgroup: Option<Spanned<String>>,
    pub container: Option<Spanned<String>>,
    pub container_name: Option<Spanned<String>>,
    pub pod: Option<Spanned<String>>,
    pub namespace: Option<Spanned<String>>,
    pub user: Option<Spanned<RawUser>>,
    pub exe: Option<Spanned<String>>,
    pub comment: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawScope {
    pub unit: Option<Spanned<String>>,
    pub cgroup: Option<Spanned<String>>,
    pub container: Option<Spanned<String>>,
    pub container_name: Option<Spanned<String>>,
    pub pod: Option<Spanned<String>>,
    pub namespace: Option<Spanned<String>>,
    pub user: Option<Spanned<RawUser>>,
    pub exe: Option<Spanned<String>>,
    pub default: Option<Spanned<String>>,
    pub mode: Option<Spanned<String>>,
    pub block_ipv6: Option<Spanned<bool>>,
}

/// Both tables carry the same selector keys; one view of them.
macro_rules! selector_view {
    ($($t:ty),*) => {$(
        impl $t {
            pub fn selector(&self) -> RawSelector<'_> {
                RawSelector {
                    unit: self.unit.as_ref(),
                    cgroup: self.cgroup.as_ref(),
                    container: self.container.as_ref(),
                    container_name: self.container_name.as_ref(),
                    pod: self.pod.as_ref(),
                    namespace: self.namespace.as_ref(),
                    user: self.user.as_ref(),
                    exe: self.exe.as_ref(),
                }
            }
        }
    )*};
}

selector_view!(RawRule, RawScope);

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHost {
    pub name: Spanned<String>,
    pub ports: Option<Vec<Spanned<RawPort>>>,
    pub label: Option<Spanned<String>>,
}

/// `443` or `"8000-8100"`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum RawPort {
    Number(i64),
    Text(String),
}

/// `4194304` or `"4MiB"`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum RawSize {
    Bytes(i64),
    Text(String),
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBpf {
    pub ring_buffer_size: Option<Spanned<RawSize>>,
    pub wakeup_threshold: Option<Spanned<RawSize>>,
    pub udp_dedup_entries: Option<Spanned<i64>>,
    pub keep_pinned_on_stop: Option<Spanned<bool>>,
    pub dns_answers: Option<Spanned<bool>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTable {
    pub max_open: Option<Spanned<i64>>,
    pub max_closed: Option<Spanned<i64>>,
    pub closed_retention: Option<Spanned<String>>,
    pub process_retention: Option<Spanned<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLog {
    pub format: Option<Spanned<String>>,
    pub events: Option<Spanned<bool>>,
}

/// One `[[event_sink]]`: the keys of every type, checked against `type`
/// in validation (serde's internally tagged enums lose the spans).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawEventSink {
    #[serde(rename = "type")]
    pub kind: Spanned<String>,
    pub name: Option<Spanned<String>>,
    pub format: Option<Spanned<String>>,
    pub path: Option<Spanned<String>>,
    pub max_size: Option<Spanned<RawSize>>,
    pub keep: Option<Spanned<i64>>,
    pub compress: Option<Spanned<bool>>,
    pub queue: Option<Spanned<i64>>,
    pub events: Option<Vec<Spanned<String>>>,
    pub verdicts: Option<Vec<Spanned<String>>>,
    pub unit: Option<Spanned<String>>,
    pub container: Option<Spanned<String>>,
    pub exe: Option<Spanned<String>>,
    pub endpoint: Option<Spanned<String>>,
    pub protocol: Option<Spanned<String>>,
    pub headers: Option<Spanned<std::collections::BTreeMap<String, Spanned<String>>>>,
    pub timeout: Option<Spanned<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDns {
    pub nameservers: Option<Vec<Spanned<String>>>,
    pub min_ttl: Option<Spanned<String>>,
    pub max_ttl: Option<Spanned<String>>,
    pub retry_min: Option<Spanned<String>>,
    pub retry_max: Option<Spanned<String>>,
    pub grace: Option<Spanned<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMetrics {
    /// "IP:PORT" or "off".
    pub listen: Option<Spanned<String>>,
    /// A path or "off".
    pub textfile: Option<Spanned<String>>,
    pub textfile_interval: Option<Spanned<String>>,
    pub remove_textfile_on_stop: Option<Spanned<bool>>,
    pub max_series_per_metric: Option<Spanned<i64>>,
    pub http_detail: Option<Spanned<bool>>,
    pub connection_labels: Option<Vec<Spanned<String>>>,
}
