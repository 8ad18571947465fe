//! Where a sandbox's cgroup comes from: a transient scope of the service
//! manager when the daemon is a systemd service (see `scope`), otherwise a
//! cgroup the daemon creates below its attach point (outside systemd, and
//! with `--cgroup`, as in the tests). Either way the cgroup is root's and
//! the command was checked by `place::verify` before it moved.

use std::os::fd::BorrowedFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use std::time::{Duration, Instant};

use tokio::sync::OnceCell;

use super::place::{self, PlaceError};
use super::scope;
use super::CGROUP_DIR;
use crate::sys::cgroup_tree;

/// How often a sandbox being removed is looked at until it is empty, and
/// for how long at most.
const EMPTY_POLL: Duration = Duration::from_millis(20);
pub const EMPTY_WAIT: Duration = Duration::from_secs(10);

/// Waits until the cgroup at `dir` has no process left (or is gone), for
/// `EMPTY_WAIT` at most.
pub async fn until_empty(dir: &Path) {
    let started = Instant::now();
    while place::populated(dir) && started.elapsed() < EMPTY_WAIT {
        tokio::time::sleep(EMPTY_POLL).await;
    }
}

#[derive(Debug)]
enum Mode {
    /// Cgroups made by the daemon in this directory.
    Direct(PathBuf),
    /// Transient scopes in `scope::SLICE`.
    Systemd,
}

/// Places commands in new sandbox cgroups, and stops and removes them.
#[derive(Debug)]
pub struct Placer {
    mount: PathBuf,
    mode: Mode,
    /// The system bus, connected at the first scope (a sandbox persisted by
    /// a previous instance may be a scope whatever this one's mode).
    bus: OnceCell<zbus::Connection>,
}

/// A command placed: its sandbox's id and cgroup.
#[derive(Debug, Clone)]
pub struct Placement {
    pub id: String,
    pub pid: i32,
    pub dir: PathBuf,
    /// Below the cgroup2 mount: the policy scope's selector.
    pub cgroup: String,
    pub cgroup_id: u64,
    /// The systemd scope, when it is one.
    pub unit: Option<String>,
}

impl Placer {
    /// Scopes when the daemon is a systemd service attached at the cgroup2
    /// root; otherwise cgroups below `attach` (`--cgroup`'s, for one).
    pub fn choose(mount: &Path, attach: &Path) -> Self {
        let service =
            std::env::var_os("INVOCATION_ID").is_some() && Path::new("/run/systemd/system").is_dir();
        let mode = if service && attach == mount {
            Mode::Systemd
        } else {
            Mode::Direct(attach.join(CGROUP_DIR))
        };
        Self {
            mount: mount.to_path_buf(),
            mode,
            bus: OnceCell::new(),
        }
    }

    /// For the start-up log line.
    pub fn describe(&self) -> String {
        match &self.mode {
            Mode::Direct(dir) => format!("cgroups in {}", dir.display()),
            Mode::Systemd => format!("transient scopes in {}", scope::SLICE),
        }
    }

    async fn bus(&self) -> Result<&zbus::Connection, PlaceError> {
        self.bus
            .get_or_try_init(zbus::Connection::system)
            .await
            .map_err(|e| PlaceError::Scope(scope::ScopeError::Bus(e)))
    }

    /// Checks the pidfd's process against the caller (`place::verify`) and
    /// moves it into a new sandbox cgroup. A cgroup made for a process
    /// that then turned out to be gone is stopped and removed again.
    pub async fn place(
        &self,
        pidfd: BorrowedFd<'_>,
        uid: u32,
        caller: Option<i32>,
    ) -> Result<Placement, PlaceError> {
        let pid = place::verify(pidfd, uid, caller)?;
        let started = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        let id = format!("{uid}-{pid}-{}", started.as_millis());
        let (dir, unit) = match &self.mode {
            Mode::Direct(parent) => {
                let dir = place::create(parent, &format!("sb-{id}"))?;
                if let Err(e) = place::enter(&dir, pid) {
                    let _ = place::remove(&dir);
                    return Err(e);
                }
                (dir, None)
            }
            Mode::Systemd => {
                let unit = scope::unit_name(&id);
                let cgroup = scope::start(self.bus().await?, &unit, uid, pid).await?;
                (cgroup_tree::dir_of(&self.mount, &cgroup), Some(unit))
            }
        };
        let ino = std::fs::metadata(&dir)
            .map(|m| m.ino())
            .map_err(|source| PlaceError::Io {
                what: "reading",
                path: dir.clone(),
                source,
            });
        // The pid moved named the pidfd's process only if it still lives.
        let checked = ino.and_then(|ino| {
            if place::alive(pidfd) {
                Ok(ino)
            } else {
                Err(PlaceError::Gone)
            }
        });
        match checked {
            Ok(cgroup_id) => Ok(Placement {
                id,
                pid,
                cgroup: cgroup_tree::relative_path(&self.mount, &dir).unwrap_or_default(),
                dir,
                cgroup_id,
                unit,
            }),
            Err(e) => {
                self.abandon(&dir, unit.as_deref()).await;
                Err(e)
            }
        }
    }

    /// Stops what is in a sandbox that will not be put in force (or no
    /// longer is), and removes its cgroup once empty; failures are logged.
    pub async fn abandon(&self, dir: &Path, unit: Option<&str>) {
        if let Err(e) = self.kill(dir, unit).await {
            tracing::warn!("sandbox: {:#}", anyhow::Error::from(e));
        }
        until_empty(dir).await;
        if let Err(e) = self.remove(dir, unit) {
            tracing::warn!("sandbox: {:#}", anyhow::Error::from(e));
        }
    }

    /// Kills every process in the sandbox, its descendants' included.
    pub async fn kill(&self, dir: &Path, unit: Option<&str>) -> Result<(), PlaceError> {
        match unit {
            Some(unit) => Ok(scope::kill(self.bus().await?, unit).await?),
            None => place::kill(dir),
        }
    }

    /// Removes the sandbox's (empty) cgroup: a scope's goes with the scope,
    /// which systemd stops once it is empty.
    pub fn remove(&self, dir: &Path, unit: Option<&str>) -> Result<(), PlaceError> {
        match unit {
            Some(_) => Ok(()),
            None => place::remove(dir),
        }
    }
}
