//! The Grafana dashboard and Prometheus alert rules shipped in packaging/:
//! promtool accepts the rules and their unit tests pass, and every metric
//! either names is one the daemon exports (a renamed metric would leave a
//! panel empty and an alert silent, and nothing else would say so).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

use metrics::{Counter, Gauge, Histogram, Key, KeyName, Metadata, SharedString, Unit};

/// Names exported by other programs that the rules rely on.
const FOREIGN: [&str; 2] = [
    // Prometheus' own, per scrape target.
    "up",
    // node_exporter's textfile collector.
    "node_textfile_mtime_seconds",
];

fn packaging() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging")
}

/// Collects the names `describe()` describes.
#[derive(Debug, Default)]
struct Names(Mutex<BTreeSet<String>>);

impl Names {
    fn add(&self, key: KeyName) {
        self.0.lock().unwrap().insert(key.as_str().to_string());
    }
}

impl metrics::Recorder for Names {
    fn describe_counter(&self, key: KeyName, _: Option<Unit>, _: SharedString) {
        self.add(key);
    }
    fn describe_gauge(&self, key: KeyName, _: Option<Unit>, _: SharedString) {
        self.add(key);
    }
    fn describe_histogram(&self, key: KeyName, _: Option<Unit>, _: SharedString) {
        for suffix in ["_bucket", "_sum", "_count"] {
            self.add(KeyName::from(format!("{}{suffix}", key.as_str())));
        }
    }
    fn register_counter(&self, _: &Key, _: &Metadata<'_>) -> Counter {
        Counter::noop()
    }
    fn register_gauge(&self, _: &Key, _: &Metadata<'_>) -> Gauge {
        Gauge::noop()
    }
    fn register_histogram(&self, _: &Key, _: &Metadata<'_>) -> Histogram {
        Histogram::noop()
    }
}

/// Every family the daemon exports: the described ones and the process ones.
fn exported() -> BTreeSet<String> {
    let names = Names::default();
    metrics::with_local_recorder(&names, super::describe);
    let mut out = names.0.into_inner().unwrap();
    let sample = super::process::Sample {
        open_fds: Some(1.0),
        max_fds: Some(1.0),
        ..Default::default()
    };
    for line in super::process::exposition(&sample).lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            out.insert(rest.split(' ').next().unwrap().to_string());
        }
    }
    out
}

/// Metric names in a dashboard or rules file: the identifiers with a
/// prefix the daemon or the foreign exporters use.
fn referenced(text: &str) -> BTreeSet<String> {
    text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|w| w.starts_with("connectracer_") || w.starts_with("process_") || FOREIGN.contains(w))
        .map(str::to_string)
        .collect()
}

#[test]
fn every_metric_the_dashboard_and_the_alerts_use_is_exported() {
    let exported = exported();
    assert!(
        exported.contains("process_cpu_seconds_total")
            && exported.contains("connectracer_events_dropped_total")
    );
    for file in ["grafana/connectracer.json", "prometheus/connectracer-alerts.yml"] {
        let text = std::fs::read_to_string(packaging().join(file)).unwrap();
        let used = referenced(&text);
        assert!(used.len() >= 6, "{file}: {used:?}");
        let unknown: Vec<&String> = used
            .iter()
            .filter(|n| !exported.contains(*n) && !FOREIGN.contains(&n.as_str()))
            .collect();
        assert!(
            unknown.is_empty(),
            "{file} uses metrics the daemon does not export: {unknown:?}"
        );
    }
    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(packaging().join("grafana/connectracer.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(dashboard["uid"], "connectracer");
    assert!(dashboard["panels"]
        .as_array()
        .unwrap()
        .iter()
        .all(|p| !p["targets"][0]["expr"].is_null()));
}

/// promtool (Debian package prometheus, installed by scripts/install-deps)
/// on the rules and their unit tests. Skipped, loudly, where it is missing.
#[test]
fn promtool_checks_and_unit_tests_the_alert_rules() {
    let dir = packaging().join("prometheus");
    let run = |args: &[&str]| match Command::new("promtool").args(args).current_dir(&dir).output() {
        Ok(out) => Some(out),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => panic!("promtool: {e}"),
    };
    let Some(check) = run(&["check", "rules", "connectracer-alerts.yml"]) else {
        eprintln!(
            "SKIPPED: promtool is not installed (scripts/install-deps installs it): alert rules unchecked"
        );
        return;
    };
    let said = |o: &std::process::Output| {
        String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr)
    };
    assert!(check.status.success(), "promtool check rules: {}", said(&check));
    let test = run(&["test", "rules", "connectracer-alerts.test.yml"]).unwrap();
    assert!(test.status.success(), "promtool test rules: {}", said(&test));
    let rules = std::fs::read_to_string(dir.join("connectracer-alerts.yml")).unwrap();
    let tests = std::fs::read_to_string(dir.join("connectracer-alerts.test.yml")).unwrap();
    for alert in [
        "ConnectracerDown",
        "ConnectracerEventsDropped",
        "ConnectracerEventLinesLost",
        "ConnectracerReloadFailed",
        "ConnectracerDenials",
        "ConnectracerDNSFailing",
    ] {
        assert!(rules.contains(&format!("alert: {alert}\n")), "{alert} missing");
        assert!(
            tests.contains(&format!("alertname: {alert}\n")),
            "{alert} has no unit test"
        );
    }
}
