//! Event sinks against the real daemon: a rotating JSON Lines file, reopened
//! after logrotate-style renames; a failing sink that names its path while
//! the others go on; a stdout nobody reads, which must stall neither
//! queries nor reloads and must count every line it loses; and per-sink
//! filters. Runs as root.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use std::net::TcpListener;

use connectracer_tests::{bin_path, closed_port, probe, Daemon, TestCgroup};
use connectracer_tests::{metric, ConfigDir};
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(30);

/// A directory for one test's files, removed when it ends.
struct Dir(PathBuf);

impl Dir {
    fn new(name: &str) -> Self {
        let d = std::env::temp_dir().join(format!("connectracer-sinks-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        Self(d)
    }

    fn join(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).stderr(Stdio::null()).status();
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Every line of a file, each of which must be one whole JSON object.
fn json_lines(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert!(
        text.is_empty() || text.ends_with('\n'),
        "{} ends in a partial line",
        path.display()
    );
    text.lines()
        .map(|l| {
            serde_json::from_str::<Value>(l)
                .unwrap_or_else(|e| panic!("{}: not JSON ({e}): {l}", path.display()))
        })
        .collect()
}

fn n(v: &Value, k: &str) -> u64 {
    v[k].as_u64().unwrap_or_else(|| panic!("no {k} in {v}"))
}

fn d_count(seen: &[Value], pid: u64, kind: &str) -> usize {
    seen.iter()
        .filter(|e| e["process"]["pid"] == pid && e["event"] == kind)
        .count()
}

fn settled(s: &Value, events: u64) -> bool {
    n(s, "events") == events && n(s, "queued") == 0
}

#[test]
fn file_sink_rotates_at_size_keeps_n_and_splits_no_line() {
    let cg = TestCgroup::new("sink-rotate");
    let dir = Dir::new("rotate");
    let path = dir.join("events.jsonl");
    let config = format!(
        "trace = \"all\"\n[[event_sink]]\ntype = \"file\"\npath = \"{}\"\nmax_size = \"16KiB\"\nkeep = 3\n",
        path.display()
    );
    let d = Daemon::start(&cg, &config).unwrap();
    let dst = closed_port("127.0.0.1:0").to_string();
    let connects = 1500u64;
    probe(&cg, &["flood", &dst, &connects.to_string()]).unwrap();
    // A connect and a failure (refused) per attempt.
    let s = d.wait_sink("file", |s| settled(s, 2 * connects));
    assert_eq!((n(&s, "written"), n(&s, "lost")), (2 * connects, 0), "{s}");
    let mut lines = 0;
    for name in [
        "events.jsonl",
        "events.jsonl.1",
        "events.jsonl.2",
        "events.jsonl.3",
    ] {
        let p = dir.join(name);
        let size = std::fs::metadata(&p).unwrap().len();
        assert!(size <= 16 * 1024, "{name}: {size} bytes");
        let file = json_lines(&p);
        assert!(file
            .iter()
            .all(|e| e["event"] == "connect" || e["event"] == "failed"));
        lines += file.len();
        if name != "events.jsonl" {
            assert!(size > 12 * 1024, "{name} was rotated early: {size} bytes");
        }
    }
    assert!(!dir.join("events.jsonl.4").exists(), "keep = 3");
    assert!(lines > 40, "{lines} lines in the kept files");
}

#[test]
fn renamed_file_is_reopened_after_sighup_and_after_a_rename() {
    let cg = TestCgroup::new("sink-reopen");
    let dir = Dir::new("reopen");
    let path = dir.join("events.jsonl");
    let config = format!(
        "trace = \"all\"\n[[event_sink]]\ntype = \"file\"\npath = \"{}\"\n",
        path.display()
    );
    let d = Daemon::start(&cg, &config).unwrap();
    let dst = closed_port("127.0.0.1:0").to_string();
    let round = |events: u64| {
        probe(&cg, &["connect", &dst]).unwrap();
        d.wait_sink("file", |s| settled(s, events) && n(s, "written") == events);
    };
    round(2);
    std::fs::rename(&path, dir.join("events.jsonl.old")).unwrap();
    // logrotate's postrotate: systemctl reload, i.e. SIGHUP.
    d.signal(nix::sys::signal::SIGHUP);
    std::thread::sleep(Duration::from_millis(500));
    round(4);
    assert_eq!(json_lines(&dir.join("events.jsonl.old")).len(), 2);
    assert_eq!(json_lines(&path).len(), 2, "written to the new file after SIGHUP");
    // Without a signal, the rename is noticed within a second.
    std::fs::rename(&path, dir.join("events.jsonl.old2")).unwrap();
    std::thread::sleep(Duration::from_millis(1200));
    round(6);
    assert_eq!(json_lines(&dir.join("events.jsonl.old2")).len(), 2);
    assert_eq!(json_lines(&path).len(), 2, "written to a new file after a rename");
}

#[test]
fn an_unwritable_path_is_an_error_naming_it_and_other_sinks_go_on() {
    let cg = TestCgroup::new("sink-unwritable");
    let dir = Dir::new("full");
    // A full disk: a 64 KiB tmpfs.
    let st = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=64k", "tmpfs"])
        .arg(&dir.0)
        .status()
        .unwrap();
    assert!(st.success(), "mounting a small tmpfs");
    let full = dir.join("events.jsonl");
    let bad = "/proc/connectracer-no-such-dir/events.jsonl";
    let config = format!(
        "trace = \"all\"\n\
         [[event_sink]]\ntype = \"stdout\"\nformat = \"json\"\n\
         [[event_sink]]\nname = \"bad\"\ntype = \"file\"\npath = \"{bad}\"\n\
         [[event_sink]]\nname = \"full\"\ntype = \"file\"\npath = \"{}\"\n",
        full.display()
    );
    let mut d = Daemon::start(&cg, &config).unwrap();
    let dst = closed_port("127.0.0.1:0").to_string();
    let connects = 400u64;
    let out = probe(&cg, &["flood", &dst, &connects.to_string()]).unwrap();
    let pid = out["pid"].as_u64().unwrap();
    // The stdout sink goes on: every event arrives there.
    d.wait_for(WAIT, |seen| {
        seen.iter().filter(|e| e["process"]["pid"] == pid).count() as u64 == 2 * connects
    })
    .unwrap();
    let b = d.wait_sink("bad", |s| settled(s, 2 * connects));
    assert_eq!((n(&b, "written"), n(&b, "lost")), (0, 2 * connects), "{b}");
    assert!(b["last_error"].as_str().unwrap().contains(bad), "{b}");
    let f = d.wait_sink("full", |s| settled(s, 2 * connects));
    assert!(n(&f, "lost") > 0, "64 KiB cannot hold {connects} connects: {f}");
    assert_eq!(n(&f, "written") + n(&f, "lost"), 2 * connects, "{f}");
    assert!(n(&f, "errors") > 0, "{f}");
    // What did fit is whole lines, as many as were counted written.
    assert_eq!(json_lines(&full).len() as u64, n(&f, "written"));
    // Each failure is logged once, naming the path.
    for (sink, path, why) in [
        ("bad", bad.to_string(), "No such file"),
        ("full", full.display().to_string(), "No space left"),
    ] {
        let message = format!("event sink {sink}: ");
        let line = match d.logged(&message) {
            Some(l) => l.clone(),
            None => d.wait_log(&message, WAIT).unwrap(),
        };
        let m = line["message"].as_str().unwrap();
        assert!(m.contains(&path) && m.contains(why), "{m}");
    }
}

#[test]
fn a_stdout_nobody_reads_stalls_neither_queries_nor_reloads_and_loses_lines_counted() {
    let cg = TestCgroup::new("sink-stalled");
    let config = "trace = \"all\"\n[bpf]\nring_buffer_size = \"16MiB\"\n\
                  [[event_sink]]\ntype = \"stdout\"\nformat = \"json\"\nqueue = 1000\n";
    let mut d = Daemon::start_stalled(&cg, config).unwrap();
    let dst = closed_port("127.0.0.1:0").to_string();
    let connects = 50_000u64;
    let mut flood = cg
        .command(&bin_path("ct-probe"))
        .args(["flood", &dst, &connects.to_string()])
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let mut slowest = Duration::ZERO;
    let mut reloaded = false;
    while flood.try_wait().unwrap().is_none() {
        let t = Instant::now();
        let s = d.stats();
        slowest = slowest.max(t.elapsed());
        if !reloaded && s["records"].as_u64().unwrap_or(0) > 2000 {
            d.config
                .write_dropin("50-reload.toml", "[table]\nmax_closed = 100\n");
            let (code, out, err) = d.tracectl(&["reload"]);
            assert_eq!(code, 0, "reload during the stall: {out}{err}");
            reloaded = true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(reloaded, "the flood ended before the reload");
    assert!(
        slowest < Duration::from_secs(1),
        "tracectl stats took {slowest:?}"
    );
    assert!(
        d.stats()["config_epoch"].as_u64().unwrap() >= 2,
        "the reload applied"
    );
    let s = d.wait_sink("stdout", |s| n(s, "events") == 2 * connects);
    eprintln!("stalled: slowest stats {slowest:?}, sink {s}");
    assert!(
        n(&s, "lost") > 0,
        "a stalled pipe with a 1000-line queue must lose: {s}"
    );
    assert_eq!(
        n(&s, "written") + n(&s, "lost") + n(&s, "queued"),
        2 * connects,
        "{s}"
    );
    d.wait_log("event sink stdout lost", WAIT).unwrap();
    // Now drain the pipe: what was queued is written, and exactly the
    // lines counted as written arrive.
    d.read_stdout();
    let s = d.wait_sink("stdout", |s| settled(s, 2 * connects));
    assert_eq!(n(&s, "written") + n(&s, "lost"), 2 * connects, "{s}");
    let written = n(&s, "written") as usize;
    d.wait_for(WAIT, |seen| seen.len() >= written).unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let _ = d.wait_for(Duration::from_millis(100), |seen| seen.len() > written);
    assert_eq!(d.seen.len(), written, "lines read = lines counted written");
}

#[test]
fn per_sink_filters_give_exactly_the_selected_events() {
    let cg = TestCgroup::new("sink-filter");
    let dir = Dir::new("filter");
    let file = |name: &str| dir.join(&format!("{name}.jsonl"));
    let sink = |name: &str, filter: &str| {
        format!(
            "[[event_sink]]\nname = \"{name}\"\ntype = \"file\"\npath = \"{}\"\n{filter}\n",
            file(name).display()
        )
    };
    let config = [
        "trace = \"all\"\nmode = \"enforce\"\n[policy]\nallow_loopback = false\n".to_string(),
        "[[rule]]\naction = \"deny\"\ndest = \"127.0.0.2\"\n".to_string(),
        "[[event_sink]]\ntype = \"stdout\"\nformat = \"json\"\n".to_string(),
        sink("failed", "events = [\"failed\"]"),
        sink("denials", "verdicts = [\"deny\"]"),
        sink("probe-connects", "exe = \"*/ct-probe\"\nevents = [\"connect\"]"),
        sink("nobody", "exe = \"/nonexistent/*\""),
    ]
    .concat();
    let mut d = Daemon::start(&cg, &config).unwrap();
    let refused = closed_port("127.0.0.1:0");
    let denied = format!("127.0.0.2:{}", refused.port());
    let out = probe(
        &cg,
        &["connect", &refused.to_string(), &denied, &refused.to_string()],
    )
    .unwrap();
    let pid = out["pid"].as_u64().unwrap();
    // Two refused (connect + failed each) and one denied; then whatever
    // else the kernel reports for them.
    d.wait_for(WAIT, |seen| {
        let of = |k: &str| d_count(seen, pid, k);
        of("failed") == 2 && of("denied") == 1
    })
    .unwrap();
    let _ = d.wait_for(Duration::from_secs(1), |_| false);
    let all: Vec<Value> = d
        .seen
        .iter()
        .filter(|e| e["process"]["pid"] == pid)
        .cloned()
        .collect();
    let key = |e: &Value| {
        (
            e["event"].as_str().unwrap().to_string(),
            e["id"].as_u64().unwrap(),
        )
    };
    let pick = |f: &dyn Fn(&Value) -> bool| -> BTreeSet<_> { all.iter().filter(|e| f(e)).map(key).collect() };
    let expect = [
        ("failed", pick(&|e| e["event"] == "failed")),
        ("denials", pick(&|e| e["verdict"] == "deny")),
        ("probe-connects", pick(&|e| e["event"] == "connect")),
        ("nobody", BTreeSet::new()),
    ];
    assert_eq!(expect[0].1.len(), 2);
    assert!(!expect[1].1.is_empty());
    assert_eq!(expect[2].1.len(), 2);
    for (name, want) in expect {
        let s = d.wait_sink(name, |s| settled(s, want.len() as u64));
        assert_eq!(n(&s, "written"), want.len() as u64, "{s}");
        let got: BTreeSet<_> = if want.is_empty() && !file(name).exists() {
            BTreeSet::new()
        } else {
            json_lines(&file(name)).iter().map(key).collect()
        };
        assert_eq!(got, want, "sink {name}");
    }
}

/// A queue of one line sheds all but one line of each batch: the loss is
/// in the metrics exactly as in stats, and events = written + lost.
#[test]
fn lost_lines_are_counted_in_stats_and_metrics_per_sink() {
    let cg = TestCgroup::new("sink-metrics");
    let http = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let cfg = ConfigDir::new(
        &format!("sink-metrics-{}", std::process::id()),
        "trace = \"all\"\n[[event_sink]]\nname = \"tiny\"\ntype = \"none\"\nqueue = 1\n",
    );
    cfg.write_dropin(
        "99-metrics.toml",
        &format!("[metrics]\nlisten = \"127.0.0.1:{http}\"\n"),
    );
    let socket = std::env::temp_dir().join(format!("connectracer-sink-metrics-{}.sock", std::process::id()));
    let pin_dir = format!("/sys/fs/bpf/connectracer-sink-metrics-{}", std::process::id()).into();
    let mut d = Daemon::start_with(&cg, cfg, socket, pin_dir).unwrap();
    let dst = closed_port("127.0.0.1:0").to_string();
    let connects = 2000u64;
    probe(&cg, &["flood", &dst, &connects.to_string()]).unwrap();
    let s = d.wait_sink("tiny", |s| settled(s, 2 * connects));
    let (written, lost) = (n(&s, "written"), n(&s, "lost"));
    assert!(lost > 0, "{s}");
    assert_eq!(written + lost, 2 * connects, "{s}");
    let deadline = Instant::now() + WAIT;
    while metric(http, "connectracer_event_lines_lost_total{sink=\"tiny\"}") != Some(lost) {
        assert!(Instant::now() < deadline, "the lost counter never reached {lost}");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(
        metric(http, "connectracer_event_lines_written_total{sink=\"tiny\"}"),
        Some(written)
    );
    let warning = d.wait_log("event sink tiny lost", WAIT).unwrap();
    assert_eq!(warning["sink"], "tiny", "{warning}");
}
