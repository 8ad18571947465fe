//! The logic through a fake NVML: joining, aggregation, MIG, processes
//! that exit between calls, and calls that fail.

use std::cell::Cell;
use std::collections::BTreeMap;
use std::path::Path;

use connectracer_proto::Process;

use super::join::{join, series};
use super::library::*;
use super::sample::{HostProcess, Sample, Sampler};
use super::*;

#[derive(Debug, Clone, Default)]
struct FakeDevice {
    uuid: String,
    mig: bool,
    processes: Vec<ProcessMemory>,
    samples: Vec<UtilizationSample>,
    /// Calls that fail on this device, by name.
    failing: Vec<&'static str>,
}

#[derive(Debug, Default)]
struct Fake {
    devices: Vec<FakeDevice>,
    utilization_calls: Cell<u32>,
    since: Cell<u64>,
}

impl Fake {
    fn dev(&self, index: u32, call: &'static str) -> Result<&FakeDevice, CallError> {
        let d = &self.devices[index as usize];
        if d.failing.contains(&call) {
            return Err(CallError::Failed("GPU is lost".into()));
        }
        Ok(d)
    }
}

impl Gpus for Fake {
    fn device_count(&self) -> Result<u32, CallError> {
        Ok(self.devices.len() as u32)
    }
    fn identity(&self, i: u32) -> Result<Identity, CallError> {
        let d = self.dev(i, "identity")?;
        Ok(Identity {
            uuid: d.uuid.clone(),
            name: "Fake GPU".into(),
            mig: d.mig,
        })
    }
    fn memory(&self, i: u32) -> Result<Memory, CallError> {
        self.dev(i, "memory")?;
        Ok(Memory {
            used: 5 << 30,
            total: 80 << 30,
        })
    }
    fn utilization(&self, i: u32) -> Result<Utilization, CallError> {
        if self.dev(i, "utilization")?.mig {
            return Err(CallError::NotSupported);
        }
        Ok(Utilization { gpu: 50, memory: 20 })
    }
    fn temperature_celsius(&self, i: u32) -> Result<u32, CallError> {
        self.dev(i, "temperature")?;
        Ok(41)
    }
    fn power_milliwatts(&self, i: u32) -> Result<u32, CallError> {
        self.dev(i, "power")?;
        Ok(123_500)
    }
    fn processes(&self, i: u32) -> Result<Vec<ProcessMemory>, CallError> {
        Ok(self.dev(i, "processes")?.processes.clone())
    }
    fn process_utilization(&self, i: u32, since_us: u64) -> Result<Vec<UtilizationSample>, CallError> {
        self.utilization_calls.set(self.utilization_calls.get() + 1);
        self.since.set(since_us);
        let d = self.dev(i, "process utilization")?;
        Ok(d.samples
            .iter()
            .filter(|s| s.timestamp_us > since_us)
            .copied()
            .collect())
    }
}

fn proc_mem(pid: u32, gib: u64) -> ProcessMemory {
    ProcessMemory {
        pid,
        used: Some(gib << 30),
        gpu_instance: None,
    }
}

fn util(pid: u32, at: u64, sm: u32, memory: u32) -> UtilizationSample {
    UtilizationSample {
        pid,
        timestamp_us: at,
        sm,
        memory,
    }
}

const NOW: u64 = 1_000_000_000;

/// A process in pod `pod` (or none), container `c<pod>`, unit `u`.
fn owner(pid: u32, unit: &str, pod: Option<&str>) -> Process {
    Process {
        pid,
        tid: pid,
        ppid: Some(1),
        uid: 1000 + pid,
        user: None,
        comm: "python3".into(),
        exe: Some("/usr/bin/python3".into()),
        argv: vec![],
        cgroup_id: u64::from(pid),
        cgroup: Some(format!("/{unit}")),
        unit: Some(unit.into()),
        user_unit: None,
        slice: None,
        container_runtime: pod.map(|_| "containerd".into()),
        container_id: pod.map(|p| format!("c{p}0123456789abcdef")),
        pod_uid: pod.map(str::to_string),
    }
}

/// Attributes from a table of owners; pids not in it are gone.
fn attribute(owners: &[Process]) -> impl FnMut(u32, &HostProcess) -> Option<Process> + '_ {
    move |pid, _| owners.iter().find(|p| p.pid == pid).cloned()
}

fn totals_by_pod(s: &Sample, owners: &[Process]) -> BTreeMap<(u32, String), (Option<u64>, Option<f64>)> {
    let (_, processes) = join(s, &mut attribute(owners));
    series(&processes)
        .into_iter()
        .map(|(k, t)| ((k.gpu, k.pod), (t.memory_bytes, t.sm)))
        .collect()
}

#[test]
fn pods_sharing_a_gpu_get_their_own_use_not_copies_of_the_device_total() {
    let fake = Fake {
        devices: vec![FakeDevice {
            uuid: "GPU-a".into(),
            // pid 10 as compute and graphics process: counted once.
            processes: vec![proc_mem(10, 1), proc_mem(10, 1), proc_mem(11, 3), proc_mem(12, 2)],
            samples: vec![
                util(10, NOW - 10, 30, 10),
                util(10, NOW - 5, 50, 30),
                util(11, NOW - 4, 20, 5),
            ],
            ..Default::default()
        }],
        ..Default::default()
    };
    let s = Sampler::default().sample(&fake, NOW, 5_000_000);
    let owners = [
        owner(10, "a.scope", Some("pod-a")),
        owner(11, "b.scope", Some("pod-b")),
        owner(12, "b.scope", Some("pod-b")),
    ];
    let got = totals_by_pod(&s, &owners);
    assert_eq!(
        got,
        BTreeMap::from([
            // Mean of its two samples.
            ((0, "pod-a".to_string()), (Some(1 << 30), Some(0.4))),
            // pid 12 had no sample: it used no SM time, and 11 used 20%.
            ((0, "pod-b".to_string()), (Some(5 << 30), Some(0.2))),
        ])
    );
    let (devices, processes) = join(&s, &mut attribute(&owners));
    assert_eq!(devices[0].memory_used_bytes, Some(5 << 30));
    assert_eq!(
        (devices[0].utilization, devices[0].power_watts),
        (Some(0.5), Some(123.5))
    );
    assert_eq!(processes.len(), 3, "{processes:#?}");
    let p10 = &processes[0];
    assert_eq!(
        p10.process.as_ref().unwrap().exe.as_deref(),
        Some("/usr/bin/python3")
    );
    assert_eq!(p10.memory_utilization, Some(0.2));
}

#[test]
fn each_poll_averages_only_samples_it_has_not_seen() {
    let mut fake = Fake {
        devices: vec![FakeDevice {
            uuid: "GPU-a".into(),
            processes: vec![proc_mem(10, 1)],
            samples: vec![util(10, NOW - 1, 80, 0)],
            ..Default::default()
        }],
        ..Default::default()
    };
    let mut sampler = Sampler::default();
    let first = sampler.sample(&fake, NOW, 5_000_000);
    assert_eq!(
        fake.since.get(),
        NOW - 5_000_000,
        "the first poll looks one interval back"
    );
    assert_eq!(first.processes[0].sm, Some(0.8));
    fake.devices[0].samples.push(util(10, NOW + 10, 40, 0));
    let second = sampler.sample(&fake, NOW + 20, 5_000_000);
    assert_eq!(fake.since.get(), NOW - 1);
    assert_eq!(second.processes[0].sm, Some(0.4));
    // Nothing new: the process used no SM time since.
    let third = sampler.sample(&fake, NOW + 30, 5_000_000);
    assert_eq!(third.processes[0].sm, Some(0.0));
}

#[test]
fn mig_devices_report_memory_per_instance_and_no_utilization() {
    let fake = Fake {
        devices: vec![FakeDevice {
            uuid: "GPU-mig".into(),
            mig: true,
            processes: vec![
                ProcessMemory {
                    pid: 20,
                    used: Some(1 << 30),
                    gpu_instance: Some(1),
                },
                ProcessMemory {
                    pid: 20,
                    used: Some(2 << 30),
                    gpu_instance: Some(2),
                },
            ],
            ..Default::default()
        }],
        ..Default::default()
    };
    let s = Sampler::default().sample(&fake, NOW, 5_000_000);
    assert_eq!(
        fake.utilization_calls.get(),
        0,
        "not asked where NVML has no answer"
    );
    assert!(
        s.devices[0].errors.is_empty(),
        "not supported is no error: {:?}",
        s.devices[0]
    );
    assert_eq!(s.devices[0].utilization, None);
    let instances: Vec<_> = s
        .processes
        .iter()
        .map(|p| (p.gpu_instance, p.memory, p.sm))
        .collect();
    assert_eq!(
        instances,
        [(Some(1), Some(1 << 30), None), (Some(2), Some(2 << 30), None)]
    );
    let owners = [owner(20, "train.service", None)];
    assert_eq!(
        totals_by_pod(&s, &owners),
        BTreeMap::from([((0, String::new()), (Some(3 << 30), None))])
    );
    let (devices, processes) = join(&s, &mut attribute(&owners));
    let text = exposition::render(&devices, &processes, &mut Budget::new(100));
    assert!(
        text.contains(
            "connectracer_gpu_process_memory_bytes{gpu=\"0\",uuid=\"GPU-mig\",unit=\"train.service\",container=\"\",pod=\"\"} 3221225472"
        ),
        "{text}"
    );
    assert!(!text.contains("sm_utilization"), "no SM series on MIG: {text}");
}

#[test]
fn a_process_gone_between_calls_is_kept_unattributed_and_its_series_go_with_it() {
    let mut fake = Fake {
        devices: vec![FakeDevice {
            uuid: "GPU-a".into(),
            processes: vec![proc_mem(30, 1), proc_mem(31, 2)],
            // 32 exited after its sample and before the process list.
            samples: vec![util(32, NOW - 1, 90, 90)],
            ..Default::default()
        }],
        ..Default::default()
    };
    let owners = [owner(30, "a.service", None)];
    let s = Sampler::default().sample(&fake, NOW, 5_000_000);
    assert!(
        s.processes.iter().all(|p| p.pid != 32),
        "a sample alone is no process"
    );
    let mut t = Telemetry::off(String::new(), Duration::from_secs(5));
    t.off = None;
    t.apply(&s, &mut attribute(&owners));
    let mine = t.reply(1030, false);
    assert_eq!(mine.processes.iter().map(|p| p.pid).collect::<Vec<_>>(), [30]);
    let all = t.reply(0, true);
    let gone = all.processes.iter().find(|p| p.pid == 31).unwrap();
    assert_eq!((gone.process.as_ref(), gone.memory_bytes), (None, Some(2 << 30)));
    let mut budget = Budget::new(100);
    assert!(t.exposition(&mut budget).contains("unit=\"a.service\""));
    // The next poll: 30 has exited, and so have its series.
    fake.devices[0].processes.remove(0);
    let s = Sampler::default().sample(&fake, NOW + 1, 5_000_000);
    t.apply(&s, &mut attribute(&owners));
    let text = t.exposition(&mut budget);
    assert!(!text.contains("a.service"), "{text}");
    assert!(text.contains("connectracer_gpu_process_memory_bytes{gpu=\"0\",uuid=\"GPU-a\",unit=\"\",container=\"\",pod=\"\"} 2147483648"), "{text}");
}

#[test]
fn a_failing_call_loses_only_its_own_value_and_a_failing_device_only_itself() {
    let fake = Fake {
        devices: vec![
            FakeDevice {
                uuid: "GPU-a".into(),
                processes: vec![proc_mem(40, 1)],
                failing: vec!["temperature", "process utilization"],
                ..Default::default()
            },
            FakeDevice {
                uuid: "GPU-b".into(),
                failing: vec!["identity"],
                ..Default::default()
            },
            FakeDevice {
                uuid: "GPU-c".into(),
                processes: vec![proc_mem(41, 2)],
                failing: vec!["processes"],
                ..Default::default()
            },
        ],
        ..Default::default()
    };
    let s = Sampler::default().sample(&fake, NOW, 5_000_000);
    let a = &s.devices[0];
    assert_eq!(
        a.errors,
        ["temperature: GPU is lost", "process utilization: GPU is lost"]
    );
    assert_eq!((a.temperature_celsius, a.memory_used), (None, Some(5 << 30)));
    assert_eq!(s.processes[0].sm, None, "unknown, not zero");
    assert_eq!(s.processes[0].memory, Some(1 << 30));
    assert_eq!(s.devices[1].errors, ["identity: GPU is lost"]);
    assert_eq!(s.devices[2].errors, ["processes: GPU is lost"]);
    assert_eq!(s.devices[2].temperature_celsius, Some(41));
    assert_eq!(s.processes.len(), 1);
    let (devices, processes) = join(&s, &mut attribute(&[]));
    let text = exposition::render(&devices, &processes, &mut Budget::new(100));
    assert_eq!(
        text.lines()
            .filter(|l| l.starts_with("connectracer_gpu_memory_used_bytes"))
            .count(),
        2,
        "a device without identity has no labels, so no series: {text}"
    );
    assert!(
        text.contains("connectracer_gpu_temperature_celsius{gpu=\"2\",uuid=\"GPU-c\"} 41"),
        "{text}"
    );
}

#[test]
fn label_sets_past_the_budget_are_summed_as_other_and_values_escaped() {
    let fake = Fake {
        devices: vec![FakeDevice {
            uuid: "GPU-a".into(),
            processes: vec![proc_mem(50, 1), proc_mem(51, 2), proc_mem(52, 4)],
            ..Default::default()
        }],
        ..Default::default()
    };
    let s = Sampler::default().sample(&fake, NOW, 5_000_000);
    let owners = [
        owner(50, "a\\x2db.service", None),
        owner(51, "b.service", None),
        owner(52, "c.service", None),
    ];
    let (devices, processes) = join(&s, &mut attribute(&owners));
    let text = exposition::render(&devices, &processes, &mut Budget::new(1));
    let other = "{gpu=\"other\",uuid=\"other\",unit=\"other\",container=\"other\",pod=\"other\"}";
    assert!(
        text.contains(&format!(
            "connectracer_gpu_process_memory_bytes{other} 6442450944"
        )),
        "{text}"
    );
    assert!(text.contains("unit=\"a\\\\x2db.service\""), "{text}");
    let none = exposition::render(&[], &[], &mut Budget::new(1));
    assert!(none.is_empty());
}

#[test]
fn off_never_opens_nvml_auto_logs_and_true_fails_naming_the_reason() {
    let mount = Path::new("/nonexistent");
    let config = |enabled| GpuConfig {
        enabled,
        poll_interval: Duration::from_secs(5),
    };
    let off = Telemetry::start(&config(GpuMode::Off), mount, || panic!("NVML opened")).unwrap();
    assert_eq!(
        off.reply(0, true).reason.as_deref(),
        Some("[gpu] enabled = false")
    );
    let missing = || Err("libnvidia-ml.so.1 could not be loaded (not found)".to_string());
    let auto = Telemetry::start(&config(GpuMode::Auto), mount, missing).unwrap();
    let r = auto.reply(0, true);
    assert!(!r.enabled && r.devices.is_empty());
    assert_eq!(
        r.reason.as_deref(),
        Some("libnvidia-ml.so.1 could not be loaded (not found)")
    );
    let e = Telemetry::start(&config(GpuMode::On), mount, missing).unwrap_err();
    assert_eq!(
        e.to_string(),
        "[gpu] enabled = true, but GPU telemetry cannot start: libnvidia-ml.so.1 could not be loaded (not found) (set [gpu] enabled = \"auto\" to run without it)"
    );
    let none = || Ok(Box::new(Fake::default()) as Box<dyn Gpus + Send>);
    let auto = Telemetry::start(&config(GpuMode::Auto), mount, none).unwrap();
    assert_eq!(auto.reply(0, true).reason.as_deref(), Some("NVML found no GPU"));
    assert!(Telemetry::start(&config(GpuMode::On), mount, none).is_err());
}

#[tokio::test]
async fn the_poller_thread_sends_samples_until_dropped() {
    let fake = Fake {
        devices: vec![FakeDevice {
            uuid: "GPU-a".into(),
            processes: vec![proc_mem(std::process::id(), 1)],
            ..Default::default()
        }],
        ..Default::default()
    };
    let config = GpuConfig {
        enabled: GpuMode::On,
        poll_interval: Duration::from_secs(1),
    };
    let mut t = Telemetry::start(&config, Path::new("/sys/fs/cgroup"), || Ok(Box::new(fake))).unwrap();
    let s = tokio::time::timeout(Duration::from_secs(10), t.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(s.processes[0].pid, std::process::id());
    let me = &s.host[&std::process::id()];
    assert_eq!(
        me.uid,
        Some(nix::unistd::getuid().as_raw()),
        "read from /proc: {me:?}"
    );
    assert!(me.cgroup.is_some(), "{me:?}");
    drop(t);
}
