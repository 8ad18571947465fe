//! The `connectracer_gpu_*` families as Prometheus text, rendered once per
//! poll and served with the rest. Rendered as text rather than through the
//! recorder: a process that exits must take its series with it, and the
//! recorder never forgets a label set.

use std::fmt::Write;

use connectracer_proto::api::{GpuDevice, GpuProcess};

use super::join::{series, Totals};
use crate::metrics::Budget;

pub const PROCESS_MEMORY: &str = "connectracer_gpu_process_memory_bytes";
pub const PROCESS_SM: &str = "connectracer_gpu_process_sm_utilization_ratio";
pub const PROCESS_MEMORY_UTILIZATION: &str = "connectracer_gpu_process_memory_utilization_ratio";

/// Per-device families: (name, help, value).
type DeviceValue = fn(&GpuDevice) -> Option<f64>;
const DEVICE: [(&str, &str, DeviceValue); 6] = [
    (
        "connectracer_gpu_memory_used_bytes",
        "Device memory allocated on a GPU, by NVML index and UUID",
        |d| d.memory_used_bytes.map(|b| b as f64),
    ),
    (
        "connectracer_gpu_memory_total_bytes",
        "Device memory of a GPU",
        |d| d.memory_total_bytes.map(|b| b as f64),
    ),
    (
        "connectracer_gpu_utilization_ratio",
        "Share of NVML's last sample period a kernel ran on a GPU (0 to 1)",
        |d| d.utilization,
    ),
    (
        "connectracer_gpu_memory_utilization_ratio",
        "Share of NVML's last sample period a GPU's memory was read or written (0 to 1)",
        |d| d.memory_utilization,
    ),
    (
        "connectracer_gpu_temperature_celsius",
        "GPU core temperature",
        |d| d.temperature_celsius.map(f64::from),
    ),
    (
        "connectracer_gpu_power_watts",
        "Power drawn by a GPU and its memory",
        |d| d.power_watts,
    ),
];

type ProcessValue = fn(&Totals) -> Option<f64>;
const PROCESS: [(&str, &str, ProcessValue); 3] = [
    (
        PROCESS_MEMORY,
        "GPU memory used by processes, summed per GPU, systemd unit, container and pod",
        |t| t.memory_bytes.map(|b| b as f64),
    ),
    (
        PROCESS_SM,
        "Share of the poll interval processes' kernels ran on a GPU's SMs, summed per GPU, unit, container and pod (none on MIG)",
        |t| t.sm,
    ),
    (
        PROCESS_MEMORY_UTILIZATION,
        "Share of the poll interval processes read or wrote a GPU's memory, summed per GPU, unit, container and pod (none on MIG)",
        |t| t.memory_utilization,
    ),
];

const PROCESS_LABELS: [&str; 5] = ["gpu", "uuid", "unit", "container", "pod"];

/// A label value in the text format: backslash, quote and newline escaped
/// (systemd escapes unit names with backslashes).
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

fn labels(names: &[&str], values: &[String]) -> String {
    let pairs: Vec<String> = names
        .iter()
        .zip(values)
        .map(|(k, v)| format!("{k}=\"{}\"", escape(v)))
        .collect();
    pairs.join(",")
}

fn family(out: &mut String, name: &str, help: &str, samples: &[(String, f64)]) {
    if samples.is_empty() {
        return;
    }
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
    for (labels, v) in samples {
        let _ = writeln!(out, "{name}{{{labels}}} {v}");
    }
    out.push('\n');
}

/// Every GPU family; nothing when there are no devices. Per-process label
/// sets beyond the budget of `PROCESS_MEMORY` are summed as "other".
pub fn render(devices: &[GpuDevice], processes: &[GpuProcess], budget: &mut Budget) -> String {
    let mut out = String::new();
    for (name, help, value) in DEVICE {
        let samples: Vec<(String, f64)> = devices
            .iter()
            .filter(|d| !d.uuid.is_empty())
            .filter_map(|d| {
                let v = value(d)?;
                Some((
                    labels(&["gpu", "uuid"], &[d.index.to_string(), d.uuid.clone()]),
                    v,
                ))
            })
            .collect();
        family(&mut out, name, help, &samples);
    }
    let mut admitted: std::collections::BTreeMap<Vec<String>, Totals> = Default::default();
    for (key, t) in series(processes) {
        let values = budget.admit(PROCESS_MEMORY, key.values());
        let sum = admitted.entry(values).or_default();
        *sum = sum.plus(t);
    }
    for (name, help, value) in PROCESS {
        let samples: Vec<(String, f64)> = admitted
            .iter()
            .filter_map(|(values, t)| Some((labels(&PROCESS_LABELS, values), value(t)?)))
            .collect();
        family(&mut out, name, help, &samples);
    }
    out
}
