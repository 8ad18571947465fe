use super::*;

use super::errors_of as errors;

#[test]
fn defaults_when_empty() {
    let c = parse_config(Path::new("x.toml"), "").unwrap();
    assert_eq!(c, Config::default());
    assert_eq!(c.trace, TraceMode::Watched);
    assert_eq!(c.bpf.ring_buffer_size, 4 << 20);
}

#[test]
fn full_example_parses() {
    let c = parse_config(
        Path::new("x.toml"),
        r#"
trace = "all"
cgroup = "/system.slice"
[[host]]
name = "10.20.0.0/16"
ports = [443, "8000-8100"]
label = "payments"
[[host]]
name = "::ffff:192.0.2.0/120"
[[host]]
name = "2001:db8::1"
[bpf]
ring_buffer_size = "8MiB"
wakeup_threshold = 32768
udp_dedup_entries = 1000
[table]
max_open = 10
max_closed = 0
closed_retention = "90s"
[log]
format = "json"
events = false
"#,
    )
    .unwrap();
    assert_eq!(c.trace, TraceMode::All);
    assert_eq!(c.hosts.len(), 3);
    assert_eq!(c.hosts[0].ports.0, vec![443..=443, 8000..=8100]);
    assert_eq!(c.hosts[0].label.as_deref(), Some("payments"));
    assert_eq!(
        c.hosts[1].target,
        HostTarget::Net("192.0.2.0/24".parse().unwrap()),
        "v4-mapped folded to IPv4"
    );
    assert_eq!(
        c.hosts[2].target,
        HostTarget::Net("2001:db8::1/128".parse().unwrap())
    );
    assert_eq!(c.hosts.iter().map(|h| h.id).collect::<Vec<_>>(), [1, 2, 3]);
    assert_eq!(c.bpf.ring_buffer_size, 8 << 20);
    assert_eq!(c.table.closed_retention, Duration::from_secs(90));
    assert_eq!(c.log.format, LogFormat::Json);
    assert!(!c.log.events);
}

#[test]
fn syntax_and_unknown_keys_name_the_line() {
    assert_eq!(
        errors("trace = \"all\"\ntrcae = 1\n"),
        ["/etc/connectracer/connectracer.toml:2:1: trcae: unknown field `trcae`, expected one of `trace`, `cgroup`, `host`, `dns`, `bpf`, `metrics`, `table`, `log`, `event_sink`, `mode`, `policy`, `rule`, `scope`, `gpu`, `containers`"]
    );
    let e = errors("[[host]]\nname = \"10.0.0.1\"\nport = [1]\n");
    assert!(
        e[0].starts_with("/etc/connectracer/connectracer.toml:3:1: host[0].port: unknown field `port`"),
        "{e:?}"
    );
    let e = errors("trace = \n");
    assert!(
        e[0].starts_with("/etc/connectracer/connectracer.toml:1:"),
        "{e:?}"
    );
}

#[test]
fn every_value_error_is_collected_with_its_key() {
    let e = errors(
        r#"trace = "some"
cgroup = "relative/path"
[[host]]
name = "-bad-.example.com"
[[host]]
name = "10.1.2.3/16"
[[host]]
name = "10.0.0.1"
ports = [0, 70000, "9-3", "http"]
[[host]]
name = "10.0.0.2"
ports = []
label = ""
[[host]]
name = "10.0.0.3"
label = "ok"
[[host]]
name = "10.0.0.3"
[bpf]
ring_buffer_size = "3MiB"
udp_dedup_entries = 0
[table]
closed_retention = "soon"
[log]
format = "xml"
"#,
    );
    let f = "/etc/connectracer/connectracer.toml";
    let port = |at: &str, k: usize, v: &str| {
        format!("{f}:{at}: host[2].ports[{k}]: {v} is not a port (1-65535) or a range \"LOW-HIGH\" with LOW <= HIGH")
    };
    assert_eq!(
        e,
        [
            format!("{f}:1:9: trace: unknown trace mode `some`; expected \"watched\" or \"all\""),
            format!("{f}:2:10: cgroup: `relative/path` is not an absolute path"),
            format!("{f}:4:8: host[0].name: `-bad-.example.com` is not an IP address, CIDR or hostname: labels neither start nor end with '-'"),
            format!("{f}:6:8: host[1].name: `10.1.2.3/16` has host bits set; did you mean `10.1.0.0/16`?"),
            port("9:10", 0, "0"),
            port("9:13", 1, "70000"),
            port("9:20", 2, "\"9-3\""),
            port("9:27", 3, "\"http\""),
            format!("{f}:11:8: host[3].ports: empty port list; leave `ports` out to match every port"),
            format!("{f}:13:9: host[3].label: label must be 1 to 64 printable characters"),
            format!("{f}:20:20: bpf.ring_buffer_size: 3145728 bytes: must be a power of two between 4KiB and 1GiB"),
            format!("{f}:21:21: bpf.udp_dedup_entries: 0 is out of range 1..=16777216"),
            format!("{f}:23:20: table.closed_retention: `soon` is not a duration (expected number at 0); e.g. \"90s\" or \"5m\""),
            format!("{f}:25:10: log.format: unknown log format `xml`; expected \"text\" or \"json\""),
            format!("{f}:18:8: host[5].name: `10.0.0.3` with the same ports is already watched ({f}:15)"),
        ]
    );
}

#[test]
fn hostnames_are_normalised_and_checked() {
    let c = parse_config(
        Path::new("x.toml"),
        "[[host]]\nname = \"API.Example.COM.\"\n[[host]]\nname = \"svc_1.internal\"\n",
    )
    .unwrap();
    assert_eq!(c.hosts[0].target, HostTarget::Name("api.example.com".into()));
    assert_eq!(c.hosts[0].name, "API.Example.COM.", "shown as written");
    assert_eq!(c.hostnames(), ["api.example.com", "svc_1.internal"]);
    for (bad, why) in [
        ("a..b", "each dot-separated label is 1 to 63 characters"),
        ("300.1.1.1", "it looks like an address but is not a valid one"),
        ("ex ample.com", "labels hold only letters, digits, '-' and '_'"),
        ("10.0.0.0/99", "the prefix length is not valid"),
    ] {
        let e = errors(&format!("[[host]]\nname = \"{bad}\"\n"));
        assert_eq!(
            e,
            [format!("/etc/connectracer/connectracer.toml:2:8: host[0].name: `{bad}` is not an IP address, CIDR or hostname: {why}")]
        );
    }
}

#[test]
fn dropins_merge_in_order_scalars_win_lists_append() {
    let files = [
        (
            PathBuf::from("/etc/c/connectracer.toml"),
            "trace = \"all\"\n[[host]]\nname = \"10.0.0.1\"\n[table]\nmax_open = 10\n".to_string(),
        ),
        (
            PathBuf::from("/etc/c/conf.d/10-a.toml"),
            "trace = \"watched\"\n[[host]]\nname = \"db.internal\"\nlabel = \"db\"\n".to_string(),
        ),
        (
            PathBuf::from("/etc/c/conf.d/20-b.toml"),
            "[table]\nmax_closed = 5\n[dns]\nnameservers = [\"127.0.0.1:5353\", \"::1\"]\ngrace = \"30s\"\n"
                .to_string(),
        ),
    ];
    let c = parse_files(&files).unwrap();
    assert_eq!(c.trace, TraceMode::Watched);
    assert_eq!(
        c.hosts
            .iter()
            .map(|h| (h.id, h.name.as_str()))
            .collect::<Vec<_>>(),
        [(1, "10.0.0.1"), (2, "db.internal")]
    );
    assert_eq!((c.table.max_open, c.table.max_closed), (10, 5));
    assert_eq!(
        c.dns.nameservers,
        ["127.0.0.1:5353".parse().unwrap(), "[::1]:53".parse().unwrap()]
    );
    assert_eq!(c.dns.grace, Duration::from_secs(30));
}

#[test]
fn errors_name_the_dropin_they_are_in() {
    let files = [
        (
            PathBuf::from("/etc/c/connectracer.toml"),
            "[[host]]\nname = \"10.0.0.1\"\n".to_string(),
        ),
        (
            PathBuf::from("/etc/c/conf.d/10-a.toml"),
            "\n[[host]]\nname = \"10.0.0.1\"\n[dns]\nnameservers = [\"dns.example\"]\n".to_string(),
        ),
    ];
    let e: Vec<String> = parse_files(&files)
        .unwrap_err()
        .0
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(
        e,
        [
            "/etc/c/conf.d/10-a.toml:5:16: dns.nameservers[0]: `dns.example` is not an IP address or IP:PORT",
            "/etc/c/conf.d/10-a.toml:3:8: host[0].name: `10.0.0.1` with the same ports is already watched (/etc/c/connectracer.toml:2)",
        ]
    );
}

#[test]
fn sizes() {
    assert_eq!(parse_size("4MiB"), Some(4 << 20));
    assert_eq!(parse_size("256 KiB"), Some(256 << 10));
    assert_eq!(parse_size("4096"), Some(4096));
    assert_eq!(parse_size("4MB"), None);
    assert_eq!(parse_size("-1"), None);
    assert_eq!(parse_size("99999999999999G"), None);
}

#[test]
fn wakeup_threshold_must_fit_in_the_ring() {
    let e = errors("[bpf]\nring_buffer_size = \"64KiB\"\nwakeup_threshold = \"64KiB\"\n");
    assert_eq!(
        e,
        ["/etc/connectracer/connectracer.toml:3:20: bpf.wakeup_threshold: 65536 bytes: must be below bpf.ring_buffer_size (65536 bytes)"]
    );
}

#[test]
fn gpu_modes_and_poll_interval() {
    let c = parse_config(Path::new("x.toml"), "").unwrap();
    assert_eq!(c.gpu.enabled, crate::config::GpuMode::Auto);
    for (text, mode) in [
        ("enabled = \"auto\"", crate::config::GpuMode::Auto),
        ("enabled = true", crate::config::GpuMode::On),
        ("enabled = false", crate::config::GpuMode::Off),
    ] {
        let c = parse_config(
            Path::new("x.toml"),
            &format!("[gpu]\n{text}\npoll_interval = \"2s\"\n"),
        )
        .unwrap();
        assert_eq!(c.gpu.enabled, mode, "{text}");
        assert_eq!(c.gpu.poll_interval, Duration::from_secs(2));
    }
    assert_eq!(
        errors("[gpu]\nenabled = \"yes\"\npoll_interval = \"100ms\"\n"),
        [
            "/etc/connectracer/connectracer.toml:2:11: gpu.enabled: `\"yes\"`: expected \"auto\", true or false",
            "/etc/connectracer/connectracer.toml:3:17: gpu.poll_interval: `100ms`: must be from 1s to 1h",
        ]
    );
    assert_eq!(
        errors("[gpu]\nenabled = 1\npoll_interval = \"soon\"\n")[1],
        "/etc/connectracer/connectracer.toml:3:17: gpu.poll_interval: `soon` is not a duration (expected number at 0); e.g. \"90s\" or \"5m\""
    );
    assert!(errors("[gpu]\nenabled = 1\n")[0].contains("gpu.enabled: `1`: expected"));
}

#[test]
fn containers_section_parses_and_names_each_bad_value() {
    let c = parse_config(
        Path::new("x.toml"),
        "[containers]\ndocker_socket = \"/tmp/d.sock\"\ncrio_socket = \"off\"\npod_labels = [\"team\", \"example.com/tier\"]\n",
    )
    .unwrap();
    let want = crate::config::ContainersConfig {
        docker_socket: Some("/tmp/d.sock".into()),
        crio_socket: None,
        pod_labels: vec!["team".into(), "example.com/tier".into()],
        ..Default::default()
    };
    assert_eq!(c.containers, want);
    assert_eq!(
        errors("[containers]\nenabled = true\npodman_socket = \"run/podman.sock\"\npod_labels = [\"app\", \"-x\", \"app\"]\nsockets = 1\n"),
        [
            "/etc/connectracer/connectracer.toml:5:1: containers.sockets: unknown field `sockets`, expected one of `enabled`, `docker_socket`, `podman_socket`, `containerd_socket`, `crio_socket`, `pod_labels`",
        ]
    );
    assert_eq!(
        errors("[containers]\nenabled = true\npodman_socket = \"run/podman.sock\"\npod_labels = [\"app\", \"-x\", \"app\"]\n"),
        [
            "/etc/connectracer/connectracer.toml:3:17: containers.podman_socket: `run/podman.sock`: the absolute path of the runtime's Unix socket, or \"off\"",
            "/etc/connectracer/connectracer.toml:4:22: containers.pod_labels[1]: `-x` is not a Kubernetes label key: the name part holds letters, digits, '-', '_' and '.', and starts and ends with a letter or digit",
            "/etc/connectracer/connectracer.toml:4:28: containers.pod_labels[2]: `app` is listed twice",
        ]
    );
}

#[test]
fn container_name_pod_and_namespace_selectors_are_globs_and_one_per_entry() {
    let c = parse_config(
        Path::new("x.toml"),
        "[[scope]]\npod = \"web-*\"\ndefault = \"deny\"\n[[rule]]\nnamespace = \"shop\"\naction = \"allow\"\ndest = \"any\"\n",
    )
    .unwrap();
    assert_eq!(c.policy.scopes[0].selector.to_string(), "pod web-*");
    assert_eq!(
        c.policy.rules[0].selector.as_ref().unwrap().to_string(),
        "namespace shop"
    );
    assert!(c.policy.selects_by_container_meta());
    assert_eq!(
        errors("[[rule]]\ncontainer_name = \"a/b\"\naction = \"deny\"\ndest = \"any\"\n"),
        ["/etc/connectracer/connectracer.toml:2:18: rule[0].container_name: `a/b` is not a container name or glob (e.g. \"web\", \"web-*\")"]
    );
    assert!(
        errors("[[rule]]\npod = \"x\"\nnamespace = \"y\"\naction = \"deny\"\ndest = \"any\"\n")[0]
            .contains("one selector per entry, found pod and namespace"),
    );
}
