//! GPU telemetry: NVML polled on its own thread, each GPU process joined
//! to the same attribution as connections (by host pid, so containers are
//! told apart by their cgroup, not guessed), served as `connectracer_gpu_*`
//! metrics and by the `Gpu` operation (`tracectl gpu`).
//!
//! `[gpu] enabled = "auto"` on a host without NVIDIA's library costs one
//! failed dlopen and one log line; `false` never loads it; `true` makes a
//! host without it fail the start, before anything is attached.

pub mod exposition;
pub mod join;
pub mod library;
pub mod nvml;
pub mod poller;
pub mod sample;
#[cfg(test)]
mod tests;

use std::path::Path;
use std::time::{Duration, SystemTime};

use connectracer_proto::api::{GpuDevice, GpuProcess, GpuReply};
use tokio::sync::mpsc;
use tracing::info;

use crate::config::{GpuConfig, GpuMode};
use crate::metrics::Budget;
use library::Gpus;
use sample::Sample;

/// Samples waiting for the owner: one in hand and one behind it.
const SAMPLE_QUEUE: usize = 2;

/// `[gpu] enabled = true` and NVML cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum GpuError {
    #[error("[gpu] enabled = true, but GPU telemetry cannot start: {0} (set [gpu] enabled = \"auto\" to run without it)")]
    Required(String),
    #[error("starting the GPU polling thread")]
    Thread(#[source] std::io::Error),
}

/// What the owner holds of GPU telemetry: whether it runs, and the last
/// poll, attributed.
#[derive(Debug)]
pub struct Telemetry {
    /// Why it is off; None while it runs.
    off: Option<String>,
    interval: Duration,
    samples: Option<mpsc::Receiver<Sample>>,
    _poller: Option<poller::Poller>,
    sampled: Option<SystemTime>,
    devices: Vec<GpuDevice>,
    processes: Vec<GpuProcess>,
}

/// Opens the real NVML.
pub fn open_nvml() -> Result<Box<dyn Gpus + Send>, String> {
    nvml::open().map(|n| Box::new(n) as Box<dyn Gpus + Send>)
}

impl Telemetry {
    fn off(reason: String, interval: Duration) -> Self {
        Self {
            off: Some(reason),
            interval,
            samples: None,
            _poller: None,
            sampled: None,
            devices: Vec::new(),
            processes: Vec::new(),
        }
    }

    /// Loads NVML as `config` says (through `open`) and starts polling.
    /// "auto" without a usable NVML or GPU logs one line and is off.
    pub fn start(
        config: &GpuConfig,
        mount: &Path,
        open: impl FnOnce() -> Result<Box<dyn Gpus + Send>, String>,
    ) -> Result<Self, GpuError> {
        let interval = config.poll_interval;
        if config.enabled == GpuMode::Off {
            return Ok(Self::off("[gpu] enabled = false".into(), interval));
        }
        let found = open().and_then(|gpus| match gpus.device_count() {
            Ok(0) => Err("NVML found no GPU".to_string()),
            Ok(n) => Ok((gpus, n)),
            Err(e) => Err(format!("NVML could not count GPUs: {e}")),
        });
        let (gpus, count) = match (found, config.enabled) {
            (Ok(found), _) => found,
            (Err(reason), GpuMode::On) => return Err(GpuError::Required(reason)),
            (Err(reason), _) => {
                info!("GPU telemetry off: {reason}");
                return Ok(Self::off(reason, interval));
            }
        };
        let (tx, rx) = mpsc::channel(SAMPLE_QUEUE);
        let poller = poller::spawn(gpus, interval, mount.to_path_buf(), tx).map_err(GpuError::Thread)?;
        info!(
            gpus = count,
            poll_interval = %humantime::format_duration(interval),
            "GPU telemetry on: {count} GPU{}",
            if count == 1 { "" } else { "s" }
        );
        Ok(Self {
            off: None,
            interval,
            samples: Some(rx),
            _poller: Some(poller),
            sampled: None,
            devices: Vec::new(),
            processes: Vec::new(),
        })
    }

    /// The next poll; never, while telemetry is off.
    pub async fn next(&mut self) -> Option<Sample> {
        match &mut self.samples {
            Some(rx) => rx.recv().await,
            None => std::future::pending().await,
        }
    }

    /// Takes a poll in, each process attributed by `attribute`.
    pub fn apply(&mut self, sample: &Sample, attribute: &mut join::Attribute<'_>) {
        let (devices, processes) = join::join(sample, attribute);
        self.devices = devices;
        self.processes = processes;
        self.sampled = sample.at;
    }

    /// The `connectracer_gpu_*` families of the last poll.
    pub fn exposition(&self, budget: &mut Budget) -> String {
        exposition::render(&self.devices, &self.processes, budget)
    }

    /// The answer to `Gpu`: every device; the processes of `uid` only,
    /// unless `privileged`. A process gone before it was attributed has no
    /// owner to show it to but the privileged.
    pub fn reply(&self, uid: u32, privileged: bool) -> GpuReply {
        GpuReply {
            enabled: self.off.is_none(),
            reason: self.off.clone(),
            sampled: self
                .sampled
                .map(|t| humantime::format_rfc3339_micros(t).to_string()),
            poll_interval_seconds: self.interval.as_secs_f64(),
            devices: self.devices.clone(),
            processes: self
                .processes
                .iter()
                .filter(|p| privileged || p.process.as_ref().is_some_and(|a| a.uid == uid))
                .cloned()
                .collect(),
        }
    }
}
