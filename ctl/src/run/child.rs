//! The command's process: forked, held before exec until the daemon has
//! placed it, then file rules applied and the command exec'd.

use std::ffi::CString;
use std::io::Read;
use std::os::fd::{AsFd, FromRawFd, OwnedFd};

use nix::sys::signal::{kill, Signal};
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::{fork, ForkResult, Pid};

use super::files::Files;

/// The forked command, waiting for `release`.
#[derive(Debug)]
pub struct Held {
    pub pid: Pid,
    pub pidfd: OwnedFd,
    go: std::fs::File,
}

/// Forks the command's process. Must be called while tracectl has one
/// thread: the child runs only system calls (and Landlock's, on data built
/// before) until it execs.
pub fn spawn(command: &[String], files: Files) -> Result<Held, String> {
    let argv: Vec<CString> = command
        .iter()
        .map(|a| CString::new(a.as_bytes()).map_err(|_| format!("`{a}` contains a NUL byte")))
        .collect::<Result<_, _>>()?;
    let (wait_end, go_end) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| format!("pipe: {e}"))?;
    // SAFETY: tracectl is single-threaded here (no runtime started yet);
    // the child runs `child` and never returns.
    match unsafe { fork() }.map_err(|e| format!("fork: {e}"))? {
        ForkResult::Child => {
            drop(go_end);
            child(wait_end, &argv, files)
        }
        ForkResult::Parent { child } => {
            drop(wait_end);
            let pidfd = pidfd_open(child).map_err(|e| {
                let _ = kill(child, Signal::SIGKILL);
                format!("pidfd_open: {e}")
            })?;
            Ok(Held {
                pid: child,
                pidfd,
                go: std::fs::File::from(go_end),
            })
        }
    }
}

fn pidfd_open(pid: Pid) -> std::io::Result<OwnedFd> {
    // SAFETY: pidfd_open with flags 0 returns a new fd or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid.as_raw(), 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: a new fd, owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

fn child(wait_end: OwnedFd, argv: &[CString], files: Files) -> ! {
    let mut byte = [0u8; 1];
    let mut pipe = std::fs::File::from(wait_end);
    // EOF: tracectl gave up (or died) before the daemon placed us.
    if !matches!(pipe.read(&mut byte), Ok(1)) {
        // SAFETY: _exit ends the forked child without running the parent's atexit state.
        unsafe { libc::_exit(126) };
    }
    drop(pipe);
    match files.apply() {
        Ok(Some(partial)) => eprintln!("tracectl: {partial}"),
        Ok(None) => {}
        Err(e) => {
            eprintln!("tracectl: {e}");
            // SAFETY: as above.
            unsafe { libc::_exit(126) };
        }
    }
    // Rust ignores SIGPIPE for itself; an ignored signal would stay so
    // across exec, as std's Command also undoes.
    // SAFETY: resetting a signal's disposition to its default.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    let e = nix::unistd::execvp(&argv[0], argv).unwrap_err();
    eprintln!("tracectl: {}: {e}", argv[0].to_string_lossy());
    let code = if e == nix::errno::Errno::ENOENT { 127 } else { 126 };
    // SAFETY: as above.
    unsafe { libc::_exit(code) };
}

impl Held {
    /// Lets the placed command exec.
    pub fn release(mut self) -> Result<Pid, String> {
        use std::io::Write;
        self.go
            .write_all(b"g")
            .map_err(|e| format!("releasing the command: {e}"))?;
        Ok(self.pid)
    }

    /// The daemon refused: the command never runs.
    pub fn abandon(self) {
        let _ = kill(self.pid, Signal::SIGKILL);
        let _ = waitpid(self.pid, None);
    }

    pub fn pidfd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.pidfd.as_fd()
    }
}

/// Waits for the command; its exit status as a shell gives it.
pub fn wait(pid: Pid) -> u8 {
    loop {
        match waitpid(pid, None) {
            Ok(WaitStatus::Exited(_, code)) => return code as u8,
            Ok(WaitStatus::Signaled(_, sig, _)) => return 128u8.wrapping_add(sig as u8),
            Err(nix::errno::Errno::EINTR) | Ok(_) => continue,
            Err(_) => return 1,
        }
    }
}
