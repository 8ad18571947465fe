//! Who may be placed in a sandbox, and the sandbox's cgroup.
//!
//! The target comes as a pidfd, so it cannot be swapped for another process
//! while it is checked: it must be the caller's own child (its parent is
//! the process at the other end of the socket, by SO_PEERCRED), run as the
//! caller's user with every id the same (nothing setuid or setgid), and
//! still alive once it has been moved, so the pid that was written named
//! it. The cgroup is created by root with the kernel's default modes
//! (directory 0755, `cgroup.procs` 0644): cgroup v2 lets a process move
//! another only with write access to the common ancestor's `cgroup.procs`,
//! so nothing inside can leave, and nobody but root can move anything in.

use std::os::fd::{AsRawFd, BorrowedFd};
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum PlaceError {
    #[error("the caller's pid is unknown (no SO_PEERCRED pid)")]
    NoCallerPid,
    #[error("the process has exited")]
    Gone,
    #[error("process {pid} is not the caller's child (its parent is {parent}, the caller is {caller})")]
    NotChild { pid: i32, parent: i32, caller: i32 },
    #[error("process {pid} runs with ids {ids:?}, not the caller's uid {uid} throughout")]
    OtherUser { pid: i32, uid: u32, ids: Vec<u32> },
    #[error("process {pid} runs with mixed group ids {gids:?} (setgid)")]
    SetGid { pid: i32, gids: Vec<u32> },
    #[error(transparent)]
    Scope(#[from] super::scope::ScopeError),
    #[error("{what} {path}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl PlaceError {
    /// Whether the caller was refused (not its child, another user's, gone)
    /// rather than the daemon failing to make the sandbox.
    pub fn is_refusal(&self) -> bool {
        matches!(
            self,
            Self::NoCallerPid
                | Self::Gone
                | Self::NotChild { .. }
                | Self::OtherUser { .. }
                | Self::SetGid { .. }
        )
    }
}

fn io<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> PlaceError + 'a {
    move |source| PlaceError::Io {
        what,
        path: path.to_path_buf(),
        source,
    }
}

/// The pid a pidfd refers to, from its fdinfo (-1 once it has exited).
pub fn pid_of(pidfd: BorrowedFd<'_>) -> Result<i32, PlaceError> {
    let path = PathBuf::from(format!("/proc/self/fdinfo/{}", pidfd.as_raw_fd()));
    let text = std::fs::read_to_string(&path).map_err(io("reading", &path))?;
    let pid = text
        .lines()
        .find_map(|l| l.strip_prefix("Pid:"))
        .and_then(|v| v.trim().parse::<i32>().ok());
    match pid {
        Some(p) if p > 0 => Ok(p),
        _ => Err(PlaceError::Gone),
    }
}

/// Whether the pidfd's process is still alive: a pidfd polls readable
/// once it has exited. (Signal 0 would need CAP_KILL, dropped at start.)
pub fn alive(pidfd: BorrowedFd<'_>) -> bool {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    let mut fds = [PollFd::new(pidfd, PollFlags::POLLIN)];
    matches!(poll(&mut fds, PollTimeout::ZERO), Ok(0))
}

fn ids(status: &str, key: &str) -> Vec<u32> {
    status
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .map(|v| v.split_whitespace().filter_map(|n| n.parse().ok()).collect())
        .unwrap_or_default()
}

/// The target of a placement: the pidfd's process, checked against the
/// caller (uid and pid from the socket's peer credentials).
pub fn verify(pidfd: BorrowedFd<'_>, uid: u32, caller: Option<i32>) -> Result<i32, PlaceError> {
    let caller = caller.ok_or(PlaceError::NoCallerPid)?;
    let pid = pid_of(pidfd)?;
    let path = PathBuf::from(format!("/proc/{pid}/status"));
    let status = std::fs::read_to_string(&path).map_err(|_| PlaceError::Gone)?;
    let parent = ids(&status, "PPid:").first().map_or(0, |p| *p as i32);
    if parent != caller {
        return Err(PlaceError::NotChild { pid, parent, caller });
    }
    let uids = ids(&status, "Uid:");
    if uids.len() != 4 || uids.iter().any(|u| *u != uid) {
        return Err(PlaceError::OtherUser { pid, uid, ids: uids });
    }
    let gids = ids(&status, "Gid:");
    if gids.len() != 4 || gids.iter().any(|g| *g != gids[0]) {
        return Err(PlaceError::SetGid { pid, gids });
    }
    // The status read above was this process's, not a successor's.
    if !alive(pidfd) {
        return Err(PlaceError::Gone);
    }
    Ok(pid)
}

/// Creates the sandbox's cgroup `name` in `parent` (created too).
pub fn create(parent: &Path, name: &str) -> Result<PathBuf, PlaceError> {
    std::fs::create_dir_all(parent).map_err(io("creating", parent))?;
    let dir = parent.join(name);
    std::fs::create_dir(&dir).map_err(io("creating", &dir))?;
    Ok(dir)
}

/// Moves `pid` into the cgroup at `dir`.
pub fn enter(dir: &Path, pid: i32) -> Result<(), PlaceError> {
    let procs = dir.join("cgroup.procs");
    std::fs::write(&procs, pid.to_string()).map_err(io("writing", &procs))
}

/// Whether any process is left in the cgroup (false once it is gone).
pub fn populated(dir: &Path) -> bool {
    std::fs::read_to_string(dir.join("cgroup.events"))
        .map(|t| t.lines().any(|l| l.trim() == "populated 1"))
        .unwrap_or(false)
}

/// Kills every process in the cgroup, its descendants' included.
pub fn kill(dir: &Path) -> Result<(), PlaceError> {
    let file = dir.join("cgroup.kill");
    match std::fs::write(&file, "1") {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        r => r.map_err(io("writing", &file)),
    }
}

/// Removes the (empty) cgroup; one already gone is not an error.
pub fn remove(dir: &Path) -> Result<(), PlaceError> {
    match std::fs::remove_dir(dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        r => r.map_err(io("removing", dir)),
    }
}
