//! A real Docker daemon owned by one test: its own data root, exec root,
//! socket and configuration in a temporary directory, no bridge and no
//! iptables rules (containers use the host's network or none), the
//! cgroupfs driver with containers' cgroups below the test cgroup, so the
//! tracer attached there sees them. Stopped, and everything it left
//! (containers, cgroups, mounts) removed, when dropped.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context};

use crate::cgroup::TestCgroup;
use crate::wait::eventually;

/// Debian's docker.io CLI (another `docker` may come first on PATH).
pub const DOCKER: &str = "/usr/bin/docker";

#[derive(Debug)]
pub struct Dockerd {
    pub dir: tempfile::TempDir,
    pub socket: PathBuf,
    /// `--cgroup-parent`, relative to the cgroup2 mount.
    pub cgroup_parent: String,
    test_cgroup: String,
    child: Option<Child>,
}

impl Dockerd {
    /// Starts dockerd with its containers' cgroups under `cg/docker`.
    pub fn start(cg: &TestCgroup) -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("connectracer-dockerd-")
            .tempdir()?;
        let socket = dir.path().join("docker.sock");
        let d = Self {
            socket,
            cgroup_parent: format!("{}/docker", cg.rel),
            test_cgroup: cg.rel.clone(),
            child: None,
            dir,
        };
        d.spawned()
    }

    fn spawned(mut self) -> anyhow::Result<Self> {
        let root = self.dir.path();
        std::fs::write(root.join("daemon.json"), "{}")?;
        let log = std::fs::File::options()
            .create(true)
            .append(true)
            .open(root.join("dockerd.log"))?;
        let child = Command::new("dockerd")
            .arg("--data-root")
            .arg(root.join("data"))
            .arg("--exec-root")
            .arg(root.join("exec"))
            .arg("--pidfile")
            .arg(root.join("dockerd.pid"))
            .arg("--config-file")
            .arg(root.join("daemon.json"))
            .arg("--host")
            .arg(format!("unix://{}", self.socket.display()))
            .args(["--bridge=none", "--iptables=false", "--ip6tables=false"])
            .args(["--exec-opt", "native.cgroupdriver=cgroupfs"])
            .arg(format!("--cgroup-parent={}", self.cgroup_parent))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("starting dockerd (package docker.io)")?;
        self.child = Some(child);
        let up = eventually(Duration::from_secs(30), || self.docker(&["version"]).ok());
        if up.is_none() {
            let log = std::fs::read_to_string(root.join("dockerd.log")).unwrap_or_default();
            bail!("dockerd did not answer within 30 s:\n{log}");
        }
        Ok(self)
    }

    /// Runs the docker CLI against this daemon; its stdout on success.
    pub fn docker(&self, args: &[&str]) -> anyhow::Result<String> {
        let out = Command::new(DOCKER)
            .arg("--host")
            .arg(format!("unix://{}", self.socket.display()))
            .args(args)
            .output()
            .context("running docker")?;
        if !out.status.success() {
            bail!("docker {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    }

    /// Stops dockerd (SIGTERM: it stops its containers and removes its
    /// socket), leaving its state for `restart`.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(c.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
            let _ = c.wait();
        }
    }

    /// Starts it again on the same state and socket.
    pub fn restart(mut self) -> anyhow::Result<Self> {
        self.stop();
        self.spawned()
    }
}

/// Removes what a runtime made below the test cgroup `test` (relative to
/// the cgroup2 mount): `test/below` in the v2 hierarchy (the test cgroup
/// itself is the test's to remove), and all of `test` in the v1 ones, where
/// runc makes the controllers' directories too on hybrid hosts.
pub(crate) fn remove_cgroups(test: &str, below: &str) {
    let Ok(mounts) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return;
    };
    let test = test.trim_start_matches('/');
    for l in mounts.lines() {
        let Some((pre, post)) = l.split_once(" - ") else {
            continue;
        };
        let (Some(point), Some(fs)) = (pre.split(' ').nth(4), post.split(' ').next()) else {
            continue;
        };
        let dir = match fs {
            "cgroup2" => Path::new(point).join(test).join(below),
            "cgroup" => Path::new(point).join(test),
            _ => continue,
        };
        if !dir.exists() {
            continue;
        }
        let mut dirs: Vec<PathBuf> = walk(&dir);
        dirs.sort_by_key(|d| std::cmp::Reverse(d.components().count()));
        for d in dirs {
            let _ = std::fs::remove_dir(d);
        }
    }
}

/// Unmounts what a runtime left mounted under `root` (network namespace
/// files, overlay mounts after a crash), deepest first.
pub(crate) fn unmount_below(root: &Path) {
    let Ok(mounts) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return;
    };
    let mut points: Vec<&str> = mounts
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .filter(|p| Path::new(p).starts_with(root))
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.len()));
    for p in points {
        let _ = nix::mount::umount2(p, nix::mount::MntFlags::MNT_DETACH);
    }
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = vec![dir.to_path_buf()];
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                out.extend(walk(&e.path()));
            }
        }
    }
    out
}

impl Drop for Dockerd {
    fn drop(&mut self) {
        if self.child.is_some() {
            let _ = self.docker(&["rm", "--force", "--volumes", "web"]);
            if let Ok(ids) = self.docker(&["ps", "--all", "--quiet"]) {
                for id in ids.lines() {
                    let _ = self.docker(&["rm", "--force", id]);
                }
            }
        }
        self.stop();
        // dockerd's own containerd outlives a dockerd that did not stop cleanly.
        if let Ok(pid) = std::fs::read_to_string(self.dir.path().join("exec/containerd/containerd.pid")) {
            if let Ok(pid) = pid.trim().parse::<i32>() {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
        unmount_below(self.dir.path());
        remove_cgroups(&self.test_cgroup, "docker");
    }
}
