//! Finds filesystems from /proc/self/mountinfo (the cgroup2 mount is not at
//! /sys/fs/cgroup on hybrid-mode hosts) and mounts bpffs when it is missing.

use std::path::{Path, PathBuf};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    pub mount_point: PathBuf,
    pub fs_type: String,
    /// Path inside the filesystem that is mounted (not "/" inside a cgroup namespace bind).
    pub root: String,
}

#[derive(Debug, thiserror::Error)]
pub enum MountError {
    #[error("reading /proc/self/mountinfo")]
    Read(#[source] std::io::Error),
    #[error("no cgroup2 filesystem is mounted (looked in /proc/self/mountinfo); mount one, e.g. `mount -t cgroup2 none /sys/fs/cgroup/unified`")]
    NoCgroup2,
    #[error("bpffs is not mounted and mounting it at {path} failed")]
    MountBpffs {
        path: PathBuf,
        #[source]
        source: nix::Error,
    },
}

/// Undoes mountinfo's octal escapes (`\040` for a space, ...). Parsed here
/// rather than with the procfs crate (used for /proc/PID): procfs 0.18
/// keeps the escapes in mount points and fails the whole file on one line
/// it does not understand, where this skips the line.
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && i + 3 < bytes.len()
            && bytes[i + 1..i + 4].iter().all(|b| (b'0'..=b'7').contains(b))
        {
            let v = (bytes[i + 1] - b'0') * 64 + (bytes[i + 2] - b'0') * 8 + (bytes[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Parses mountinfo text; malformed lines are skipped.
pub fn parse_mountinfo(text: &str) -> Vec<Mount> {
    text.lines()
        .filter_map(|line| {
            let (pre, post) = line.split_once(" - ")?;
            let pre: Vec<&str> = pre.split(' ').collect();
            let fs_type = post.split(' ').next()?;
            Some(Mount {
                root: unescape(pre.get(3)?),
                mount_point: PathBuf::from(unescape(pre.get(4)?)),
                fs_type: fs_type.to_string(),
            })
        })
        .collect()
}

pub fn mounts() -> Result<Vec<Mount>, MountError> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").map_err(MountError::Read)?;
    Ok(parse_mountinfo(&text))
}

/// The cgroup2 mount point to attach under.
pub fn cgroup2_mount() -> Result<PathBuf, MountError> {
    pick_cgroup2(&mounts()?).ok_or(MountError::NoCgroup2)
}

/// Among the cgroup2 mounts, those still reachable (a later mount on the
/// same point or on an ancestor hides an earlier one, which mountinfo keeps
/// listing: its path would now lead into the covering filesystem), and of
/// those the first rooted at "/" — inside a cgroup namespace, a mount made
/// outside it shows a root like "/.." and leads to cgroups above the
/// namespace's root, up to the host's real root. Failing that, the first
/// reachable one (e.g. a container's bind of its own subtree).
pub fn pick_cgroup2(mounts: &[Mount]) -> Option<PathBuf> {
    let visible: Vec<&Mount> = mounts
        .iter()
        .enumerate()
        .filter(|(i, m)| {
            m.fs_type == "cgroup2"
                && !mounts[i + 1..]
                    .iter()
                    .any(|later| m.mount_point.starts_with(&later.mount_point))
        })
        .map(|(_, m)| m)
        .collect();
    visible
        .iter()
        .find(|m| m.root == "/")
        .or(visible.first())
        .map(|m| m.mount_point.clone())
}

pub const BPFFS: &str = "/sys/fs/bpf";

/// Makes sure a bpffs is mounted at /sys/fs/bpf, mounting one if needed.
/// Returns whether this call mounted it.
pub fn ensure_bpffs() -> Result<bool, MountError> {
    let path = Path::new(BPFFS);
    if mounts()?
        .iter()
        .any(|m| m.fs_type == "bpf" && m.mount_point == path)
    {
        return Ok(false);
    }
    nix::mount::mount(
        Some("bpf"),
        path,
        Some("bpf"),
        nix::mount::MsFlags::empty(),
        Some("mode=0700"),
    )
    .map_err(|source| MountError::MountBpffs {
        path: path.to_path_buf(),
        source,
    })?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_hybrid_cgroup2_and_unescapes() {
        let text = "31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755\n\
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd\n\
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime shared:9 - cgroup2 cgroup2 rw\n\
50 23 0:40 / /mnt/with\\040space rw - ext4 /dev/sda1 rw\n\
garbage line\n";
        let m = parse_mountinfo(text);
        assert_eq!(m.len(), 4);
        let cg = m.iter().find(|m| m.fs_type == "cgroup2").unwrap();
        assert_eq!(cg.mount_point, PathBuf::from("/sys/fs/cgroup/unified"));
        assert_eq!(m[3].mount_point, PathBuf::from("/mnt/with space"));
        assert_eq!(pick_cgroup2(&m), Some(PathBuf::from("/sys/fs/cgroup/unified")));
    }

    /// A cgroup namespace that mounted its own cgroup2 over the host's
    /// hierarchy: the host's mount is still listed first (root "/..") but
    /// hidden; attaching under it would reach the host's root cgroup.
    #[test]
    fn skips_hidden_and_foreign_cgroup2_mounts() {
        let text = "31 23 0:28 / /sys/fs/cgroup rw - tmpfs tmpfs rw\n\
41 31 0:38 /.. /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw\n\
48 23 0:38 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n";
        assert_eq!(
            pick_cgroup2(&parse_mountinfo(text)),
            Some(PathBuf::from("/sys/fs/cgroup"))
        );
        // Not hidden, but from outside the namespace: the namespace's own wins.
        let text = "41 31 0:38 /.. /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw\n\
48 23 0:38 / /mnt/cg rw - cgroup2 cgroup2 rw\n";
        assert_eq!(
            pick_cgroup2(&parse_mountinfo(text)),
            Some(PathBuf::from("/mnt/cg"))
        );
        // Only a container's bind of its subtree: still used.
        let text = "41 31 0:38 /docker/abc /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n";
        assert_eq!(
            pick_cgroup2(&parse_mountinfo(text)),
            Some(PathBuf::from("/sys/fs/cgroup"))
        );
        assert_eq!(pick_cgroup2(&[]), None);
    }
}
