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

/// Undoes mountinfo's octal escapes (`\040` for a space, ...).
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

/// The cgroup2 mount point; the first one wins when several exist.
pub fn cgroup2_mount() -> Result<PathBuf, MountError> {
    mounts()?
        .into_iter()
        .find(|m| m.fs_type == "cgroup2")
        .map(|m| m.mount_point)
        .ok_or(MountError::NoCgroup2)
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
    }
}
