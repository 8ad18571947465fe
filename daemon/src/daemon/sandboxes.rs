//! Sandboxes (`tracectl run`) as the owner keeps them: put in force and
//! removed through the one reload path once the control handler placed the
//! command; their cgroups stopped and watched off the owner loop.

use std::sync::Arc;

use connectracer_proto::api::{SandboxParams, SandboxPlaced};

use super::*;
use crate::control::sandbox::{Command, Placed};
use crate::control::Caller;
use crate::sandbox::placer::{until_empty, Placement, Placer, EMPTY_WAIT};
use crate::sandbox::{place, Sandbox, MAX_PER_USER};

/// After the cgroup empties, records still in the ring buffer (drained
/// every 10 ms) reach the stream before the sandbox is reported gone.
const LAST_RECORDS: Duration = Duration::from_millis(100);

fn invalid(field: &str, reason: String) -> CallError {
    CallError::InvalidArgument {
        field: field.into(),
        reason,
    }
}

/// Stops and removes, off the owner, a sandbox that is not put in force.
fn abandon(placer: &Arc<Placer>, p: &Placement) {
    let (placer, dir, unit) = (placer.clone(), p.dir.clone(), p.unit.clone());
    tokio::spawn(async move { placer.abandon(&dir, unit.as_deref()).await });
}

impl Daemon {
    pub(super) async fn on_sandbox(&mut self, cmd: Command) {
        match cmd {
            Command::Create {
                caller,
                placement,
                params,
                reply,
            } => {
                let placed = self.sandbox_create(&caller, &placement, &params).await;
                if placed.is_err() {
                    abandon(&self.placer, &placement);
                }
                if let Err(e) = &placed {
                    info!(uid = caller.uid, "sandbox refused: {e:?}");
                }
                let _ = reply.send(placed);
            }
            Command::Finish { id, done } => self.sandbox_finish(id, done),
            Command::Emptied { id } => self.sandbox_emptied(&id).await,
            Command::Profile { id, reply } => self.sandbox_profile_take(&id, reply).await,
        }
    }

    async fn sandbox_create(
        &mut self,
        caller: &Caller,
        placement: &Placement,
        params: &SandboxParams,
    ) -> Result<Placed, CallError> {
        let store = &self.source.sandboxes;
        if store.live().iter().filter(|s| s.uid == caller.uid).count() >= MAX_PER_USER {
            return Err(invalid(
                "sandbox",
                format!("uid {} has {MAX_PER_USER} sandboxes already", caller.uid),
            ));
        }
        let Placement {
            id,
            pid,
            dir,
            cgroup,
            cgroup_id,
            unit,
        } = placement.clone();
        self.sandbox_profile_arm(&id, caller.uid, &dir, params.profile)
            .await?;
        self.source.sandboxes.stage_add(Sandbox {
            id: id.clone(),
            uid: caller.uid,
            dir,
            cgroup: cgroup.clone(),
            unit: unit.clone(),
            audit: params.audit,
            rule: params.rules.clone(),
        });
        let result = self.reload(&format!("sandbox {id} for uid {}", caller.uid)).await;
        if let Err(e) = result {
            self.source.sandboxes.discard();
            self.sandbox_profile_drop(&id).await;
            // The host's configuration errors are not the caller's business.
            return Err(match e {
                CallError::ConfigInvalid { .. } if !caller.privileged => invalid(
                    "daemon",
                    "the daemon's configuration cannot be applied now; see its log".into(),
                ),
                e => e,
            });
        }
        if let Err(e) = self.source.sandboxes.commit() {
            error!(
                "sandbox {id}: {:#}; in force until the daemon stops",
                anyhow::Error::from(e)
            );
        }
        self.attached.insert(id.clone());
        info!(sandbox = %id, uid = caller.uid, pid, cgroup = %cgroup, unit = unit.as_deref().unwrap_or(""), "sandbox placed");
        let mode = if params.audit { "audit" } else { "enforce" };
        Ok(Placed {
            wire: SandboxPlaced {
                id,
                cgroup,
                mode: mode.into(),
            },
            cgroup_id,
        })
    }

    /// The caller is done: what is left is killed; the sandbox goes once empty.
    fn sandbox_finish(&mut self, id: String, done: oneshot::Sender<String>) {
        let Some((dir, unit)) = self
            .source
            .sandboxes
            .get(&id)
            .map(|s| (s.dir.clone(), s.unit.clone()))
        else {
            let _ = done.send("the sandbox was already gone".into());
            return;
        };
        let left = place::populated(&dir);
        let reason = if left {
            "the caller closed the connection: the processes left were stopped"
        } else {
            "its processes had all exited"
        };
        self.finishing.insert(id.clone(), (done, reason));
        let (tx, placer) = (self.sandbox_tx.clone(), self.placer.clone());
        tokio::spawn(async move {
            if left {
                if let Err(e) = placer.kill(&dir, unit.as_deref()).await {
                    warn!("sandbox {id}: {:#}", anyhow::Error::from(e));
                }
            }
            until_empty(&dir).await;
            tokio::time::sleep(LAST_RECORDS).await;
            let _ = tx.send(Command::Emptied { id }).await;
        });
    }

    /// An empty sandbox leaves the policy, then its cgroup goes.
    async fn sandbox_emptied(&mut self, id: &str) {
        let Some((dir, unit)) = self
            .source
            .sandboxes
            .get(id)
            .map(|s| (s.dir.clone(), s.unit.clone()))
        else {
            return;
        };
        // Processes cgroup.kill could not end (stuck in the kernel) stay
        // confined: the sandbox goes once they are gone (`sandbox_upkeep`).
        if place::populated(&dir) {
            warn!(sandbox = %id, "sandbox: processes left after {EMPTY_WAIT:?}; it stays in force until they are gone");
            self.attached.remove(id);
            if let Some((done, _)) = self.finishing.remove(id) {
                let _ = done.send(
                    "processes are left that could not be stopped; the sandbox stays until they are gone"
                        .into(),
                );
            }
            return;
        }
        self.source.sandboxes.stage_remove(id);
        // Forgotten even if this reload fails (the host's configuration
        // broken meanwhile, logged as a failed reload): its scope then
        // stays in the kernel until the next reload or start, harmless for
        // a cgroup that is gone (cgroup ids are not reused), and the
        // removal is not retried every second.
        let _ = self.reload(&format!("sandbox {id} ended")).await;
        if let Err(e) = self.source.sandboxes.commit() {
            error!("sandbox {id}: {:#}", anyhow::Error::from(e));
        }
        if let Err(e) = self.placer.remove(&dir, unit.as_deref()) {
            warn!("sandbox {id}: {:#}", anyhow::Error::from(e));
        }
        self.attached.remove(id);
        info!(sandbox = %id, "sandbox removed");
        if let Some((done, reason)) = self.finishing.remove(id) {
            let _ = done.send(reason.to_string());
        }
    }

    /// Every second: sandboxes nobody is connected to (a previous
    /// instance's) go once their processes are gone.
    pub(super) async fn sandbox_upkeep(&mut self) {
        let orphans: Vec<String> = self
            .source
            .sandboxes
            .live()
            .iter()
            .filter(|s| !self.attached.contains(&s.id) && !self.finishing.contains_key(&s.id))
            .filter(|s| !place::populated(&s.dir))
            .map(|s| s.id.clone())
            .collect();
        for id in orphans {
            self.sandbox_emptied(&id).await;
        }
    }
}
