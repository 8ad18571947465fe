//! The sandboxes of `tracectl run`: each is a root-owned cgroup (a systemd
//! scope, or one the daemon created: `placer`), and a policy scope (default deny, the caller's allow-list) that
//! the kernel asks before the host's policy. They are persisted in the
//! state directory so that a restarted daemon puts them back in force (the
//! pinned links keep enforcing meanwhile), and merged into the
//! configuration after /etc's files and the added hosts, through the same
//! parser and the one reload path.

pub mod place;
pub mod placer;
mod render;
pub mod scope;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use connectracer_proto::api::SandboxRule;
use serde::{Deserialize, Serialize};

pub use render::check;

/// File in the state directory holding the sandboxes in force.
pub const FILE: &str = "sandboxes.toml";
/// The pseudo-file sandbox rules are reported under in errors.
pub const SOURCE: &str = "<tracectl run>";
/// The directory sandboxes' cgroups are created in, below the daemon's
/// attach point (the cgroup2 root unless `--cgroup` names another).
pub const CGROUP_DIR: &str = "connectracer-sandbox";
/// At most this many rules per sandbox, and sandboxes per user: what one
/// user may make the daemon hold.
pub const MAX_RULES: usize = 64;
pub const MAX_PER_USER: usize = 16;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sandbox {
    pub id: String,
    /// Who asked for it.
    pub uid: u32,
    /// The cgroup directory, absolute.
    pub dir: PathBuf,
    /// The same, relative to the cgroup2 mount: the scope's selector.
    pub cgroup: String,
    /// The systemd scope holding it, when it is one (`placer`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unit: Option<String>,
    #[serde(default)]
    pub audit: bool,
    #[serde(default)]
    pub rule: Vec<SandboxRule>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct SandboxesFile {
    #[serde(default)]
    sandbox: Vec<Sandbox>,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("reading {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not a sandboxes file: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("writing {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The sandboxes in force, and a change being tried: what the sources say
/// while its reload runs; only `commit` writes it.
#[derive(Debug)]
pub struct Sandboxes {
    path: PathBuf,
    live: Vec<Sandbox>,
    staged: Option<Vec<Sandbox>>,
}

impl Sandboxes {
    /// Those persisted by the previous instance; an unreadable file is
    /// logged and treated as none (their cgroups are then left as they are).
    pub fn open(state_dir: &Path) -> Self {
        let path = state_dir.join(FILE);
        let live = match read(&path) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!("{:#}", anyhow::Error::from(e));
                Vec::new()
            }
        };
        Self {
            path,
            live,
            staged: None,
        }
    }

    fn current(&self) -> &[Sandbox] {
        self.staged.as_deref().unwrap_or(&self.live)
    }

    pub fn live(&self) -> &[Sandbox] {
        &self.live
    }

    pub fn get(&self, id: &str) -> Option<&Sandbox> {
        self.live.iter().find(|s| s.id == id)
    }

    /// The configuration text of every sandbox (staged change included),
    /// and their cgroups: what a load merges after the other sources.
    pub fn sources(&self) -> (Vec<(PathBuf, String)>, BTreeSet<String>) {
        let all = self.current();
        let cgroups = all.iter().map(|s| s.cgroup.clone()).collect();
        if all.is_empty() {
            return (Vec::new(), cgroups);
        }
        (vec![(PathBuf::from(SOURCE), render::config(all))], cgroups)
    }

    pub fn stage_add(&mut self, s: Sandbox) {
        let mut next = self.live.clone();
        next.push(s);
        self.staged = Some(next);
    }

    pub fn stage_remove(&mut self, id: &str) {
        let mut next = self.live.clone();
        next.retain(|s| s.id != id);
        self.staged = Some(next);
    }

    /// The staged change was applied. If the file cannot be written, it is
    /// in force for this run only.
    pub fn commit(&mut self) -> Result<(), StoreError> {
        let Some(next) = self.staged.take() else {
            return Ok(());
        };
        self.live = next;
        self.save()
    }

    pub fn discard(&mut self) {
        self.staged = None;
    }

    fn save(&self) -> Result<(), StoreError> {
        let write_err = |source| StoreError::Write {
            path: self.path.clone(),
            source,
        };
        if let Some(dir) = self.path.parent() {
            std::fs::create_dir_all(dir).map_err(write_err)?;
        }
        let file = SandboxesFile {
            sandbox: self.live.clone(),
        };
        let text = format!(
            "# Sandboxes of `tracectl run` in force; managed by connectracerd.\n{}",
            toml::to_string(&file).unwrap_or_default()
        );
        crate::sys::state_file::replace(&self.path, text).map_err(write_err)
    }
}

fn read(path: &Path) -> Result<Vec<Sandbox>, StoreError> {
    match std::fs::read_to_string(path) {
        Ok(text) => toml::from_str::<SandboxesFile>(&text)
            .map(|f| f.sandbox)
            .map_err(|e| StoreError::Parse {
                path: path.to_path_buf(),
                message: e.message().to_string(),
            }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(source) => Err(StoreError::Read {
            path: path.to_path_buf(),
            source,
        }),
    }
}

#[cfg(test)]
mod tests;
