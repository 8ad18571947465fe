//! Who made a connection: process, user, cgroup, systemd unit, container.

pub mod cgroup_path;
pub mod cgroups;
pub mod process;
pub mod users;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use connectracer_proto::Process as Attribution;

use self::cgroups::{Cgroup, CgroupResolver};
use self::process::{Process, ProcessCache};
use self::users::UserNames;
use crate::bpf::event::{ConnRecord, ProcRecord};

#[derive(Debug)]
pub struct Attributor {
    pub processes: ProcessCache,
    cgroups: CgroupResolver,
    users: UserNames,
}

impl Attributor {
    pub fn new(cgroup_mount: &Path, max_processes: usize, process_retention: Duration) -> Self {
        Self {
            processes: ProcessCache::new(Path::new("/proc"), max_processes, process_retention),
            cgroups: CgroupResolver::new(cgroup_mount),
            users: UserNames::default(),
        }
    }

    pub fn on_process(&mut self, rec: &ProcRecord, now: Instant) {
        self.processes.apply(rec, now);
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
            comm: rec.comm.clone(),
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

    pub fn prune(&mut self, now: Instant) {
        self.processes.prune(now);
    }
}
