//! The validated model of `[gpu]`: whether NVML is loaded, and how often
//! it is polled.

use std::time::Duration;

/// `[gpu] enabled`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GpuMode {
    /// Telemetry where libnvidia-ml.so.1 loads and finds a GPU; elsewhere
    /// one line says it is off and nothing else changes.
    Auto,
    /// Telemetry required: a start without NVML fails.
    On,
    /// NVML is never loaded.
    Off,
}

impl GpuMode {
    /// As written in the configuration.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Auto => "\"auto\"",
            Self::On => "true",
            Self::Off => "false",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GpuConfig {
    pub enabled: GpuMode,
    /// Between two NVML polls; also the window per-process utilization
    /// samples are averaged over.
    pub poll_interval: Duration,
}

/// Shortest poll interval: NVML's own sampling of per-process utilization
/// runs at about 1/6 s to 1 s, and a poll walks every device.
pub const MIN_POLL_INTERVAL: Duration = Duration::from_secs(1);
pub const MAX_POLL_INTERVAL: Duration = Duration::from_secs(3600);

impl Default for GpuConfig {
    fn default() -> Self {
        Self {
            enabled: GpuMode::Auto,
            poll_interval: Duration::from_secs(5),
        }
    }
}
