//! One poll of every device through [`Gpus`]: device readings, the
//! processes on each with their memory and utilization, and every call
//! that failed. Nothing here knows about attribution: the processes carry
//! host pids, joined to who they are by `join`.

use std::collections::BTreeMap;

use super::library::{CallError, Gpus, Identity};

/// A device as one poll saw it; a value is None when its call failed (the
/// error is in `errors`) or the device does not support it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DeviceSample {
    pub index: u32,
    pub uuid: String,
    pub name: String,
    pub mig: bool,
    pub memory_used: Option<u64>,
    pub memory_total: Option<u64>,
    pub utilization: Option<f64>,
    pub memory_utilization: Option<f64>,
    pub temperature_celsius: Option<u32>,
    pub power_watts: Option<f64>,
    /// `CALL: REASON` of each failed call.
    pub errors: Vec<String>,
}

/// One process on one device (one MIG GPU instance of it).
#[derive(Debug, Clone, PartialEq)]
pub struct ProcessSample {
    pub gpu: u32,
    pub uuid: String,
    pub gpu_instance: Option<u32>,
    pub pid: u32,
    pub memory: Option<u64>,
    /// Mean over the samples of the poll interval; 0 for a process NVML
    /// sampled nothing for (it reports only non-zero use); None where the
    /// device cannot tell (MIG) or the call failed.
    pub sm: Option<f64>,
    pub memory_utilization: Option<f64>,
}

/// What /proc said of a pid right after NVML listed it (read on the
/// poller's thread, not the owner's).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostProcess {
    /// The cgroup path (the v2 one where there is one).
    pub cgroup: Option<String>,
    /// The cgroup2 directory's inode; 0 if not found.
    pub cgroup_id: u64,
    /// None: the process was gone.
    pub uid: Option<u32>,
}

/// What one poll found.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Sample {
    pub devices: Vec<DeviceSample>,
    pub processes: Vec<ProcessSample>,
    /// Failures that concern no single device (counting them).
    pub errors: Vec<String>,
    /// Per pid of `processes`.
    pub host: BTreeMap<u32, HostProcess>,
    /// When it was taken.
    pub at: Option<std::time::SystemTime>,
}

/// Polls across calls: remembers, per device, the newest utilization
/// sample seen, so that each poll averages only samples it has not seen.
#[derive(Debug, Default)]
pub struct Sampler {
    last_seen_us: BTreeMap<u32, u64>,
}

fn percent(p: u32) -> f64 {
    f64::from(p.min(100)) / 100.0
}

/// The value of a call; a failure noted in `errors` (not supported is not one).
fn noted<T>(errors: &mut Vec<String>, what: &str, r: Result<T, CallError>) -> Option<T> {
    match r {
        Ok(v) => Some(v),
        Err(CallError::NotSupported) => None,
        Err(CallError::Failed(e)) => {
            errors.push(format!("{what}: {e}"));
            None
        }
    }
}

impl Sampler {
    /// Polls every device. `now_us` (microseconds since the epoch) and
    /// `window_us` bound the first utilization query of a device.
    pub fn sample(&mut self, gpus: &dyn Gpus, now_us: u64, window_us: u64) -> Sample {
        let mut out = Sample::default();
        let count = match gpus.device_count() {
            Ok(n) => n,
            Err(e) => {
                out.errors.push(format!("device count: {e}"));
                return out;
            }
        };
        for index in 0..count {
            self.device(gpus, index, now_us.saturating_sub(window_us), &mut out);
        }
        out
    }

    fn device(&mut self, gpus: &dyn Gpus, index: u32, floor_us: u64, out: &mut Sample) {
        let mut d = DeviceSample {
            index,
            ..Default::default()
        };
        // Without its identity a device cannot be labelled: only the error.
        let Some(Identity { uuid, name, mig }) = noted(&mut d.errors, "identity", gpus.identity(index))
        else {
            out.devices.push(d);
            return;
        };
        (d.uuid, d.name, d.mig) = (uuid, name, mig);
        if let Some(m) = noted(&mut d.errors, "memory", gpus.memory(index)) {
            (d.memory_used, d.memory_total) = (Some(m.used), Some(m.total));
        }
        if let Some(u) = noted(&mut d.errors, "utilization", gpus.utilization(index)) {
            (d.utilization, d.memory_utilization) = (Some(percent(u.gpu)), Some(percent(u.memory)));
        }
        d.temperature_celsius = noted(&mut d.errors, "temperature", gpus.temperature_celsius(index));
        d.power_watts =
            noted(&mut d.errors, "power", gpus.power_milliwatts(index)).map(|mw| f64::from(mw) / 1000.0);
        let processes = noted(&mut d.errors, "processes", gpus.processes(index)).unwrap_or_default();
        // MIG has no per-process utilization: memory only, and no call
        // that is known to fail.
        let util = if d.mig {
            None
        } else {
            let since = self
                .last_seen_us
                .get(&index)
                .copied()
                .unwrap_or(floor_us)
                .max(floor_us);
            let samples = noted(
                &mut d.errors,
                "process utilization",
                gpus.process_utilization(index, since),
            );
            if let Some(newest) = samples.iter().flatten().map(|s| s.timestamp_us).max() {
                self.last_seen_us.insert(index, newest);
            }
            samples
        };
        // One entry per (pid, instance): a process with both a compute and
        // a graphics context is listed twice with the same memory.
        let mut by_pid: BTreeMap<(u32, Option<u32>), Option<u64>> = BTreeMap::new();
        for p in processes {
            let m = by_pid.entry((p.pid, p.gpu_instance)).or_insert(p.used);
            *m = (*m).max(p.used);
        }
        for ((pid, gpu_instance), memory) in by_pid {
            let mine: Vec<_> = util.iter().flatten().filter(|s| s.pid == pid).collect();
            let mean = |f: &dyn Fn(&super::library::UtilizationSample) -> u32| {
                let n = mine.len().max(1) as f64;
                mine.iter().map(|s| percent(f(s))).sum::<f64>() / n
            };
            out.processes.push(ProcessSample {
                gpu: index,
                uuid: d.uuid.clone(),
                gpu_instance,
                pid,
                memory,
                sm: util.as_ref().map(|_| mean(&|s| s.sm)),
                memory_utilization: util.as_ref().map(|_| mean(&|s| s.memory)),
            });
        }
        out.devices.push(d);
    }
}
