//! Syscall profiles outside the kernel: which cgroup a request names
//! (a path below the cgroup2 mount, or a systemd unit's cgroup), and what
//! a recording means (syscall names from each ABI's table).

use std::os::unix::fs::MetadataExt;
use std::path::{Component, Path, PathBuf};

use connectracer_proto::api::{
    CallError, ProfileParams, ProfileReply, ProfiledSyscall, SyscallArch, MAX_PROFILE_MS,
};

use crate::bpf::profile::RawProfile;
use crate::sys::cgroup_tree;

/// The cgroup a profile records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// Its cgroup id (the directory's inode).
    pub id: u64,
    /// Its depth below the cgroup2 root (the root's is 0).
    pub level: u32,
    /// Its path below the mount, for the reply.
    pub path: String,
}

fn invalid(field: &str, reason: String) -> CallError {
    CallError::InvalidArgument {
        field: field.into(),
        reason,
    }
}

/// Checks a request and finds its cgroup. Reads the cgroup tree (a walk
/// of it for a unit): run off the owner's loop.
pub fn resolve(p: &ProfileParams, mount: &Path) -> Result<Target, CallError> {
    check_duration(p.duration_ms)?;
    let dir = match (&p.cgroup, &p.unit, &p.container) {
        (Some(c), None, None) => cgroup_dir(c, mount)?,
        (None, Some(u), None) => unit_dir(u, mount)?,
        // Resolved by the daemon (through the runtimes) into a cgroup.
        (None, None, Some(_)) => {
            return Err(invalid(
                "container",
                "a container is resolved into its cgroup before the profile starts".into(),
            ))
        }
        _ => {
            return Err(invalid(
                "cgroup",
                "give exactly one of cgroup, unit and container".into(),
            ))
        }
    };
    target_of(&dir, mount)
}

/// A recording's length, within what one call may ask for.
pub fn check_duration(ms: u64) -> Result<(), CallError> {
    if ms == 0 || ms > MAX_PROFILE_MS {
        return Err(invalid(
            "duration_ms",
            format!("{ms} ms: a profile records for 1 ms to {MAX_PROFILE_MS} ms"),
        ));
    }
    Ok(())
}

/// The cgroup at `dir`, a directory below `mount`.
pub fn target_of(dir: &Path, mount: &Path) -> Result<Target, CallError> {
    let meta = std::fs::metadata(dir).map_err(|e| invalid("cgroup", format!("{}: {e}", dir.display())))?;
    if !meta.is_dir() {
        return Err(invalid(
            "cgroup",
            format!("{} is not a cgroup directory", dir.display()),
        ));
    }
    Ok(Target {
        id: meta.ino(),
        level: cgroup_tree::depth(mount, dir),
        path: cgroup_tree::relative_path(mount, dir).unwrap_or_else(|| "/".into()),
    })
}

/// `/a/b`, `a/b` or `MOUNT/a/b`: never anything outside the mount.
fn cgroup_dir(c: &str, mount: &Path) -> Result<PathBuf, CallError> {
    let path = Path::new(c);
    let rel = path.strip_prefix(mount).unwrap_or(path);
    let mut dir = mount.to_path_buf();
    for part in rel.components() {
        match part {
            Component::Normal(p) => dir.push(p),
            Component::RootDir | Component::CurDir => {}
            Component::ParentDir | Component::Prefix(_) => {
                return Err(invalid(
                    "cgroup",
                    format!("{c}: '..' is not allowed in a cgroup path"),
                ))
            }
        }
    }
    Ok(dir)
}

/// The one cgroup directory named like the unit (systemd names a unit's
/// cgroup after it).
fn unit_dir(unit: &str, mount: &Path) -> Result<PathBuf, CallError> {
    let kinds = [".service", ".scope", ".slice"];
    if unit.contains('/') || !kinds.iter().any(|k| unit.ends_with(k)) {
        return Err(invalid(
            "unit",
            format!("{unit}: not a unit name (NAME.service, NAME.scope or NAME.slice)"),
        ));
    }
    let found: Vec<PathBuf> = cgroup_tree::dirs(mount)
        .filter(|d| d.file_name().is_some_and(|n| n == unit))
        .collect();
    match found.as_slice() {
        [one] => Ok(one.clone()),
        [] => Err(invalid(
            "unit",
            format!("{unit} has no cgroup below {}: is it running?", mount.display()),
        )),
        many => Err(invalid(
            "unit",
            format!(
                "{unit} names {} cgroups ({}): give --cgroup",
                many.len(),
                many.iter()
                    .filter_map(|d| cgroup_tree::relative_path(mount, d))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        )),
    }
}

fn syscall_name(arch: SyscallArch, nr: usize) -> Option<String> {
    match arch {
        SyscallArch::X86_64 => syscalls::x86_64::Sysno::new(nr).map(|s| s.name().to_string()),
        SyscallArch::X86 => syscalls::x86::Sysno::new(nr).map(|s| s.name().to_string()),
    }
}

/// The reply for a recording: every syscall called, named from its ABI's
/// table (x86_64 for the native ABI, i386 for compat calls).
pub fn reply(target: &Target, duration_ms: u64, raw: &RawProfile) -> ProfileReply {
    let mut syscalls = Vec::new();
    for (arch, counts) in [
        (SyscallArch::X86_64, &raw.native),
        (SyscallArch::X86, &raw.compat),
    ] {
        for (nr, &count) in counts.iter().enumerate().filter(|(_, &c)| c > 0) {
            syscalls.push(ProfiledSyscall {
                arch,
                number: nr as u32,
                name: syscall_name(arch, nr),
                count,
            });
        }
    }
    ProfileReply {
        cgroup: target.path.clone(),
        duration_ms,
        syscalls,
        families: (0..64).filter(|f| raw.families & (1 << f) != 0).collect(),
        unknown: raw.unknown,
        socketcall: raw.socketcall,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(cgroup: Option<&str>, unit: Option<&str>, ms: u64) -> ProfileParams {
        ProfileParams {
            cgroup: cgroup.map(Into::into),
            unit: unit.map(Into::into),
            container: None,
            duration_ms: ms,
        }
    }

    #[test]
    fn bad_requests_name_their_field() {
        let m = Path::new("/sys/fs/cgroup/unified");
        let field = |p: &ProfileParams| match resolve(p, m) {
            Err(CallError::InvalidArgument { field, .. }) => field,
            other => panic!("{other:?}"),
        };
        assert_eq!(field(&params(Some("/a"), None, 0)), "duration_ms");
        assert_eq!(
            field(&params(Some("/a"), None, MAX_PROFILE_MS + 1)),
            "duration_ms"
        );
        assert_eq!(field(&params(Some("/a"), Some("b.service"), 5)), "cgroup");
        assert_eq!(field(&params(None, None, 5)), "cgroup");
        assert_eq!(field(&params(Some("/a/../../etc"), None, 5)), "cgroup");
        assert_eq!(field(&params(None, Some("a/b.service"), 5)), "unit");
        assert_eq!(field(&params(None, Some("nounit"), 5)), "unit");
    }

    #[test]
    fn cgroup_paths_stay_below_the_mount() {
        let m = Path::new("/sys/fs/cgroup/unified");
        let want = PathBuf::from("/sys/fs/cgroup/unified/a/b");
        assert_eq!(cgroup_dir("/a/b", m).unwrap(), want);
        assert_eq!(cgroup_dir("a/b", m).unwrap(), want);
        assert_eq!(cgroup_dir("/sys/fs/cgroup/unified/a/b", m).unwrap(), want);
    }

    #[test]
    fn the_root_and_a_tempdir_resolve_with_their_levels() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("x/y.service")).unwrap();
        let t = resolve(&params(Some("/x/y.service"), None, 5), dir.path()).unwrap();
        assert_eq!((t.level, t.path.as_str()), (2, "/x/y.service"));
        let u = resolve(&params(None, Some("y.service"), 5), dir.path()).unwrap();
        assert_eq!(u, t);
        let root = resolve(&params(Some("/"), None, 5), dir.path()).unwrap();
        assert_eq!(root.level, 0);
    }

    #[test]
    fn replies_name_syscalls_by_abi() {
        let mut raw = RawProfile {
            native: vec![0; 512],
            compat: vec![0; 512],
            families: (1 << 1) | (1 << 10),
            unknown: 0,
            socketcall: 0,
        };
        raw.native[0] = 4;
        raw.native[59] = 1;
        raw.compat[1] = 1;
        raw.native[511] = 1;
        let t = Target {
            id: 1,
            level: 1,
            path: "/t".into(),
        };
        let r = reply(&t, 10, &raw);
        let got: Vec<(SyscallArch, u32, Option<&str>, u64)> = r
            .syscalls
            .iter()
            .map(|s| (s.arch, s.number, s.name.as_deref(), s.count))
            .collect();
        assert_eq!(
            got,
            [
                (SyscallArch::X86_64, 0, Some("read"), 4),
                (SyscallArch::X86_64, 59, Some("execve"), 1),
                (SyscallArch::X86_64, 511, None, 1),
                (SyscallArch::X86, 1, Some("exit"), 1),
            ]
        );
        assert_eq!(r.families, [1, 10]);
    }
}
