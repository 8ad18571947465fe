//! A poll's processes joined to the daemon's attribution (the same as
//! connections get: exe, user, unit, container, pod), and summed per
//! label set for the metrics.

use std::collections::BTreeMap;

use connectracer_proto::api::{GpuDevice, GpuProcess};
use connectracer_proto::Process;

use super::sample::{HostProcess, Sample};

/// Looks a host pid up: None when the process is gone and unknown.
pub type Attribute<'a> = dyn FnMut(u32, &HostProcess) -> Option<Process> + 'a;

/// The devices and the processes of `sample`, each process attributed.
pub fn join(sample: &Sample, attribute: &mut Attribute<'_>) -> (Vec<GpuDevice>, Vec<GpuProcess>) {
    let devices = sample
        .devices
        .iter()
        .map(|d| GpuDevice {
            index: d.index,
            uuid: d.uuid.clone(),
            name: d.name.clone(),
            mig: d.mig,
            memory_used_bytes: d.memory_used,
            memory_total_bytes: d.memory_total,
            utilization: d.utilization,
            memory_utilization: d.memory_utilization,
            temperature_celsius: d.temperature_celsius,
            power_watts: d.power_watts,
            errors: d.errors.clone(),
        })
        .collect();
    // One lookup per pid, however many devices it uses.
    let mut seen: BTreeMap<u32, Option<Process>> = BTreeMap::new();
    let gone = HostProcess::default();
    let processes = sample
        .processes
        .iter()
        .map(|p| {
            let process = seen
                .entry(p.pid)
                .or_insert_with(|| attribute(p.pid, sample.host.get(&p.pid).unwrap_or(&gone)))
                .clone();
            GpuProcess {
                gpu: p.gpu,
                uuid: p.uuid.clone(),
                gpu_instance: p.gpu_instance,
                pid: p.pid,
                memory_bytes: p.memory,
                sm_utilization: p.sm,
                memory_utilization: p.memory_utilization,
                process,
            }
        })
        .collect();
    (devices, processes)
}

/// The labels of a per-process series: the device, and whose the
/// processes are. Processes that share all of them are summed.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct SeriesKey {
    pub gpu: u32,
    pub uuid: String,
    pub unit: String,
    /// The first 12 characters of the id, as in `connections_total`.
    pub container: String,
    pub pod: String,
}

impl SeriesKey {
    pub fn values(&self) -> Vec<String> {
        vec![
            self.gpu.to_string(),
            self.uuid.clone(),
            self.unit.clone(),
            self.container.clone(),
            self.pod.clone(),
        ]
    }
}

/// The sums of one series; a value stays None only when no process of
/// the series had one.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Totals {
    pub memory_bytes: Option<u64>,
    pub sm: Option<f64>,
    pub memory_utilization: Option<f64>,
}

fn add<T: std::ops::Add<Output = T> + Copy>(a: Option<T>, b: Option<T>) -> Option<T> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a + b),
        (a, b) => a.or(b),
    }
}

impl Totals {
    /// Both series' sums together.
    pub fn plus(self, o: Totals) -> Totals {
        Totals {
            memory_bytes: add(self.memory_bytes, o.memory_bytes),
            sm: add(self.sm, o.sm),
            memory_utilization: add(self.memory_utilization, o.memory_utilization),
        }
    }
}

/// Each process's own use, summed per device and owner: two pods sharing a
/// GPU get their own values, never a copy of the device's total.
pub fn series(processes: &[GpuProcess]) -> BTreeMap<SeriesKey, Totals> {
    let mut out: BTreeMap<SeriesKey, Totals> = BTreeMap::new();
    for p in processes {
        let a = p.process.as_ref();
        let key = SeriesKey {
            gpu: p.gpu,
            uuid: p.uuid.clone(),
            unit: a.and_then(|a| a.unit.clone()).unwrap_or_default(),
            container: a
                .and_then(|a| a.container_id.as_deref())
                .map(|id| id.chars().take(12).collect())
                .unwrap_or_default(),
            pod: a.and_then(|a| a.pod_uid.clone()).unwrap_or_default(),
        };
        let t = out.entry(key).or_default();
        *t = t.plus(Totals {
            memory_bytes: p.memory_bytes,
            sm: p.sm_utilization,
            memory_utilization: p.memory_utilization,
        });
    }
    out
}
