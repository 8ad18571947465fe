//! Syscall-profiling benchmark: a loop of getppid(2) (the cheapest
//! syscall, so the worst case for a per-syscall cost) and of 64-byte reads
//! of /dev/zero, timed inside the process, in a test cgroup: with no
//! daemon, with the daemon and no profile, while another cgroup is
//! profiled, while this one is, and under `strace -f -c` and `strace -f
//! --seccomp-bpf -e trace=getppid`, interleaved in every repetition and
//! reported as ratios to no daemon. Reports; never asserts.
//!
//! ct-bench-profile [CALLS] [REPETITIONS]   (run as root)
//! ct-bench-profile --loop CALLS            (the measured loop itself)

use std::io::Read;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use connectracer_tests::bench::median;
use connectracer_tests::{bin_path, Daemon, TestCgroup};

/// How each scenario runs the loop.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Scenario {
    NoDaemon,
    Daemon,
    ProfilingOther,
    ProfilingThis,
    Strace,
    StraceSeccomp,
}

const SCENARIOS: [(Scenario, &str); 6] = [
    (Scenario::NoDaemon, "no daemon"),
    (Scenario::Daemon, "daemon, no profile recording"),
    (Scenario::ProfilingOther, "daemon, another cgroup profiled"),
    (Scenario::ProfilingThis, "daemon, this cgroup profiled"),
    (Scenario::Strace, "strace -f -c (no daemon)"),
    (
        Scenario::StraceSeccomp,
        "strace -f --seccomp-bpf -e trace=getppid -c",
    ),
];

/// The measured loop: nanoseconds per getppid and per read, on stdout.
fn run_loop(n: u64) -> anyhow::Result<()> {
    let start = Instant::now();
    for _ in 0..n {
        std::hint::black_box(nix::unistd::getppid());
    }
    let getppid = start.elapsed();
    let mut zero = std::fs::File::open("/dev/zero")?;
    let mut buf = [0u8; 64];
    let start = Instant::now();
    for _ in 0..n {
        zero.read_exact(&mut buf)?;
    }
    let read = start.elapsed();
    let per = |d: Duration| d.as_nanos() as f64 / n as f64;
    println!(
        "{}",
        serde_json::json!({ "getppid_ns": per(getppid), "read_ns": per(read) })
    );
    Ok(())
}

/// Runs the loop in `cg`, under strace for those scenarios: (getppid ns,
/// read ns) a call.
fn measure(cg: &TestCgroup, s: Scenario, n: u64) -> anyhow::Result<(f64, f64)> {
    let me = bin_path("ct-bench-profile");
    let mut cmd = match s {
        Scenario::Strace | Scenario::StraceSeccomp => cg.command(std::path::Path::new("/usr/bin/strace")),
        _ => cg.command(&me),
    };
    match s {
        Scenario::Strace => {
            cmd.args(["-f", "-c", "-o", "/dev/null"]).arg(&me);
        }
        Scenario::StraceSeccomp => {
            cmd.args([
                "-f",
                "--seccomp-bpf",
                "-e",
                "trace=getppid",
                "-c",
                "-o",
                "/dev/null",
            ])
            .arg(&me);
        }
        _ => {}
    }
    let out = cmd.args(["--loop", &n.to_string()]).output()?;
    anyhow::ensure!(
        out.status.success(),
        "the loop failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let f = |k: &str| v[k].as_f64().unwrap_or(f64::NAN);
    Ok((f("getppid_ns"), f("read_ns")))
}

/// `tracectl profile` of `cg` in the background, once the daemon records.
fn start_profile(d: &mut Daemon, cg: &TestCgroup) -> anyhow::Result<Child> {
    let child = Command::new(bin_path("tracectl"))
        .arg("--socket")
        .arg(&d.socket)
        .args([
            "profile", "--cgroup", &cg.rel, "--for", "10min", "--format", "json",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    d.wait_log("syscall profile started", Duration::from_secs(10))?;
    Ok(child)
}

/// Ends a profile early (its caller gone) and waits until the daemon says so.
fn stop_profile(d: &mut Daemon, mut child: Child) -> anyhow::Result<()> {
    child.kill()?;
    child.wait()?;
    d.wait_log("syscall profile ended", Duration::from_secs(10))?;
    Ok(())
}

/// One repetition: every scenario once, the daemon started for those that
/// need it.
fn repetition(
    root: &TestCgroup,
    work: &TestCgroup,
    other: &TestCgroup,
    n: u64,
) -> anyhow::Result<Vec<(f64, f64)>> {
    let mut out = Vec::new();
    let mut daemon: Option<Daemon> = None;
    for (s, _) in SCENARIOS {
        let needs = matches!(
            s,
            Scenario::Daemon | Scenario::ProfilingOther | Scenario::ProfilingThis
        );
        if needs && daemon.is_none() {
            daemon = Some(Daemon::start(root, "trace = \"all\"\n[log]\nevents = false\n")?);
            std::thread::sleep(Duration::from_secs(1));
        }
        if !needs {
            daemon = None;
        }
        let profiled = match s {
            Scenario::ProfilingOther => Some(other),
            Scenario::ProfilingThis => Some(work),
            _ => None,
        };
        let recording = match (profiled, daemon.as_mut()) {
            (Some(cg), Some(d)) => Some(start_profile(d, cg)?),
            _ => None,
        };
        out.push(measure(work, s, n)?);
        if let (Some(child), Some(d)) = (recording, daemon.as_mut()) {
            stop_profile(d, child)?;
        }
    }
    Ok(out)
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("--loop") {
        let n = args.get(1).map_or(Ok(1_000_000), |a| a.parse())?;
        return run_loop(n);
    }
    let n: u64 = args.first().map_or(Ok(1_000_000), |a| a.parse())?;
    let reps: usize = args.get(1).map_or(Ok(5), |a| a.parse())?;
    let root = TestCgroup::new("bench-profile");
    let work = root.child("work");
    let other = root.child("other");
    let mut results: Vec<Vec<(f64, f64)>> = SCENARIOS.iter().map(|_| Vec::new()).collect();
    for rep in 0..reps {
        for (i, r) in repetition(&root, &work, &other, n)?.into_iter().enumerate() {
            eprintln!(
                "rep {rep} {:<48} getppid {:>8.1} ns  read {:>8.1} ns",
                SCENARIOS[i].1, r.0, r.1
            );
            results[i].push(r);
        }
    }
    println!();
    println!("Syscall profiles: {n} getppid(2) then {n} 64-byte reads of /dev/zero in one process, timed inside it, {reps} repetitions, interleaved. Ratios: time a call against no daemon (1.00 = no cost).");
    println!();
    println!("| scenario | getppid ns/call (median) | ratio (median, min-max) | read ns/call (median) | ratio (median, min-max) |");
    println!("|---|---|---|---|---|");
    for ((_, name), rs) in SCENARIOS.iter().zip(&results) {
        let col = |pick: fn(&(f64, f64)) -> f64| {
            let mut v: Vec<f64> = rs.iter().map(pick).collect();
            let mut ratios: Vec<f64> = rs
                .iter()
                .zip(&results[0])
                .map(|(r, b)| pick(r) / pick(b))
                .collect();
            let (lo, hi) = ratios
                .iter()
                .fold((f64::MAX, 0f64), |(l, h), r| (l.min(*r), h.max(*r)));
            format!(
                "{:.1} | {:.2} ({lo:.2}-{hi:.2})",
                median(&mut v),
                median(&mut ratios)
            )
        };
        println!("| {name} | {} | {} |", col(|r| r.0), col(|r| r.1));
    }
    Ok(())
}
