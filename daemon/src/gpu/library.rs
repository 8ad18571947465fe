//! What the daemon asks of NVML, as a trait: the real library behind it in
//! `nvml.rs`, a fake in the tests, so that joining, aggregation, MIG and
//! failing calls are tested on machines without a GPU.

/// Why one NVML call gave nothing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CallError {
    /// The device does not have it (older GPUs, MIG mode): not a fault.
    #[error("not supported")]
    NotSupported,
    /// The call failed: the GPU fell off the bus, a permission, a driver
    /// problem. Reported, and the poll goes on with the next call.
    #[error("{0}")]
    Failed(String),
}

/// Who a device is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub uuid: String,
    pub name: String,
    /// MIG mode is on: NVML has no per-process utilization there.
    pub mig: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Memory {
    pub used: u64,
    pub total: u64,
}

/// Percentages over NVML's last sample period.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Utilization {
    pub gpu: u32,
    pub memory: u32,
}

/// A process with a context on a device, as a compute or graphics process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcessMemory {
    /// Host pid: NVML reports pids of the initial PID namespace.
    pub pid: u32,
    /// None where the driver does not account it per process.
    pub used: Option<u64>,
    /// The MIG GPU instance the context lives on.
    pub gpu_instance: Option<u32>,
}

/// One per-process utilization sample (`nvmlDeviceGetProcessUtilization`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UtilizationSample {
    pub pid: u32,
    /// CPU time of the sample, microseconds since the epoch.
    pub timestamp_us: u64,
    /// Percent of the sample period the process's kernels ran on the SMs,
    /// and read or wrote device memory.
    pub sm: u32,
    pub memory: u32,
}

/// The NVML calls a poll makes, by device index. Every call can fail on
/// its own; one failing never stops the others.
pub trait Gpus {
    fn device_count(&self) -> Result<u32, CallError>;
    fn identity(&self, index: u32) -> Result<Identity, CallError>;
    fn memory(&self, index: u32) -> Result<Memory, CallError>;
    fn utilization(&self, index: u32) -> Result<Utilization, CallError>;
    fn temperature_celsius(&self, index: u32) -> Result<u32, CallError>;
    fn power_milliwatts(&self, index: u32) -> Result<u32, CallError>;
    /// Compute and graphics processes together (a process may be in both).
    fn processes(&self, index: u32) -> Result<Vec<ProcessMemory>, CallError>;
    /// Samples newer than `since_us` (microseconds since the epoch).
    fn process_utilization(&self, index: u32, since_us: u64) -> Result<Vec<UtilizationSample>, CallError>;
}
