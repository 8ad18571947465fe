//! What both connect-loop benchmarks share.

use std::net::TcpListener;

use crate::{bin_path, TestCgroup};

/// A loopback listener that accepts and drops everything, outside the
/// test cgroup (only the client connects); returns its address. A full
/// accept queue drops SYNs and the client stalls a whole second on the
/// retransmit, so the backlog is far deeper than std's 128.
pub fn draining_listener() -> anyhow::Result<String> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    nix::sys::socket::listen(&listener, nix::sys::socket::Backlog::MAXCONN)?;
    let dst = listener.local_addr()?.to_string();
    std::thread::spawn(move || listener.incoming().for_each(drop));
    Ok(dst)
}

/// `n` connect + RST close from the cgroup, as fast as possible.
pub fn flood(cg: &TestCgroup, dst: &str, n: u64) -> anyhow::Result<()> {
    let out = cg
        .command(&bin_path("ct-probe"))
        .args(["flood", dst, &n.to_string(), "rst"])
        .output()?;
    anyhow::ensure!(
        out.status.success(),
        "ct-probe flood: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// CPU time a process's live threads have used, in nanoseconds, from
/// the scheduler's own accounting (`stat`'s utime/stime are in 10 ms
/// ticks, too coarse for a few hundred ms of daemon CPU).
pub fn cpu_ns(pid: u32) -> u64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0;
    };
    tasks
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .sum()
}

/// The middle value (NaN for none).
pub fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}
