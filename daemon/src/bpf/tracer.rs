//! Opens, configures, loads and attaches the BPF object. The `Tracer` owns
//! the kernel state: the skeleton's maps and the program links (dropping it
//! detaches everything).

use std::cell::{Cell, RefCell};
use std::fs::File;
use std::mem::MaybeUninit;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use libbpf_rs::skel::{OpenSkel, SkelBuilder};
use libbpf_rs::{Link, MapCore, MapFlags, OpenObject};

use super::generation::{write_generation, GenerationMaps};
use super::layout::{bytes, scope_key, scope_val, Generation, Ruleset, ScopeKey, ScopeVal};
use super::skel::{ConnectracerSkel, ConnectracerSkelBuilder};
use super::types::ct_config;

// SAFETY: plain integer struct generated from connectracer.h.
unsafe impl plain::Plain for ct_config {}

#[derive(Debug, Clone)]
pub struct TracerOptions {
    pub ring_buffer_size: u32,
    pub wakeup_threshold: u64,
    pub udp_dedup_entries: u32,
    /// cgroup v2 directory the programs attach to.
    pub cgroup_dir: PathBuf,
    /// Whether `cgroup_dir` is the cgroup2 root (no process filtering needed).
    pub cgroup_is_root: bool,
    /// bpffs directory where links and state maps are pinned, so that a new
    /// instance re-adopts them: tracing goes on while the daemon restarts.
    pub pin_dir: Option<PathBuf>,
}

/// Maps whose content must survive a restart: counters, records not yet
/// read, per-socket state of open connections, the UDP dedup memory. The
/// watch lists and generation switch are rebuilt from the configuration.
const PINNED_MAPS: [&str; 4] = ["events", "stats", "socks", "dgrams"];

/// What a start found pinned by an earlier instance.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Adoption {
    pub maps: Vec<&'static str>,
    /// Links whose program was replaced in place.
    pub links: Vec<&'static str>,
    /// Pinned state that could not be reused (and was replaced), with why.
    pub discarded: Vec<String>,
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
    #[error("kernel map {map} has room for {limit} entries: this configuration needs {needed}, beside {in_use} of the one in force")]
    Capacity {
        map: &'static str,
        needed: usize,
        in_use: usize,
        limit: usize,
    },
    #[error("writing kernel map {map}")]
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
    #[error("pinning {path}")]
    Pin {
        path: PathBuf,
        #[source]
        source: libbpf_rs::Error,
    },
}

pub struct Tracer {
    skel: ConnectracerSkel<'static>,
    /// In a cell: the clean stop detaches while the ring buffer reader
    /// still holds its shared borrow of the tracer.
    links: RefCell<Vec<Link>>,
    cgroup: File,
    pin_dir: Option<PathBuf>,
    pub adoption: Adoption,
    /// Generation (0 or 1) in force in the kernel. Cells, because the ring
    /// buffer reader holds a shared borrow for the tracer's whole life.
    active: Cell<u32>,
    epoch: Cell<u32>,
    /// What each generation holds in the maps, always equal to them.
    written: RefCell<[Generation; 2]>,
    /// A switch happened and its grace period has not been waited for.
    /// The grace period is waited for on a thread of its own, so the
    /// kernel thread goes on draining the ring meanwhile (a reload under a
    /// connect flood would otherwise stall it for a synchronize_rcu each).
    unsettled: Cell<Option<std::thread::JoinHandle<()>>>,
}

impl std::fmt::Debug for Tracer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tracer")
            .field("links", &self.links.borrow().len())
            .field("active", &self.active.get())
            .field("epoch", &self.epoch.get())
            .finish_non_exhaustive()
    }
}

impl Tracer {
    /// Loads the programs, puts `initial` in force, then attaches: the
    /// first connection seen is already judged against the configuration.
    pub fn load(opts: &TracerOptions, initial: &Ruleset) -> Result<Self, TracerError> {
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
        rodata.filter_scope = !opts.cgroup_is_root;
        rodata.wakeup_bytes = opts.wakeup_threshold;

        let map_err = |map| move |source| TracerError::Map { map, source };
        let mut adoption = Adoption::default();
        if let Some(dir) = &opts.pin_dir {
            std::fs::create_dir_all(dir).map_err(|e| TracerError::Pin {
                path: dir.clone(),
                source: libbpf_rs::Error::from(e),
            })?;
        }
        open.maps
            .events
            .set_max_entries(opts.ring_buffer_size)
            .map_err(map_err("events"))?;
        open.maps
            .dgrams
            .set_max_entries(opts.udp_dedup_entries)
            .map_err(map_err("dgrams"))?;

        if let Some(dir) = &opts.pin_dir {
            let maps = &mut open.maps;
            for (name, map) in [
                ("events", &mut maps.events),
                ("stats", &mut maps.stats),
                ("socks", &mut maps.socks),
                ("dgrams", &mut maps.dgrams),
            ] {
                let path = dir.join(name);
                if !path.exists() {
                    continue;
                }
                match map.reuse_pinned_map(&path) {
                    Ok(()) => adoption.maps.push(name),
                    // A different size or layout (another version, a new
                    // ring_buffer_size): start that map afresh.
                    Err(e) => {
                        adoption.discarded.push(format!("map {name}: {e}"));
                        let _ = std::fs::remove_file(&path);
                    }
                }
            }
        }
        let mut skel = open.load().map_err(TracerError::Load)?;
        if let Some(dir) = &opts.pin_dir {
            let maps = &mut skel.maps;
            for (name, map) in [
                ("events", &mut maps.events),
                ("stats", &mut maps.stats),
                ("socks", &mut maps.socks),
                ("dgrams", &mut maps.dgrams),
            ] {
                if !adoption.maps.contains(&name) {
                    let path = dir.join(name);
                    map.pin(&path)
                        .map_err(|source| TracerError::Pin { path, source })?;
                }
            }
        }
        if !opts.cgroup_is_root {
            let key = 0u32.to_ne_bytes();
            let fd = (cgroup.as_raw_fd() as u32).to_ne_bytes();
            skel.maps
                .scope_cgroup
                .update(&key, &fd, MapFlags::ANY)
                .map_err(map_err("scope_cgroup"))?;
        }

        let mut tracer = Self {
            skel,
            links: RefCell::new(Vec::new()),
            cgroup,
            pin_dir: opts.pin_dir.clone(),
            adoption,
            active: Cell::new(0),
            epoch: Cell::new(0),
            written: RefCell::new(Default::default()),
            unsettled: Cell::new(None),
        };
        if let Err(e) = tracer.apply(initial) {
            tracer.undo_failed_start(Vec::new());
            return Err(e);
        }
        let mut links = Vec::new();
        if let Err(e) = tracer.attach(&mut links) {
            tracer.undo_failed_start(links);
            return Err(e);
        }
        tracer.links = RefCell::new(links);
        Ok(tracer)
    }

    /// A start that failed partway: what this start attached and pinned
    /// goes; what it adopted from an earlier instance stays as it was found.
    fn undo_failed_start(&self, links: Vec<Link>) {
        for mut link in links {
            let adopted = link
                .pin_path()
                .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
                .is_some_and(|n| self.adoption.links.iter().any(|a| n == format!("link_{a}")));
            if !adopted {
                let _ = link.unpin();
                let _ = link.detach();
            }
        }
        if let Some(dir) = &self.pin_dir {
            for name in PINNED_MAPS {
                if !self.adoption.maps.contains(&name) {
                    let _ = std::fs::remove_file(dir.join(name));
                }
            }
            let _ = std::fs::remove_dir(dir);
        }
    }

    fn attach(&mut self, links: &mut Vec<Link>) -> Result<(), TracerError> {
        let fd = self.cgroup.as_raw_fd();
        let cgroup_id = std::fs::metadata(format!("/proc/self/fd/{fd}")).map(|m| {
            use std::os::unix::fs::MetadataExt;
            m.ino()
        });
        let progs = &self.skel.progs;
        // cgroup links are always multi-attach (BPF_F_ALLOW_MULTI semantics):
        // programs systemd or others attached to the same cgroup keep running.
        for (name, prog) in [
            ("connect4", &progs.ct_connect4),
            ("connect6", &progs.ct_connect6),
            ("sendmsg4", &progs.ct_sendmsg4),
            ("sendmsg6", &progs.ct_sendmsg6),
            ("sock_release", &progs.ct_sock_release),
        ] {
            let pinned = self.pin_dir.as_ref().map(|d| d.join(format!("link_{name}")));
            // Only pins that exist: libbpf logs every failed open as a
            // warning, nine of them in the journal at each fresh start.
            if let Some(mut old) = pinned
                .as_ref()
                .filter(|p| p.exists())
                .and_then(|p| Link::open(p).ok())
            {
                let same_cgroup = match old.info().map(|i| i.info) {
                    Ok(libbpf_rs::query::LinkTypeInfo::Cgroup(c)) => {
                        cgroup_id.as_ref().is_ok_and(|id| *id == c.cgroup_id)
                    }
                    _ => false,
                };
                // Swapping the program inside the live link leaves no
                // moment without a hook (or with two).
                if same_cgroup && old.update_prog(prog).is_ok() {
                    self.adoption.links.push(name);
                    links.push(old);
                    continue;
                }
                self.adoption
                    .discarded
                    .push(format!("link {name}: attached elsewhere or not updatable"));
                let _ = old.detach();
                let _ = old.unpin();
            }
            let mut link = prog
                .attach_cgroup(fd)
                .map_err(|source| TracerError::Attach { prog: name, source })?;
            if let Some(p) = &pinned {
                link.pin(p).map_err(|source| TracerError::Pin {
                    path: p.clone(),
                    source,
                })?;
            }
            links.push(link);
        }
        // Tracing links cannot swap programs: the new one is attached
        // before the old one goes, so for an instant both run (the pipeline
        // ignores the doubled state change) rather than neither.
        for (name, prog) in [
            ("inet_sock_set_state", &progs.ct_state),
            ("sched_process_exec", &progs.ct_exec),
            ("sched_process_fork", &progs.ct_fork),
            ("sched_process_exit", &progs.ct_exit),
        ] {
            let mut link = prog
                .attach()
                .map_err(|source| TracerError::Attach { prog: name, source })?;
            if let Some(p) = self.pin_dir.as_ref().map(|d| d.join(format!("link_{name}"))) {
                if let Some(mut old) = p.exists().then(|| Link::open(&p).ok()).flatten() {
                    let _ = old.unpin();
                    let _ = old.detach();
                    self.adoption.links.push(name);
                }
                link.pin(&p).map_err(|source| TracerError::Pin {
                    path: p.clone(),
                    source,
                })?;
            }
            links.push(link);
        }
        Ok(())
    }

    /// Detaches everything and removes the pins: the clean stop. Without
    /// it (a crash, kill -9, or keep-pinned), the pinned links keep tracing
    /// until the next instance adopts them.
    pub fn unpin_and_detach(&self) {
        for link in self.links.borrow_mut().iter_mut() {
            let _ = link.unpin();
            let _ = link.detach();
        }
        if let Some(dir) = &self.pin_dir {
            for name in PINNED_MAPS {
                let _ = std::fs::remove_file(dir.join(name));
            }
            let _ = std::fs::remove_dir(dir);
        }
    }

    /// Waits out the RCU grace period the last switch started, after which
    /// no hook still reads the generation it left. Called before the next
    /// apply rewrites that generation; the wait itself started on its own
    /// thread at the switch, so it is usually over before anyone needs it.
    pub fn settle(&self) {
        if let Some(waiter) = self.unsettled.take() {
            if waiter.join().is_err() {
                wait_for_readers();
            }
        }
    }

    pub fn epoch(&self) -> u32 {
        self.epoch.get()
    }

    pub fn events_map(&self) -> &dyn MapCore {
        &self.skel.maps.events
    }

    pub fn stats_map(&self) -> &dyn MapCore {
        &self.skel.maps.stats
    }

    /// Puts `r` in force atomically: the idle generation is rewritten from
    /// scratch, then one write to `active` switches every hook over.
    /// Returns the new epoch, which events judged against it carry.
    pub fn apply(&self, r: &Ruleset) -> Result<u32, TracerError> {
        self.settle();
        let idle = 1 - self.active.get();
        let maps = &self.skel.maps;
        let map_err = |map| move |source| TracerError::Map { map, source };
        let want = Generation::of(idle, r);
        {
            let mut written = self.written.borrow_mut();
            let [g0, g1] = &mut *written;
            let (had, other) = if idle == 0 { (g0, &*g1) } else { (g1, &*g0) };
            write_generation(&self.generation_maps(idle), had, &want, other)?;
        }
        let epoch = r.epoch;
        let cfg = ct_config {
            epoch,
            trace_all: u8::from(r.trace_all),
            policy: r.policy.flags,
            ..Default::default()
        };
        maps.gen_config
            .update(&idle.to_ne_bytes(), bytes(&cfg), MapFlags::ANY)
            .map_err(map_err("config"))?;
        maps.active_gen
            .update(&0u32.to_ne_bytes(), &idle.to_ne_bytes(), MapFlags::ANY)
            .map_err(map_err("active"))?;
        // Hooks run under RCU: the old generation may be rewritten only once
        // a grace period has passed. That wait is owed to the next apply,
        // not to this one's caller (see `settle`).
        let waiter = std::thread::Builder::new()
            .name("rcu-wait".into())
            .spawn(wait_for_readers);
        match waiter {
            Ok(w) => self.unsettled.set(Some(w)),
            // No thread: the wait is done here, now.
            Err(_) => wait_for_readers(),
        }
        self.active.set(idle);
        self.epoch.set(epoch);
        Ok(epoch)
    }
}

impl Tracer {
    fn generation_maps(&self, gen: u32) -> GenerationMaps<'_> {
        let maps = &self.skel.maps;
        let (v4, v6): (&dyn MapCore, &dyn MapCore) = if gen == 0 {
            (&maps.watch_v4_0, &maps.watch_v6_0)
        } else {
            (&maps.watch_v4_1, &maps.watch_v6_1)
        };
        GenerationMaps {
            maps: [v4, v6, &maps.policy_v4, &maps.policy_v6, &maps.policy_scopes],
            shared: [false, false, true, true, true],
        }
    }

    /// A cgroup created after the policy was applied joins its scope in the
    /// generation in force (one map write, atomic for the hooks).
    pub fn add_cgroup_scope(&self, cgroup_id: u64, scope: u32) -> Result<(), TracerError> {
        let gen = self.active.get();
        let key = scope_key(gen, ScopeKey::Cgroup(cgroup_id));
        let val = scope_val(ScopeVal {
            scope,
            ..Default::default()
        });
        self.skel
            .maps
            .policy_scopes
            .update(bytes(&key), bytes(&val), MapFlags::ANY)
            .map_err(|source| TracerError::Map {
                map: "policy_scopes",
                source,
            })?;
        self.written.borrow_mut()[gen as usize]
            .scopes
            .insert(bytes(&key).to_vec(), bytes(&val).to_vec());
        Ok(())
    }
}

/// Waits for an RCU grace period: membarrier(MEMBARRIER_CMD_GLOBAL) is
/// implemented with synchronize_rcu(). Where membarrier is unavailable, a
/// pause far longer than any hook runs stands in for it.
fn wait_for_readers() {
    const MEMBARRIER_CMD_GLOBAL: libc::c_long = 1;
    // SAFETY: membarrier takes two integer arguments and touches no memory of ours.
    let rc = unsafe { libc::syscall(libc::SYS_membarrier, MEMBARRIER_CMD_GLOBAL, 0 as libc::c_long) };
    if rc != 0 {
        std::thread::sleep(std::time::Duration::from_millis(50));
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
}
