//! Helpers for the `tracectl run` tests: the command as a test user, the
//! sandboxes' cgroups, the trace's lines.

use std::path::PathBuf;
use std::process::{Command, Output};

use serde_json::Value;

use crate::{bin_path, Daemon, TestCgroup, TestUser};

/// No host policy at all: whatever a sandbox refuses, it refuses itself.
pub const CONFIG: &str = "trace = \"watched\"\n";

/// A user for one test, named by `tag` and this run.
pub fn user(tag: &str) -> TestUser {
    TestUser::create(&format!("ctsb{tag}{}", std::process::id() % 100_000), &[]).expect("useradd")
}

/// `tracectl run ARGS` as `u`, against `d`.
pub fn tracectl_run(d: &Daemon, u: &TestUser, args: &[&str]) -> Command {
    let mut cmd = Command::new(bin_path("tracectl"));
    std::os::unix::process::CommandExt::uid(&mut cmd, u.uid);
    std::os::unix::process::CommandExt::gid(&mut cmd, u.gid);
    cmd.arg("--socket").arg(&d.socket).arg("run").args(args);
    cmd
}

/// `tracectl run ARGS` as `u`, waited for.
pub fn run(d: &Daemon, u: &TestUser, args: &[&str]) -> Output {
    tracectl_run(d, u, args).output().expect("running tracectl run")
}

/// Where the daemon creates sandboxes below a test cgroup.
pub fn sandboxes_dir(cg: &TestCgroup) -> PathBuf {
    cg.path.join("connectracer-sandbox")
}

/// The sandboxes' cgroups that exist now.
pub fn sandbox_dirs(cg: &TestCgroup) -> Vec<PathBuf> {
    std::fs::read_dir(sandboxes_dir(cg))
        .map(|r| r.flatten().map(|e| e.path()).filter(|p| p.is_dir()).collect())
        .unwrap_or_default()
}

/// The JSON lines of an output.
pub fn lines(out: &[u8]) -> Vec<Value> {
    String::from_utf8_lossy(out)
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// A command's stderr, for messages.
pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A log file the test user may create.
pub fn log_path(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("connectracer-sandbox-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o1777)).unwrap();
    dir.join("trace.jsonl")
}

/// A child killed and reaped when dropped, also when the test panics:
/// before the user it runs as is deleted (userdel refuses while it runs).
#[derive(Debug)]
pub struct Reaped(pub std::process::Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
