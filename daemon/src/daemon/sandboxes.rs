//! Sandboxes (`tracectl run`) as the owner keeps them: placed and removed
//! through the one reload path, their cgroups watched off the owner loop.

use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::MetadataExt;

use connectracer_proto::api::{SandboxParams, SandboxPlaced};

use super::*;
use crate::control::sandbox::{Command, Placed};
use crate::control::Caller;
use crate::sandbox::{place, Sandbox, CGROUP_DIR, MAX_PER_USER};

/// How often a sandbox being removed is looked at until it is empty, and
/// for how long at most.
const EMPTY_POLL: Duration = Duration::from_millis(20);
const EMPTY_WAIT: Duration = Duration::from_secs(10);
/// After the cgroup empties, records still in the ring buffer (drained
/// every 10 ms) reach the stream before the sandbox is reported gone.
const LAST_RECORDS: Duration = Duration::from_millis(100);

fn invalid(field: &str, reason: String) -> CallError {
    CallError::InvalidArgument {
        field: field.into(),
        reason,
    }
}

/// Waits (off the owner) until the cgroup at `dir` has no process left.
async fn until_empty(dir: PathBuf) {
    let started = Instant::now();
    while place::populated(&dir) && started.elapsed() < EMPTY_WAIT {
        tokio::time::sleep(EMPTY_POLL).await;
    }
    tokio::time::sleep(LAST_RECORDS).await;
}

/// Kills what is in a sandbox that was never put in force, and removes
/// its cgroup once empty.
fn abandon(dir: PathBuf) {
    if let Err(e) = place::kill(&dir) {
        warn!("sandbox: {:#}", anyhow::Error::from(e));
    }
    tokio::spawn(async move {
        until_empty(dir.clone()).await;
        if let Err(e) = place::remove(&dir) {
            warn!("sandbox: {:#}", anyhow::Error::from(e));
        }
    });
}

impl Daemon {
    pub(super) async fn on_sandbox(&mut self, cmd: Command) {
        match cmd {
            Command::Create {
                caller,
                pidfd,
                params,
                reply,
            } => {
                let placed = self.sandbox_create(&caller, &pidfd, &params).await;
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
        pidfd: &OwnedFd,
        params: &SandboxParams,
    ) -> Result<Placed, CallError> {
        crate::sandbox::check(params).map_err(|(field, reason)| invalid(&field, reason))?;
        let store = &self.source.sandboxes;
        if store.live().iter().filter(|s| s.uid == caller.uid).count() >= MAX_PER_USER {
            return Err(invalid(
                "sandbox",
                format!("uid {} has {MAX_PER_USER} sandboxes already", caller.uid),
            ));
        }
        let (id, dir, cgroup, cgroup_id, pid) = self.place_command(caller, pidfd)?;
        self.sandbox_profile_arm(&id, caller.uid, &dir, params.profile)
            .await
            .inspect_err(|_| abandon(dir.clone()))?;
        self.source.sandboxes.stage_add(Sandbox {
            id: id.clone(),
            uid: caller.uid,
            dir: dir.clone(),
            cgroup: cgroup.clone(),
            audit: params.audit,
            rule: params.rules.clone(),
        });
        let result = self.reload(&format!("sandbox {id} for uid {}", caller.uid)).await;
        if let Err(e) = result {
            self.source.sandboxes.discard();
            self.sandbox_profile_drop(&id).await;
            abandon(dir);
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
        info!(sandbox = %id, uid = caller.uid, pid, cgroup = %cgroup, "sandbox placed");
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

    /// The caller's child checked and moved into a new cgroup: the
    /// sandbox's id, its directory, path below the mount and id, the pid.
    fn place_command(
        &self,
        caller: &Caller,
        pidfd: &OwnedFd,
    ) -> Result<(String, PathBuf, String, u64, i32), CallError> {
        let denied = |e: place::PlaceError| CallError::AccessDenied {
            reason: e.to_string(),
        };
        let pid = place::verify(pidfd.as_fd(), caller.uid, caller.pid).map_err(denied)?;
        let started = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        let id = format!("{}-{pid}-{}", caller.uid, started.as_millis());
        let failed = |e: place::PlaceError| invalid("sandbox", format!("{:#}", anyhow::Error::from(e)));
        let dir = place::create(&self.cgroup_dir.join(CGROUP_DIR), &format!("sb-{id}")).map_err(failed)?;
        let entered = place::enter(&dir, pid).map_err(failed).and_then(|()| {
            // The pid written named the pidfd's process only if it still lives.
            place::alive(pidfd.as_fd())
                .then_some(())
                .ok_or_else(|| denied(place::PlaceError::Gone))
        });
        let sandbox = entered.and_then(|()| {
            let cgroup = crate::sys::cgroup_tree::relative_path(&self.mount, &dir).ok_or_else(|| {
                invalid(
                    "sandbox",
                    format!("{} is outside the cgroup2 mount", dir.display()),
                )
            })?;
            let ino = std::fs::metadata(&dir)
                .map(|m| m.ino())
                .map_err(|e| invalid("sandbox", format!("{}: {e}", dir.display())))?;
            Ok((cgroup, ino))
        });
        sandbox
            .map(|(cgroup, ino)| (id, dir.clone(), cgroup, ino, pid))
            .inspect_err(|_| abandon(dir.clone()))
    }

    /// The caller is done: what is left is killed; the sandbox goes once empty.
    fn sandbox_finish(&mut self, id: String, done: oneshot::Sender<String>) {
        let Some(dir) = self.source.sandboxes.get(&id).map(|s| s.dir.clone()) else {
            let _ = done.send("the sandbox was already gone".into());
            return;
        };
        let reason = if place::populated(&dir) {
            if let Err(e) = place::kill(&dir) {
                warn!("sandbox {id}: {:#}", anyhow::Error::from(e));
            }
            "the caller closed the connection: the processes left were stopped"
        } else {
            "its processes had all exited"
        };
        self.finishing.insert(id.clone(), (done, reason));
        let tx = self.sandbox_tx.clone();
        tokio::spawn(async move {
            until_empty(dir).await;
            let _ = tx.send(Command::Emptied { id }).await;
        });
    }

    /// An empty sandbox leaves the policy, then its cgroup goes.
    async fn sandbox_emptied(&mut self, id: &str) {
        let Some(dir) = self.source.sandboxes.get(id).map(|s| s.dir.clone()) else {
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
        if let Err(e) = place::remove(&dir) {
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
