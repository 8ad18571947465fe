//! File rules, applied by the child between its placement and its exec:
//! masks first (mounts, which Landlock would then refuse), then Landlock.
//! The ruleset is built in the parent, before the fork, so that the child
//! does nothing but system calls.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use landlock::{
    path_beneath_rules, Access, AccessFs, CompatLevel, Compatible, Ruleset, RulesetAttr, RulesetCreated,
    RulesetCreatedAttr, RulesetStatus, ABI,
};
use nix::mount::{mount, MsFlags};

use super::args::RunArgs;

/// The Landlock ABI whose file access rights are asked for: truncate
/// (v3) and device ioctls (v5) included.
const ABI_ASKED: ABI = ABI::V5;

/// Read-only (and executable) with any allow-list, so that programs start.
const SYSTEM: &[&str] = &[
    "/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/etc", "/proc",
];

/// What the child applies to itself before it execs.
#[derive(Debug)]
pub struct Files {
    landlock: Option<RulesetCreated>,
    deny_read: Vec<(PathBuf, bool)>,
    deny_write: Vec<PathBuf>,
    uid: u32,
    gid: u32,
}

fn existing(paths: &[PathBuf]) -> Result<Vec<PathBuf>, String> {
    paths
        .iter()
        .map(|p| std::fs::canonicalize(p).map_err(|e| format!("{}: {e}", p.display())))
        .collect()
}

/// The file rules of `args`, checked: every path must exist.
pub fn prepare(args: &RunArgs) -> Result<Files, String> {
    let landlock = if args.allow_read.is_empty() && args.allow_write.is_empty() {
        None
    } else {
        Some(ruleset(args).map_err(|e| format!("Landlock: {e}"))?)
    };
    let deny_read = existing(&args.deny_read)?
        .into_iter()
        .map(|p| {
            let dir = p.is_dir();
            (p, dir)
        })
        .collect();
    Ok(Files {
        landlock,
        deny_read,
        deny_write: existing(&args.deny_write)?,
        uid: nix::unistd::getuid().as_raw(),
        gid: nix::unistd::getgid().as_raw(),
    })
}

fn ruleset(args: &RunArgs) -> Result<RulesetCreated, String> {
    let level = if args.best_effort {
        CompatLevel::BestEffort
    } else {
        CompatLevel::HardRequirement
    };
    let read = AccessFs::from_read(ABI_ASKED);
    let all = AccessFs::from_all(ABI_ASKED);
    let system: Vec<PathBuf> = SYSTEM.iter().map(PathBuf::from).filter(|p| p.exists()).collect();
    let e = |e: landlock::RulesetError| e.to_string();
    Ruleset::default()
        .set_compatibility(level)
        .handle_access(all)
        .map_err(e)?
        .create()
        .map_err(e)?
        .add_rules(path_beneath_rules(&system, read))
        .map_err(e)?
        .add_rules(path_beneath_rules(["/dev"], all))
        .map_err(e)?
        .add_rules(path_beneath_rules(existing(&args.allow_read)?, read))
        .map_err(e)?
        .add_rules(path_beneath_rules(existing(&args.allow_write)?, all))
        .map_err(e)
}

impl Files {
    /// In the child: masks, then Landlock. Returns what to tell the user
    /// about enforcement, if anything short of the whole.
    pub fn apply(self) -> Result<Option<String>, String> {
        if !self.deny_read.is_empty() || !self.deny_write.is_empty() {
            self.mask()?;
        }
        let Some(ruleset) = self.landlock else {
            return Ok(None);
        };
        let status = ruleset.restrict_self().map_err(|e| format!("Landlock: {e}"))?;
        Ok(match status.ruleset {
            RulesetStatus::FullyEnforced => None,
            RulesetStatus::PartiallyEnforced => {
                Some("file rules only partly enforced: this kernel's Landlock is older than ABI 5".into())
            }
            RulesetStatus::NotEnforced => Some("file rules NOT enforced: this kernel has no Landlock".into()),
        })
    }

    fn mask(&self) -> Result<(), String> {
        use nix::sched::{unshare, CloneFlags};
        unshare(CloneFlags::CLONE_NEWUSER | CloneFlags::CLONE_NEWNS)
            .map_err(|e| format!("a private mount namespace (unprivileged user namespace): {e}"))?;
        let w = |file: &str, text: String| std::fs::write(file, text).map_err(|e| format!("{file}: {e}"));
        w("/proc/self/setgroups", "deny".into())?;
        w("/proc/self/uid_map", format!("{0} {0} 1", self.uid))?;
        w("/proc/self/gid_map", format!("{0} {0} 1", self.gid))?;
        let none: Option<&str> = None;
        mount(none, "/", none, MsFlags::MS_REC | MsFlags::MS_PRIVATE, none)
            .map_err(|e| format!("making / private: {e}"))?;
        let files: Vec<&PathBuf> = self
            .deny_read
            .iter()
            .filter(|(_, dir)| !dir)
            .map(|(p, _)| p)
            .collect();
        mask_files(&files)?;
        for (p, _) in self.deny_read.iter().filter(|(_, dir)| *dir) {
            let flags = MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
            mount(Some("tmpfs"), p, Some("tmpfs"), flags, Some("mode=000,size=4k"))
                .map_err(|e| format!("masking {}: {e}", p.display()))?;
        }
        for p in &self.deny_write {
            read_only(p)?;
        }
        Ok(())
    }
}

/// Files masked by an empty, mode-0 file bound over each. The file lives
/// on a tmpfs mounted for the moment over /tmp (the targets are held by
/// O_PATH descriptors first, in case they are below it), then detached:
/// the binds keep it.
fn mask_files(files: &[&PathBuf]) -> Result<(), String> {
    use nix::fcntl::{open, OFlag};
    if files.is_empty() {
        return Ok(());
    }
    let held: Vec<OwnedFd> = files
        .iter()
        .map(|p| {
            open(
                p.as_path(),
                OFlag::O_PATH | OFlag::O_CLOEXEC,
                nix::sys::stat::Mode::empty(),
            )
            // SAFETY: a new fd from open(2), owned by nobody else.
            .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) })
            .map_err(|e| format!("masking {}: {e}", p.display()))
        })
        .collect::<Result<_, _>>()?;
    let none: Option<&str> = None;
    let scratch = Path::new("/tmp");
    let flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    mount(Some("tmpfs"), scratch, Some("tmpfs"), flags, Some("size=4k"))
        .map_err(|e| format!("a scratch tmpfs for masks: {e}"))?;
    let blank = scratch.join("masked");
    let made = std::fs::File::create(&blank)
        .and_then(|f| f.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(0o000)))
        .map_err(|e| format!("a mask file: {e}"));
    let bound = made.and_then(|()| {
        files.iter().zip(&held).try_for_each(|(p, fd)| {
            let target = format!("/proc/self/fd/{}", fd.as_raw_fd());
            mount(Some(&blank), target.as_str(), none, MsFlags::MS_BIND, none)
                .map_err(|e| format!("masking {}: {e}", p.display()))
        })
    });
    nix::mount::umount2(scratch, nix::mount::MntFlags::MNT_DETACH)
        .map_err(|e| format!("unmounting the scratch tmpfs: {e}"))?;
    bound
}

/// `p` bound over itself, read-only; the flags the kernel locked on the
/// original mount (nosuid, nodev, noexec) must be kept.
fn read_only(p: &Path) -> Result<(), String> {
    use nix::sys::statvfs::{statvfs, FsFlags};
    let none: Option<&str> = None;
    let err = |e: nix::Error| format!("making {} read-only: {e}", p.display());
    mount(Some(p), p, none, MsFlags::MS_BIND | MsFlags::MS_REC, none).map_err(err)?;
    let kept = statvfs(p).map_err(err)?.flags();
    let mut flags = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY;
    for (fs, ms) in [
        (FsFlags::ST_NOSUID, MsFlags::MS_NOSUID),
        (FsFlags::ST_NODEV, MsFlags::MS_NODEV),
        (FsFlags::ST_NOEXEC, MsFlags::MS_NOEXEC),
        (FsFlags::ST_NOATIME, MsFlags::MS_NOATIME),
        (FsFlags::ST_NODIRATIME, MsFlags::MS_NODIRATIME),
        (FsFlags::ST_RELATIME, MsFlags::MS_RELATIME),
    ] {
        if kept.contains(fs) {
            flags |= ms;
        }
    }
    mount(none, p, none, flags, none).map_err(err)
}
