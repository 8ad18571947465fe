//! Values of every wire type: `full` with every optional value given and
//! every list non-empty, `min` with nothing optional, so that the checker
//! sees each field both ways.

use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use connectracer_proto::api::*;
use connectracer_proto::{ConnState, Connection, ContainerMeta, FailReason, Process, Protocol, Verdict};
use serde::Serialize;
use serde_json::Value;

fn json<T: Serialize>(v: &T) -> Value {
    serde_json::to_value(v).unwrap()
}

fn process(full: bool) -> Process {
    let s = |v: &str| full.then(|| v.to_string());
    Process {
        pid: 1,
        tid: 2,
        ppid: full.then_some(1),
        uid: 1000,
        user: s("u"),
        comm: "curl".into(),
        exe: s("/usr/bin/curl"),
        argv: vec!["curl".into()],
        cgroup_id: 5,
        cgroup: s("/a"),
        unit: s("a.service"),
        user_unit: s("b.service"),
        slice: s("system.slice"),
        container_runtime: s("docker"),
        container_id: s("c"),
        pod_uid: s("p"),
    }
}

fn connection(full: bool) -> Connection {
    Connection {
        id: 7,
        cookie: 99,
        protocol: Protocol::Udp,
        state: ConnState::Failed,
        fail_reason: full.then_some(FailReason::TimedOut),
        verdict: Verdict::WouldDeny,
        policy_rule: full.then_some(3),
        dst: "[2001:db8::1]:443".parse().unwrap(),
        src: full.then(|| "10.0.0.1:5000".parse().unwrap()),
        host_id: full.then_some(0),
        config_epoch: 3,
        host: full.then(|| "api.test".into()),
        label: full.then(|| "l".into()),
        dns_name: full.then(|| "cdn.test".into()),
        dns_source: full.then_some(connectracer_proto::NameSource::Cgroup),
        started: UNIX_EPOCH + Duration::from_micros(1_700_000_000_123_456),
        duration_ns: full.then_some(1),
        bytes_sent: full.then_some(2),
        bytes_received: full.then_some(3),
        container: Arc::new(ContainerMeta {
            container_name: full.then(|| "web".into()),
            container_image: full.then(|| "nginx:1.25".into()),
            pod_name: full.then(|| "web-7d4b9".into()),
            pod_namespace: full.then(|| "shop".into()),
            pod_labels: if full {
                [("app".to_string(), "web".to_string())].into()
            } else {
                Default::default()
            },
        }),
        process: Arc::new(process(full)),
    }
}

fn stats(full: bool) -> StatsReply {
    let sink = SinkStats {
        name: "file".into(),
        kind: "file".into(),
        last_error: Some("disk full".into()),
        ..Default::default()
    };
    StatsReply {
        stats: Stats {
            kernel: KernelCounters {
                drops_per_cpu: vec![0, 1],
                ..Default::default()
            },
            uptime_seconds: 1.5,
            last_reload_error: full.then(|| "bad".into()),
            trace_mode: "all".into(),
            sinks: if full {
                vec![sink, SinkStats::default()]
            } else {
                vec![]
            },
            ..Default::default()
        },
    }
}

fn gpu(full: bool) -> GpuReply {
    if !full {
        return GpuReply {
            reason: Some("libnvidia-ml.so.1 not found".into()),
            ..Default::default()
        };
    }
    GpuReply {
        enabled: true,
        reason: None,
        sampled: Some("2026-11-29T10:00:00.000001Z".into()),
        poll_interval_seconds: 5.0,
        devices: vec![
            GpuDevice {
                index: 0,
                uuid: "GPU-1".into(),
                name: "NVIDIA H200".into(),
                mig: false,
                memory_used_bytes: Some(1 << 30),
                memory_total_bytes: Some(141 << 30),
                utilization: Some(0.5),
                memory_utilization: Some(0.25),
                temperature_celsius: Some(40),
                power_watts: Some(120.5),
                errors: vec![],
            },
            GpuDevice {
                index: 1,
                uuid: "GPU-2".into(),
                errors: vec!["temperature: GPU is lost".into()],
                ..Default::default()
            },
        ],
        processes: vec![
            GpuProcess {
                gpu: 0,
                uuid: "GPU-1".into(),
                gpu_instance: Some(1),
                pid: 7,
                memory_bytes: Some(1 << 20),
                sm_utilization: Some(0.1),
                memory_utilization: Some(0.0),
                process: Some(process(true)),
            },
            GpuProcess {
                gpu: 0,
                uuid: "GPU-1".into(),
                gpu_instance: None,
                pid: 8,
                memory_bytes: None,
                sm_utilization: None,
                memory_utilization: None,
                process: None,
            },
        ],
    }
}

fn host(full: bool) -> HostInfo {
    HostInfo {
        id: 0,
        name: "api.test".into(),
        kind: "hostname".into(),
        ports: vec!["443".into()],
        label: full.then(|| "l".into()),
        source: "/etc/connectracer/connectracer.toml".into(),
        addresses: vec!["10.0.0.1".into()],
        ttl_seconds: full.then_some(60),
        consecutive_failures: full.then_some(0),
        last_error: full.then(|| "timeout".into()),
    }
}

fn policy(full: bool) -> PolicyShowReply {
    PolicyShowReply {
        active: true,
        mode: "audit".into(),
        default: "allow".into(),
        exceptions: vec!["127.0.0.0/8 (loopback)".into()],
        scopes: vec![PolicyScopeInfo {
            id: 1,
            selector: "unit backup.service".into(),
            default: full.then(|| "deny".into()),
            mode: "enforce".into(),
            block_ipv6: false,
        }],
        rules: vec![PolicyRuleInfo {
            id: 1,
            action: "deny".into(),
            dest: vec!["10.0.0.0/8".into()],
            ports: vec!["22".into()],
            protocol: full.then_some(Protocol::Tcp),
            scope: full.then(|| "unit backup.service".into()),
            addresses: vec!["10.0.0.0/8".into()],
            origin: "/etc/connectracer/conf.d/a.toml:3".into(),
        }],
    }
}

fn parameters(op: Operation) -> Value {
    let v = json(&op);
    v.get("parameters")
        .cloned()
        .unwrap_or_else(|| serde_json::json!({}))
}

/// A method's parameters, given in full and left out where they may be.
pub fn inputs(method: &str) -> Vec<Value> {
    let s = |v: &str| Some(v.to_string());
    let full = match method {
        "Who" => vec![
            Operation::Who(WhoParams {
                address: s("10.0.0.1"),
                port: Some(443),
                local_port: Some(5000),
                limit: Some(10),
                filter: Filter {
                    unit: s("*.service"),
                    container: s("0123"),
                    comm: s("curl"),
                    exe: s("/usr/bin/*"),
                    user: s("root"),
                    dest: s("10.0.0.0/8"),
                    port: Some(443),
                    verdict: Some(Verdict::Deny),
                    name: s("*.example.com"),
                    container_name: s("web*"),
                    pod: s("web-*"),
                    namespace: s("shop"),
                },
            }),
            Operation::Who(WhoParams::default()),
        ],
        "Answers" => vec![
            Operation::Answers(AnswersParams {
                pid: Some(7),
                unit: Some("backup*.service".into()),
                limit: Some(5),
            }),
            Operation::Answers(AnswersParams::default()),
        ],
        "Profile" => vec![
            Operation::Profile(ProfileParams {
                cgroup: s("/system.slice/x.service"),
                duration_ms: 1000,
                ..ProfileParams::default()
            }),
            Operation::Profile(ProfileParams {
                unit: s("x.service"),
                duration_ms: 1,
                ..ProfileParams::default()
            }),
            Operation::Profile(ProfileParams {
                container: s("web"),
                duration_ms: 1,
                ..ProfileParams::default()
            }),
        ],
        "PolicySuggest" => vec![
            Operation::PolicySuggest(SuggestParams {
                unit: s("x.service"),
                since_ms: Some(60_000),
                ..SuggestParams::default()
            }),
            Operation::PolicySuggest(SuggestParams {
                cgroup: s("/system.slice"),
                ..SuggestParams::default()
            }),
            Operation::PolicySuggest(SuggestParams {
                uid: Some(1000),
                ..SuggestParams::default()
            }),
            Operation::PolicySuggest(SuggestParams {
                container: s("0123456789ab"),
                ..SuggestParams::default()
            }),
        ],
        "Ps" => vec![
            Operation::Ps(PsParams {
                pid: 1,
                limit: Some(5),
            }),
            Operation::Ps(PsParams { pid: 1, limit: None }),
        ],
        "Connections" => vec![
            Operation::Connections(ConnectionsParams {
                state: Some(ConnState::Established),
                protocol: Some(Protocol::Tcp),
                limit: Some(3),
                filter: Filter {
                    unit: s("*.service"),
                    container: s("0123"),
                    comm: s("curl"),
                    exe: s("/usr/bin/*"),
                    user: s("root"),
                    dest: s("10.0.0.0/8"),
                    port: Some(443),
                    verdict: Some(Verdict::Deny),
                    name: s("*.example.com"),
                    container_name: s("web*"),
                    pod: s("web-*"),
                    namespace: s("shop"),
                },
            }),
            Operation::Connections(ConnectionsParams::default()),
        ],
        "AddHost" => vec![
            Operation::AddHost(AddHostParams {
                name: "api.test".into(),
                ports: vec!["443".into()],
                label: s("l"),
                runtime: true,
            }),
            Operation::AddHost(AddHostParams {
                name: "api.test".into(),
                ..Default::default()
            }),
        ],
        "RemoveHost" => vec![Operation::RemoveHost(RemoveHostParams { name: "x".into() })],
        "PolicyCheck" => vec![
            Operation::PolicyCheck(PolicyCheckParams {
                unit: s("a.service"),
                pid: Some(1),
                uid: Some(0),
                cgroup: s("/a"),
                exe: s("/bin/sh"),
                address: "10.0.0.1".into(),
                port: 22,
                protocol: Some(Protocol::Udp),
            }),
            Operation::PolicyCheck(PolicyCheckParams {
                address: "10.0.0.1".into(),
                port: 22,
                ..Default::default()
            }),
        ],
        "Watch" => vec![
            Operation::Watch(WatchParams {
                pid: Some(1),
                host: s("api.test"),
                events: vec!["connect".into(), "closed".into()],
                filter: Filter {
                    unit: s("*.service"),
                    container: s("0123"),
                    comm: s("curl"),
                    exe: s("/usr/bin/*"),
                    user: s("root"),
                    dest: s("10.0.0.0/8"),
                    port: Some(443),
                    verdict: Some(Verdict::Deny),
                    name: s("*.example.com"),
                    container_name: s("web*"),
                    pod: s("web-*"),
                    namespace: s("shop"),
                },
            }),
            Operation::Watch(WatchParams::default()),
        ],
        "Sandbox" => vec![
            Operation::Sandbox(SandboxParams {
                rules: vec![
                    SandboxRule {
                        action: "allow".into(),
                        dest: vec!["api.test".into(), "10.0.0.0/8".into()],
                        ports: vec!["443".into(), "8000-8100".into()],
                        protocol: s("udp"),
                    },
                    SandboxRule {
                        action: "deny".into(),
                        ..Default::default()
                    },
                ],
                audit: true,
                profile: true,
            }),
            Operation::Sandbox(SandboxParams::default()),
        ],
        _ => {
            let op = Operation::every().into_iter().find(|o| o.name() == method);
            op.into_iter().collect()
        }
    };
    full.into_iter().map(parameters).collect()
}

/// Each reply a method can give, in full and minimal.
pub fn outputs(method: &str) -> Vec<Value> {
    let reload = |full: bool| ReloadReply {
        epoch: 2,
        needs_restart: if full {
            vec!["bpf.ring_buffer_size".into()]
        } else {
            vec![]
        },
    };
    let both = |f: &dyn Fn(bool) -> Value| vec![f(true), f(false)];
    match method {
        "GetVersion" => vec![json(&VersionReply {
            version: "0.1.0".into(),
            kernel: "6.1".into(),
        })],
        "GetStats" => both(&|f| json(&stats(f))),
        "Who" | "Ps" | "Connections" => both(&|f| {
            json(&ConnectionsReply {
                connections: vec![connection(f)],
            })
        }),
        "Reload" | "AddHost" | "RemoveHost" => both(&|f| json(&reload(f))),
        "Hosts" => both(&|f| json(&HostsReply { hosts: vec![host(f)] })),
        "Answers" => vec![json(&AnswersReply {
            answers: vec![DnsAnswer {
                time: "2026-11-29T10:00:00.000001Z".into(),
                pid: 7,
                uid: 1000,
                name: "api.test".into(),
                addresses: vec!["10.0.0.1".into(), "2001:db8::1".into()],
                ttl_seconds: 60,
                resolver: "127.0.0.53:53".into(),
                cgroup: Some("/system.slice/backup.service".into()),
                unit: Some("backup.service".into()),
            }],
        })],
        "Gpu" => both(&|f| json(&gpu(f))),
        "Profile" => both(&|f| {
            json(&ProfileReply {
                cgroup: "/system.slice/x.service".into(),
                duration_ms: 1000,
                syscalls: vec![ProfiledSyscall {
                    arch: if f { SyscallArch::X86 } else { SyscallArch::X86_64 },
                    number: 0,
                    name: f.then(|| "read".into()),
                    count: 3,
                }],
                families: if f { vec![1, 2] } else { vec![] },
                unknown: 0,
                socketcall: 0,
            })
        }),
        "PolicySuggest" => both(&|f| {
            json(&SuggestReply {
                destinations: vec![SeenDestination {
                    name: f.then(|| "api.example.com".into()),
                    address: "2001:db8::1".parse().unwrap(),
                    port: 443,
                    protocol: if f { Protocol::Udp } else { Protocol::Tcp },
                    count: 2,
                    first_seen_ms: 1_700_000_000_000,
                    last_seen_ms: 1_700_000_001_000,
                }],
                dropped: u64::from(f),
                capacity: 16384,
                container: f.then(|| "ab".repeat(32)),
            })
        }),
        "PolicyShow" => both(&|f| json(&policy(f))),
        "PolicyCheck" => both(&|f| {
            json(&PolicyCheckReply {
                verdict: Verdict::Deny,
                rule: f.then_some(1),
                scope: "global".into(),
                reason: "rule 1".into(),
                subject: "uid 0".into(),
            })
        }),
        "Watch" => vec![
            json(&WatchReply::Event {
                event: "connect".into(),
                time: Some("2026-11-29T10:00:00.000001Z".into()),
                connection: Box::new(connection(true)),
            }),
            json(&WatchReply::Missed { missed: 3 }),
        ],
        "Sandbox" => vec![
            json(&SandboxReply::Placed {
                placed: SandboxPlaced {
                    id: "sb-1".into(),
                    cgroup: "/connectracer-sandbox/sb-1".into(),
                    mode: "enforce".into(),
                },
            }),
            json(&SandboxReply::Watch(WatchReply::Event {
                event: "denied".into(),
                time: Some("2026-11-29T10:00:00.000001Z".into()),
                connection: Box::new(connection(true)),
            })),
            json(&SandboxReply::Watch(WatchReply::Missed { missed: 3 })),
            json(&SandboxReply::Ended {
                ended: SandboxEnded {
                    reason: "the command's processes are gone".into(),
                    profile: None,
                },
            }),
            json(&SandboxReply::Ended {
                ended: SandboxEnded {
                    reason: "its processes had all exited".into(),
                    profile: Some(ProfileReply {
                        cgroup: "/connectracer-sandbox/sb-1".into(),
                        duration_ms: 12,
                        syscalls: vec![ProfiledSyscall {
                            arch: SyscallArch::X86_64,
                            number: 59,
                            name: Some("execve".into()),
                            count: 1,
                        }],
                        families: vec![1],
                        unknown: 0,
                        socketcall: 0,
                    }),
                },
            }),
        ],
        _ => vec![],
    }
}

/// One of each error.
pub fn errors() -> Vec<CallError> {
    vec![
        CallError::AccessDenied { reason: "r".into() },
        CallError::HostNotFound { name: "h".into() },
        CallError::ConfigInvalid {
            errors: vec!["a:1:1: x".into()],
        },
        CallError::InvalidArgument {
            field: "f".into(),
            reason: "r".into(),
        },
        CallError::MethodNotFound { method: "m".into() },
        CallError::InterfaceNotFound {
            interface: "i".into(),
        },
        CallError::InvalidParameter {
            parameter: "p".into(),
        },
    ]
}
