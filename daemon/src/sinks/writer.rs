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

#[derive(Debug)]
pub(super) enum Msg {
    Lines(Vec<Arc<WatchEvent>>),
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

    fn write(&mut self, f: &mut Formatter, events: &[Arc<WatchEvent>], buf: &mut Buffers) -> Outcome {
        let n = events.len() as u64;
        match self {
            Output::Stdout(format) => {
                batch(
                    f,
                    *format == LogFormat::Json,
                    events,
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
                batch(f, true, events, &mut buf.bytes, &mut buf.ends);
                file.write_lines(&buf.bytes, &buf.ends)
            }
            Output::Journal(j) => j.write(f, events),
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
    let mut lines: Vec<Arc<WatchEvent>> = Vec::new();
    let mut reported: Option<String> = None;
    while let Ok(first) = rx.recv() {
        let mut next = Some(first);
        // Everything queued now is one batch; a change of output ends it.
        while let Some(msg) = next.take() {
            match msg {
                Msg::Lines(mut l) => {
                    if lines.is_empty() {
                        lines = l;
                    } else {
                        lines.append(&mut l);
                    }
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
    lines: &mut Vec<Arc<WatchEvent>>,
    buf: &mut Buffers,
    c: &Counters,
    reported: &mut Option<String>,
) {
    if lines.is_empty() {
        return;
    }
    let n = lines.len() as u64;
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
