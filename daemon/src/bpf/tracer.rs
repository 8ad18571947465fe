//! Opens, configures, loads and attaches the BPF object. The `Tracer` owns
//! the kernel state: the skeleton's maps and the program links (dropping it
//! detaches everything).

use std::collections::HashSet;
use std::fs::File;
use std::mem::MaybeUninit;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use ipnet::IpNet;
use libbpf_rs::skel::{OpenSkel, SkelBuilder};
use libbpf_rs::{Link, MapCore, MapFlags, OpenObject};

use super::skel::{ConnectracerSkel, ConnectracerSkelBuilder};
use super::types::{ct_lpm_v4_key, ct_lpm_v6_key, ct_port_rule, ct_watch_val};
use crate::watchlist::{LpmEntry, MAX_RULES};

// SAFETY: plain integer/byte-array structs generated from connectracer.h.
unsafe impl plain::Plain for ct_lpm_v4_key {}
// SAFETY: as above.
unsafe impl plain::Plain for ct_lpm_v6_key {}
// SAFETY: as above.
unsafe impl plain::Plain for ct_watch_val {}

#[derive(Debug, Clone)]
pub struct TracerOptions {
    pub trace_all: bool,
    pub ring_buffer_size: u32,
    pub wakeup_threshold: u64,
    pub udp_dedup_entries: u32,
    /// cgroup v2 directory the programs attach to.
    pub cgroup_dir: PathBuf,
    /// Whether `cgroup_dir` is the cgroup2 root (no process filtering needed).
    pub cgroup_is_root: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum TracerError {
    #[error("opening cgroup {path}")]
    Cgroup {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("opening the BPF object")]
    Open(#[source] libbpf_rs::Error),
    #[error("setting up map {map}")]
    Map {
        map: &'static str,
        #[source]
        source: libbpf_rs::Error,
    },
    #[error("loading BPF programs into the kernel (libbpf's log above says why)")]
    Load(#[source] libbpf_rs::Error),
    #[error("attaching {prog}")]
    Attach {
        prog: &'static str,
        #[source]
        source: libbpf_rs::Error,
    },
}

pub struct Tracer {
    skel: ConnectracerSkel<'static>,
    _links: Vec<Link>,
    _cgroup: File,
    watched: HashSet<IpNet>,
}

impl std::fmt::Debug for Tracer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tracer")
            .field("watched", &self.watched.len())
            .finish_non_exhaustive()
    }
}

impl Tracer {
    pub fn load(opts: &TracerOptions) -> Result<Self, TracerError> {
        let cgroup = File::open(&opts.cgroup_dir).map_err(|source| TracerError::Cgroup {
            path: opts.cgroup_dir.clone(),
            source,
        })?;
        // The skeleton borrows its object storage for as long as it lives; the
        // tracer lives as long as the daemon, so the storage is leaked once.
        let storage: &'static mut MaybeUninit<OpenObject> = Box::leak(Box::new(MaybeUninit::uninit()));
        let mut open = ConnectracerSkelBuilder::default()
            .open(storage)
            .map_err(TracerError::Open)?;

        let rodata = open.maps.rodata_data.as_deref_mut().ok_or(TracerError::Map {
            map: "rodata",
            source: libbpf_rs::Error::from(std::io::Error::other("no rodata mapping")),
        })?;
        rodata.trace_all = opts.trace_all;
        rodata.filter_scope = !opts.cgroup_is_root;
        rodata.wakeup_bytes = opts.wakeup_threshold;

        let map_err = |map| move |source| TracerError::Map { map, source };
        open.maps
            .events
            .set_max_entries(opts.ring_buffer_size)
            .map_err(map_err("events"))?;
        open.maps
            .dgrams
            .set_max_entries(opts.udp_dedup_entries)
            .map_err(map_err("dgrams"))?;

        let skel = open.load().map_err(TracerError::Load)?;
        if !opts.cgroup_is_root {
            let key = 0u32.to_ne_bytes();
            let fd = (cgroup.as_raw_fd() as u32).to_ne_bytes();
            skel.maps
                .scope_cgroup
                .update(&key, &fd, MapFlags::ANY)
                .map_err(map_err("scope_cgroup"))?;
        }

        let mut links = Vec::new();
        let fd = cgroup.as_raw_fd();
        // cgroup links are always multi-attach (BPF_F_ALLOW_MULTI semantics):
        // programs systemd or others attached to the same cgroup keep running.
        let progs = &skel.progs;
        for (name, prog) in [
            ("cgroup/connect4", &progs.ct_connect4),
            ("cgroup/connect6", &progs.ct_connect6),
            ("cgroup/sendmsg4", &progs.ct_sendmsg4),
            ("cgroup/sendmsg6", &progs.ct_sendmsg6),
            ("cgroup/sock_release", &progs.ct_sock_release),
        ] {
            links.push(
                prog.attach_cgroup(fd)
                    .map_err(|source| TracerError::Attach { prog: name, source })?,
            );
        }
        for (name, prog) in [
            ("tp_btf/inet_sock_set_state", &progs.ct_state),
            ("tp_btf/sched_process_exec", &progs.ct_exec),
            ("tp_btf/sched_process_fork", &progs.ct_fork),
            ("tp_btf/sched_process_exit", &progs.ct_exit),
        ] {
            links.push(
                prog.attach()
                    .map_err(|source| TracerError::Attach { prog: name, source })?,
            );
        }
        Ok(Self {
            skel,
            _links: links,
            _cgroup: cgroup,
            watched: HashSet::new(),
        })
    }

    pub fn events_map(&self) -> &dyn MapCore {
        &self.skel.maps.events
    }

    pub fn stats_map(&self) -> &dyn MapCore {
        &self.skel.maps.stats
    }

    /// Brings the kernel watch list to `entries`: writes every entry, then
    /// deletes the prefixes no longer present.
    pub fn set_watchlist(&mut self, entries: &[LpmEntry]) -> Result<(), TracerError> {
        let mut next = HashSet::with_capacity(entries.len());
        for e in entries {
            let mut val = ct_watch_val {
                nrules: e.rules.len().min(MAX_RULES) as u32,
                ..Default::default()
            };
            for (slot, r) in val.rules.iter_mut().zip(&e.rules) {
                *slot = ct_port_rule {
                    lo: r.lo,
                    hi: r.hi,
                    host_id: r.host_id,
                };
            }
            // SAFETY: Plain types, see above.
            let val = unsafe { plain::as_bytes(&val) };
            self.with_key(e.net, |map, key| map.update(key, val, MapFlags::ANY))?;
            next.insert(e.net);
        }
        for gone in self.watched.difference(&next).copied().collect::<Vec<_>>() {
            self.with_key(gone, |map, key| map.delete(key))?;
        }
        self.watched = next;
        Ok(())
    }

    fn with_key(
        &self,
        net: IpNet,
        f: impl FnOnce(&dyn MapCore, &[u8]) -> libbpf_rs::Result<()>,
    ) -> Result<(), TracerError> {
        let res = match net {
            IpNet::V4(n) => {
                let key = ct_lpm_v4_key {
                    prefixlen: u32::from(n.prefix_len()),
                    addr: n.network().octets(),
                };
                // SAFETY: Plain type.
                f(&self.skel.maps.watch_v4, unsafe { plain::as_bytes(&key) })
            }
            IpNet::V6(n) => {
                let key = ct_lpm_v6_key {
                    prefixlen: u32::from(n.prefix_len()),
                    addr: n.network().octets(),
                };
                // SAFETY: Plain type.
                f(&self.skel.maps.watch_v6, unsafe { plain::as_bytes(&key) })
            }
        };
        res.map_err(|source| TracerError::Map { map: "watch", source })
    }
}

/// The directory the programs attach to: `requested` is either a path under
/// the cgroup2 mount or a cgroup path relative to it (`/system.slice`).
pub fn resolve_cgroup_dir(mount: &Path, requested: Option<&Path>) -> PathBuf {
    match requested {
        None => mount.to_path_buf(),
        Some(p) if p.starts_with(mount) => p.to_path_buf(),
        Some(p) => mount.join(p.strip_prefix("/").unwrap_or(p)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cgroup_dir_accepts_both_forms() {
        let m = Path::new("/sys/fs/cgroup/unified");
        assert_eq!(resolve_cgroup_dir(m, None), m);
        assert_eq!(
            resolve_cgroup_dir(m, Some(Path::new("/sys/fs/cgroup/unified/test"))),
            Path::new("/sys/fs/cgroup/unified/test")
        );
        assert_eq!(
            resolve_cgroup_dir(m, Some(Path::new("/system.slice"))),
            Path::new("/sys/fs/cgroup/unified/system.slice")
        );
    }

    #[test]
    fn port_rule_capacity_matches_the_header() {
        assert_eq!(ct_watch_val::default().rules.len(), MAX_RULES);
    }
}
