//! GPU telemetry on a host without NVIDIA's library (every CI machine):
//! "auto" says once that it is off and exports no GPU series, `tracectl
//! gpu` says why, `true` fails the start before anything is attached, and
//! `false` never looks. (With a GPU: scripts/gpu-check.)

use std::process::Command;
use std::time::Duration;

use connectracer_tests::{free_port, http_get, ConfigDir, Daemon, TestCgroup};
use serde_json::Value;

const LIBRARY: &str = "libnvidia-ml.so.1";

/// These tests describe a host without NVML: one with it would answer
/// otherwise, and must say so rather than fail obscurely.
fn assert_no_nvml() {
    let out = Command::new("ldconfig")
        .arg("-p")
        .output()
        .expect("running ldconfig -p");
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains(LIBRARY),
        "this host has {LIBRARY}: these tests expect one without it (scripts/gpu-check is for GPU hosts)"
    );
}

fn gpu_off_lines(d: &Daemon) -> Vec<String> {
    d.logs
        .iter()
        .filter_map(|v| v["message"].as_str())
        .filter(|m| m.starts_with("GPU telemetry"))
        .map(str::to_string)
        .collect()
}

#[test]
fn auto_without_nvml_says_so_once_and_exports_no_gpu_series() {
    assert_no_nvml();
    let cg = TestCgroup::new("gpu-auto");
    let http = free_port();
    let tag = format!("gpu-auto-{}", std::process::id());
    let cfg = ConfigDir::new(&tag, "[gpu]\nenabled = \"auto\"\npoll_interval = \"1s\"\n");
    cfg.write_dropin(
        "99-metrics.toml",
        &format!("[metrics]\nlisten = \"127.0.0.1:{http}\"\nhttp_detail = true\n"),
    );
    let socket = std::env::temp_dir().join(format!("connectracer-{tag}.sock"));
    let pin_dir = format!("/sys/fs/bpf/connectracer-{tag}").into();
    let mut d = Daemon::start_with(&cg, cfg, socket, pin_dir).unwrap();
    // Polls would come every second: three of them would have said more.
    std::thread::sleep(Duration::from_secs(3));
    let _ = d.wait_log("no such line", Duration::from_millis(200));
    let lines = gpu_off_lines(&d);
    assert_eq!(lines.len(), 1, "{lines:#?}");
    assert!(
        lines[0].starts_with(&format!("GPU telemetry off: {LIBRARY} could not be loaded")),
        "{lines:#?}"
    );
    let level = d.logs.iter().find(|v| v["message"] == lines[0].as_str()).unwrap()["level"].clone();
    assert_eq!(level, "INFO");

    let text = http_get(http, "/metrics").expect("/metrics answers");
    assert!(text.contains("connectracer_build_info"), "{text}");
    assert!(!text.contains("connectracer_gpu_"), "{text}");

    let (rc, out, err) = d.tracectl(&["gpu"]);
    assert_eq!(rc, 0, "{err}");
    assert!(
        out.starts_with(&format!("GPU telemetry is off: {LIBRARY} could not be loaded")),
        "{out}"
    );
    let (rc, out, err) = d.tracectl(&["-o", "json", "gpu"]);
    assert_eq!(rc, 0, "{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["gpu"]["enabled"], false, "{v}");
    assert!(v["gpu"]["reason"].as_str().unwrap().contains(LIBRARY), "{v}");
    assert_eq!(v["gpu"]["devices"], serde_json::json!([]));
    let (rc, out, _) = d.tracectl(&["-o", "jsonl", "gpu"]);
    assert_eq!(rc, 0);
    assert_eq!(out.lines().count(), 1, "{out}");

    // No GPU, no GPU columns.
    let (rc, out, err) = d.tracectl(&["top", "--once", "-d", "0.2"]);
    assert_eq!(rc, 0, "{err}");
    assert!(out.contains("CONN/S") && !out.contains("GPU"), "{out}");
    d.stop().unwrap();
}

#[test]
fn false_never_looks_and_tracectl_says_it_is_off_by_configuration() {
    let cg = TestCgroup::new("gpu-off");
    let mut d = Daemon::start(&cg, "[gpu]\nenabled = false\n").unwrap();
    let _ = d.wait_log("no such line", Duration::from_millis(500));
    assert_eq!(gpu_off_lines(&d), Vec::<String>::new());
    let (rc, out, err) = d.tracectl(&["gpu"]);
    assert_eq!(rc, 0, "{err}");
    assert_eq!(out, "GPU telemetry is off: [gpu] enabled = false\n");
    d.stop().unwrap();
}

#[test]
fn true_without_nvml_fails_the_start_naming_the_library_with_nothing_attached() {
    assert_no_nvml();
    let cg = TestCgroup::new("gpu-required");
    let tag = format!("gpu-required-{}", std::process::id());
    let cfg = ConfigDir::new(&tag, "trace = \"all\"\n[gpu]\nenabled = true\n");
    let socket = std::env::temp_dir().join(format!("connectracer-{tag}.sock"));
    let pin_dir = std::path::PathBuf::from(format!("/sys/fs/bpf/connectracer-{tag}"));
    let out = connectracer_tests::daemon_command(&cg, &cfg, &socket, &pin_dir)
        .arg("--foreground")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains(&format!(
            "[gpu] enabled = true, but GPU telemetry cannot start: {LIBRARY} could not be loaded"
        )),
        "{err}"
    );
    assert!(!socket.exists(), "control socket left behind");
    assert!(!pin_dir.exists() || std::fs::read_dir(&pin_dir).unwrap().next().is_none());
    let attached = Command::new("bpftool")
        .args(["cgroup", "show"])
        .arg(&cg.path)
        .output()
        .unwrap();
    let attached = String::from_utf8_lossy(&attached.stdout);
    assert!(attached.trim().is_empty(), "programs attached: {attached}");
}
