//! Connect-path benchmark: the same loopback connect loop with no daemon and
//! with connectracerd in each trace mode, interleaved in every repetition so
//! that the machine's noise hits all scenarios alike. Reports; never asserts.
//!
//! ct-bench [CONNECTS] [REPETITIONS]   (run as root, from the workspace's target dir)

use std::net::TcpListener;
use std::time::Instant;

use anyhow::Context;
use connectracer_tests::{bin_path, Daemon, TestCgroup};

struct Scenario {
    name: &'static str,
    /// None: no daemon at all.
    config: Option<String>,
}

fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let rest = stat.rsplit_once(") ").map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split(' ').collect();
    // utime and stime are fields 14 and 15 of stat, 12 and 13 after the comm.
    f.get(11).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
        + f.get(12).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
}

struct Run {
    rate: f64,
    daemon_cpu_ms_per_1k: Option<f64>,
    dropped: Option<u64>,
}

fn run_once(cg: &TestCgroup, s: &Scenario, dst: &str, n: u64) -> anyhow::Result<Run> {
    let daemon = s.config.as_deref().map(|c| Daemon::start(cg, c)).transpose()?;
    // Let the previous daemon's teardown (deferred map and program frees)
    // and this one's start-up settle, for every scenario alike.
    std::thread::sleep(std::time::Duration::from_secs(1));
    let dpid = daemon.as_ref().map(Daemon::pid);
    let cpu0 = dpid.map(cpu_ticks);
    let t0 = Instant::now();
    let out = cg
        .command(&bin_path("ct-probe"))
        .args(["flood", dst, &n.to_string(), "rst"])
        .output()
        .context("ct-probe")?;
    let secs = t0.elapsed().as_secs_f64();
    anyhow::ensure!(
        out.status.success(),
        "ct-probe failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let tick_ms = 1000.0 / nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)?.unwrap_or(100) as f64;
    let cpu = dpid
        .zip(cpu0)
        .map(|(p, c0)| (cpu_ticks(p) - c0) as f64 * tick_ms / (n as f64 / 1000.0));
    let dropped = match daemon {
        Some(mut d) => d.stop()?["dropped"].as_u64(),
        None => None,
    };
    Ok(Run {
        rate: n as f64 / secs,
        daemon_cpu_ms_per_1k: cpu,
        dropped,
    })
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let n: u64 = args.first().map_or(Ok(20_000), |a| a.parse())?;
    let reps: usize = args.get(1).map_or(Ok(5), |a| a.parse())?;

    // The listener lives outside the test cgroup: only the client connects.
    // A full accept queue drops SYNs and the client stalls a whole second on
    // the retransmit, so the backlog is far deeper than std's 128.
    let listener = TcpListener::bind("127.0.0.1:0")?;
    nix::sys::socket::listen(&listener, nix::sys::socket::Backlog::MAXCONN)?;
    let dst = listener.local_addr()?.to_string();
    std::thread::spawn(move || {
        for s in listener.incoming() {
            drop(s);
        }
    });
    let port = listener_port(&dst);
    let quiet = "[log]\nevents = false\n";
    let scenarios = [
        Scenario {
            name: "no daemon",
            config: None,
        },
        Scenario {
            name: "trace=watched, destination not watched",
            config: Some(format!(
                "trace = \"watched\"\n[[host]]\nname = \"192.0.2.0/24\"\n{quiet}"
            )),
        },
        Scenario {
            name: "trace=watched, destination watched",
            config: Some(format!(
                "trace = \"watched\"\n[[host]]\nname = \"127.0.0.0/8\"\nports = [{port}]\n{quiet}"
            )),
        },
        Scenario {
            name: "trace=all",
            config: Some(format!("trace = \"all\"\n{quiet}")),
        },
        Scenario {
            name: "trace=all, wake per event (wakeup_threshold = 0)",
            config: Some(format!("trace = \"all\"\n[bpf]\nwakeup_threshold = 0\n{quiet}")),
        },
    ];
    let cg = TestCgroup::new("bench");
    let mut results: Vec<Vec<Run>> = scenarios.iter().map(|_| Vec::new()).collect();
    for rep in 0..reps {
        for (i, s) in scenarios.iter().enumerate() {
            let r = run_once(&cg, s, &dst, n)?;
            eprintln!("rep {rep} {:<50} {:>9.0} connects/s", s.name, r.rate);
            results[i].push(r);
        }
    }

    let mut base_rates: Vec<f64> = results[0].iter().map(|r| r.rate).collect();
    let base = median(&mut base_rates);
    println!("Loopback connect + RST close (SO_LINGER 0) loop, {n} connects per run, {reps} repetitions, scenarios interleaved.");
    println!();
    println!("| scenario | connects/s (median) | ratio to no daemon (median, min–max) | added µs/connect | daemon CPU ms per 1,000 connects | events dropped |");
    println!("|---|---|---|---|---|---|");
    for (s, runs) in scenarios.iter().zip(&results) {
        // Ratios are taken within each repetition, then summarised.
        let mut ratios: Vec<f64> = runs
            .iter()
            .zip(&results[0])
            .map(|(r, b)| r.rate / b.rate)
            .collect();
        let mut rates: Vec<f64> = runs.iter().map(|r| r.rate).collect();
        let rate = median(&mut rates);
        let (lo, hi) = (
            ratios.iter().copied().fold(f64::INFINITY, f64::min),
            ratios.iter().copied().fold(0.0, f64::max),
        );
        let ratio = median(&mut ratios);
        // From the paired ratio, not from two independent medians.
        let added = ((1.0 / ratio - 1.0) * 1e6 / base).max(0.0);
        let mut cpu: Vec<f64> = runs.iter().filter_map(|r| r.daemon_cpu_ms_per_1k).collect();
        let cpu = if cpu.is_empty() {
            "-".to_string()
        } else {
            format!("{:.2}", median(&mut cpu))
        };
        let dropped: u64 = runs.iter().filter_map(|r| r.dropped).sum();
        let dropped = if s.config.is_none() {
            "-".to_string()
        } else {
            dropped.to_string()
        };
        println!(
            "| {} | {rate:.0} | {ratio:.3} ({lo:.3}–{hi:.3}) | {added:.2} | {cpu} | {dropped} |",
            s.name
        );
    }
    Ok(())
}

fn listener_port(dst: &str) -> u16 {
    dst.rsplit(':').next().and_then(|p| p.parse().ok()).unwrap_or(0)
}
