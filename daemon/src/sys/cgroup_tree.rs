//! The cgroup2 hierarchy as directories: the one walk of it, and paths
//! relative to its mount (what `/proc/PID/cgroup` and the selectors say).

use std::path::{Path, PathBuf};

/// `root` and every directory below it, depth first; directories that
/// cannot be read (a cgroup removed meanwhile) are passed over.
pub fn dirs(root: &Path) -> impl Iterator<Item = PathBuf> {
    let mut stack = vec![root.to_path_buf()];
    std::iter::from_fn(move || {
        let dir = stack.pop()?;
        if let Ok(entries) = std::fs::read_dir(&dir) {
            stack.extend(
                entries
                    .flatten()
                    .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                    .map(|e| e.path()),
            );
        }
        Some(dir)
    })
}

/// `/sys/fs/cgroup/unified/a/b` under mount `/sys/fs/cgroup/unified` is `/a/b`.
pub fn relative_path(mount: &Path, dir: &Path) -> Option<String> {
    let rel = dir.strip_prefix(mount).ok()?;
    Some(format!("/{}", rel.to_string_lossy()))
}

/// The other way: `/a/b` (or `a/b`) is `MOUNT/a/b`.
pub fn dir_of(mount: &Path, path: &str) -> PathBuf {
    mount.join(path.trim_start_matches('/'))
}

/// How far below the mount `dir` is (the mount's own depth is 0; a
/// directory outside it counts as the mount).
pub fn depth(mount: &Path, dir: &Path) -> u32 {
    dir.strip_prefix(mount)
        .map_or(0, |rel| rel.components().count() as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_paths() {
        let m = Path::new("/sys/fs/cgroup/unified");
        assert_eq!(
            relative_path(m, Path::new("/sys/fs/cgroup/unified/system.slice/a.service")).as_deref(),
            Some("/system.slice/a.service")
        );
        assert_eq!(relative_path(m, m).as_deref(), Some("/"));
        assert_eq!(relative_path(m, Path::new("/tmp")), None);
        let d = dir_of(m, "/system.slice/a.service");
        assert_eq!(d, Path::new("/sys/fs/cgroup/unified/system.slice/a.service"));
        assert_eq!(relative_path(m, &d).as_deref(), Some("/system.slice/a.service"));
        assert_eq!(
            (depth(m, &d), depth(m, m), depth(m, Path::new("/tmp"))),
            (2, 0, 0)
        );
    }

    #[test]
    fn walks_every_directory_once() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        for d in ["a/b/c", "a/d", "e"] {
            std::fs::create_dir_all(root.join(d)).unwrap();
        }
        std::fs::write(root.join("a/file"), "").unwrap();
        let mut found: Vec<String> = dirs(root).filter_map(|d| relative_path(root, &d)).collect();
        found.sort();
        assert_eq!(found, ["/", "/a", "/a/b", "/a/b/c", "/a/d", "/e"]);
    }
}
