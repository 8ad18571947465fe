//! One sink's writer thread: takes everything queued at once, formats it
//! into one buffer and writes it with one write (the journal: one datagram
//! per line, as its protocol wants). Only this thread ever blocks on the
//! sink.

use std::io::Write as _;
use std::sync::atomic::Ordering;
use std::sync::{mpsc, Arc};
use std::time::Instant;

use tracing::error;

use super::file::RotatingFile;
use super::format::{batch, Formatter};
use super::journal::Journal;
use super::otlp::{Delivery, Exporter};
use super::Counters;
use super::WatchEvent;
use crate::config::{LogFormat, SinkKind};

/// One sink's events of one drained batch.
#[derive(Debug)]
pub(super) struct Chunk {
    events: Arc<Vec<WatchEvent>>,
    /// The events taken, by index; None: all of them.
    picked: Option<Vec<u32>>,
}

impl Chunk {
    /// A sink that takes most of a batch shares it; one that takes few
    /// gets its own copies, so that a queue of sparse picks cannot hold
    /// whole batches alive (memory stays within twice the queued lines).
    pub fn new(batch: &Arc<Vec<WatchEvent>>, picked: Vec<u32>) -> Self {
        if picked.len() == batch.len() {
            return Self {
                events: batch.clone(),
                picked: None,
            };
        }
        if picked.len() * 2 >= batch.len() {
            return Self {
                events: batch.clone(),
                picked: Some(picked),
            };
        }
        let own = picked.iter().map(|&i| batch[i as usize].clone()).collect();
        Self {
            events: Arc::new(own),
            picked: None,
        }
    }

    pub fn len(&self) -> usize {
        self.picked.as_ref().map_or(self.events.len(), Vec::len)
    }

    pub fn iter(&self) -> impl Iterator<Item = &WatchEvent> + '_ {
        let all = self.picked.is_none().then(|| self.events.iter());
        let some = self.picked.iter().flatten().map(|&i| &self.events[i as usize]);
        all.into_iter().flatten().chain(some)
    }
}

/// The events of several chunks, in order.
pub(super) fn each(chunks: &[Chunk]) -> impl Iterator<Item = &WatchEvent> + '_ {
    chunks.iter().flat_map(Chunk::iter)
}

#[derive(Debug)]
pub(super) enum Msg {
    Lines(Chunk),
    /// The output changed in a reload; applied in order with the lines.
    Configure(SinkKind),
    /// SIGHUP: reopen files.
    Reopen,
}

/// What one write achieved: lines written, and the error that cost the rest.
pub(super) struct Outcome {
    pub written: u64,
    pub error: Option<String>,
}

enum Output {
    Stdout(LogFormat),
    Journal(Journal),
    File(RotatingFile),
    Otlp(Box<Exporter>),
    Discard,
}

impl Output {
    fn new(kind: SinkKind) -> Self {
        match kind {
            SinkKind::Stdout { format } => Output::Stdout(format.unwrap_or(LogFormat::Text)),
            SinkKind::Journal => Output::Journal(Journal::new()),
            SinkKind::File(f) => Output::File(RotatingFile::new(f)),
            SinkKind::Otlp(o) => Output::Otlp(Box::new(Exporter::new(o))),
            SinkKind::Discard => Output::Discard,
        }
    }

    /// A reload changed the output. An exporter's held lines go to its new
    /// endpoint; another type of output cannot take them, so they are lost.
    fn reconfigure(self, kind: SinkKind) -> (Self, Delivery) {
        match (self, kind) {
            (Output::Otlp(old), SinkKind::Otlp(o)) => {
                (Output::Otlp(Exporter::reconfigured(old, o)), Delivery::default())
            }
            (Output::Otlp(old), kind) => {
                let lost = Delivery {
                    lost: old.held(),
                    ..Delivery::default()
                };
                (Output::new(kind), lost)
            }
            (_, kind) => (Output::new(kind), Delivery::default()),
        }
    }

    /// Writes the lines (an exporter takes them over, and may hold some).
    fn write(&mut self, f: &mut Formatter, lines: &mut Vec<Chunk>, buf: &mut Buffers) -> Delivery {
        let n = lines.iter().map(Chunk::len).sum::<usize>() as u64;
        let o = match self {
            Output::Stdout(format) => {
                batch(
                    f,
                    *format == LogFormat::Json,
                    each(lines),
                    &mut buf.bytes,
                    &mut buf.ends,
                );
                let mut out = std::io::stdout().lock();
                match out.write_all(&buf.bytes).and_then(|()| out.flush()) {
                    Ok(()) => Outcome {
                        written: n,
                        error: None,
                    },
                    Err(e) => Outcome {
                        written: 0,
                        error: Some(format!("stdout: {e}")),
                    },
                }
            }
            Output::File(file) => {
                batch(f, true, each(lines), &mut buf.bytes, &mut buf.ends);
                file.write_lines(&buf.bytes, &buf.ends)
            }
            Output::Journal(j) => j.write(f, each(lines)),
            Output::Otlp(x) => return x.take(f, lines),
            Output::Discard => Outcome {
                written: n,
                error: None,
            },
        };
        lines.clear();
        Delivery {
            written: o.written,
            lost: n - o.written,
            error: o.error,
            retrying: false,
        }
    }

    /// When lines held back for a retry are due.
    fn retry_at(&self) -> Option<Instant> {
        match self {
            Output::Otlp(x) => x.retry_at(),
            _ => None,
        }
    }

    fn retry(&mut self, f: &mut Formatter) -> Delivery {
        match self {
            Output::Otlp(x) => x.retry(f),
            _ => Delivery::default(),
        }
    }

    /// The queue is closed: held lines get a last try.
    fn finish(&mut self, f: &mut Formatter) -> Delivery {
        match self {
            Output::Otlp(x) => x.finish(f),
            _ => Delivery::default(),
        }
    }

    fn reopen(&mut self) {
        if let Output::File(file) = self {
            file.reopen();
        }
    }
}

#[derive(Default)]
struct Buffers {
    bytes: Vec<u8>,
    ends: Vec<usize>,
}

pub(super) fn spawn(
    name: &str,
    kind: SinkKind,
    counters: Arc<Counters>,
    rx: mpsc::Receiver<Msg>,
) -> std::thread::JoinHandle<()> {
    let sink = name.to_string();
    std::thread::Builder::new()
        .name(format!("sink-{name}"))
        .spawn(move || {
            let mut w = Writer {
                name: &sink,
                out: Output::new(kind),
                f: Formatter::default(),
                buf: Buffers::default(),
                c: &counters,
                reported: None,
            };
            w.run(&rx);
        })
        .expect("spawning a sink writer thread")
}

/// The next message; None once the queue is closed. While lines are held
/// for a retry, the retry is made when it is due and no message comes.
fn next(w: &mut Writer<'_>, rx: &mpsc::Receiver<Msg>) -> Option<Msg> {
    loop {
        let Some(at) = w.out.retry_at() else {
            return rx.recv().ok();
        };
        match rx.recv_timeout(at.saturating_duration_since(Instant::now())) {
            Ok(msg) => return Some(msg),
            Err(mpsc::RecvTimeoutError::Disconnected) => return None,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                let d = w.out.retry(&mut w.f);
                w.account(d);
            }
        }
    }
}

struct Writer<'a> {
    name: &'a str,
    out: Output,
    f: Formatter,
    buf: Buffers,
    c: &'a Counters,
    /// The error last logged, so that each is logged when it first appears.
    reported: Option<String>,
}

impl Writer<'_> {
    fn run(&mut self, rx: &mpsc::Receiver<Msg>) {
        let mut lines: Vec<Chunk> = Vec::new();
        while let Some(first) = next(self, rx) {
            let mut next = Some(first);
            // Everything queued now is one batch; a change of output ends it.
            while let Some(msg) = next.take() {
                match msg {
                    Msg::Lines(chunk) => lines.push(chunk),
                    Msg::Configure(kind) => {
                        self.write(&mut lines);
                        let out = std::mem::replace(&mut self.out, Output::Discard);
                        let (out, d) = out.reconfigure(kind);
                        self.out = out;
                        self.account(d);
                    }
                    Msg::Reopen => {
                        self.write(&mut lines);
                        self.out.reopen();
                    }
                }
                next = rx.try_recv().ok();
            }
            self.write(&mut lines);
        }
        let d = self.out.finish(&mut self.f);
        self.account(d);
    }

    fn write(&mut self, lines: &mut Vec<Chunk>) {
        if lines.is_empty() {
            return;
        }
        let d = self.out.write(&mut self.f, lines, &mut self.buf);
        self.account(d);
    }

    /// Counts what an attempt delivered or lost (the rest stays queued);
    /// an error is logged when it first appears (not once per batch) and
    /// kept for `tracectl stats`.
    fn account(&mut self, d: Delivery) {
        let (c, name) = (self.c, self.name);
        c.written.fetch_add(d.written, Ordering::Relaxed);
        c.lost.fetch_add(d.lost, Ordering::Relaxed);
        c.queued.fetch_sub(d.written + d.lost, Ordering::Relaxed);
        match d.error {
            Some(e) => {
                c.errors.fetch_add(1, Ordering::Relaxed);
                if self.reported.as_ref() != Some(&e) {
                    let then = if d.retrying {
                        "its lines stay queued, up to its bound, and are sent again"
                    } else {
                        "its lines are lost until it recovers"
                    };
                    error!(sink = name, "event sink {name}: {e}; {then}");
                    self.reported = Some(e.clone());
                }
                c.set_error(Some(e));
            }
            None if self.reported.is_some() && d.written > 0 => {
                tracing::info!(sink = name, "event sink {name} writes again");
                self.reported = None;
                c.set_error(None);
            }
            None => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sinks::format::tests::event;
    use crate::sinks::EventKind;

    fn batch(n: u64) -> Arc<Vec<WatchEvent>> {
        Arc::new(
            (0..n)
                .map(|i| {
                    let mut e = event(EventKind::Connect);
                    e.connection.id = i;
                    e
                })
                .collect(),
        )
    }

    fn ids(c: &Chunk) -> Vec<u64> {
        c.iter().map(|e| e.connection.id).collect()
    }

    #[test]
    fn chunks_share_a_batch_they_mostly_take_and_copy_sparse_picks() {
        let b = batch(10);
        let all = Chunk::new(&b, (0..10).collect());
        assert!(Arc::ptr_eq(&all.events, &b) && all.picked.is_none());
        assert_eq!(ids(&all), (0..10).collect::<Vec<_>>());

        let most = Chunk::new(&b, vec![1, 2, 3, 5, 8]);
        assert!(Arc::ptr_eq(&most.events, &b));
        assert_eq!((most.len(), ids(&most)), (5, vec![1, 2, 3, 5, 8]));

        let few = Chunk::new(&b, vec![4, 9]);
        assert!(!Arc::ptr_eq(&few.events, &b) && few.events.len() == 2);
        assert_eq!((few.len(), ids(&few)), (2, vec![4, 9]));
        assert_eq!(
            each(&[all, most, few]).count(),
            17,
            "chunks are written in order, each whole"
        );
    }
}
