//! What `tracectl top` shows, computed from successive `Connections`
//! answers: each connection is remembered by id while the daemon's table
//! holds it, so rates count ids seen for the first time, and a new grouping
//! or order applies at once to everything remembered.

use std::collections::HashMap;

use connectracer_proto::api::{GpuProcess, Stats};
use connectracer_proto::{ConnState, Connection, ContainerMeta, Process, Verdict};
use serde::Serialize;

use crate::out::Paint;
use crate::table::{cell, Table};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum GroupBy {
    Unit,
    Container,
    Pod,
    Process,
    Destination,
}

impl GroupBy {
    pub const ALL: [GroupBy; 5] = [
        Self::Unit,
        Self::Container,
        Self::Pod,
        Self::Process,
        Self::Destination,
    ];

    fn heading(self) -> &'static str {
        match self {
            Self::Unit => "UNIT",
            Self::Container => "CONTAINER",
            Self::Pod => "POD",
            Self::Process => "PROCESS",
            Self::Destination => "DESTINATION",
        }
    }

    /// The group of a process (with its container's names where known);
    /// None when grouping by destination.
    fn process_key(self, p: &Process, meta: Option<&ContainerMeta>) -> Option<String> {
        Some(match self {
            Self::Unit => p
                .unit
                .clone()
                .or_else(|| p.user_unit.clone())
                .unwrap_or_else(|| "-".into()),
            // The runtime's name once it answered, the short id until then.
            Self::Container => meta.and_then(|m| m.container_name.clone()).unwrap_or_else(|| {
                p.container_id
                    .as_deref()
                    .map_or_else(|| "(host)".into(), |id| crate::output::short_id(id).to_string())
            }),
            Self::Pod => meta.and_then(ContainerMeta::pod).unwrap_or_else(|| "-".into()),
            Self::Process => format!("{}[{}]", p.comm, p.pid),
            Self::Destination => return None,
        })
    }

    fn key(self, c: &Connection) -> String {
        match self {
            Self::Destination => c
                .label
                .clone()
                .or_else(|| c.host.clone())
                .or_else(|| c.dns_name.clone())
                .map_or_else(|| c.dst.to_string(), |n| format!("{n}:{}", c.dst.port())),
            _ => self
                .process_key(&c.process, Some(&c.container))
                .unwrap_or_default(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SortBy {
    /// New connections per second.
    Rate,
    Open,
    Total,
    Failed,
    Denied,
    Name,
}

impl SortBy {
    pub const ALL: [SortBy; 6] = [
        Self::Rate,
        Self::Open,
        Self::Total,
        Self::Failed,
        Self::Denied,
        Self::Name,
    ];
}

/// One next in a cycle of choices (the `g` and `s` keys).
pub fn next<T: Copy + PartialEq>(all: &[T], now: T) -> T {
    let i = all.iter().position(|x| *x == now).unwrap_or(0);
    all[(i + 1) % all.len()]
}

#[derive(Debug)]
struct Entry {
    keys: [String; 5],
    open: bool,
    failed: bool,
    denied: bool,
    /// The sample it first appeared in (0: already there when top started).
    first: u64,
}

/// One row of the view.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Row {
    pub group: String,
    pub rate: f64,
    pub open: u64,
    pub total: u64,
    pub failed: u64,
    pub denied: u64,
    /// GPU memory and SM utilization of the group's processes, summed;
    /// only while the daemon reports GPUs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gpu_memory_bytes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gpu_sm: Option<f64>,
}

/// One view: the totals line, the counters of the header and the rows.
#[derive(Debug, Clone, Serialize)]
pub struct Frame {
    pub by: GroupBy,
    pub sort: SortBy,
    pub totals: Row,
    pub ring_drops: u64,
    pub lost_lines: u64,
    /// Whether the daemon reports GPUs: the GPU columns are shown.
    pub gpu: bool,
    pub rows: Vec<Row>,
}

/// One GPU process's use, with its group under each grouping.
#[derive(Debug)]
struct GpuUse {
    keys: [Option<String>; GroupBy::ALL.len()],
    memory: Option<u64>,
    sm: Option<f64>,
}

#[derive(Debug, Default)]
pub struct Model {
    entries: HashMap<u64, Entry>,
    sample: u64,
    seconds: f64,
    /// The last GPU answer's processes; None: no GPUs (or telemetry off).
    gpu: Option<Vec<GpuUse>>,
}

impl Model {
    /// Takes a new answer, `seconds` after the previous one.
    pub fn sample(&mut self, conns: &[Connection], seconds: f64) {
        let first = self.sample;
        self.sample += 1;
        self.seconds = seconds;
        let mut next = HashMap::with_capacity(conns.len());
        for c in conns {
            let first = self.entries.remove(&c.id).map_or(first, |e| e.first);
            let entry = Entry {
                keys: GroupBy::ALL.map(|g| g.key(c)),
                open: matches!(c.state, ConnState::Connecting | ConnState::Established),
                failed: c.state == ConnState::Failed,
                denied: c.verdict != Verdict::Allow,
                first,
            };
            next.insert(c.id, entry);
        }
        // Ids the table no longer holds are forgotten: memory stays the table's size.
        self.entries = next;
    }

    /// Takes the processes of a GPU answer; None when the daemon has no
    /// GPU telemetry or no GPU.
    pub fn gpu(&mut self, processes: Option<&[GpuProcess]>) {
        self.gpu = processes.map(|ps| {
            ps.iter()
                .map(|g| GpuUse {
                    keys: GroupBy::ALL.map(|by| match &g.process {
                        Some(p) => by.process_key(p, None),
                        None => (by != GroupBy::Destination).then(|| format!("(exited)[{}]", g.pid)),
                    }),
                    memory: g.memory_bytes,
                    sm: g.sm_utilization,
                })
                .collect()
        });
    }

    pub fn frame(&self, by: GroupBy, sort: SortBy, stats: &Stats) -> Frame {
        let latest = self.sample.saturating_sub(1);
        let slot = GroupBy::ALL.iter().position(|g| *g == by).unwrap_or(0);
        let mut groups: HashMap<&str, Row> = HashMap::new();
        let mut totals = Row {
            group: "total".into(),
            ..Row::default()
        };
        for e in self.entries.values() {
            let row = groups.entry(&e.keys[slot]).or_default();
            for r in [&mut *row, &mut totals] {
                r.total += 1;
                r.open += u64::from(e.open);
                r.failed += u64::from(e.failed);
                r.denied += u64::from(e.denied);
                if e.first == latest && latest > 0 && self.seconds > 0.0 {
                    r.rate += 1.0 / self.seconds;
                }
            }
        }
        for g in self.gpu.iter().flatten() {
            let Some(key) = &g.keys[slot] else { continue };
            let row = groups.entry(key).or_default();
            for r in [&mut *row, &mut totals] {
                r.gpu_memory_bytes = Some(r.gpu_memory_bytes.unwrap_or(0) + g.memory.unwrap_or(0));
                r.gpu_sm = match (r.gpu_sm, g.sm) {
                    (a, None) => a,
                    (a, Some(b)) => Some(a.unwrap_or(0.0) + b),
                };
            }
        }
        let mut rows: Vec<Row> = groups
            .into_iter()
            .map(|(k, mut r)| {
                r.group = k.to_string();
                r
            })
            .collect();
        rows.sort_by(|a, b| order(sort, a, b).then_with(|| a.group.cmp(&b.group)));
        Frame {
            by,
            sort,
            totals,
            ring_drops: stats.kernel.drops,
            lost_lines: stats.sinks.iter().map(|s| s.lost).sum(),
            gpu: self.gpu.is_some(),
            rows,
        }
    }
}

/// Largest first for numbers, alphabetical for names.
fn order(sort: SortBy, a: &Row, b: &Row) -> std::cmp::Ordering {
    match sort {
        SortBy::Rate => b.rate.total_cmp(&a.rate),
        SortBy::Open => b.open.cmp(&a.open),
        SortBy::Total => b.total.cmp(&a.total),
        SortBy::Failed => b.failed.cmp(&a.failed),
        SortBy::Denied => b.denied.cmp(&a.denied),
        SortBy::Name => a.group.cmp(&b.group),
    }
}

impl Frame {
    /// The header lines and the table, at most `rows` table rows.
    pub fn render(&self, rows: usize, colour: bool) -> String {
        let t = &self.totals;
        let mut s = format!(
            "connections/s {:.1}  open {}  in table {}  failed {}  denied {}  ring drops {}  lost lines {}\n\
             by {} (g), sorted by {} (s); q quits\n\n",
            t.rate,
            t.open,
            t.total,
            t.failed,
            t.denied,
            self.ring_drops,
            self.lost_lines,
            self.by.heading().to_ascii_lowercase(),
            format!("{:?}", self.sort).to_ascii_lowercase(),
        );
        let mut header = vec![self.by.heading(), "CONN/S", "OPEN", "TOTAL", "FAILED", "DENIED"];
        if self.gpu {
            header.extend(["GPU-MEM", "GPU-SM"]);
        }
        let mut table = Table::new(&header).right_aligned(&[1, 2, 3, 4, 5, 6, 7]);
        for r in self.rows.iter().take(rows) {
            let red = |n: u64| (n.to_string(), (n > 0).then_some(Paint::Red));
            let mut row = vec![
                cell(r.group.clone()),
                cell(format!("{:.1}", r.rate)),
                cell(r.open.to_string()),
                cell(r.total.to_string()),
                red(r.failed),
                red(r.denied),
            ];
            if self.gpu {
                row.push(cell(
                    r.gpu_memory_bytes.map_or_else(|| "-".into(), crate::gpu::bytes),
                ));
                row.push(cell(crate::gpu::percent(r.gpu_sm)));
            }
            table.row(row);
        }
        s.push_str(&table.render(colour));
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conn(id: u64, comm: &str, state: &str) -> Connection {
        serde_json::from_value(serde_json::json!({
            "id": id, "cookie": id, "protocol": "tcp", "state": state,
            "fail_reason": null, "verdict": "allow", "dst": "10.0.0.1:443",
            "src": null, "host_id": null, "config_epoch": 1, "host": null, "label": null,
            "started": "2026-01-01T00:00:00Z", "duration_ns": null,
            "bytes_sent": null, "bytes_received": null,
            "process": {"pid": 7, "tid": 7, "ppid": 1, "uid": 0, "user": "root",
                "comm": comm, "exe": null, "argv": [], "cgroup_id": 9, "cgroup": null,
                "unit": null, "user_unit": null, "slice": null, "container_runtime": null,
                "container_id": null, "pod_uid": null}
        }))
        .unwrap()
    }

    #[test]
    fn rates_count_only_connections_new_since_the_last_sample() {
        let mut m = Model::default();
        m.sample(&[conn(1, "curl", "established")], 1.0);
        let f = m.frame(GroupBy::Process, SortBy::Rate, &Stats::default());
        assert_eq!(f.totals.rate, 0.0, "what was there at start is no rate");
        m.sample(
            &[
                conn(1, "curl", "closed"),
                conn(2, "wget", "failed"),
                conn(3, "wget", "connecting"),
            ],
            0.5,
        );
        let f = m.frame(GroupBy::Process, SortBy::Rate, &Stats::default());
        assert_eq!(f.rows[0].group, "wget[7]");
        assert_eq!((f.rows[0].rate, f.rows[0].open, f.rows[0].failed), (4.0, 1, 1));
        assert_eq!((f.totals.total, f.totals.open), (3, 1));
        let by_name = m.frame(GroupBy::Process, SortBy::Name, &Stats::default());
        assert_eq!(by_name.rows[0].group, "curl[7]");
        assert_eq!(next(&GroupBy::ALL, GroupBy::Destination), GroupBy::Unit);
        assert!(
            !f.gpu && !f.render(10, false).contains("GPU"),
            "no GPU, no GPU columns"
        );
    }

    #[test]
    fn gpu_columns_come_with_gpus_and_sum_per_group() {
        let mut m = Model::default();
        m.sample(&[conn(1, "curl", "established")], 1.0);
        let gpu = |pid: u32, gib: u64, sm: f64, process: Option<Process>| GpuProcess {
            gpu: 0,
            uuid: "GPU-a".into(),
            gpu_instance: None,
            pid,
            memory_bytes: Some(gib << 30),
            sm_utilization: Some(sm),
            memory_utilization: None,
            process,
        };
        let mut train = conn(2, "train", "established").process.as_ref().clone();
        train.pid = 9;
        let used = [
            gpu(9, 2, 0.25, Some(train.clone())),
            gpu(9, 1, 0.25, Some(train)),
            gpu(11, 1, 0.0, None),
        ];
        m.gpu(Some(&used));
        let f = m.frame(GroupBy::Process, SortBy::Name, &Stats::default());
        assert!(f.gpu);
        let rows: Vec<_> = f
            .rows
            .iter()
            .map(|r| (r.group.as_str(), r.gpu_memory_bytes, r.gpu_sm))
            .collect();
        assert_eq!(
            rows,
            [
                ("(exited)[11]", Some(1 << 30), Some(0.0)),
                ("curl[7]", None, None),
                ("train[9]", Some(3 << 30), Some(0.5)),
            ]
        );
        let text = f.render(10, false);
        assert!(
            text.contains("GPU-MEM") && text.contains("3.0 GiB") && text.contains("50%"),
            "{text}"
        );
        let by_dest = m.frame(GroupBy::Destination, SortBy::Name, &Stats::default());
        assert!(by_dest.rows.iter().all(|r| r.gpu_memory_bytes.is_none()));
        m.gpu(None);
        assert!(!m.frame(GroupBy::Unit, SortBy::Name, &Stats::default()).gpu);
    }
}
