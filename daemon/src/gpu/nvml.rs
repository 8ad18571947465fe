//! The real NVML, through nvml-wrapper: libnvidia-ml.so.1 is opened with
//! dlopen at start (libloading), never linked, so one package runs on hosts
//! with and without NVIDIA's driver.

use nvml_wrapper::enum_wrappers::device::TemperatureSensor;
use nvml_wrapper::enums::device::UsedGpuMemory;
use nvml_wrapper::error::NvmlError;
use nvml_wrapper::Nvml;

use super::library::{CallError, Gpus, Identity, Memory, ProcessMemory, Utilization, UtilizationSample};

/// The library NVML is loaded from (nvml-wrapper's default).
pub const LIBRARY: &str = "libnvidia-ml.so.1";

/// `NVML_DEVICE_MIG_ENABLE`.
const MIG_ENABLED: u32 = 1;

/// NVML, initialized. Dropping it shuts NVML down.
#[derive(Debug)]
pub struct RealNvml(Nvml);

/// Why NVML cannot be used on this host, in words for the one log line.
pub fn open() -> Result<RealNvml, String> {
    match Nvml::init() {
        Ok(n) => Ok(RealNvml(n)),
        Err(NvmlError::LibloadingError(e)) => Err(format!("{LIBRARY} could not be loaded ({e})")),
        Err(NvmlError::DriverNotLoaded) => {
            Err(format!("{LIBRARY} loaded, but the NVIDIA driver is not running"))
        }
        Err(NvmlError::NoPermission) => Err(format!(
            "{LIBRARY} loaded, but NVML may not talk to the driver (permission denied on /dev/nvidia*)"
        )),
        Err(e) => Err(format!("{LIBRARY} loaded, but NVML did not start: {e}")),
    }
}

fn call(e: NvmlError) -> CallError {
    match e {
        NvmlError::NotSupported => CallError::NotSupported,
        e => CallError::Failed(e.to_string()),
    }
}

impl RealNvml {
    fn device(&self, index: u32) -> Result<nvml_wrapper::Device<'_>, CallError> {
        self.0.device_by_index(index).map_err(call)
    }
}

impl Gpus for RealNvml {
    fn device_count(&self) -> Result<u32, CallError> {
        self.0.device_count().map_err(call)
    }

    fn identity(&self, index: u32) -> Result<Identity, CallError> {
        let d = self.device(index)?;
        Ok(Identity {
            uuid: d.uuid().map_err(call)?,
            name: d.name().unwrap_or_default(),
            // Not supported: a GPU without MIG.
            mig: d.mig_mode().is_ok_and(|m| m.current == MIG_ENABLED),
        })
    }

    fn memory(&self, index: u32) -> Result<Memory, CallError> {
        let m = self.device(index)?.memory_info().map_err(call)?;
        Ok(Memory {
            used: m.used,
            total: m.total,
        })
    }

    fn utilization(&self, index: u32) -> Result<Utilization, CallError> {
        let u = self.device(index)?.utilization_rates().map_err(call)?;
        Ok(Utilization {
            gpu: u.gpu,
            memory: u.memory,
        })
    }

    fn temperature_celsius(&self, index: u32) -> Result<u32, CallError> {
        self.device(index)?
            .temperature(TemperatureSensor::Gpu)
            .map_err(call)
    }

    fn power_milliwatts(&self, index: u32) -> Result<u32, CallError> {
        self.device(index)?.power_usage().map_err(call)
    }

    fn processes(&self, index: u32) -> Result<Vec<ProcessMemory>, CallError> {
        let d = self.device(index)?;
        let compute = d.running_compute_processes().map_err(call)?;
        // Graphics contexts are not supported on compute-only GPUs.
        let graphics = match d.running_graphics_processes() {
            Ok(g) => g,
            Err(NvmlError::NotSupported) => Vec::new(),
            Err(e) => return Err(call(e)),
        };
        Ok(compute
            .into_iter()
            .chain(graphics)
            .map(|p| ProcessMemory {
                pid: p.pid,
                used: match p.used_gpu_memory {
                    UsedGpuMemory::Used(b) => Some(b),
                    UsedGpuMemory::Unavailable => None,
                },
                gpu_instance: p.gpu_instance_id,
            })
            .collect())
    }

    fn process_utilization(&self, index: u32, since_us: u64) -> Result<Vec<UtilizationSample>, CallError> {
        let samples = match self.device(index)?.process_utilization_stats(since_us) {
            Ok(s) => s,
            // No process used the GPU since `since_us`.
            Err(NvmlError::NotFound) => Vec::new(),
            Err(e) => return Err(call(e)),
        };
        Ok(samples
            .into_iter()
            .map(|s| UtilizationSample {
                pid: s.pid,
                timestamp_us: s.timestamp,
                sm: s.sm_util,
                memory: s.mem_util,
            })
            .collect())
    }
}
