//! One worker per runtime API: it asks the runtime, one container at a
//! time, and answers the owner through a channel. A runtime that cannot be
//! asked is logged once (and once more when it answers again) and then
//! asked at most every `RETRY`; meanwhile lookups are answered
//! `Unavailable` at once, so events keep their ids and nothing queues up.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tracing::{info, warn};

use super::cri::CriApi;
use super::docker::DockerApi;
use super::removal::Removals;
use super::{Answer, LookupError, Request};

/// How long one lookup may take before the runtime counts as down.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a runtime that failed is left alone.
pub const RETRY: Duration = Duration::from_secs(5);
/// Lookups waiting for one worker; beyond it, events go on with ids and
/// the container is asked about at its next event.
pub const QUEUE: usize = 1024;

#[derive(Debug)]
pub enum Api {
    Docker(DockerApi),
    Cri(CriApi),
}

impl Api {
    async fn lookup(&mut self, id: &str) -> Result<Option<connectracer_proto::ContainerMeta>, LookupError> {
        match self {
            Api::Docker(d) => d.lookup(id).await,
            Api::Cri(c) => c.lookup(id).await,
        }
    }
}

#[derive(Debug)]
pub struct Worker {
    /// `docker`, `podman`, `containerd`, `cri-o`.
    pub name: &'static str,
    pub socket: PathBuf,
    pub api: Api,
    pub generation: u32,
    pub answers: mpsc::UnboundedSender<Answer>,
    pub removals: Option<Arc<Removals>>,
}

impl Worker {
    pub fn spawn(self) -> mpsc::Sender<Request> {
        let (tx, rx) = mpsc::channel(QUEUE);
        tokio::spawn(self.run(rx));
        tx
    }

    async fn run(mut self, mut requests: mpsc::Receiver<Request>) {
        let mut down = false;
        let mut retry_at: Option<Instant> = None;
        while let Some(req) = requests.recv().await {
            let generation = self.generation;
            if let Some(at) = retry_at.filter(|at| Instant::now() < *at) {
                let _ = self.answers.send(Answer::Unavailable {
                    id: req.id,
                    retry_at: at,
                    generation,
                });
                continue;
            }
            let result = tokio::time::timeout(LOOKUP_TIMEOUT, self.api.lookup(&req.id))
                .await
                .unwrap_or(Err(LookupError::Timeout(LOOKUP_TIMEOUT)));
            match result {
                Ok(meta) => {
                    if std::mem::take(&mut down) {
                        info!(runtime = self.name, socket = %self.socket.display(), "container runtime {} at {} answers again: events carry container names", self.name, self.socket.display());
                    }
                    retry_at = None;
                    // Without inotify, entries live until the cache fills up.
                    let watched = self
                        .removals
                        .as_ref()
                        .is_none_or(|r| r.watch(&req.cgroup_dir, &req.id));
                    let id = req.id;
                    let _ = self.answers.send(Answer::Found {
                        id: id.clone(),
                        meta: meta.unwrap_or_default(),
                        generation,
                        cgroup_dir: req.cgroup_dir.clone(),
                    });
                    if !watched {
                        // Not kept: asked again at its next event, if any.
                        let _ = self.answers.send(Answer::Gone { id, generation });
                    }
                }
                Err(e) => {
                    if !std::mem::replace(&mut down, true) {
                        warn!(runtime = self.name, socket = %self.socket.display(), "container runtime {} at {} cannot be asked ({e}): events carry its containers' ids without names until it answers", self.name, self.socket.display());
                    }
                    let at = Instant::now() + RETRY;
                    retry_at = Some(at);
                    let _ = self.answers.send(Answer::Unavailable {
                        id: req.id,
                        retry_at: at,
                        generation,
                    });
                }
            }
        }
    }
}
