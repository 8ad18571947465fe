//! Prometheus metrics against real peers: promtool checks both outputs, a
//! real node_exporter serves the textfile, and a known workload yields
//! exact counts per label set.

use std::collections::HashMap;
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use connectracer_tests::{bin_path, closed_port, Daemon, TestCgroup};
use connectracer_tests::{eventually, free_port, http_get, ConfigDir};

/// Value of the sample of `metric` whose labels include all of `labels`.
fn sample(text: &str, metric: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        let (series, value) = l.rsplit_once(' ')?;
        let (name, rest) = series.split_once('{').unwrap_or((series, "}"));
        if name != metric {
            return None;
        }
        let have: HashMap<&str, &str> = rest
            .trim_end_matches('}')
            .split("\",")
            .filter_map(|kv| {
                let (k, v) = kv.split_once("=\"")?;
                Some((k, v.trim_end_matches('"')))
            })
            .collect();
        labels
            .iter()
            .all(|(k, v)| have.get(k) == Some(v))
            .then(|| value.parse().ok())?
    })
}

fn promtool_ok(text: &str) {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (Debian package prometheus) is installed by scripts/install-deps");
    child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    let said = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && said.trim().is_empty(),
        "promtool check metrics: {said}"
    );
}

#[test]
fn exact_counts_over_http_and_textfile_checked_by_promtool_and_node_exporter() {
    let cg = TestCgroup::new("metrics");
    let http = free_port();
    let cfg = ConfigDir::new(
        &format!("metrics-{}", std::process::id()),
        "trace = \"watched\"\n[[host]]\nname = \"127.0.0.1\"\nlabel = \"lo\"\n",
    );
    let textdir = cfg.dir().join("textfile");
    std::fs::create_dir_all(&textdir).unwrap();
    let textfile = textdir.join("connectracer.prom");
    cfg.write_dropin(
        "99-metrics.toml",
        &format!(
            "[metrics]\nlisten = \"127.0.0.1:{http}\"\ntextfile = \"{}\"\ntextfile_interval = \"1s\"\n\
             connection_labels = [\"port\", \"comm\"]\n",
            textfile.display()
        ),
    );
    let socket = std::env::temp_dir().join(format!("connectracer-metrics-{}.sock", std::process::id()));
    let pin_dir = format!("/sys/fs/bpf/connectracer-metrics-{}", std::process::id()).into();
    let mut d = Daemon::start_with(&cg, cfg, socket, pin_dir).unwrap();

    // 500 connects: 3 ports, 2 comms, known counts per label set.
    let ports: Vec<String> = (0..3)
        .map(|_| closed_port("127.0.0.1:0").port().to_string())
        .collect();
    let plan = [
        ("alpha", 0, 100),
        ("alpha", 1, 100),
        ("alpha", 2, 50),
        ("beta", 0, 100),
        ("beta", 1, 50),
        ("beta", 2, 100),
    ];
    for (comm, port, n) in plan {
        let dst = format!("127.0.0.1:{}", ports[port]);
        let out = cg
            .command(&bin_path("ct-probe"))
            .env("CT_PROBE_COMM", comm)
            .args(["flood", &dst, &n.to_string()])
            .output()
            .unwrap();
        assert!(out.status.success());
    }
    let total = |text: &str| -> f64 {
        plan.iter()
            .filter_map(|(comm, p, _)| {
                sample(
                    text,
                    "connectracer_connections_total",
                    &[("comm", comm), ("port", &ports[*p]), ("outcome", "failed")],
                )
            })
            .sum()
    };
    // Kernel-side counters are refreshed once a second.
    let kernel = |t: &str| sample(t, "connectracer_kernel_connects_total", &[]).unwrap_or(0.0);
    // HTTP, readable by any local user, has aggregates only by default.
    let outcomes = |t: &str| {
        sample(
            t,
            "connectracer_connection_outcomes_total",
            &[("protocol", "tcp"), ("outcome", "failed")],
        )
        .unwrap_or(0.0)
    };
    let text = eventually(Duration::from_secs(15), || {
        http_get(http, "/metrics").filter(|t| outcomes(t) == 500.0 && kernel(t) == 500.0)
    })
    .unwrap_or_else(|| panic!("500 connects never showed up: {:?}", http_get(http, "/metrics")));
    assert!(
        !text.contains("comm=") && !text.contains("connectracer_connections_total"),
        "per-process series on HTTP without http_detail: {text}"
    );
    assert!(
        sample(
            &text,
            "connectracer_build_info",
            &[("version", env!("CARGO_PKG_VERSION"))]
        ) == Some(1.0)
    );
    promtool_ok(&text);

    // The textfile: every series, and valid on its own.
    let file = eventually(Duration::from_secs(10), || {
        std::fs::read_to_string(&textfile)
            .ok()
            .filter(|t| total(t) == 500.0)
    })
    .expect("textfile with the 500 connects");
    for (comm, p, n) in plan {
        let labels = [
            ("host", "127.0.0.1"),
            ("port", ports[p].as_str()),
            ("protocol", "tcp"),
            ("outcome", "failed"),
            ("comm", comm),
            ("unit", ""),
            ("container", ""),
        ];
        assert_eq!(
            sample(&file, "connectracer_connections_total", &labels),
            Some(n as f64),
            "{comm} port {p}"
        );
    }
    promtool_ok(&file);

    // http_detail (reloadable) serves them on HTTP too.
    d.config
        .write_dropin("98-detail.toml", "[metrics]\nhttp_detail = true\n");
    let (code, _, err) = d.tracectl(&["reload"]);
    assert_eq!(code, 0, "{err}");
    let detailed = http_get(http, "/metrics").unwrap_or_default();
    assert_eq!(total(&detailed), 500.0, "{detailed}");
    promtool_ok(&detailed);

    // A real node_exporter serves it, with no textfile scrape error.
    let ne_port = free_port();
    let mut ne = Command::new("prometheus-node-exporter")
        .arg(format!("--web.listen-address=127.0.0.1:{ne_port}"))
        .args(["--collector.disable-defaults", "--collector.textfile"])
        .arg(format!("--collector.textfile.directory={}", textdir.display()))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("prometheus-node-exporter is installed by scripts/install-deps");
    let scraped = eventually(Duration::from_secs(10), || {
        http_get(ne_port, "/metrics").filter(|t| total(t) == 500.0)
    });
    let _ = ne.kill();
    let _ = ne.wait();
    let scraped = scraped.expect("node_exporter serving connectracer's series");
    assert_eq!(sample(&scraped, "node_textfile_scrape_error", &[]), Some(0.0));

    // A clean stop removes the textfile.
    d.stop().unwrap();
    assert!(!textfile.exists(), "textfile left behind");

    // The next instance continues the per-label counters.
    let (cfg, socket, pin_dir) = d.crash();
    let mut d = Daemon::start_with(&cg, cfg, socket, pin_dir).unwrap();
    let restored = d.wait_log(
        "continued connection counters of the previous instance",
        Duration::from_secs(10),
    );
    assert_eq!(restored.unwrap()["series"], 6);
    let again = eventually(Duration::from_secs(10), || {
        http_get(http, "/metrics").filter(|t| total(t) == 500.0)
    });
    assert!(
        again.is_some(),
        "counters restarted from zero: {:?}",
        http_get(http, "/metrics")
    );
}

/// utime + stime of `pid` in seconds, as proc(5) has them.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let f: Vec<&str> = stat.rsplit_once(") ").unwrap().1.split(' ').collect();
    let ticks = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .unwrap()
        .unwrap() as f64;
    (f[11].parse::<f64>().unwrap() + f[12].parse::<f64>().unwrap()) / ticks
}

/// The label names of the first sample of `metric`.
fn label_names(text: &str, metric: &str) -> Vec<String> {
    let line = text
        .lines()
        .find(|l| l.starts_with(&format!("{metric}{{")))
        .unwrap_or_else(|| panic!("no {metric} in {text}"));
    let labels = &line[metric.len() + 1..line.rfind('}').unwrap()];
    labels
        .split("\",")
        .map(|kv| kv.split_once('=').unwrap().0.to_string())
        .collect()
}

/// Under `trace = "all"`: the standard process metrics with CPU seconds as
/// /proc has them (not cut to whole seconds), `connections_total` without
/// the unbounded comm and port labels, and families in one order.
#[test]
fn process_metrics_labels_and_order_follow_prometheus_conventions() {
    let cg = TestCgroup::new("metrics-conventions");
    let http = free_port();
    let cfg = ConfigDir::new("metrics-conventions", "trace = \"all\"\n");
    cfg.write_dropin(
        "99-metrics.toml",
        &format!("[metrics]\nlisten = \"127.0.0.1:{http}\"\nhttp_detail = true\n"),
    );
    let socket = std::env::temp_dir().join(format!("connectracer-conventions-{}.sock", std::process::id()));
    let pin_dir = format!("/sys/fs/bpf/connectracer-conventions-{}", std::process::id()).into();
    let d = Daemon::start_with(&cg, cfg, socket, pin_dir).unwrap();
    let pid = d.pid();
    let dst = closed_port("127.0.0.1:0").to_string();
    // Busy: events to attribute, table and print, until the daemon has used
    // a second of CPU in all (fractions matter: 1.4 s cut to 1 is off by 29%).
    let busy = eventually(Duration::from_secs(90), || {
        let out = cg
            .command(&bin_path("ct-probe"))
            .args(["flood", &dst, "3000"])
            .output()
            .unwrap();
        assert!(out.status.success());
        (cpu_seconds(pid) >= 1.0).then_some(())
    });
    assert!(
        busy.is_some(),
        "the daemon never used 1 s of CPU: {}",
        cpu_seconds(pid)
    );
    // Settled: the events queued are handled, so the CPU a scrape reports
    // and the one /proc reports around it are close.
    let mut last = cpu_seconds(pid);
    let settled = eventually(Duration::from_secs(30), || {
        std::thread::sleep(Duration::from_millis(300));
        let now = cpu_seconds(pid);
        let quiet = now - last < 0.02;
        last = now;
        quiet.then_some(())
    });
    assert!(settled.is_some(), "the daemon stayed busy");
    let before = cpu_seconds(pid);
    let text = http_get(http, "/metrics").expect("/metrics answers");
    let after = cpu_seconds(pid);
    let exported = sample(&text, "process_cpu_seconds_total", &[]).expect("process_cpu_seconds_total");
    assert!(
        exported >= before * 0.9 && exported <= after * 1.1,
        "process_cpu_seconds_total {exported}, /proc/{pid}/stat {before}..{after}"
    );
    for name in [
        "process_resident_memory_bytes",
        "process_virtual_memory_bytes",
        "process_open_fds",
        "process_max_fds",
        "process_start_time_seconds",
    ] {
        assert!(
            sample(&text, name, &[]).is_some_and(|v| v > 0.0),
            "{name}: {text}"
        );
    }
    for old in [
        "connectracer_process_cpu",
        "connectracer_process_resident",
        "connectracer_process_open",
    ] {
        assert!(!text.contains(old), "{old}: the old names are gone");
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let reloaded = sample(
        &text,
        "connectracer_config_last_reload_success_timestamp_seconds",
        &[],
    )
    .unwrap();
    assert!(
        reloaded <= now && reloaded > now - 600.0,
        "a unix time: {reloaded}"
    );
    assert_eq!(
        label_names(&text, "connectracer_connections_total"),
        ["host", "protocol", "outcome", "unit", "container"]
    );
    // Families by name, the same in every scrape.
    let families = |t: &str| -> Vec<String> {
        t.lines()
            .filter(|l| l.starts_with("# TYPE "))
            .map(|l| l.split(' ').nth(2).unwrap().to_string())
            .collect()
    };
    let first = families(&text);
    let mut sorted = first.clone();
    sorted.sort();
    assert_eq!(first, sorted);
    for _ in 0..5 {
        assert_eq!(families(&http_get(http, "/metrics").unwrap()), first);
    }
    promtool_ok(&text);
}
