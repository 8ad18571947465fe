//! One sink's writer thread: takes everything queued at once, formats it
//! into one buffer and writes it with one write (the journal: one datagram
//! per line, as its protocol wants). Only this thread ever blocks on the
//! sink.

use std::io::Write as _;
use std::sync::atomic::Ordering;
use std::sync::{mpsc, Arc};

use tracing::error;

use super::file::RotatingFile;
use super::format::{batch, Formatter};
use super::journal::Journal;
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
    Discard,
}

impl Output {
    fn new(kind: SinkKind) -> Self {
        match kind {
            SinkKind::Stdout { format } => Output::Stdout(format.unwrap_or(LogFormat::Text)),
            SinkKind::Journal => Output::Journal(Journal::new()),
            SinkKind::File(f) => Output::File(RotatingFile::new(f)),
            SinkKind::Discard => Output::Discard,
        }
    }

    fn write(&mut self, f: &mut Formatter, events: &[Chunk], buf: &mut Buffers) -> Outcome {
        let n = events.iter().map(Chunk::len).sum::<usize>() as u64;
        match self {
            Output::Stdout(format) => {
                batch(
                    f,
                    *format == LogFormat::Json,
                    each(events),
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
                batch(f, true, each(events), &mut buf.bytes, &mut buf.ends);
                file.write_lines(&buf.bytes, &buf.ends)
            }
            Output::Journal(j) => j.write(f, each(events)),
            Output::Discard => Outcome {
                written: n,
                error: None,
            },
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
        .spawn(move || run(&sink, Output::new(kind), &counters, &rx))
        .expect("spawning a sink writer thread")
}

fn run(name: &str, mut out: Output, c: &Counters, rx: &mpsc::Receiver<Msg>) {
    let mut f = Formatter::default();
    let mut buf = Buffers::default();
    let mut lines: Vec<Chunk> = Vec::new();
    let mut reported: Option<String> = None;
    while let Ok(first) = rx.recv() {
        let mut next = Some(first);
        // Everything queued now is one batch; a change of output ends it.
        while let Some(msg) = next.take() {
            match msg {
                Msg::Lines(chunk) => {
                    lines.push(chunk);
                    next = rx.try_recv().ok();
                }
                Msg::Configure(kind) => {
                    write(name, &mut out, &mut f, &mut lines, &mut buf, c, &mut reported);
                    out = Output::new(kind);
                    next = rx.try_recv().ok();
                }
                Msg::Reopen => {
                    write(name, &mut out, &mut f, &mut lines, &mut buf, c, &mut reported);
                    out.reopen();
                    next = rx.try_recv().ok();
                }
            }
        }
        write(name, &mut out, &mut f, &mut lines, &mut buf, c, &mut reported);
    }
}

/// Writes and counts a batch; an error is logged when it first appears
/// (not once per batch) and kept for `tracectl stats`.
fn write(
    name: &str,
    out: &mut Output,
    f: &mut Formatter,
    lines: &mut Vec<Chunk>,
    buf: &mut Buffers,
    c: &Counters,
    reported: &mut Option<String>,
) {
    if lines.is_empty() {
        return;
    }
    let n = lines.iter().map(Chunk::len).sum::<usize>() as u64;
    let o = out.write(f, lines, buf);
    lines.clear();
    c.written.fetch_add(o.written, Ordering::Relaxed);
    c.lost.fetch_add(n - o.written, Ordering::Relaxed);
    c.queued.fetch_sub(n, Ordering::Relaxed);
    match o.error {
        Some(e) => {
            c.errors.fetch_add(1, Ordering::Relaxed);
            if reported.as_ref() != Some(&e) {
                error!(
                    sink = name,
                    "event sink {name}: {e}; its lines are lost until it recovers"
                );
                *reported = Some(e.clone());
            }
            c.set_error(Some(e));
        }
        None if reported.is_some() => {
            tracing::info!(sink = name, "event sink {name} writes again");
            *reported = None;
            c.set_error(None);
        }
        None => {}
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
