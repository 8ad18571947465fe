//! cgroup id (the cgroup2 directory's inode number, as
//! bpf_get_current_cgroup_id() reports it) to cgroup path.

use std::collections::HashMap;
use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::cgroup_path::{parse_cgroup_path, CgroupInfo};
use crate::sys::cgroup_tree;

/// A resolved cgroup: its path below the cgroup2 mount and what it says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cgroup {
    pub path: String,
    pub info: CgroupInfo,
}

#[derive(Debug)]
pub struct CgroupResolver {
    mount: PathBuf,
    mount_dir: Option<File>,
    cache: HashMap<u64, Arc<Cgroup>>,
}

const MAX_CACHED: usize = 16384;
/// kernfs file handles carry the cgroup id (include/linux/exportfs.h).
const FILEID_KERNFS: i32 = 0xfe;

#[repr(C)]
struct KernfsHandle {
    handle_bytes: u32,
    handle_type: i32,
    id: u64,
}

impl CgroupResolver {
    pub fn new(mount: &Path) -> Self {
        Self {
            mount: mount.to_path_buf(),
            mount_dir: File::open(mount).ok(),
            cache: HashMap::new(),
        }
    }

    pub fn resolve(&mut self, id: u64) -> Option<Arc<Cgroup>> {
        if id == 0 {
            return None;
        }
        if let Some(c) = self.cache.get(&id) {
            return Some(c.clone());
        }
        let path = self.by_handle(id).or_else(|| self.by_walk(id))?;
        self.insert(id, &path)
    }

    /// Resolves `id` into the cache if that is cheap (by handle; never the
    /// walk): for every exec on the host, ahead of its connections.
    pub fn warm(&mut self, id: u64) {
        if id != 0 && !self.cache.contains_key(&id) {
            if let Some(path) = self.by_handle(id) {
                self.insert(id, &path);
            }
        }
    }

    fn insert(&mut self, id: u64, path: &Path) -> Option<Arc<Cgroup>> {
        let rel = cgroup_tree::relative_path(&self.mount, path)?;
        let cg = Arc::new(Cgroup {
            info: parse_cgroup_path(&rel),
            path: rel,
        });
        if self.cache.len() >= MAX_CACHED {
            self.cache.clear();
        }
        self.cache.insert(id, cg.clone());
        Some(cg)
    }

    /// O(1): kernfs accepts the cgroup id as a file handle. Needs
    /// CAP_DAC_READ_SEARCH; without it the walk below takes over.
    fn by_handle(&self, id: u64) -> Option<PathBuf> {
        let dir = self.mount_dir.as_ref()?;
        let mut handle = KernfsHandle {
            handle_bytes: 8,
            handle_type: FILEID_KERNFS,
            id,
        };
        // SAFETY: `handle` is a valid file_handle header followed by its
        // 8-byte payload; the kernel reads handle_bytes bytes after the header.
        let fd = unsafe {
            libc::open_by_handle_at(
                dir.as_raw_fd(),
                (&mut handle as *mut KernfsHandle).cast(),
                libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
            )
        };
        if fd < 0 {
            return None;
        }
        // SAFETY: fd was just returned by the kernel and is owned by nobody else.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd())).ok()
    }

    fn by_walk(&self, id: u64) -> Option<PathBuf> {
        cgroup_tree::dirs(&self.mount).find(|d| std::fs::metadata(d).is_ok_and(|m| m.ino() == id))
    }
}
