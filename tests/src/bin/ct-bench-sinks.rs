//! Event-sink benchmark: the loopback connect loop with trace=all and
//! event lines to each sink (a JSON Lines file, stdout piped to a reader,
//! the journal, none), interleaved with the no-daemon baseline in every
//! repetition and reported as ratios; then a stalled sink (a stdout nobody
//! reads): GetStats latency over the control socket under the loop, and
//! lines written + lost against events. Reports; never asserts.
//!
//! ct-bench-sinks [CONNECTS] [REPETITIONS]   (run as root)

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use connectracer_tests::bench::{cpu_ns, draining_listener, flood, median};
use connectracer_tests::{bin_path, Daemon, TestCgroup};
use serde_json::Value;

struct Scenario {
    name: &'static str,
    /// None: no daemon. `{dir}` is replaced by a scratch directory.
    config: Option<&'static str>,
}

const SCENARIOS: [Scenario; 5] = [
    Scenario {
        name: "no daemon",
        config: None,
    },
    Scenario {
        name: "trace=all, no sink ([log] events = false)",
        config: Some("trace = \"all\"\n[log]\nevents = false\n"),
    },
    Scenario {
        name: "trace=all, file sink (JSON Lines)",
        config: Some(
            "trace = \"all\"\n[[event_sink]]\ntype = \"file\"\npath = \"{dir}/events.jsonl\"\nmax_size = \"64MiB\"\nkeep = 1\n",
        ),
    },
    Scenario {
        name: "trace=all, stdout (JSON) piped to a reader",
        config: Some("trace = \"all\"\n[[event_sink]]\ntype = \"stdout\"\nformat = \"json\"\n"),
    },
    Scenario {
        name: "trace=all, journal sink",
        config: Some("trace = \"all\"\n[[event_sink]]\ntype = \"journal\"\n"),
    },
];

struct Run {
    rate: f64,
    cpu_ms_per_1k: Option<f64>,
    /// (written, lost) of the scenario's sink.
    lines: Option<(u64, u64)>,
}

/// Waits until every record the kernel wrote has been taken from the ring
/// and the sink has each event it took written or lost.
fn settle(d: &Daemon) -> Option<(u64, u64)> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let stats = d.stats();
        let s = stats["sinks"].get(0)?;
        let drained = stats["records"] == stats["kernel"]["events"];
        if (drained && s["queued"] == 0) || Instant::now() > deadline {
            return Some((s["written"].as_u64()?, s["lost"].as_u64()?));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn run_once(cg: &TestCgroup, s: &Scenario, dst: &str, n: u64, dir: &Path) -> anyhow::Result<Run> {
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir)?;
    let config = s.config.map(|c| c.replace("{dir}", &dir.display().to_string()));
    let daemon = config.as_deref().map(|c| Daemon::start(cg, c)).transpose()?;
    std::thread::sleep(Duration::from_secs(1));
    let cpu0 = daemon.as_ref().map(|d| cpu_ns(d.pid()));
    let t0 = Instant::now();
    flood(cg, dst, n)?;
    let secs = t0.elapsed().as_secs_f64();
    let lines = daemon.as_ref().and_then(settle);
    let cpu = daemon
        .as_ref()
        .zip(cpu0)
        .map(|(d, c0)| cpu_ns(d.pid()).saturating_sub(c0) as f64 / 1e6 / (n as f64 / 1000.0));
    Ok(Run {
        rate: n as f64 / secs,
        cpu_ms_per_1k: cpu,
        lines,
    })
}

fn get_stats(s: &mut UnixStream) -> anyhow::Result<()> {
    s.write_all(b"{\"method\":\"org.connectracer.Tracer.GetStats\"}\0")?;
    let mut byte = [0u8; 1];
    loop {
        s.read_exact(&mut byte)?;
        if byte[0] == 0 {
            return Ok(());
        }
    }
}

/// A stdout nobody reads: stats latency under the loop, and the books.
fn stalled(cg: &TestCgroup, dst: &str, n: u64) -> anyhow::Result<()> {
    let config = "trace = \"all\"\n[[event_sink]]\ntype = \"stdout\"\nformat = \"json\"\n";
    let d = Daemon::start_stalled(cg, config)?;
    let mut client = cg
        .command(&bin_path("ct-probe"))
        .args(["flood", dst, &n.to_string(), "rst"])
        .stdout(std::process::Stdio::null())
        .spawn()?;
    let mut sock = UnixStream::connect(&d.socket)?;
    let mut lat = Vec::new();
    while client.try_wait()?.is_none() {
        let t = Instant::now();
        get_stats(&mut sock)?;
        lat.push(t.elapsed().as_secs_f64() * 1e3);
        std::thread::sleep(Duration::from_millis(10));
    }
    lat.sort_by(f64::total_cmp);
    let p99 = lat.get(lat.len() * 99 / 100).copied().unwrap_or(f64::NAN);
    std::thread::sleep(Duration::from_secs(1));
    let s: Value = d.stats()["sinks"][0].clone();
    let get = |k: &str| s[k].as_u64().unwrap_or(0);
    println!();
    println!("Stalled sink (stdout nobody reads), {n} connects:");
    println!();
    println!("| measure | value |");
    println!("|---|---|");
    println!(
        "| GetStats over the socket during the loop, p50 / p99 / max | {:.2} / {p99:.2} / {:.2} ms |",
        median(&mut lat.clone()),
        lat.last().copied().unwrap_or(f64::NAN)
    );
    println!(
        "| events / written / lost / queued | {} / {} / {} / {} |",
        get("events"),
        get("written"),
        get("lost"),
        get("queued")
    );
    println!(
        "| written + lost + queued = events | {} |",
        get("written") + get("lost") + get("queued") == get("events")
    );
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let n: u64 = args.first().map_or(Ok(20_000), |a| a.parse())?;
    let reps: usize = args.get(1).map_or(Ok(5), |a| a.parse())?;
    let dst = draining_listener()?;
    let cg = TestCgroup::new("bench-sinks");
    let dir = std::env::temp_dir().join(format!("connectracer-bench-sinks-{}", std::process::id()));
    // CT_BENCH_ONLY=file: the baseline and the scenarios whose name has
    // that word, to profile one sink without the others.
    let only = std::env::var("CT_BENCH_ONLY").ok();
    let scenarios: Vec<&Scenario> = SCENARIOS
        .iter()
        .filter(|s| s.config.is_none() || only.as_deref().is_none_or(|o| s.name.contains(o)))
        .collect();
    let mut runs: Vec<Vec<Run>> = scenarios.iter().map(|_| Vec::new()).collect();
    for rep in 0..reps {
        for (i, s) in scenarios.iter().enumerate() {
            let r = run_once(&cg, s, &dst, n, &dir)?;
            eprintln!("rep {rep} {:<45} {:>9.0} connects/s", s.name, r.rate);
            runs[i].push(r);
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    println!();
    println!("Event sinks: loopback connect + RST close loop, trace=all (3 event lines per connect), {n} connects per run, {reps} repetitions, interleaved. Journal: to journald's socket where one runs (lost otherwise, and counted).");
    println!();
    println!("| scenario | connects/s (median) | ratio to no daemon (median, min-max) | daemon CPU ms / 1,000 connects | lines written / lost (last run) |");
    println!("|---|---|---|---|---|");
    let base: Vec<f64> = runs[0].iter().map(|r| r.rate).collect();
    for (s, rs) in scenarios.iter().zip(&runs) {
        let ratios: Vec<f64> = rs.iter().zip(&base).map(|(r, b)| r.rate / b).collect();
        let (lo, hi) = ratios
            .iter()
            .fold((f64::MAX, 0f64), |(l, h), r| (l.min(*r), h.max(*r)));
        let mut cpu: Vec<f64> = rs.iter().filter_map(|r| r.cpu_ms_per_1k).collect();
        let lines = rs
            .last()
            .and_then(|r| r.lines)
            .map_or("-".into(), |(w, l)| format!("{w} / {l}"));
        let cpu = if cpu.is_empty() {
            "-".into()
        } else {
            format!("{:.2}", median(&mut cpu))
        };
        println!(
            "| {} | {:.0} | {:.3} ({lo:.3}-{hi:.3}) | {cpu} | {lines} |",
            s.name,
            median(&mut rs.iter().map(|r| r.rate).collect::<Vec<_>>()),
            median(&mut ratios.clone()),
        );
    }
    if only.is_some() {
        return Ok(());
    }
    stalled(&cg, &dst, n)
}
