//! Opens, configures, loads and attaches the BPF object. The `Tracer` owns
//! the kernel state: the skeleton's maps and the program links (dropping it
//! detaches everything).

use std::cell::{Cell, RefCell};
use std::fs::File;
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, AsRawFd};
use std::path::{Path, PathBuf};

use libbpf_rs::skel::{OpenSkel, Skel, SkelBuilder};
use libbpf_rs::{Link, MapCore, MapFlags, OpenObject};

use super::attach::{attach_all, Target};
pub use super::error::TracerError;
use super::generation::{write_generation, GenerationMaps};
use super::layout::{bytes, scope_key, scope_val, Generation, Ruleset, ScopeKey, ScopeVal};
use super::pins::{self, link_path, Adoption};
use super::skel::{ConnectracerSkel, ConnectracerSkelBuilder, OpenConnectracerSkel};
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
    /// `cgroup_dir`'s depth below the cgroup2 mount as this namespace sees
    /// it (the mount's own is 0).
    pub cgroup_depth: u32,
    /// bpffs directory where links and state maps are pinned, so that a new
    /// instance re-adopts them: tracing goes on while the daemon restarts.
    pub pin_dir: Option<PathBuf>,
    /// Resolver ports whose answers are captured (at most CT_DNS_PORTS);
    /// empty turns capture off.
    pub dns_ports: Vec<u16>,
}

pub struct Tracer {
    pub(super) skel: ConnectracerSkel<'static>,
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
    /// Syscall profiles recording now, and their program's link.
    pub(super) profiles: RefCell<super::profile::Recording>,
    /// What to add to a level counted from the cgroup2 mount to get the
    /// kernel's, counted from the hierarchy's root: the depth of this
    /// cgroup namespace's root (0 outside one).
    pub(super) level_offset: u32,
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
        configure(&mut open, opts)?;
        let mut adoption = Adoption::default();
        if let Some(dir) = &opts.pin_dir {
            pins::reuse(open.open_object_mut(), dir, &mut adoption)?;
        }
        let mut skel = open.load().map_err(TracerError::Load)?;
        if let Some(dir) = &opts.pin_dir {
            pins::pin_new(skel.object_mut(), dir, &adoption)?;
        }
        if !opts.cgroup_is_root {
            let key = 0u32.to_ne_bytes();
            let fd = (cgroup.as_raw_fd() as u32).to_ne_bytes();
            skel.maps
                .scope_cgroup
                .update(&key, &fd, MapFlags::ANY)
                .map_err(|source| TracerError::Map {
                    map: "scope_cgroup",
                    source,
                })?;
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
            profiles: RefCell::default(),
            level_offset: 0,
        };
        tracer.level_offset = match tracer.kernel_level() {
            Ok(level) => level.saturating_sub(opts.cgroup_depth),
            Err(e) => {
                tracing::warn!(
                    "{:#}; syscall profiles assume the cgroup2 mount is the hierarchy's root",
                    anyhow::Error::from(e)
                );
                0
            }
        };
        if let Err(e) = tracer.apply(initial) {
            tracer.undo_failed_start(Vec::new());
            return Err(e);
        }
        let mut links = Vec::new();
        let to = Target {
            cgroup: &tracer.cgroup,
            pin_dir: tracer.pin_dir.as_deref(),
            dns_answers: !opts.dns_ports.is_empty(),
        };
        if let Err(e) = attach_all(&tracer.skel, &to, &mut tracer.adoption, &mut links) {
            tracer.undo_failed_start(links);
            return Err(e);
        }
        tracer.links = RefCell::new(links);
        Ok(tracer)
    }

    /// The attach point's level in the whole cgroup hierarchy, from the
    /// kernel (a cgroup iterator run once on it).
    fn kernel_level(&self) -> Result<u32, TracerError> {
        use libbpf_rs::{CgroupIterOpts, CgroupIterOrder, Iter, IterOpts};
        use std::io::Read;
        let attach = |source| TracerError::Attach {
            prog: "cgroup_level",
            source,
        };
        let mut opts = CgroupIterOpts::from_fd(self.cgroup.as_fd());
        opts.order = CgroupIterOrder::SelfOnly;
        let link = self
            .skel
            .progs
            .ct_cgroup_level
            .attach_iter_with_opts(IterOpts::Cgroup(opts))
            .map_err(attach)?;
        let mut out = Vec::new();
        Iter::new(&link)
            .map_err(attach)?
            .read_to_end(&mut out)
            .map_err(|e| attach(libbpf_rs::Error::from(e)))?;
        let bytes: [u8; 4] = out.get(..4).and_then(|b| b.try_into().ok()).ok_or_else(|| {
            attach(libbpf_rs::Error::from(std::io::Error::other(format!(
                "the cgroup iterator wrote {} bytes, not a level",
                out.len()
            ))))
        })?;
        Ok(u32::from_ne_bytes(bytes))
    }

    /// A start that failed partway: what this start attached and pinned
    /// goes; what it adopted from an earlier instance stays as it was found.
    fn undo_failed_start(&self, links: Vec<Link>) {
        for mut link in links {
            let adopted = link.pin_path().is_some_and(|p| {
                self.adoption
                    .links
                    .iter()
                    .any(|a| self.pin_dir.as_deref().is_some_and(|d| p == link_path(d, a)))
            });
            if !adopted {
                let _ = link.unpin();
                let _ = link.detach();
            }
        }
        if let Some(dir) = &self.pin_dir {
            pins::remove_maps(dir, &self.adoption, true);
        }
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
            pins::remove_maps(dir, &self.adoption, false);
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
            maps: [
                v4,
                v6,
                &maps.policy_v4,
                &maps.policy_v6,
                &maps.policy_scopes,
                &maps.dns_names,
                &maps.dns_rules,
            ],
            shared: [false, false, true, true, true, true, true],
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

/// Start-up knobs (rodata) and map sizes, set before load.
fn configure(open: &mut OpenConnectracerSkel<'_>, opts: &TracerOptions) -> Result<(), TracerError> {
    let map_err = |map| move |source| TracerError::Map { map, source };
    let rodata = open.maps.rodata_data.as_deref_mut().ok_or(TracerError::Map {
        map: "rodata",
        source: libbpf_rs::Error::from(std::io::Error::other("no rodata mapping")),
    })?;
    rodata.filter_scope = !opts.cgroup_is_root;
    rodata.wakeup_bytes = opts.wakeup_threshold;
    if opts.dns_ports.len() > rodata.dns_ports.len() {
        tracing::warn!(
            "DNS answers are captured from {} resolver ports at most; ignoring {:?}",
            rodata.dns_ports.len(),
            &opts.dns_ports[rodata.dns_ports.len()..]
        );
    }
    for (slot, port) in rodata.dns_ports.iter_mut().zip(&opts.dns_ports) {
        *slot = *port;
    }
    open.maps
        .events
        .set_max_entries(opts.ring_buffer_size)
        .map_err(map_err("events"))?;
    open.maps
        .dgrams
        .set_max_entries(opts.udp_dedup_entries)
        .map_err(map_err("dgrams"))?;
    Ok(())
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
