//! Who made a connection: process, user, cgroup, systemd unit, container.

pub mod cgroup_path;
pub mod cgroups;
pub mod process;
pub mod users;

// Looked up for every connection record; SipHash showed in profiles.
type HashMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use connectracer_proto::Process as Attribution;

use self::cgroups::{Cgroup, CgroupResolver};
use self::process::{Process, ProcessCache};
use self::users::UserNames;
use crate::bpf::event::{Comm, ConnRecord, ProcRecord};

/// What makes two connections' attributions identical: the same thread of
/// the same process image, under the same uid and cgroup, with the same comm.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct AttributionKey {
    pid: u32,
    tid: u32,
    uid: u32,
    cgroup_id: u64,
    comm: Comm,
    /// The process cache entry it was built from: a new exec replaces it.
    image: u64,
}

/// Attributions kept for reuse; a busy process connecting in a loop gets
/// one shared copy instead of a fresh one per connection.
const MAX_ATTRIBUTIONS: usize = 16384;

#[derive(Debug)]
pub struct Attributor {
    pub processes: ProcessCache,
    cgroups: CgroupResolver,
    users: UserNames,
    recent: HashMap<AttributionKey, Arc<Attribution>>,
}

impl Attributor {
    pub fn new(cgroup_mount: &Path, max_processes: usize, process_retention: Duration) -> Self {
        Self {
            processes: ProcessCache::new(Path::new("/proc"), max_processes, process_retention),
            cgroups: CgroupResolver::new(cgroup_mount),
            users: UserNames::default(),
            recent: HashMap::default(),
        }
    }

    pub fn on_process(&mut self, rec: &ProcRecord, now: Instant) {
        self.processes.apply(rec, now);
        // Resolved now, while the process runs: a short-lived unit's cgroup
        // may be gone by the time its connections are attributed (systemd
        // removes it as soon as the last process exits), and a cgroup id
        // can no longer be named once its directory is gone.
        if let ProcRecord::Exec { cgroup_id, .. } = rec {
            self.cgroups.warm(*cgroup_id);
        }
    }

    /// The attribution of a connection record, shared with earlier records
    /// of the same thread and process image.
    pub fn attribute_shared(&mut self, rec: &ConnRecord) -> Arc<Attribution> {
        let image = self.processes.get(rec.pid).map_or(0, |p| p.image);
        let key = AttributionKey {
            pid: rec.pid,
            tid: rec.tid,
            uid: rec.uid,
            cgroup_id: rec.cgroup_id,
            comm: rec.comm,
            image,
        };
        if let Some(a) = self.recent.get(&key) {
            return a.clone();
        }
        let a = Arc::new(self.attribute(rec));
        if self.recent.len() >= MAX_ATTRIBUTIONS {
            self.recent.clear();
        }
        self.recent.insert(key, a.clone());
        a
    }

    pub fn attribute(&mut self, rec: &ConnRecord) -> Attribution {
        let proc: Option<Arc<Process>> = self.processes.get(rec.pid);
        let cg: Option<Arc<Cgroup>> = self.cgroups.resolve(rec.cgroup_id);
        let container = cg.as_ref().and_then(|c| c.info.container.as_ref());
        Attribution {
            pid: rec.pid,
            tid: rec.tid,
            ppid: proc.as_ref().map(|p| p.ppid),
            uid: rec.uid,
            user: self.users.name(rec.uid),
            // The kernel's comm is the thread's at connect time: the truth.
            comm: rec.comm.to_string_lossy(),
            exe: proc.as_ref().and_then(|p| p.exe.clone()),
            argv: proc.as_ref().map(|p| p.argv.clone()).unwrap_or_default(),
            cgroup_id: rec.cgroup_id,
            cgroup: cg.as_ref().map(|c| c.path.clone()),
            unit: cg.as_ref().and_then(|c| c.info.unit.clone()),
            user_unit: cg.as_ref().and_then(|c| c.info.user_unit.clone()),
            slice: cg.as_ref().and_then(|c| c.info.slice.clone()),
            container_runtime: container.map(|c| c.runtime.as_str().to_string()),
            container_id: container.map(|c| c.id.clone()),
            pod_uid: container.and_then(|c| c.pod_uid.clone()),
        }
    }

    /// The attribution of a process found by pid rather than by a kernel
    /// record (a GPU process): the process cache for exe, argv and uid,
    /// `cgroup` (its /proc/PID/cgroup path) for unit, container and pod.
    /// None when neither the cache nor `uid` knows the process: it is gone.
    pub fn attribute_pid(
        &mut self,
        pid: u32,
        uid: Option<u32>,
        cgroup: Option<&str>,
        cgroup_id: u64,
    ) -> Option<Attribution> {
        let proc: Option<Arc<Process>> = self.processes.get(pid);
        let uid = proc.as_ref().map(|p| p.uid).or(uid)?;
        let info = cgroup.map(cgroup_path::parse_cgroup_path).unwrap_or_default();
        let container = info.container.as_ref();
        Some(Attribution {
            pid,
            tid: pid,
            ppid: proc.as_ref().map(|p| p.ppid),
            uid,
            user: self.users.name(uid),
            comm: proc.as_ref().map(|p| p.comm.clone()).unwrap_or_default(),
            exe: proc.as_ref().and_then(|p| p.exe.clone()),
            argv: proc.as_ref().map(|p| p.argv.clone()).unwrap_or_default(),
            cgroup_id,
            cgroup: cgroup.map(str::to_string),
            unit: info.unit.clone(),
            user_unit: info.user_unit.clone(),
            slice: info.slice.clone(),
            container_runtime: container.map(|c| c.runtime.as_str().to_string()),
            container_id: container.map(|c| c.id.clone()),
            pod_uid: container.and_then(|c| c.pod_uid.clone()),
        })
    }

    /// The cgroup `id` names, resolved through the same cache as connections'.
    pub fn cgroup(&mut self, id: u64) -> Option<Arc<Cgroup>> {
        self.cgroups.resolve(id)
    }

    pub fn prune(&mut self, now: Instant) {
        self.processes.prune(now);
        // Entries of processes the cache forgot would pin their images.
        let procs = &mut self.processes;
        self.recent.retain(|k, _| procs.contains(k.pid));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bpf::event::ConnKind;

    fn exec(pid: u32, exe: &str) -> ProcRecord {
        process::test_exec(pid, exe)
    }

    fn connect(pid: u32) -> ConnRecord {
        ConnRecord {
            kind: ConnKind::Connect,
            pid,
            tid: pid,
            uid: 0,
            gid: 0,
            protocol: connectracer_proto::Protocol::Tcp,
            verdict: connectracer_proto::Verdict::Allow,
            ts_ns: 0,
            cookie: 1,
            cgroup_id: 0,
            netns_cookie: 0,
            dst: "10.0.0.1:443".parse().unwrap(),
            src: "0.0.0.0:0".parse().unwrap(),
            host_id: None,
            policy_rule: 0,
            epoch: 1,
            error: 0,
            duration_ns: 0,
            bytes_sent: 0,
            bytes_received: 0,
            comm: Comm::from_c(&[b'x' as i8]),
        }
    }

    #[test]
    fn shared_attributions_follow_exec() {
        let mut a = Attributor::new(Path::new("/nonexistent"), 100, Duration::from_secs(60));
        let now = Instant::now();
        // A pid far above pid_max: /proc never answers for it.
        let pid = 4_000_000;
        a.on_process(&exec(pid, "/bin/first"), now);
        let one = a.attribute_shared(&connect(pid));
        let again = a.attribute_shared(&connect(pid));
        assert!(Arc::ptr_eq(&one, &again), "the same image shares one attribution");
        a.on_process(&exec(pid, "/bin/second"), now);
        let after = a.attribute_shared(&connect(pid));
        assert_eq!(
            after.exe.as_deref(),
            Some("/bin/second"),
            "exec replaced the image"
        );
        assert_eq!(one.exe.as_deref(), Some("/bin/first"));
    }

    #[test]
    fn a_pid_is_attributed_from_the_cache_and_its_cgroup() {
        let mut a = Attributor::new(Path::new("/nonexistent"), 100, Duration::from_secs(60));
        let pid = 4_000_001;
        a.on_process(&exec(pid, "/usr/bin/python3"), Instant::now());
        let cg = "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1b2c3d4e_0000_1111_2222_333344445555.slice/cri-containerd-0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef.scope";
        let p = a.attribute_pid(pid, Some(0), Some(cg), 77).unwrap();
        assert_eq!(p.exe.as_deref(), Some("/usr/bin/python3"));
        assert_eq!(p.uid, 1000, "the cache knows the process: its uid wins");
        assert_eq!(p.cgroup_id, 77);
        assert_eq!(p.pod_uid.as_deref(), Some("1b2c3d4e-0000-1111-2222-333344445555"));
        assert_eq!(p.container_runtime.as_deref(), Some("containerd"));
        // Unknown to the cache and /proc: the uid /proc gave, or gone.
        let other = pid + 1;
        assert_eq!(a.attribute_pid(other, Some(5), None, 0).unwrap().uid, 5);
        assert!(a.attribute_pid(other, None, None, 0).is_none());
    }
}
