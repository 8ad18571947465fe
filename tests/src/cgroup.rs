//! A test-owned cgroup and the clients run inside it.

use std::ffi::CString;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::{bail, Context};
use serde_json::Value;

use crate::paths::bin_path;

fn cgroup2_mount() -> PathBuf {
    let text = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    text.lines()
        .find_map(|l| {
            let (pre, post) = l.split_once(" - ")?;
            let point = pre.split(' ').nth(4)?;
            (post.split(' ').next()? == "cgroup2").then(|| PathBuf::from(point))
        })
        .expect("a cgroup2 mount")
}

/// A cgroup v2 directory owned by one test.
#[derive(Debug)]
pub struct TestCgroup {
    pub path: PathBuf,
    /// The path as the daemon reports it, relative to the cgroup2 mount.
    pub rel: String,
}

impl TestCgroup {
    pub fn new(name: &str) -> Self {
        static SEQ: AtomicUsize = AtomicUsize::new(0);
        let n = SEQ.fetch_add(1, Ordering::Relaxed);
        let leaf = format!("connectracer-test-{}-{n}-{name}", std::process::id());
        let path = cgroup2_mount().join(&leaf);
        std::fs::create_dir(&path).unwrap_or_else(|e| panic!("creating {}: {e}", path.display()));
        Self {
            path,
            rel: format!("/{leaf}"),
        }
    }

    /// A cgroup below this one (drop it before its parent).
    pub fn child(&self, name: &str) -> Self {
        let path = self.path.join(name);
        std::fs::create_dir(&path).unwrap_or_else(|e| panic!("creating {}: {e}", path.display()));
        Self {
            path,
            rel: format!("{}/{name}", self.rel),
        }
    }

    /// A command whose process joins this cgroup before it execs.
    pub fn command(&self, program: &Path) -> Command {
        self.command_as(program, None)
    }

    /// Same, switching to `uid` (and the same gid) after joining the cgroup:
    /// `Command::uid` would drop root before the cgroup write.
    pub fn command_as(&self, program: &Path, uid: Option<u32>) -> Command {
        let mut cmd = Command::new(program);
        let procs = CString::new(
            self.path
                .join("cgroup.procs")
                .into_os_string()
                .into_encoded_bytes(),
        )
        .expect("path");
        // SAFETY: only async-signal-safe calls (open, write, close) on data
        // prepared before fork.
        unsafe {
            cmd.pre_exec(move || {
                let fd = libc::open(procs.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
                if fd < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                let ok = libc::write(fd, b"0".as_ptr().cast(), 1) == 1;
                libc::close(fd);
                if !ok {
                    return Err(std::io::Error::last_os_error());
                }
                if let Some(id) = uid {
                    if libc::setgroups(0, std::ptr::null()) != 0
                        || libc::setgid(id) != 0
                        || libc::setuid(id) != 0
                    {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                Ok(())
            });
        }
        cmd
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        // Kill stragglers, then remove; rmdir fails while members remain.
        let _ = std::fs::write(self.path.join("cgroup.kill"), "1");
        for _ in 0..100 {
            if remove_tree(&self.path).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        eprintln!("warning: could not remove {}", self.path.display());
    }
}

/// A cgroup and those the daemon created below it (sandboxes), deepest first.
fn remove_tree(dir: &Path) -> std::io::Result<()> {
    for e in std::fs::read_dir(dir)?.flatten() {
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            remove_tree(&e.path())?;
        }
    }
    std::fs::remove_dir(dir)
}

/// A client in the cgroup that holds a connection open, as `uid`; returns
/// it with its pid and local address once connected.
pub fn hold(cg: &TestCgroup, dst: &str, uid: Option<u32>) -> (Child, u64, String) {
    let mut child = cg
        .command_as(&bin_path("ct-probe"), uid)
        .args(["hold", dst, "30"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawning ct-probe hold");
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.as_mut().expect("stdout")),
        &mut line,
    )
    .expect("ct-probe hold's line");
    let v: Value = serde_json::from_str(&line).expect("ct-probe hold's JSON");
    (
        child,
        v["pid"].as_u64().expect("pid"),
        v["local"].as_str().expect("local address").to_string(),
    )
}

/// Runs ct-probe in the cgroup, waits for it, returns its JSON output.
pub fn probe(cg: &TestCgroup, args: &[&str]) -> anyhow::Result<Value> {
    probe_as(cg, args, None)
}

pub fn probe_as(cg: &TestCgroup, args: &[&str], uid: Option<u32>) -> anyhow::Result<Value> {
    let mut cmd = cg.command_as(&bin_path("ct-probe"), uid);
    cmd.args(args);
    let out = cmd.output().context("running ct-probe")?;
    if !out.status.success() {
        bail!(
            "ct-probe {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    serde_json::from_slice(&out.stdout).context("ct-probe output")
}
