//! Syscall profiles of sandboxes (`tracectl run --profile-syscalls`): armed
//! when the command is placed, so that the kernel counts from the
//! command's own exec and not its launcher's calls before it; stopped and
//! handed to the Sandbox call once the sandbox has emptied.

use connectracer_proto::api::ProfileReply;
use tokio::time::Instant;

use super::*;
use crate::profiles::Target;

/// How long a sandbox's profile outlives the sandbox when its call never
/// asks for it (the connection's task gone): then it is dropped.
const UNCLAIMED: Duration = Duration::from_secs(60);
/// Any user may profile their sandbox, and while one records every
/// syscall of the host takes the tracepoint's slow path: a user gets a
/// few, and sandboxes together half the kernel's slots, so that
/// `tracectl profile` (root and group connectracer) always has room.
const PER_USER: usize = 4;
const ALL_SANDBOXES: usize = crate::bpf::profile::SLOTS / 2;

/// The profile of one sandbox, recording (or armed) in the kernel.
#[derive(Debug)]
pub(super) struct SandboxProfile {
    uid: u32,
    slot: usize,
    target: Target,
    started: Instant,
    /// When the sandbox was first seen gone with this still unclaimed.
    gone_since: Option<Instant>,
}

impl Daemon {
    /// Arms the profile of a placed sandbox when the call asked for one.
    /// An error leaves nothing recording; the caller abandons the sandbox.
    pub(super) async fn sandbox_profile_arm(
        &mut self,
        id: &str,
        uid: u32,
        dir: &Path,
        wanted: bool,
    ) -> Result<(), CallError> {
        if !wanted {
            return Ok(());
        }
        let failed = |reason: String| CallError::InvalidArgument {
            field: "profile".into(),
            reason,
        };
        let all = &self.profiles.sandboxes;
        if all.values().filter(|p| p.uid == uid).count() >= PER_USER {
            return Err(failed(format!(
                "uid {uid} has {PER_USER} sandboxes recording syscall profiles already"
            )));
        }
        if all.len() >= ALL_SANDBOXES {
            return Err(failed(format!(
                "{ALL_SANDBOXES} sandboxes are recording syscall profiles already"
            )));
        }
        let target = crate::profiles::target_of(dir, &self.mount)?;
        let started = self.kernel.profile_start(target.id, target.level, true);
        let slot = self
            .kernel_reply(started)
            .await
            .map_err(|e| failed(format!("the syscall profile cannot start: {e}")))?;
        info!(sandbox = %id, cgroup = %target.path, "syscall profile armed until the command's exec");
        self.profiles.sandboxes.insert(
            id.to_string(),
            SandboxProfile {
                uid,
                slot,
                target,
                started: Instant::now(),
                gone_since: None,
            },
        );
        Ok(())
    }

    /// Stops a sandbox's profile, if it has one; Err says why it is lost.
    async fn sandbox_profile_stop(&mut self, id: &str) -> Option<Result<ProfileReply, String>> {
        let p = self.profiles.sandboxes.remove(id)?;
        let stopped = self.kernel.profile_stop(p.slot);
        let raw = self.kernel_reply(stopped).await;
        info!(sandbox = %id, cgroup = %p.target.path, "syscall profile ended");
        let ms = p.started.elapsed().as_millis().try_into().unwrap_or(u64::MAX);
        Some(raw.map(|raw| crate::profiles::reply(&p.target, ms, &raw)))
    }

    /// A sandbox that was never put in force: its profile goes with it.
    pub(super) async fn sandbox_profile_drop(&mut self, id: &str) {
        let _ = self.sandbox_profile_stop(id).await;
    }

    /// The Sandbox call, its sandbox gone, asks for the profile: what the
    /// kernel counted (everything, the cgroup being empty), or why none.
    pub(super) async fn sandbox_profile_take(
        &mut self,
        id: &str,
        reply: oneshot::Sender<Result<Option<ProfileReply>, String>>,
    ) {
        let answer = match self.sandbox_profile_stop(id).await {
            None => Ok(None),
            Some(r) => r.map(Some),
        };
        if let Err(e) = &answer {
            warn!(sandbox = %id, "syscall profile lost: {e}");
        }
        let _ = reply.send(answer);
    }

    /// Every second: profiles whose sandbox is gone and whose call never
    /// claimed them end, so that their slots (and the program) are freed.
    pub(super) async fn sandbox_profile_upkeep(&mut self) {
        if self.profiles.sandboxes.is_empty() {
            return;
        }
        let now = Instant::now();
        let live: std::collections::HashSet<String> = self
            .source
            .sandboxes
            .live()
            .iter()
            .map(|s| s.id.clone())
            .collect();
        let mut expired = Vec::new();
        for (id, p) in &mut self.profiles.sandboxes {
            if live.contains(id) {
                p.gone_since = None;
                continue;
            }
            let since = *p.gone_since.get_or_insert(now);
            if now.duration_since(since) >= UNCLAIMED {
                expired.push(id.clone());
            }
        }
        for id in expired {
            warn!(sandbox = %id, "syscall profile never claimed by its caller: dropped");
            self.sandbox_profile_drop(&id).await;
        }
    }
}
