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

/// An empty program (`return 0`) on the raw `sys_enter` tracepoint, attached
/// while this lives: what any sys_enter program costs every syscall of the
/// host (the tracepoint's slow entry path and the program's dispatch, as
/// for the daemon's tp_btf one), without the program's own work.
#[derive(Debug)]
pub struct EmptySysEnter {
    _prog: std::os::fd::OwnedFd,
    _link: std::os::fd::OwnedFd,
}

/// BPF_PROG_LOAD and BPF_RAW_TRACEPOINT_OPEN from uapi/linux/bpf.h.
const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_RAW_TRACEPOINT_OPEN: libc::c_long = 17;
const BPF_PROG_TYPE_RAW_TRACEPOINT: u32 = 17;

/// bpf(2) with an attribute block of 128 bytes, the rest zero.
fn bpf(cmd: libc::c_long, attr: &[u8]) -> std::io::Result<std::os::fd::OwnedFd> {
    use std::os::fd::FromRawFd;
    let mut buf = [0u8; 128];
    buf[..attr.len()].copy_from_slice(attr);
    // SAFETY: bpf(2) reads `buf` (which outlives the call) as a `union
    // bpf_attr` of the size given; the pointers in it point at live data.
    let fd = unsafe { libc::syscall(libc::SYS_bpf, cmd, buf.as_ptr(), buf.len()) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: a new file descriptor nobody else owns.
    Ok(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd as i32) })
}

impl EmptySysEnter {
    pub fn attach() -> anyhow::Result<Self> {
        use std::os::fd::AsRawFd;
        // r0 = 0; exit
        let insns: [u64; 2] = [0x0000_0000_0000_00b7, 0x0000_0000_0000_0095];
        let license = c"GPL";
        let mut load = Vec::new();
        load.extend_from_slice(&BPF_PROG_TYPE_RAW_TRACEPOINT.to_ne_bytes());
        load.extend_from_slice(&(insns.len() as u32).to_ne_bytes());
        load.extend_from_slice(&(insns.as_ptr() as u64).to_ne_bytes());
        load.extend_from_slice(&(license.as_ptr() as u64).to_ne_bytes());
        let prog =
            bpf(BPF_PROG_LOAD, &load).map_err(|e| anyhow::anyhow!("loading an empty raw_tp program: {e}"))?;
        let name = c"sys_enter";
        let mut open = Vec::new();
        open.extend_from_slice(&(name.as_ptr() as u64).to_ne_bytes());
        open.extend_from_slice(&(prog.as_raw_fd() as u32).to_ne_bytes());
        let link = bpf(BPF_RAW_TRACEPOINT_OPEN, &open)
            .map_err(|e| anyhow::anyhow!("attaching it to sys_enter: {e}"))?;
        Ok(Self {
            _prog: prog,
            _link: link,
        })
    }
}
