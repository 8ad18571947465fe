//! What `tracectl top` shows, computed from successive `Connections`
//! answers: each connection is remembered by id while the daemon's table
//! holds it, so rates count ids seen for the first time, and a new grouping
//! or order applies at once to everything remembered.

use std::collections::HashMap;

use connectracer_proto::api::Stats;
use connectracer_proto::{ConnState, Connection, Verdict};
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

    fn key(self, c: &Connection) -> String {
        let p = &c.process;
        match self {
            Self::Unit => p
                .unit
                .clone()
                .or_else(|| p.user_unit.clone())
                .unwrap_or_else(|| "-".into()),
            // The runtime's name once it answered, the short id until then.
            Self::Container => c.container.container_name.clone().unwrap_or_else(|| {
                p.container_id
                    .as_deref()
                    .map_or_else(|| "(host)".into(), |id| crate::output::short_id(id).to_string())
            }),
            Self::Pod => c.container.pod().unwrap_or_else(|| "-".into()),
            Self::Process => format!("{}[{}]", p.comm, p.pid),
            Self::Destination => c
                .label
                .clone()
                .or_else(|| c.host.clone())
                .or_else(|| c.dns_name.clone())
                .map_or_else(|| c.dst.to_string(), |n| format!("{n}:{}", c.dst.port())),
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
}

/// One view: the totals line, the counters of the header and the rows.
#[derive(Debug, Clone, Serialize)]
pub struct Frame {
    pub by: GroupBy,
    pub sort: SortBy,
    pub totals: Row,
    pub ring_drops: u64,
    pub lost_lines: u64,
    pub rows: Vec<Row>,
}

#[derive(Debug, Default)]
pub struct Model {
    entries: HashMap<u64, Entry>,
    sample: u64,
    seconds: f64,
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
        let mut table = Table::new(&[self.by.heading(), "CONN/S", "OPEN", "TOTAL", "FAILED", "DENIED"])
            .right_aligned(&[1, 2, 3, 4, 5]);
        for r in self.rows.iter().take(rows) {
            let red = |n: u64| (n.to_string(), (n > 0).then_some(Paint::Red));
            table.row(vec![
                cell(r.group.clone()),
                cell(format!("{:.1}", r.rate)),
                cell(r.open.to_string()),
                cell(r.total.to_string()),
                red(r.failed),
                red(r.denied),
            ]);
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
    }
}
