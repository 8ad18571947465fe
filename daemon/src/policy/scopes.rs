//! Kernel-visible identities of the selectors: the cgroup directories under
//! the attach point (by inode, which is what `bpf_get_current_cgroup_id`
//! returns) and executables (by inode and the kernel's device number).

use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use super::{Policy, Selector};
use crate::sys::cgroup_tree;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Identities {
    /// (path relative to the cgroup2 mount, cgroup id) of every cgroup below
    /// the attach point, the attach point included.
    pub cgroups: Vec<(String, u64)>,
    /// Executable selectors' (inode, kernel dev_t); None where the path does
    /// not exist (yet): the selector then matches nothing until a reload.
    pub exes: HashMap<PathBuf, Option<(u64, u64)>>,
    /// What the runtimes said of the containers known so far, by id: for
    /// scopes selecting by container name, pod or namespace.
    pub containers: HashMap<String, std::sync::Arc<connectracer_proto::ContainerMeta>>,
}

/// `stat`'s st_dev is the user-space encoding; the kernel's `s_dev` packs
/// major and minor as `major << 20 | minor`.
pub fn kernel_dev(st_dev: u64) -> u64 {
    let major = libc::major(st_dev) as u64;
    let minor = libc::minor(st_dev) as u64;
    (major << 20) | minor
}

pub fn exe_identity(path: &Path) -> Option<(u64, u64)> {
    let m = std::fs::metadata(path).ok()?;
    Some((m.ino(), kernel_dev(m.dev())))
}

/// Walks the cgroup tree below `attach` when the policy selects by cgroup,
/// and resolves executable selectors.
pub fn discover(policy: &Policy, mount: &Path, attach: &Path) -> Identities {
    let mut ids = Identities::default();
    let selectors: Vec<&Selector> = policy
        .rules
        .iter()
        .filter_map(|r| r.selector.as_ref())
        .chain(policy.scopes.iter().map(|s| &s.selector))
        .collect();
    for sel in &selectors {
        if let Selector::Exe(p) = sel {
            ids.exes.insert(p.clone(), exe_identity(p));
        }
    }
    if policy.is_active() && selectors.iter().any(|s| s.is_cgroup_based()) {
        for dir in cgroup_tree::dirs(attach) {
            let Ok(meta) = std::fs::metadata(&dir) else {
                continue;
            };
            if let Some(rel) = cgroup_tree::relative_path(mount, &dir) {
                ids.cgroups.push((rel, meta.ino()));
            }
        }
    }
    ids
}

/// Reports every cgroup directory created below `dir` (units starting,
/// containers being created), so that the policy scopes selecting them take
/// effect at once. The returned watcher stops when dropped.
pub fn watch_cgroups(
    dir: &Path,
    tx: tokio::sync::mpsc::UnboundedSender<PathBuf>,
) -> notify::Result<notify::RecommendedWatcher> {
    use notify::Watcher;
    let mut watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        if let Ok(ev) = res {
            if matches!(ev.kind, notify::EventKind::Create(_)) {
                for p in ev.paths {
                    let _ = tx.send(p);
                }
            }
        }
    })?;
    watcher.watch(dir, notify::RecursiveMode::Recursive)?;
    Ok(watcher)
}

/// DNS servers the host uses: the configured ones, or /etc/resolv.conf's.
pub fn dns_servers(configured: &[std::net::SocketAddr]) -> Vec<std::net::IpAddr> {
    if !configured.is_empty() {
        return configured.iter().map(std::net::SocketAddr::ip).collect();
    }
    std::fs::read_to_string("/etc/resolv.conf")
        .map(|text| parse_resolv_conf(&text))
        .unwrap_or_default()
}

fn parse_resolv_conf(text: &str) -> Vec<std::net::IpAddr> {
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("nameserver"))
        .filter_map(|rest| {
            let addr = rest.split_whitespace().next()?;
            // fe80::1%eth0: the scope is not part of the address.
            addr.split('%').next()?.parse().ok()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn resolv_conf_nameservers() {
        let text = "# generated\nsearch example.com\nnameserver 10.0.0.53\nnameserver  fe80::1%eth0\nnameserver bogus\noptions edns0\n";
        assert_eq!(
            parse_resolv_conf(text),
            vec![
                "10.0.0.53".parse::<std::net::IpAddr>().unwrap(),
                "fe80::1".parse().unwrap()
            ]
        );
    }

    use super::*;

    #[test]
    fn kernel_dev_packs_major_and_minor() {
        // 8:1 (sda1) in glibc's encoding is 0x801.
        assert_eq!(kernel_dev(libc::makedev(8, 1)), (8 << 20) | 1);
        assert_eq!(kernel_dev(libc::makedev(259, 3)), (259 << 20) | 3);
    }
}
