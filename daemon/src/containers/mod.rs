//! Container names: what the runtime that created a container says about
//! it (name, image; for a pod its name, namespace and selected labels),
//! looked up in the background and cached by container id.
//!
//! The owner asks `meta` on the event path: a hash lookup. An unknown id
//! queues a lookup for the runtime's worker (`lookup`) and the event goes
//! out with the id only; the answer comes back as a message to the owner,
//! and the container's next events carry the names. The entry is dropped
//! when the container's cgroup is removed (`removal`).

mod cri;
mod docker;
pub mod find;
mod lookup;
mod removal;

// Looked up for every event of a container; SipHash showed in profiles.
type HashMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use connectracer_proto::{ContainerMeta, Process};
use tokio::sync::mpsc;
use tracing::warn;

use crate::attribution::cgroup_path::ContainerRuntime;
use crate::config::ContainersConfig;

/// Distinct containers remembered; beyond it the cache starts over.
const MAX_ENTRIES: usize = 16384;

/// Why a runtime could not be asked.
#[derive(Debug, thiserror::Error)]
pub enum LookupError {
    #[error("{0}")]
    Docker(#[from] bollard::errors::Error),
    #[error("{}", .0.message())]
    Cri(#[from] tonic::Status),
    #[error("no answer within {0:?}")]
    Timeout(Duration),
}

/// A lookup for a worker: the container, and its cgroup directory, whose
/// removal ends the entry.
#[derive(Debug)]
pub struct Request {
    pub id: String,
    pub cgroup_dir: PathBuf,
}

/// What comes back to the owner. `generation` tells answers of workers
/// replaced by a reload apart.
#[derive(Debug)]
pub enum Answer {
    /// What the runtime says; empty when it does not know the id.
    Found {
        id: String,
        meta: ContainerMeta,
        generation: u32,
        /// The container's cgroup, for policy scopes that select by name.
        cgroup_dir: PathBuf,
    },
    /// The runtime could not be asked; not before `retry_at` again.
    Unavailable {
        id: String,
        retry_at: Instant,
        generation: u32,
    },
    /// The container's cgroup is gone.
    Gone { id: String, generation: u32 },
}

#[derive(Debug)]
enum Entry {
    Known(Arc<ContainerMeta>),
    Pending,
    RetryAt(Instant),
}

/// The owner's side: the cache, and the workers' queues.
#[derive(Debug)]
pub struct ContainerNames {
    mount: PathBuf,
    generation: u32,
    workers: Vec<(ContainerRuntime, mpsc::Sender<Request>)>,
    entries: HashMap<String, Entry>,
    /// What events outside containers (and pending ones) share.
    none: Arc<ContainerMeta>,
}

impl ContainerNames {
    /// No runtime is asked until `configure`.
    pub fn new(mount: &Path) -> Self {
        Self {
            mount: mount.to_path_buf(),
            generation: 0,
            workers: Vec::new(),
            entries: HashMap::default(),
            none: Arc::default(),
        }
    }

    /// Starts a worker per configured runtime (the previous ones end when
    /// their queues are dropped) and forgets every answer so far. Must be
    /// called within the tokio runtime.
    pub fn configure(&mut self, config: &ContainersConfig, answers: &mpsc::UnboundedSender<Answer>) {
        self.generation += 1;
        self.entries.clear();
        self.workers.clear();
        if !config.enabled {
            return;
        }
        let removals = match removal::Removals::new(answers.clone(), self.generation) {
            Ok(r) => Some(Arc::new(r)),
            Err(e) => {
                warn!("containers: not watching cgroups for removal ({e}); names are kept until the cache fills up");
                None
            }
        };
        let apis = [
            (ContainerRuntime::Docker, &config.docker_socket, false),
            (ContainerRuntime::Podman, &config.podman_socket, false),
            (ContainerRuntime::Containerd, &config.containerd_socket, true),
            (ContainerRuntime::CriO, &config.crio_socket, true),
        ];
        for (runtime, socket, cri) in apis {
            let Some(socket) = socket else { continue };
            let api = if cri {
                lookup::Api::Cri(cri::CriApi::new(socket.clone(), config.pod_labels.clone()))
            } else {
                lookup::Api::Docker(docker::DockerApi::new(socket.clone()))
            };
            let worker = lookup::Worker {
                name: runtime.as_str(),
                socket: socket.clone(),
                api,
                generation: self.generation,
                answers: answers.clone(),
                removals: removals.clone(),
            };
            self.workers.push((runtime, worker.spawn()));
        }
    }

    /// The names of `p`'s container as known now; a first sight of the
    /// container queues its lookup.
    pub fn meta(&mut self, p: &Process, now: Instant) -> Arc<ContainerMeta> {
        let Some(id) = p.container_id.as_deref() else {
            return self.none.clone();
        };
        match self.entries.get(id) {
            Some(Entry::Known(m)) => return m.clone(),
            Some(Entry::Pending) => return self.none.clone(),
            Some(Entry::RetryAt(at)) if now < *at => return self.none.clone(),
            _ => {}
        }
        let runtime = p.container_runtime.as_deref().and_then(ContainerRuntime::parse);
        let Some((_, worker)) = self.workers.iter().find(|(r, _)| Some(*r) == runtime) else {
            return self.none.clone();
        };
        let req = Request {
            id: id.to_string(),
            cgroup_dir: crate::sys::cgroup_tree::dir_of(&self.mount, p.cgroup.as_deref().unwrap_or("/")),
        };
        // A full queue: asked again at the container's next event.
        if worker.try_send(req).is_ok() {
            if self.entries.len() >= MAX_ENTRIES {
                self.entries.clear();
            }
            self.entries.insert(id.to_string(), Entry::Pending);
        }
        self.none.clone()
    }

    /// The names of `p`'s container if already known; asks nothing.
    pub fn known(&self, p: &Process) -> Option<Arc<ContainerMeta>> {
        match self.entries.get(p.container_id.as_deref()?)? {
            Entry::Known(m) if !m.is_empty() => Some(m.clone()),
            _ => None,
        }
    }

    /// Every container whose names are known, by id.
    pub fn known_metas(&self) -> std::collections::HashMap<String, Arc<ContainerMeta>> {
        self.entries
            .iter()
            .filter_map(|(id, e)| match e {
                Entry::Known(m) if !m.is_empty() => Some((id.clone(), m.clone())),
                _ => None,
            })
            .collect()
    }

    pub fn on_answer(&mut self, a: Answer) {
        match a {
            Answer::Found {
                id, meta, generation, ..
            } if generation == self.generation => {
                let meta = if meta.is_empty() {
                    self.none.clone()
                } else {
                    Arc::new(meta)
                };
                self.entries.insert(id, Entry::Known(meta));
            }
            Answer::Unavailable {
                id,
                retry_at,
                generation,
            } if generation == self.generation => {
                self.entries.insert(id, Entry::RetryAt(retry_at));
            }
            Answer::Gone { id, generation } if generation == self.generation => {
                self.entries.remove(&id);
            }
            _ => {}
        }
    }

    /// Containers known or asked about.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests;
