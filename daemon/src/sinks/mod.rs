//! Event sinks: where event lines go. The owner (the pipeline) matches each
//! event against every sink's filter and hands the batch over; each sink
//! has its own writer thread behind a bounded queue, so a slow or stalled
//! sink loses lines (counted, per sink) instead of stalling the daemon.

mod file;
mod filter;
mod format;
mod journal;
mod otlp;
mod writer;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use connectracer_proto::api::SinkStats;
use tracing::warn;

use crate::config::{LogConfig, SinkConfig, SinkFilter, SinkKind};
use crate::count_warning::CountWarning;
use crate::table::Connection;
use writer::Msg;

pub use crate::config::sink::EventKind;
pub use format::human_duration;

/// An event as written to sinks and streamed to watchers.
#[derive(Debug, Clone)]
pub struct WatchEvent {
    pub kind: EventKind,
    /// When it happened, from the kernel's timestamp.
    pub at: std::time::SystemTime,
    pub connection: Connection,
}

/// Counters a sink's writer and the owner share. `events` and `lost` at
/// the queue are counted by the owner, the rest by the writer, so that
/// events = written + lost + queued at every moment.
#[derive(Debug, Default)]
struct Counters {
    events: AtomicU64,
    written: AtomicU64,
    lost: AtomicU64,
    queued: AtomicU64,
    errors: AtomicU64,
    last_error: Mutex<Option<String>>,
}

impl Counters {
    fn set_error(&self, e: Option<String>) {
        if let Ok(mut last) = self.last_error.lock() {
            *last = e;
        }
    }
}

#[derive(Debug)]
struct Sink {
    config: SinkConfig,
    /// This sink's events of the batch being handled (indexes into
    /// `Sinks::batch`), handed over by `flush`.
    pending: Vec<u32>,
    tx: mpsc::Sender<Msg>,
    counters: Arc<Counters>,
    writer: std::thread::JoinHandle<()>,
    /// Lost lines warned about, at most every 10 s.
    warned: CountWarning,
}

/// Every configured sink, owned by the pipeline.
#[derive(Debug)]
pub struct Sinks {
    sinks: Vec<Sink>,
    /// Events of the drain being handled that some sink takes: copied
    /// once, shared by every sink that takes them, and freed in one piece
    /// (an allocation per event, freed on another thread, was a tenth of
    /// the event path's cost).
    batch: Vec<WatchEvent>,
    /// Where the default sink goes: the journal under systemd.
    journal: bool,
}

/// The sinks a `[log]` section asks for: the `[[event_sink]]` tables, or
/// the default one; stdout's format resolved from `[log] format`.
fn wanted(log: &LogConfig, journal: bool) -> Vec<SinkConfig> {
    if !log.events {
        return Vec::new();
    }
    if log.sinks.is_empty() {
        let kind = if journal {
            SinkKind::Journal
        } else {
            SinkKind::Stdout { format: None }
        };
        return vec![SinkConfig {
            name: kind.as_str().to_string(),
            kind,
            queue: crate::config::sink::DEFAULT_QUEUE,
            filter: SinkFilter::default(),
        }];
    }
    log.sinks.clone()
}

fn resolve(mut s: SinkConfig, log: &LogConfig) -> SinkConfig {
    if let SinkKind::Stdout { format: None } = s.kind {
        s.kind = SinkKind::Stdout {
            format: Some(log.format),
        };
    }
    s
}

impl Sinks {
    pub fn new(log: &LogConfig, journal: bool) -> Self {
        let mut s = Self {
            sinks: Vec::new(),
            batch: Vec::new(),
            journal,
        };
        s.configure(log);
        s
    }

    /// Applies a (re)loaded `[log]`: sinks are kept by name with their
    /// counters and queue; a changed output is reopened by its writer, in
    /// order with the lines queued before it.
    pub fn configure(&mut self, log: &LogConfig) {
        let mut old = std::mem::take(&mut self.sinks);
        for want in wanted(log, self.journal) {
            let want = resolve(want, log);
            match old.iter().position(|s| s.config.name == want.name) {
                Some(i) => {
                    let mut s = old.swap_remove(i);
                    if s.config.kind != want.kind {
                        let _ = s.tx.send(Msg::Configure(want.kind.clone()));
                    }
                    s.config = want;
                    self.sinks.push(s);
                }
                None => self.sinks.push(Sink::start(want)),
            }
        }
        // Removed sinks' writers finish their queue and end when their
        // sender drops here.
    }

    /// Queues an event for every sink whose filter takes it; the event is
    /// copied only if one does.
    pub fn offer(&mut self, kind: EventKind, at: std::time::SystemTime, c: &Connection) {
        let i = self.batch.len() as u32;
        let mut taken = false;
        for s in &mut self.sinks {
            if filter::matches(&s.config.filter, kind, c) {
                s.pending.push(i);
                taken = true;
            }
        }
        if taken {
            self.batch.push(WatchEvent {
                kind,
                at,
                connection: c.clone(),
            });
        }
    }

    /// Hands each sink its share of the batch: one message per sink, and
    /// what does not fit in its queue is lost and counted.
    pub fn flush(&mut self) {
        if self.batch.is_empty() {
            return;
        }
        // Sized like this one, so the next batch is not grown by copying.
        let next = Vec::with_capacity(self.batch.len());
        let batch = Arc::new(std::mem::replace(&mut self.batch, next));
        for s in &mut self.sinks {
            s.flush(&batch);
        }
    }

    /// SIGHUP: files are reopened (after logrotate moved them).
    pub fn reopen(&self) {
        for s in &self.sinks {
            let _ = s.tx.send(Msg::Reopen);
        }
    }

    pub fn stats(&self) -> Vec<SinkStats> {
        self.sinks.iter().map(Sink::stats).collect()
    }

    /// Every second: metrics, and a warning per sink that lost lines (at
    /// most every 10 s each).
    pub fn upkeep(&mut self, now: Instant) {
        for s in &mut self.sinks {
            let st = s.stats();
            let name = st.name.clone();
            metrics::counter!("connectracer_event_lines_written_total", "sink" => name.clone())
                .absolute(st.written);
            metrics::counter!("connectracer_event_lines_lost_total", "sink" => name.clone())
                .absolute(st.lost);
            metrics::gauge!("connectracer_event_lines_queued", "sink" => name).set(st.queued as f64);
            if let Some(lost) = s.warned.check(st.lost, now) {
                warn!(
                    sink = %st.name,
                    lost,
                    lost_total = st.lost,
                    "event sink {} lost {} lines (its writer cannot keep up or fails); see tracectl stats",
                    st.name,
                    lost
                );
            }
        }
    }

    /// At stop: hands over what is pending and gives the writers until
    /// `deadline` to finish; a stalled writer is left behind, its queued
    /// lines counted as lost in the returned stats.
    pub fn shutdown(&mut self, deadline: Instant) -> Vec<SinkStats> {
        self.flush();
        let sinks = std::mem::take(&mut self.sinks);
        let mut out = Vec::new();
        for s in sinks {
            let Sink {
                config,
                tx,
                counters,
                writer,
                ..
            } = s;
            drop(tx);
            while !writer.is_finished() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(5));
            }
            let queued = counters.queued.swap(0, Ordering::Relaxed);
            counters.lost.fetch_add(queued, Ordering::Relaxed);
            out.push(stats_of(&config, &counters));
        }
        out
    }
}

impl Sink {
    fn start(config: SinkConfig) -> Self {
        let counters = Arc::new(Counters::default());
        let (tx, rx) = mpsc::channel();
        let writer = writer::spawn(&config.name, config.kind.clone(), counters.clone(), rx);
        Self {
            config,
            pending: Vec::new(),
            tx,
            counters,
            writer,
            warned: CountWarning::new(0),
        }
    }

    fn flush(&mut self, batch: &Arc<Vec<WatchEvent>>) {
        if self.pending.is_empty() {
            return;
        }
        let c = &self.counters;
        let n = self.pending.len() as u64;
        c.events.fetch_add(n, Ordering::Relaxed);
        let queued = c.queued.load(Ordering::Relaxed);
        let room = (self.config.queue as u64).saturating_sub(queued);
        if n > room {
            self.pending.truncate(room as usize);
            c.lost.fetch_add(n - room, Ordering::Relaxed);
        }
        if self.pending.is_empty() {
            return;
        }
        let next = Vec::with_capacity(self.pending.len());
        let picked = std::mem::replace(&mut self.pending, next);
        let chunk = writer::Chunk::new(batch, picked);
        let len = chunk.len() as u64;
        c.queued.fetch_add(len, Ordering::Relaxed);
        if self.tx.send(Msg::Lines(chunk)).is_err() {
            // The writer is gone (it panicked): nothing will write these.
            c.queued.fetch_sub(len, Ordering::Relaxed);
            c.lost.fetch_add(len, Ordering::Relaxed);
        }
    }

    fn stats(&self) -> SinkStats {
        stats_of(&self.config, &self.counters)
    }
}

fn stats_of(config: &SinkConfig, c: &Counters) -> SinkStats {
    SinkStats {
        name: config.name.clone(),
        kind: config.kind.as_str().to_string(),
        events: c.events.load(Ordering::Relaxed),
        written: c.written.load(Ordering::Relaxed),
        lost: c.lost.load(Ordering::Relaxed),
        queued: c.queued.load(Ordering::Relaxed),
        errors: c.errors.load(Ordering::Relaxed),
        last_error: c.last_error.lock().ok().and_then(|e| e.clone()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::LogFormat;

    fn log(sinks: Vec<SinkConfig>) -> LogConfig {
        LogConfig {
            format: LogFormat::Json,
            events: true,
            sinks,
        }
    }

    fn discard(name: &str, queue: usize, events: Option<Vec<EventKind>>) -> SinkConfig {
        SinkConfig {
            name: name.into(),
            kind: SinkKind::Discard,
            queue,
            filter: SinkFilter {
                events,
                ..SinkFilter::default()
            },
        }
    }

    fn offer(s: &mut Sinks, kind: EventKind) {
        let ev = format::tests::event(kind);
        s.offer(kind, ev.at, &ev.connection);
    }

    fn settled(s: &Sinks, name: &str) -> SinkStats {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let st = s.stats().into_iter().find(|s| s.name == name).unwrap();
            if st.queued == 0 || Instant::now() > deadline {
                return st;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    #[test]
    fn a_full_queue_loses_lines_and_counts_them_exactly() {
        let mut s = Sinks::new(&log(vec![discard("tiny", 3, None)]), false);
        for _ in 0..10 {
            offer(&mut s, EventKind::Connect);
        }
        s.flush();
        let st = settled(&s, "tiny");
        assert_eq!((st.events, st.written, st.lost, st.queued), (10, 3, 7, 0));
    }

    #[test]
    fn filters_pick_and_reloads_keep_counters_by_name() {
        let mut s = Sinks::new(
            &log(vec![
                discard("closed", 100, Some(vec![EventKind::Closed])),
                discard("all", 100, None),
            ]),
            false,
        );
        for k in [EventKind::Connect, EventKind::Closed, EventKind::Closed] {
            offer(&mut s, k);
        }
        s.flush();
        assert_eq!(settled(&s, "closed").written, 2);
        // "all" goes, "closed" stays with its counters, "new" comes.
        s.configure(&log(vec![
            discard("closed", 100, None),
            discard("new", 100, None),
        ]));
        offer(&mut s, EventKind::Connect);
        s.flush();
        let names: Vec<String> = s.stats().into_iter().map(|s| s.name).collect();
        assert_eq!(names, ["closed", "new"]);
        assert_eq!(settled(&s, "closed").written, 3);
        assert_eq!(settled(&s, "new").written, 1);
    }

    #[test]
    fn a_reload_that_moves_a_file_sink_writes_on_in_the_new_file() {
        let dir = std::env::temp_dir().join(format!("connectracer-unit-move-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let file = |name: &str| SinkConfig {
            name: "f".into(),
            kind: SinkKind::File(crate::config::FileSink {
                path: dir.join(name),
                max_size: 1 << 20,
                keep: 1,
                compress: false,
            }),
            queue: 100,
            filter: SinkFilter::default(),
        };
        let mut s = Sinks::new(&log(vec![file("a.jsonl")]), false);
        offer(&mut s, EventKind::Connect);
        s.flush();
        // Queued behind the first line: the move applies after it.
        s.configure(&log(vec![file("b.jsonl")]));
        offer(&mut s, EventKind::Closed);
        s.flush();
        assert_eq!(settled(&s, "f").written, 2);
        let read = |n: &str| std::fs::read_to_string(dir.join(n)).unwrap();
        assert!(read("a.jsonl").contains("\"event\":\"connect\""));
        assert!(read("b.jsonl").contains("\"event\":\"closed\""));
        assert_eq!(
            read("a.jsonl").lines().count() + read("b.jsonl").lines().count(),
            2
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_default_sink_follows_the_journal_and_events_false_turns_all_off() {
        let stdout = Sinks::new(&log(Vec::new()), false);
        assert_eq!(stdout.stats()[0].kind, "stdout");
        let journal = Sinks::new(&log(Vec::new()), true);
        assert_eq!(journal.stats()[0].kind, "journal");
        let mut off = log(vec![discard("x", 1, None)]);
        off.events = false;
        assert!(Sinks::new(&off, false).stats().is_empty());
    }
}
