//! Syscall-profiling benchmark, two workloads in a test cgroup:
//!
//! - a loop of getppid(2) (the cheapest syscall, so the worst case for a
//!   per-syscall cost) and of 64-byte reads of /dev/zero, timed inside the
//!   process;
//! - a build-like one: short processes one after another, each `cc -c` of
//!   a small C file (the compiler driver, cc1 and as: execs, header reads,
//!   pipes), timed by the wall clock from the first to the last.
//!
//! Both run with no daemon, with an empty sys_enter program attached (the
//! kernel's fixed cost of any such program), with the daemon and no
//! profile, while another cgroup is profiled (our program attached, this
//! cgroup not matched), while this one is, and under `strace -f -c` and
//! `strace -f --seccomp-bpf -e trace=getppid`, interleaved in every
//! repetition and reported as ratios to no daemon. Reports; never asserts.
//!
//! ct-bench-profile [CALLS] [REPETITIONS] [COMPILES]   (run as root)
//! ct-bench-profile --loop CALLS                        (the measured loop)
//! ct-bench-profile --build COMPILES DIR                (the measured build)

use std::io::Read;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use connectracer_tests::bench::{median, EmptySysEnter};
use connectracer_tests::{bin_path, Daemon, TestCgroup};

/// How each scenario runs the workloads.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Scenario {
    NoDaemon,
    EmptyProgram,
    Daemon,
    ProfilingOther,
    ProfilingThis,
    Strace,
    StraceSeccomp,
}

const SCENARIOS: [(Scenario, &str); 7] = [
    (Scenario::NoDaemon, "no daemon"),
    (
        Scenario::EmptyProgram,
        "empty sys_enter program attached (no daemon)",
    ),
    (Scenario::Daemon, "daemon, no profile recording"),
    (Scenario::ProfilingOther, "daemon, another cgroup profiled"),
    (Scenario::ProfilingThis, "daemon, this cgroup profiled"),
    (Scenario::Strace, "strace -f -c (no daemon)"),
    (
        Scenario::StraceSeccomp,
        "strace -f --seccomp-bpf -e trace=getppid -c",
    ),
];

/// The C file each compile builds: a few functions over libc headers.
const UNIT: &str = r#"#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct item { char name[32]; int count; };

static int by_count(const void *a, const void *b)
{
	return ((const struct item *)b)->count - ((const struct item *)a)->count;
}

int rank(struct item *items, size_t n, const char *prefix)
{
	int hits = 0;
	for (size_t i = 0; i < n; i++)
		if (strncmp(items[i].name, prefix, strlen(prefix)) == 0)
			hits += items[i].count;
	qsort(items, n, sizeof(*items), by_count);
	printf("%d\n", hits);
	return hits;
}
"#;

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

/// The measured build: milliseconds per compile, on stdout.
fn run_build(n: u64, dir: &Path) -> anyhow::Result<()> {
    let src = dir.join("unit.c");
    let start = Instant::now();
    for i in 0..n {
        let status = Command::new("cc")
            .args(["-O2", "-c"])
            .arg(&src)
            .arg("-o")
            .arg(dir.join(format!("unit-{i}.o")))
            .status()?;
        anyhow::ensure!(status.success(), "cc -c {}: {status}", src.display());
    }
    let ms = start.elapsed().as_secs_f64() * 1000.0 / n as f64;
    println!("{}", serde_json::json!({ "compile_ms": ms }));
    Ok(())
}

/// Runs `args` of this binary in `cg`, under strace for those scenarios;
/// the JSON it prints.
fn measure(cg: &TestCgroup, s: Scenario, args: &[String]) -> anyhow::Result<serde_json::Value> {
    let me = bin_path("ct-bench-profile");
    let mut cmd = match s {
        Scenario::Strace | Scenario::StraceSeccomp => cg.command(Path::new("/usr/bin/strace")),
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
    let out = cmd.args(args).output()?;
    anyhow::ensure!(
        out.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(serde_json::from_slice(&out.stdout)?)
}

/// One scenario's figures: getppid ns, read ns, ms per compile.
type Figures = [f64; 3];

fn both(cg: &TestCgroup, s: Scenario, n: u64, compiles: u64, dir: &Path) -> anyhow::Result<Figures> {
    let f = |v: &serde_json::Value, k: &str| v[k].as_f64().unwrap_or(f64::NAN);
    let l = measure(cg, s, &["--loop".into(), n.to_string()])?;
    let b = measure(
        cg,
        s,
        &["--build".into(), compiles.to_string(), dir.display().to_string()],
    )?;
    Ok([f(&l, "getppid_ns"), f(&l, "read_ns"), f(&b, "compile_ms")])
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

/// The cgroups: the measured one, one profiled beside it, and the
/// daemon's above both (dropped, so removed, last).
struct Cgroups {
    work: TestCgroup,
    other: TestCgroup,
    root: TestCgroup,
}

/// One repetition: every scenario once, the daemon started for those that
/// need it.
fn repetition(cg: &Cgroups, n: u64, compiles: u64, dir: &Path) -> anyhow::Result<Vec<Figures>> {
    let mut out = Vec::new();
    let mut daemon: Option<Daemon> = None;
    for (s, _) in SCENARIOS {
        let needs = matches!(
            s,
            Scenario::Daemon | Scenario::ProfilingOther | Scenario::ProfilingThis
        );
        if needs && daemon.is_none() {
            daemon = Some(Daemon::start(
                &cg.root,
                "trace = \"all\"\n[log]\nevents = false\n",
            )?);
            std::thread::sleep(Duration::from_secs(1));
        }
        if !needs {
            daemon = None;
        }
        let profiled = match s {
            Scenario::ProfilingOther => Some(&cg.other),
            Scenario::ProfilingThis => Some(&cg.work),
            _ => None,
        };
        let recording = match (profiled, daemon.as_mut()) {
            (Some(c), Some(d)) => Some(start_profile(d, c)?),
            _ => None,
        };
        let empty = match s {
            Scenario::EmptyProgram => Some(EmptySysEnter::attach()?),
            _ => None,
        };
        out.push(both(&cg.work, s, n, compiles, dir)?);
        drop(empty);
        if let (Some(child), Some(d)) = (recording, daemon.as_mut()) {
            stop_profile(d, child)?;
        }
    }
    Ok(out)
}

/// One column: the median of a figure and of its ratio to no daemon.
fn column(rs: &[Figures], base: &[Figures], i: usize, decimals: usize) -> String {
    let mut v: Vec<f64> = rs.iter().map(|r| r[i]).collect();
    let mut ratios: Vec<f64> = rs.iter().zip(base).map(|(r, b)| r[i] / b[i]).collect();
    let (lo, hi) = ratios
        .iter()
        .fold((f64::MAX, 0f64), |(l, h), r| (l.min(*r), h.max(*r)));
    format!(
        "{:.decimals$} | {:.2} ({lo:.2}-{hi:.2})",
        median(&mut v),
        median(&mut ratios)
    )
}

fn report(results: &[Vec<Figures>], n: u64, reps: usize, compiles: u64) {
    println!();
    println!("Syscall profiles: {n} getppid(2) then {n} 64-byte reads of /dev/zero in one process, timed inside it, {reps} repetitions, interleaved. Ratios: time a call against no daemon (1.00 = no cost).");
    println!();
    println!("| scenario | getppid ns/call (median) | ratio (median, min-max) | read ns/call (median) | ratio (median, min-max) |");
    println!("|---|---|---|---|---|");
    for ((_, name), rs) in SCENARIOS.iter().zip(results) {
        let (g, r) = (column(rs, &results[0], 0, 1), column(rs, &results[0], 1, 1));
        println!("| {name} | {g} | {r} |");
    }
    println!();
    println!("Build-like workload: {compiles} `cc -O2 -c` of a 25-line C file over stdio.h, stdlib.h and string.h, one after another (each the driver, cc1 and as), wall clock from the first to the last, in the same repetitions. Ratios against no daemon.");
    println!();
    println!("| scenario | ms per compile (median) | ratio (median, min-max) |");
    println!("|---|---|---|");
    for ((_, name), rs) in SCENARIOS.iter().zip(results) {
        println!("| {name} | {} |", column(rs, &results[0], 2, 2));
    }
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("--loop") => {
            let n = args.get(1).map_or(Ok(1_000_000), |a| a.parse())?;
            return run_loop(n);
        }
        Some("--build") => {
            let n = args.get(1).map_or(Ok(20), |a| a.parse())?;
            let dir = args.get(2).map(Path::new).unwrap_or(Path::new("."));
            return run_build(n, dir);
        }
        _ => {}
    }
    let n: u64 = args.first().map_or(Ok(1_000_000), |a| a.parse())?;
    let reps: usize = args.get(1).map_or(Ok(5), |a| a.parse())?;
    let compiles: u64 = args.get(2).map_or(Ok(40), |a| a.parse())?;
    let dir = tempfile::Builder::new().prefix("ct-bench-profile-").tempdir()?;
    std::fs::write(dir.path().join("unit.c"), UNIT)?;
    let root = TestCgroup::new("bench-profile");
    let cg = Cgroups {
        work: root.child("work"),
        other: root.child("other"),
        root,
    };
    let mut results: Vec<Vec<Figures>> = SCENARIOS.iter().map(|_| Vec::new()).collect();
    for rep in 0..reps {
        for (i, r) in repetition(&cg, n, compiles, dir.path())?.into_iter().enumerate() {
            eprintln!(
                "rep {rep} {:<48} getppid {:>8.1} ns  read {:>8.1} ns  compile {:>7.2} ms",
                SCENARIOS[i].1, r[0], r[1], r[2]
            );
            results[i].push(r);
        }
    }
    report(&results, n, reps, compiles);
    Ok(())
}
