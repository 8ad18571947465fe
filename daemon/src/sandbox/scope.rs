//! Sandboxes as transient scopes of the service manager, where the daemon
//! is a systemd service: the packaged unit's `ProtectControlGroups=yes`
//! leaves it no cgroup to write, and a cgroup inside its own (delegated)
//! subtree would die with it at every restart. A scope belongs to neither:
//! systemd creates its cgroup (root's, as `place` requires), moves the
//! command in, and removes both once it is empty, so a restarted daemon
//! only has to put the scope's policy back in force.

use std::time::{Duration, Instant};

use zbus::{OwnedVariant, Variant};
use zbus_systemd::systemd1::ManagerProxy;

/// Sandboxes' scopes go in this slice (`/connectracer.slice/` and then
/// this one, by systemd's naming), apart from the daemon's own unit.
pub const SLICE: &str = "connectracer-sandbox.slice";
/// How long systemd gets to run the start job that moves the command.
const JOINED_WAIT: Duration = Duration::from_secs(5);
const JOINED_POLL: Duration = Duration::from_millis(5);

#[derive(Debug, thiserror::Error)]
pub enum ScopeError {
    #[error("connecting to the system bus to ask systemd for a scope")]
    Bus(#[source] zbus::Error),
    #[error("systemd refused to start {unit}")]
    Start {
        unit: String,
        #[source]
        source: zbus::Error,
    },
    #[error("systemd did not move process {pid} into {unit} within {JOINED_WAIT:?} (it is in {now})")]
    NotJoined { pid: i32, unit: String, now: String },
    #[error("systemd did not stop the processes of {unit}")]
    Kill {
        unit: String,
        #[source]
        source: zbus::Error,
    },
}

/// The scope unit of the sandbox `id`.
pub fn unit_name(id: &str) -> String {
    format!("connectracer-sandbox-{id}.scope")
}

async fn manager(bus: &zbus::Connection) -> Result<ManagerProxy<'_>, ScopeError> {
    ManagerProxy::builder(bus)
        .cache_properties(zbus::proxy::CacheProperties::No)
        .build()
        .await
        .map_err(ScopeError::Bus)
}

fn property<'a>(name: &str, v: impl Into<Variant<'a>>) -> (String, OwnedVariant) {
    let owned = OwnedVariant::try_from(v.into()).expect("plain values have no file descriptors");
    (name.to_string(), owned)
}

/// Starts the scope `unit` holding `pid` and waits until the process is in
/// its cgroup; returns that cgroup's path below the cgroup2 mount.
pub async fn start(bus: &zbus::Connection, unit: &str, uid: u32, pid: i32) -> Result<String, ScopeError> {
    let props = vec![
        property(
            "Description",
            format!("connectracer sandbox of uid {uid} (tracectl run)").as_str(),
        ),
        property("Slice", SLICE),
        property("PIDs", vec![pid as u32]),
        // Gone from systemd's memory once it ends, failed or not.
        property("CollectMode", "inactive-or-failed"),
    ];
    let start_err = |source| ScopeError::Start {
        unit: unit.to_string(),
        source,
    };
    manager(bus)
        .await?
        .start_transient_unit(unit.into(), "fail".into(), props, Vec::new())
        .await
        .map_err(start_err)?;
    // The job returned above moves the process when it runs: wait for it
    // rather than for the job's signal, which says less (it is also
    // "done" for a scope whose process had exited).
    let started = Instant::now();
    loop {
        let now = cgroup_of(pid).unwrap_or_default();
        if now.rsplit('/').next() == Some(unit) {
            return Ok(now);
        }
        if started.elapsed() > JOINED_WAIT {
            return Err(ScopeError::NotJoined {
                pid,
                unit: unit.to_string(),
                now,
            });
        }
        tokio::time::sleep(JOINED_POLL).await;
    }
}

/// The process's cgroup2 path (below the mount, as this namespace sees it).
fn cgroup_of(pid: i32) -> Option<String> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("0::"))
        .map(str::to_string)
}

/// SIGKILLs every process of the scope; a scope already gone is not an error.
pub async fn kill(bus: &zbus::Connection, unit: &str) -> Result<(), ScopeError> {
    let result = manager(bus)
        .await?
        .kill_unit(unit.into(), "all".into(), libc::SIGKILL)
        .await;
    match result {
        Err(zbus::Error::MethodError(name, _, _))
            if name.as_str() == "org.freedesktop.systemd1.NoSuchUnit" =>
        {
            Ok(())
        }
        r => r.map_err(|source| ScopeError::Kill {
            unit: unit.to_string(),
            source,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_valid_scope_units() {
        let u = unit_name("1000-4242-1795978977665");
        assert_eq!(u, "connectracer-sandbox-1000-4242-1795978977665.scope");
        assert!(u.chars().all(|c| c.is_ascii_alphanumeric() || "-_.:".contains(c)));
    }

    #[test]
    fn own_cgroup_is_read() {
        let own = cgroup_of(std::process::id() as i32).expect("cgroup v2 line");
        assert!(own.starts_with('/'), "{own}");
    }
}
