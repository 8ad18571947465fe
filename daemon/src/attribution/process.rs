//! Process cache fed by the kernel's exec/fork/exit records, so a process
//! that connects and exits within a millisecond is still attributed. /proc
//! is read only for processes the records never described: those that
//! predate the daemon.

// Looked up for every connection record; SipHash showed in profiles.
type HashMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::bpf::event::ProcRecord;

/// Appended to an executable path or the last argument that was cut:
/// the record holds `CT_PATH_LEN`/`CT_ARGS_LEN` bytes, /proc is read up to
/// `MAX_ARGV`, and what is cut says so rather than passing for the whole.
pub const TRUNCATED: &str = "…";
/// Bytes of argv kept per process (read from /proc when the record's were cut).
pub const MAX_ARGV: usize = 4096;

fn mark_cut(mut argv: Vec<String>) -> Vec<String> {
    match argv.last_mut() {
        Some(last) => last.push_str(TRUNCATED),
        None => argv.push(TRUNCATED.to_string()),
    }
    argv
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Process {
    pub pid: u32,
    pub ppid: u32,
    pub uid: u32,
    pub comm: String,
    pub exe: Option<String>,
    pub argv: Vec<String>,
    /// ns since boot (CLOCK_MONOTONIC, like the kernel's task start_time).
    pub start_ns: u64,
    /// Unique per cache entry (a new exec, a re-read from /proc): tells a
    /// process image apart from an earlier one with the same pid.
    pub image: u64,
}

#[derive(Debug)]
struct Entry {
    proc: Arc<Process>,
    exited_at: Option<Instant>,
}

#[derive(Debug)]
pub struct ProcessCache {
    entries: HashMap<u32, Entry>,
    proc_root: PathBuf,
    max_entries: usize,
    retention: Duration,
    /// Clock ticks per second of /proc/PID/stat's start time.
    ticks_per_sec: u64,
    next_image: u64,
}

impl ProcessCache {
    pub fn new(proc_root: &Path, max_entries: usize, retention: Duration) -> Self {
        let ticks = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
            .ok()
            .flatten()
            .unwrap_or(100);
        Self {
            entries: HashMap::default(),
            proc_root: proc_root.to_path_buf(),
            max_entries,
            retention,
            ticks_per_sec: u64::try_from(ticks).unwrap_or(100).max(1),
            next_image: 0,
        }
    }

    /// Whether `pid` is cached (without reading /proc).
    pub fn contains(&self, pid: u32) -> bool {
        self.entries.contains_key(&pid)
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Loads every process already running; later ones arrive as records.
    pub fn scan(&mut self) {
        let Ok(dir) = std::fs::read_dir(&self.proc_root) else {
            return;
        };
        let pids: Vec<u32> = dir
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse().ok())
            .collect();
        for pid in pids {
            if let Some(p) = self.read_proc(pid) {
                self.insert(p);
            }
        }
    }

    pub fn apply(&mut self, rec: &ProcRecord, now: Instant) {
        match rec {
            ProcRecord::Exec {
                pid,
                ppid,
                uid,
                start_ns,
                comm,
                filename,
                argv,
                filename_cut,
                argv_cut,
                ..
            } => {
                // bprm->filename is what was passed to execve(): relative
                // paths are resolved while the process is (probably) alive.
                // So is a path or argv the record had to cut.
                let exe = if filename.starts_with('/') && !filename_cut {
                    Some(filename.clone())
                } else {
                    self.read_exe(*pid).or_else(|| {
                        Some(filename.clone()).filter(|f| !f.is_empty()).map(|f| {
                            if *filename_cut {
                                f + TRUNCATED
                            } else {
                                f
                            }
                        })
                    })
                };
                let argv = if *argv_cut {
                    self.read_argv(*pid)
                        .filter(|full| {
                            full.len() >= argv.len()
                                && full.starts_with(&argv[..argv.len().saturating_sub(1)])
                        })
                        .unwrap_or_else(|| mark_cut(argv.clone()))
                } else {
                    argv.clone()
                };
                self.insert(Process {
                    pid: *pid,
                    ppid: *ppid,
                    uid: *uid,
                    comm: comm.clone(),
                    exe,
                    argv,
                    start_ns: *start_ns,
                    image: 0,
                });
            }
            ProcRecord::Fork {
                pid,
                ppid,
                uid,
                start_ns,
                comm,
            } => {
                let parent = self.get(*ppid);
                self.insert(Process {
                    pid: *pid,
                    ppid: *ppid,
                    uid: *uid,
                    comm: comm.clone(),
                    exe: parent.as_ref().and_then(|p| p.exe.clone()),
                    argv: parent.map(|p| p.argv.clone()).unwrap_or_default(),
                    start_ns: *start_ns,
                    image: 0,
                });
            }
            ProcRecord::Exit { pid, .. } => {
                if let Some(e) = self.entries.get_mut(pid) {
                    e.exited_at = Some(now);
                }
            }
        }
    }

    /// The process, from the cache or, failing that, from /proc.
    pub fn get(&mut self, pid: u32) -> Option<Arc<Process>> {
        if let Some(e) = self.entries.get(&pid) {
            return Some(e.proc.clone());
        }
        let p = self.read_proc(pid)?;
        Some(self.insert(p))
    }

    /// Forgets processes that exited more than the retention ago, then, if
    /// still over the limit, the oldest exited and finally arbitrary live
    /// ones (which /proc can give back).
    pub fn prune(&mut self, now: Instant) {
        let retention = self.retention;
        self.entries
            .retain(|_, e| e.exited_at.is_none_or(|t| now.duration_since(t) < retention));
        if self.entries.len() <= self.max_entries {
            return;
        }
        let mut exited: Vec<(Instant, u32)> = self
            .entries
            .iter()
            .filter_map(|(pid, e)| Some((e.exited_at?, *pid)))
            .collect();
        exited.sort_unstable();
        let excess = self.entries.len() - self.max_entries;
        for (_, pid) in exited.into_iter().take(excess) {
            self.entries.remove(&pid);
        }
        let excess = self.entries.len().saturating_sub(self.max_entries);
        let victims: Vec<u32> = self.entries.keys().take(excess).copied().collect();
        for pid in victims {
            self.entries.remove(&pid);
        }
    }

    fn insert(&mut self, mut p: Process) -> Arc<Process> {
        self.next_image += 1;
        p.image = self.next_image;
        let p = Arc::new(p);
        self.entries.insert(
            p.pid,
            Entry {
                proc: p.clone(),
                exited_at: None,
            },
        );
        p
    }

    /// The whole argv, from /proc (capped by `MAX_ARGV`, then marked).
    fn read_argv(&self, pid: u32) -> Option<Vec<String>> {
        use std::io::Read;
        let f = std::fs::File::open(self.proc_root.join(pid.to_string()).join("cmdline")).ok()?;
        let mut b = Vec::new();
        f.take(MAX_ARGV as u64 + 1).read_to_end(&mut b).ok()?;
        let cut = b.len() > MAX_ARGV;
        b.truncate(MAX_ARGV);
        let argv: Vec<String> = b
            .split(|c| *c == 0)
            .filter(|a| !a.is_empty())
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        Some(if cut { mark_cut(argv) } else { argv })
    }

    fn read_exe(&self, pid: u32) -> Option<String> {
        let exe = std::fs::read_link(self.proc_root.join(pid.to_string()).join("exe")).ok()?;
        Some(exe.to_string_lossy().into_owned())
    }

    /// stat and status through the procfs crate (comm may hold spaces and
    /// parentheses; procfs splits stat at the last ')').
    fn read_proc(&self, pid: u32) -> Option<Process> {
        let proc = procfs::process::Process::new_with_root(self.proc_root.join(pid.to_string())).ok()?;
        let stat = proc.stat().ok()?;
        let uid = proc.status().ok()?.ruid;
        let argv = self.read_argv(pid).unwrap_or_default();
        Some(Process {
            pid,
            ppid: u32::try_from(stat.ppid).unwrap_or(0),
            uid,
            comm: stat.comm,
            exe: self.read_exe(pid),
            argv,
            start_ns: stat.starttime.saturating_mul(1_000_000_000) / self.ticks_per_sec,
            image: 0,
        })
    }
}

/// An exec record of `exe` (argv: exe, "-v"), for tests in this crate.
#[cfg(test)]
pub(crate) fn test_exec(pid: u32, exe: &str) -> ProcRecord {
    ProcRecord::Exec {
        pid,
        ppid: 1,
        uid: 1000,
        start_ns: 5,
        comm: "x".into(),
        filename: exe.into(),
        argv: vec![exe.into(), "-v".into()],
        filename_cut: false,
        argv_cut: false,
        cgroup_id: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exec(pid: u32, exe: &str) -> ProcRecord {
        test_exec(pid, exe)
    }

    #[test]
    fn cut_paths_and_argv_are_completed_from_proc_or_marked() {
        let root = std::env::temp_dir().join(format!("connectracer-proc-{}", std::process::id()));
        std::fs::create_dir_all(root.join("42")).unwrap();
        std::fs::write(
            root.join("42/cmdline"),
            b"/bin/tool\0--long-option=abcdef\0more\0",
        )
        .unwrap();
        let mut c = ProcessCache::new(&root, 100, Duration::from_secs(1));
        let cut = |pid| ProcRecord::Exec {
            pid,
            ppid: 1,
            uid: 0,
            start_ns: 1,
            comm: "tool".into(),
            filename: "/very/long/pa".into(),
            argv: vec!["/bin/tool".into(), "--long-opt".into()],
            filename_cut: true,
            argv_cut: true,
            cgroup_id: 0,
        };
        let now = Instant::now();
        c.apply(&cut(42), now);
        let p = c.get(42).unwrap();
        assert_eq!(
            p.argv,
            ["/bin/tool", "--long-option=abcdef", "more"],
            "whole, from /proc"
        );
        // Gone from /proc: what the record held, marked as cut.
        c.apply(&cut(43), now);
        let p = c.get(43).unwrap();
        assert_eq!(p.exe.as_deref(), Some("/very/long/pa…"));
        assert_eq!(p.argv, ["/bin/tool", "--long-opt…"]);
        let _ = std::fs::remove_dir_all(&root);
    }

    #[test]
    fn exec_then_fork_inherits_exe_and_argv() {
        let mut c = ProcessCache::new(Path::new("/nonexistent"), 100, Duration::from_secs(1));
        let now = Instant::now();
        c.apply(&exec(10, "/usr/bin/curl"), now);
        c.apply(
            &ProcRecord::Fork {
                pid: 11,
                ppid: 10,
                uid: 1000,
                start_ns: 6,
                comm: "curl".into(),
            },
            now,
        );
        let child = c.get(11).unwrap();
        assert_eq!(child.exe.as_deref(), Some("/usr/bin/curl"));
        assert_eq!(child.argv, ["/usr/bin/curl", "-v"]);
        assert_eq!(child.ppid, 10);
    }

    #[test]
    fn exited_processes_stay_for_the_retention_only() {
        let mut c = ProcessCache::new(Path::new("/nonexistent"), 100, Duration::from_secs(1));
        let t0 = Instant::now();
        c.apply(&exec(10, "/bin/true"), t0);
        c.apply(
            &ProcRecord::Exit {
                pid: 10,
                exit_code: 0,
            },
            t0,
        );
        c.prune(t0 + Duration::from_millis(500));
        assert!(c.get(10).is_some());
        c.prune(t0 + Duration::from_secs(2));
        assert!(c.get(10).is_none());
    }

    #[test]
    fn bounded_by_max_entries() {
        let mut c = ProcessCache::new(Path::new("/nonexistent"), 10, Duration::from_secs(60));
        let t0 = Instant::now();
        for pid in 1..=50 {
            c.apply(&exec(pid, "/bin/true"), t0);
            if pid % 2 == 0 {
                c.apply(&ProcRecord::Exit { pid, exit_code: 0 }, t0);
            }
        }
        c.prune(t0);
        assert_eq!(c.len(), 10);
    }

    #[test]
    fn reads_own_process_from_proc() {
        let mut c = ProcessCache::new(Path::new("/proc"), 10, Duration::from_secs(60));
        let me = std::process::id();
        let p = c.get(me).unwrap();
        assert_eq!(p.pid, me);
        assert_eq!(p.ppid, nix::unistd::getppid().as_raw() as u32);
        assert_eq!(
            p.exe.as_deref(),
            std::env::current_exe().ok().as_deref().and_then(|e| e.to_str())
        );
        assert!(p.start_ns > 0);
    }
}
