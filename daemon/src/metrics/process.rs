//! The standard `process_*` metrics of the Prometheus client libraries,
//! read from /proc/self when the exposition is rendered. Rendered as text
//! rather than through the `metrics` recorder: its counters are integers,
//! and CPU seconds cut to whole seconds said 0 for a daemon that had used
//! 0.41 s.

use std::fmt::Write;

/// What /proc says of this process now.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
pub struct Sample {
    pub cpu_seconds: f64,
    pub resident_bytes: f64,
    pub virtual_bytes: f64,
    pub start_time_seconds: f64,
    pub open_fds: Option<f64>,
    pub max_fds: Option<f64>,
}

fn sysconf(var: nix::unistd::SysconfVar, default: i64) -> f64 {
    nix::unistd::sysconf(var).ok().flatten().unwrap_or(default) as f64
}

/// Boot time in unix seconds, from the `btime` line of /proc/stat.
fn boot_time() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    stat.lines()
        .find_map(|l| l.strip_prefix("btime "))
        .and_then(|v| v.trim().parse().ok())
}

/// Parses the fields of /proc/PID/stat after the command name (which may
/// hold spaces and parentheses, hence the last `) `).
pub fn parse_stat(stat: &str, ticks: f64, page: f64, boot: f64) -> Option<Sample> {
    let (_, rest) = stat.rsplit_once(") ")?;
    let f: Vec<&str> = rest.split(' ').collect();
    let num = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok());
    // Numbered from `state`, field 3 of proc(5): utime 14, stime 15,
    // starttime 22 (ticks since boot), vsize 23 (bytes), rss 24 (pages).
    Some(Sample {
        cpu_seconds: (num(11)? + num(12)?) / ticks,
        start_time_seconds: boot + num(19)? / ticks,
        virtual_bytes: num(20)?,
        resident_bytes: num(21)? * page,
        open_fds: None,
        max_fds: None,
    })
}

pub fn sample() -> Option<Sample> {
    use nix::unistd::SysconfVar;
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let ticks = sysconf(SysconfVar::CLK_TCK, 100);
    let page = sysconf(SysconfVar::PAGE_SIZE, 4096);
    let mut s = parse_stat(&stat, ticks, page, boot_time()?)?;
    s.open_fds = std::fs::read_dir("/proc/self/fd").ok().map(|d| d.count() as f64);
    s.max_fds = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
        .ok()
        .map(|(soft, _)| soft as f64);
    Some(s)
}

/// The families in the text format, each followed by a blank line, with
/// the HELP texts of the official client libraries.
pub fn exposition(s: &Sample) -> String {
    let mut out = String::new();
    let mut family = |name: &str, kind: &str, help: &str, value: Option<f64>| {
        if let Some(v) = value {
            let _ = write!(out, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}\n\n");
        }
    };
    family(
        "process_cpu_seconds_total",
        "counter",
        "Total user and system CPU time spent in seconds.",
        Some(s.cpu_seconds),
    );
    family(
        "process_open_fds",
        "gauge",
        "Number of open file descriptors.",
        s.open_fds,
    );
    family(
        "process_max_fds",
        "gauge",
        "Maximum number of open file descriptors.",
        s.max_fds,
    );
    family(
        "process_virtual_memory_bytes",
        "gauge",
        "Virtual memory size in bytes.",
        Some(s.virtual_bytes),
    );
    family(
        "process_resident_memory_bytes",
        "gauge",
        "Resident memory size in bytes.",
        Some(s.resident_bytes),
    );
    family(
        "process_start_time_seconds",
        "gauge",
        "Start time of the process since unix epoch in seconds.",
        Some(s.start_time_seconds),
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_read_past_a_name_with_spaces_and_parentheses() {
        // pid (comm) state ppid pgrp session tty tpgid flags minflt cminflt
        // majflt cmajflt utime stime cutime cstime prio nice threads
        // itrealvalue starttime vsize rss ...
        let stat = "42 (a) b (c) S 1 42 42 0 -1 4194560 100 0 0 0 41 7 0 0 20 0 3 0 1500 123456789 2500 18446744073709551615";
        let s = parse_stat(stat, 100.0, 4096.0, 1_700_000_000.0).unwrap();
        assert!((s.cpu_seconds - 0.48).abs() < 1e-9, "{s:?}");
        assert_eq!(s.start_time_seconds, 1_700_000_015.0);
        assert_eq!(s.virtual_bytes, 123_456_789.0);
        assert_eq!(s.resident_bytes, 2500.0 * 4096.0);
        assert!(parse_stat("42 (a) S 1", 100.0, 4096.0, 0.0).is_none());
    }

    #[test]
    fn this_process_is_sampled_with_fractional_cpu_seconds() {
        let s = sample().expect("/proc/self");
        assert!(s.open_fds.unwrap() >= 3.0 && s.max_fds.unwrap() >= s.open_fds.unwrap());
        let text = exposition(&Sample {
            cpu_seconds: 0.41,
            ..s
        });
        assert!(
            text.contains("# TYPE process_cpu_seconds_total counter\nprocess_cpu_seconds_total 0.41\n"),
            "{text}"
        );
        assert!(text.contains("\nprocess_start_time_seconds "));
    }
}
