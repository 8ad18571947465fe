//! Syscall profiles, as the owner runs them: a request's cgroup is found
//! off the loop, the kernel thread starts recording, and the answer goes
//! out when the recording's time is up (or is dropped, with the recording,
//! once the caller has gone).

use tokio::time::Instant;

use super::*;
use crate::profiles::Target;

/// A request whose cgroup was looked up.
#[derive(Debug)]
pub(super) struct Resolved {
    target: Result<Target, CallError>,
    duration_ms: u64,
    reply: oneshot::Sender<Outcome>,
}

#[derive(Debug)]
struct Running {
    slot: usize,
    target: Target,
    duration_ms: u64,
    deadline: Instant,
    reply: oneshot::Sender<Outcome>,
}

/// The profiles being looked up or recorded.
#[derive(Debug)]
pub(super) struct Profiles {
    tx: mpsc::UnboundedSender<Resolved>,
    pub(super) resolved: mpsc::UnboundedReceiver<Resolved>,
    running: Vec<Running>,
    /// Sandboxes' profiles, by sandbox id (see `sandbox_profile`).
    pub(super) sandboxes: HashMap<String, super::sandbox_profile::SandboxProfile>,
}

impl Profiles {
    pub(super) fn new() -> Self {
        let (tx, resolved) = mpsc::unbounded_channel();
        Self {
            tx,
            resolved,
            running: Vec::new(),
            sandboxes: HashMap::new(),
        }
    }

    /// Some recording's caller went away: it ends now, unanswered.
    pub(super) fn abandoned(&self) -> bool {
        self.running.iter().any(|r| r.reply.is_closed())
    }

    /// When the next recording ends; None while none records.
    pub(super) fn next_deadline(&self) -> Option<Instant> {
        self.running.iter().map(|r| r.deadline).min()
    }
}

impl Daemon {
    /// A Profile request: authorized here, its cgroup found on a blocking
    /// thread (a unit's is a walk of the cgroup tree), a container's by a
    /// task that may ask the runtimes too.
    pub(super) fn begin_profile(&mut self, req: Request) {
        let Operation::Profile(params) = req.op else {
            return;
        };
        if let Err(e) = crate::control::authz::authorize(&req.caller, &Operation::Profile(params.clone())) {
            let _ = req.reply.send(Err(e));
            return;
        }
        let mount = self.mount.clone();
        let tx = self.profiles.tx.clone();
        if let (Some(query), None, None) = (&params.container, &params.cgroup, &params.unit) {
            let (query, finder) = (query.clone(), self.container_finder());
            tokio::spawn(async move {
                let target = match crate::profiles::check_duration(params.duration_ms) {
                    Ok(()) => finder
                        .running(query)
                        .await
                        .and_then(|dir| crate::profiles::target_of(&dir, &mount)),
                    Err(e) => Err(e),
                };
                let _ = tx.send(Resolved {
                    target,
                    duration_ms: params.duration_ms,
                    reply: req.reply,
                });
            });
            return;
        }
        tokio::task::spawn_blocking(move || {
            let target = crate::profiles::resolve(&params, &mount);
            let _ = tx.send(Resolved {
                target,
                duration_ms: params.duration_ms,
                reply: req.reply,
            });
        });
    }

    /// Starts the kernel's recording of a looked-up request.
    pub(super) async fn on_profile_resolved(&mut self, r: Resolved) {
        let target = match r.target {
            Ok(t) => t,
            Err(e) => {
                let _ = r.reply.send(Err(e));
                return;
            }
        };
        let started = self.kernel.profile_start(target.id, target.level, false);
        match self.kernel_reply(started).await {
            Ok(slot) => {
                info!(cgroup = %target.path, ms = r.duration_ms, "syscall profile started");
                self.profiles.running.push(Running {
                    slot,
                    target,
                    duration_ms: r.duration_ms,
                    deadline: Instant::now() + Duration::from_millis(r.duration_ms),
                    reply: r.reply,
                });
            }
            Err(reason) => {
                let _ = r.reply.send(Err(CallError::InvalidArgument {
                    field: "cgroup".into(),
                    reason: format!("{}: {reason}", target.path),
                }));
            }
        }
    }

    /// Ends the recordings whose time is up, and those whose caller left.
    pub(super) async fn finish_profiles(&mut self) {
        let now = Instant::now();
        let (done, running): (Vec<Running>, Vec<Running>) = std::mem::take(&mut self.profiles.running)
            .into_iter()
            .partition(|r| r.deadline <= now || r.reply.is_closed());
        self.profiles.running = running;
        for r in done {
            let stopped = self.kernel.profile_stop(r.slot);
            let answer = self
                .kernel_reply(stopped)
                .await
                .map(|raw| Answer::from(crate::profiles::reply(&r.target, r.duration_ms, &raw)))
                .map_err(|reason| CallError::InvalidArgument {
                    field: "cgroup".into(),
                    reason: format!("{}: {reason}", r.target.path),
                });
            info!(cgroup = %r.target.path, "syscall profile ended");
            let _ = r.reply.send(answer);
        }
    }
}
