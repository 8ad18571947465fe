//! `tracectl gpu`: the daemon's last GPU poll as two tables, the devices
//! and the processes using them.

use connectracer_proto::api::{GpuDevice, GpuProcess, GpuReply};

use crate::out::{Paint, Printer};
use crate::table::{cell, Table};

/// Binary units, one decimal: `1.5 GiB`.
pub fn bytes(b: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{b} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

/// A ratio as a percentage; `-` when unknown.
pub fn percent(r: Option<f64>) -> String {
    r.map_or_else(|| "-".into(), |r| format!("{:.0}%", r * 100.0))
}

fn opt(v: Option<impl ToString>) -> String {
    v.map_or_else(|| "-".into(), |v| v.to_string())
}

fn devices(devices: &[GpuDevice], p: Printer) -> String {
    let mut t = Table::new(&[
        "GPU", "NAME", "MEMORY", "UTIL", "MEM-UTIL", "TEMP", "POWER", "UUID",
    ])
    .right_aligned(&[0, 3, 4, 5, 6]);
    let mut errors = String::new();
    for d in devices {
        let memory = match (d.memory_used_bytes, d.memory_total_bytes) {
            (Some(u), Some(t)) => format!("{} / {}", bytes(u), bytes(t)),
            _ => "-".into(),
        };
        let name = if d.mig {
            format!("{} (MIG)", d.name)
        } else {
            d.name.clone()
        };
        t.row(vec![
            cell(d.index.to_string()),
            cell(name),
            cell(memory),
            cell(percent(d.utilization)),
            cell(percent(d.memory_utilization)),
            cell(
                d.temperature_celsius
                    .map_or_else(|| "-".into(), |c| format!("{c}°C")),
            ),
            cell(d.power_watts.map_or_else(|| "-".into(), |w| format!("{w:.0} W"))),
            cell(d.uuid.clone()),
        ]);
        for e in &d.errors {
            errors.push_str(&crate::out::paint(
                p.colour,
                Paint::Red,
                &format!("GPU {}: {e}", d.index),
            ));
            errors.push('\n');
        }
    }
    t.render(p.colour) + &errors
}

fn processes(processes: &[GpuProcess], p: Printer) -> String {
    if processes.is_empty() {
        return "no processes on the GPUs (that you may see)\n".into();
    }
    let mut header = vec![
        "GPU",
        "PID",
        "USER",
        "COMM",
        "UNIT",
        "CONTAINER",
        "POD",
        "MEMORY",
        "SM",
        "MEM-UTIL",
    ];
    if p.wide() {
        header.extend(["EXE", "CGROUP"]);
    }
    let mut t = Table::new(&header).right_aligned(&[0, 1, 7, 8, 9]);
    for g in processes {
        let a = g.process.as_ref();
        let gpu = match g.gpu_instance {
            Some(i) => format!("{}/{i}", g.gpu),
            None => g.gpu.to_string(),
        };
        let mut row = vec![
            cell(gpu),
            cell(g.pid.to_string()),
            cell(opt(a.map(|a| a.user.clone().unwrap_or_else(|| a.uid.to_string())))),
            cell(a.map_or_else(|| "(exited)".into(), |a| a.comm.clone())),
            cell(opt(a.and_then(|a| a.unit.clone().or_else(|| a.user_unit.clone())))),
            cell(opt(a
                .and_then(|a| a.container_id.as_deref())
                .map(crate::output::short_id))),
            cell(opt(a.and_then(|a| a.pod_uid.clone()))),
            cell(g.memory_bytes.map_or_else(|| "-".into(), bytes)),
            cell(percent(g.sm_utilization)),
            cell(percent(g.memory_utilization)),
        ];
        if p.wide() {
            row.push(cell(opt(a.and_then(|a| a.exe.clone()))));
            row.push(cell(opt(a.and_then(|a| a.cgroup.clone()))));
        }
        t.row(row);
    }
    t.render(p.colour)
}

pub fn render(g: &GpuReply, p: Printer) -> String {
    if !g.enabled {
        let why = g.reason.as_deref().unwrap_or("no reason given");
        return format!("GPU telemetry is off: {why}\n");
    }
    if g.sampled.is_none() {
        return "GPU telemetry is on; the first poll has not come in yet\n".into();
    }
    format!("{}\n{}", devices(&g.devices, p), processes(&g.processes, p))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_ratios_read_as_people_write_them() {
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(3 << 29), "1.5 GiB");
        assert_eq!(bytes(141 << 30), "141.0 GiB");
        assert_eq!(percent(Some(0.426)), "43%");
        assert_eq!(percent(None), "-");
    }
}
