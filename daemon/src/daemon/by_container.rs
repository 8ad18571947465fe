//! `--container ID|NAME` for `profile` and `policy suggest`: the container
//! is looked for off the owner's loop (a walk of the cgroup tree, questions
//! to the runtimes about names the cache lacks); the request then goes on
//! as one for the container's cgroups.

use std::sync::Arc;

use connectracer_proto::ContainerMeta;

use super::*;
use crate::attribution::cgroup_path::parse_cgroup_path;
use crate::config::ContainersConfig;
use crate::containers::find::{self, Found};

/// What a search needs from the owner, taken before it leaves the loop.
#[derive(Debug)]
pub(super) struct Finder {
    known: HashMap<String, Arc<ContainerMeta>>,
    config: ContainersConfig,
    mount: PathBuf,
}

fn not_found(e: find::FindError) -> CallError {
    CallError::InvalidArgument {
        field: "container".into(),
        reason: e.to_string(),
    }
}

impl Finder {
    /// The cgroup directory of the running container `query` names: its
    /// outermost one.
    pub(super) async fn running(self, query: String) -> Result<PathBuf, CallError> {
        let mount = self.mount.clone();
        let paths = tokio::task::spawn_blocking(move || {
            crate::sys::cgroup_tree::dirs(&mount)
                .filter_map(|d| crate::sys::cgroup_tree::relative_path(&mount, &d))
                .collect::<Vec<String>>()
        })
        .await
        .unwrap_or_default();
        let candidates = find::containers(paths.iter().map(String::as_str));
        let found = find::find(&query, &candidates, &self.known, &self.config, "running")
            .await
            .map_err(not_found)?;
        let outer = found.cgroups.first().map_or("/", String::as_str);
        Ok(crate::sys::cgroup_tree::dir_of(&self.mount, outer))
    }
}

/// A suggestion whose container was looked for.
#[derive(Debug)]
pub(super) struct SuggestFound {
    params: SuggestParams,
    found: Result<Found, CallError>,
    reply: oneshot::Sender<Outcome>,
}

/// Suggestions waiting for their container.
#[derive(Debug)]
pub(super) struct ContainerQueries {
    tx: mpsc::UnboundedSender<SuggestFound>,
    pub(super) found: mpsc::UnboundedReceiver<SuggestFound>,
}

impl ContainerQueries {
    pub(super) fn new() -> Self {
        let (tx, found) = mpsc::unbounded_channel();
        Self { tx, found }
    }
}

impl Daemon {
    pub(super) fn container_finder(&self) -> Finder {
        Finder {
            known: self.pipeline.container_metas(),
            config: self.config.containers.clone(),
            mount: self.mount.clone(),
        }
    }

    /// `policy suggest --container`: authorized here; the container is
    /// looked for among those the destinations store has seen connect
    /// (running or not), off the loop.
    pub(super) fn begin_suggest_container(&mut self, req: Request) {
        let Operation::PolicySuggest(params) = req.op else {
            return;
        };
        let op = Operation::PolicySuggest(params.clone());
        if let Err(e) = crate::control::authz::authorize(&req.caller, &op) {
            let _ = req.reply.send(Err(e));
            return;
        }
        if params.unit.is_some() || params.cgroup.is_some() || params.uid.is_some() {
            let _ = req.reply.send(Err(CallError::InvalidArgument {
                field: "container".into(),
                reason: "give exactly one of unit, cgroup, uid and container".into(),
            }));
            return;
        }
        let candidates = find::containers(self.pipeline.egress().cgroups());
        let finder = self.container_finder();
        let tx = self.container_queries.tx.clone();
        let query = params.container.clone().unwrap_or_default();
        tokio::spawn(async move {
            let found = find::find(
                &query,
                &candidates,
                &finder.known,
                &finder.config,
                "among the destinations seen",
            )
            .await
            .map_err(not_found);
            let _ = tx.send(SuggestFound {
                params,
                found,
                reply: req.reply,
            });
        });
    }

    /// The container found: its destinations, from every cgroup of it.
    pub(super) fn on_suggest_found(&mut self, f: SuggestFound) {
        let answer = f.found.map(|found| {
            let of_it = |s: &crate::egress::Scope| {
                parse_cgroup_path(&s.cgroup)
                    .container
                    .is_some_and(|c| c.id == found.id)
            };
            let mut reply =
                self.pipeline
                    .egress()
                    .suggest_by(f.params.since_ms, std::time::SystemTime::now(), of_it);
            reply.container = Some(found.id);
            Answer::from(reply)
        });
        let _ = f.reply.send(answer);
    }
}
