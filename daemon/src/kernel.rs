//! The one thread that owns the kernel state: it loads and attaches the BPF
//! programs, drains the ring buffer and applies map updates. Everything else
//! talks to it through `KernelHandle`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc as std_mpsc, Arc};
use std::thread::JoinHandle;
use std::time::Duration;

use libbpf_rs::RingBufferBuilder;
use tokio::sync::{mpsc, oneshot};

use crate::bpf::event::Record;
use crate::bpf::layout::Ruleset;
use crate::bpf::pins::Adoption;
use crate::bpf::profile::RawProfile;
use crate::bpf::stats::KernelStats;
use crate::bpf::tracer::{Tracer, TracerError, TracerOptions};

/// The kernel only wakes the reader past a fill threshold; this bounds how
/// long a trickle of events waits in the ring.
const DRAIN_INTERVAL: Duration = Duration::from_millis(10);

#[derive(Debug)]
enum Command {
    Stats(oneshot::Sender<Result<KernelStats, String>>),
    Apply(Ruleset, oneshot::Sender<Result<u32, String>>),
    /// A cgroup that appeared after the last apply joins a policy scope.
    AddCgroupScope {
        cgroup_id: u64,
        scope: u32,
    },
    /// Starts a syscall profile; the reply is its slot.
    ProfileStart {
        cgroup_id: u64,
        level: u32,
        armed: bool,
        reply: oneshot::Sender<Result<usize, String>>,
    },
    ProfileStop {
        slot: usize,
        reply: oneshot::Sender<Result<RawProfile, String>>,
    },
    /// Final drain; then detach and unpin unless `keep_pinned`.
    Shutdown {
        keep_pinned: bool,
        reply: oneshot::Sender<Result<KernelStats, String>>,
    },
}

#[derive(Debug)]
pub struct KernelHandle {
    commands: std_mpsc::Sender<Command>,
    thread: Option<JoinHandle<()>>,
    decode_errors: Arc<AtomicU64>,
    /// What this start re-adopted from an earlier instance's pins.
    pub adoption: Adoption,
}

#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    #[error(transparent)]
    Tracer(#[from] TracerError),
    #[error("building the ring buffer reader")]
    RingBuffer(#[source] libbpf_rs::Error),
    #[error("the kernel thread exited before reporting")]
    ThreadGone,
}

impl KernelHandle {
    /// Loads and attaches everything on a new thread and returns once that
    /// succeeded or failed.
    pub fn spawn(
        opts: TracerOptions,
        initial: Ruleset,
        records: mpsc::Sender<Vec<Record>>,
    ) -> Result<Self, KernelError> {
        let (ready_tx, ready_rx) = std_mpsc::sync_channel(1);
        let (cmd_tx, cmd_rx) = std_mpsc::channel();
        let decode_errors = Arc::new(AtomicU64::new(0));
        let errors = decode_errors.clone();
        let thread = std::thread::Builder::new()
            .name("kernel".into())
            .spawn(move || run(&opts, &initial, records, &cmd_rx, &ready_tx, &errors))
            .map_err(|_| KernelError::ThreadGone)?;
        match ready_rx.recv() {
            Ok(Ok(adoption)) => Ok(Self {
                commands: cmd_tx,
                thread: Some(thread),
                decode_errors,
                adoption,
            }),
            Ok(Err(e)) => {
                let _ = thread.join();
                Err(e)
            }
            Err(_) => Err(KernelError::ThreadGone),
        }
    }

    pub fn decode_errors(&self) -> u64 {
        self.decode_errors.load(Ordering::Relaxed)
    }

    // Requests return the reply's receiver instead of awaiting it: the
    // kernel thread may be waiting for the pipeline to take a batch of
    // records, so whoever waits for a reply must keep taking records.

    /// Asks for the kernel counters.
    pub fn stats(&self) -> oneshot::Receiver<Result<KernelStats, String>> {
        let (tx, rx) = oneshot::channel();
        let _ = self.commands.send(Command::Stats(tx));
        rx
    }

    /// Asks to put a new ruleset in force atomically; the reply is its epoch.
    pub fn apply(&self, ruleset: Ruleset) -> oneshot::Receiver<Result<u32, String>> {
        let (tx, rx) = oneshot::channel();
        let _ = self.commands.send(Command::Apply(ruleset, tx));
        rx
    }

    /// Puts a new cgroup in a policy scope of the generation in force.
    pub fn add_cgroup_scope(&self, cgroup_id: u64, scope: u32) {
        let _ = self.commands.send(Command::AddCgroupScope { cgroup_id, scope });
    }

    /// Starts recording the syscalls of cgroup `cgroup_id` (at `level`)
    /// and its descendants, from the first exec in it when `armed`; the
    /// reply is the slot to stop it with.
    pub fn profile_start(
        &self,
        cgroup_id: u64,
        level: u32,
        armed: bool,
    ) -> oneshot::Receiver<Result<usize, String>> {
        let (tx, rx) = oneshot::channel();
        let _ = self.commands.send(Command::ProfileStart {
            cgroup_id,
            level,
            armed,
            reply: tx,
        });
        rx
    }

    /// Stops the profile in `slot`; the reply is what it recorded.
    pub fn profile_stop(&self, slot: usize) -> oneshot::Receiver<Result<RawProfile, String>> {
        let (tx, rx) = oneshot::channel();
        let _ = self.commands.send(Command::ProfileStop { slot, reply: tx });
        rx
    }

    /// Asks the thread to drain the ring one last time and detach. The
    /// caller must keep receiving records until the channel closes, or the
    /// final drain blocks; the returned receiver yields the final counters.
    pub fn shutdown(&mut self, keep_pinned: bool) -> oneshot::Receiver<Result<KernelStats, String>> {
        let (tx, rx) = oneshot::channel();
        let _ = self.commands.send(Command::Shutdown {
            keep_pinned,
            reply: tx,
        });
        rx
    }

    pub fn join(&mut self) {
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn run(
    opts: &TracerOptions,
    initial: &Ruleset,
    records: mpsc::Sender<Vec<Record>>,
    commands: &std_mpsc::Receiver<Command>,
    ready: &std_mpsc::SyncSender<Result<Adoption, KernelError>>,
    decode_errors: &AtomicU64,
) {
    let tracer = match Tracer::load(opts, initial) {
        Ok(t) => t,
        Err(e) => {
            let _ = ready.send(Err(e.into()));
            return;
        }
    };
    // Records are handed over one batch per drain: a channel send per record
    // would wake the pipeline's thread per record, which costs more than
    // everything else the daemon does with it.
    let batch = std::rc::Rc::new(std::cell::RefCell::new(Vec::<Record>::new()));
    let ring = match ring_reader(&tracer, batch.clone(), decode_errors) {
        Ok(r) => r,
        Err(e) => {
            let _ = ready.send(Err(e));
            return;
        }
    };
    let _ = ready.send(Ok(tracer.adoption.clone()));
    let counters = Counters::new(&tracer, opts.ring_buffer_size);
    let drain = || -> bool {
        let _ = ring.consume();
        // The next batch starts at this one's size: grown from empty, a
        // batch of thousands was copied a dozen times over.
        let mut b = batch.borrow_mut();
        let next = Vec::with_capacity(b.len());
        let full = std::mem::replace(&mut *b, next);
        drop(b);
        // A closed channel means the pipeline is gone.
        full.is_empty() || records.blocking_send(full).is_ok()
    };
    loop {
        // poll() returns early when the kernel forced a wakeup; consume()
        // then drains what the NO_WAKEUP submissions left behind.
        let _ = ring.poll(DRAIN_INTERVAL);
        if !drain() {
            return;
        }
        loop {
            match commands.try_recv() {
                Ok(Command::Shutdown { keep_pinned, reply }) => {
                    drain();
                    let _ = reply.send(counters.read(&tracer));
                    if !keep_pinned {
                        tracer.unpin_and_detach();
                    }
                    return;
                }
                Ok(command) => handle(&tracer, &counters, command),
                Err(std_mpsc::TryRecvError::Empty) => break,
                Err(std_mpsc::TryRecvError::Disconnected) => return,
            }
        }
    }
}

/// The ring buffer's reader: each record decoded into `batch`.
fn ring_reader<'a>(
    tracer: &'a Tracer,
    batch: std::rc::Rc<std::cell::RefCell<Vec<Record>>>,
    decode_errors: &'a AtomicU64,
) -> Result<libbpf_rs::RingBuffer<'a>, KernelError> {
    let mut builder = RingBufferBuilder::new();
    let cb = move |data: &[u8]| -> i32 {
        match Record::decode(data) {
            Ok(rec) => batch.borrow_mut().push(rec),
            Err(e) => {
                if decode_errors.fetch_add(1, Ordering::Relaxed) == 0 {
                    tracing::warn!("undecodable ring buffer record: {e}");
                }
            }
        }
        0
    };
    builder
        .add(tracer.events_map(), cb)
        .map_err(KernelError::RingBuffer)?;
    builder.build().map_err(KernelError::RingBuffer)
}

/// The kernel counters, with the ring's fill level.
struct Counters {
    positions: Option<crate::bpf::stats::RingPositions>,
    ring_size: u64,
}

impl Counters {
    fn new(tracer: &Tracer, ring_buffer_size: u32) -> Self {
        Self {
            positions: crate::bpf::stats::RingPositions::map(tracer.events_map().as_fd())
                .map_err(|e| tracing::warn!("ring buffer fill level unavailable: {e}"))
                .ok(),
            ring_size: u64::from(ring_buffer_size),
        }
    }

    fn read(&self, tracer: &Tracer) -> Result<KernelStats, String> {
        let mut k = crate::bpf::stats::read(tracer.stats_map()).map_err(|e| e.to_string())?;
        k.ring_pending_bytes = self.positions.as_ref().map_or(0, |p| p.pending());
        k.ring_size_bytes = self.ring_size;
        Ok(k)
    }
}

/// Every command but the shutdown, which ends the loop.
fn handle(tracer: &Tracer, counters: &Counters, command: Command) {
    match command {
        Command::Stats(reply) => {
            let _ = reply.send(counters.read(tracer));
        }
        Command::Apply(ruleset, reply) => {
            let _ = reply.send(
                tracer
                    .apply(&ruleset)
                    .map_err(|e| format!("{:#}", anyhow::Error::from(e))),
            );
        }
        Command::AddCgroupScope { cgroup_id, scope } => {
            if let Err(e) = tracer.add_cgroup_scope(cgroup_id, scope) {
                tracing::error!(
                    "policy: adding cgroup {cgroup_id} to scope {scope}: {:#}",
                    anyhow::Error::from(e)
                );
            }
        }
        Command::ProfileStart {
            cgroup_id,
            level,
            armed,
            reply,
        } => {
            let _ = reply.send(
                tracer
                    .profile_start(cgroup_id, level, armed)
                    .map_err(|e| format!("{:#}", anyhow::Error::from(e))),
            );
        }
        Command::ProfileStop { slot, reply } => {
            let _ = reply.send(
                tracer
                    .profile_stop(slot)
                    .map_err(|e| format!("{:#}", anyhow::Error::from(e))),
            );
        }
        Command::Shutdown { .. } => unreachable!("the loop ends at a shutdown, after its final drain"),
    }
}
