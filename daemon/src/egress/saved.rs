//! The remembered destinations on disk: JSON in the state directory,
//! written by a thread of its own (temp file and rename, so a crash
//! mid-write leaves the previous save) from a snapshot the owner takes.

use std::path::{Path, PathBuf};
use std::sync::mpsc::{sync_channel, SyncSender, TrySendError};

use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use super::{Dest, EgressSeen, Scope, Seen, MAX_ENTRIES, MAX_SCOPES};

/// File in the state directory.
pub const FILE: &str = "egress-seen.json";
const VERSION: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Parse {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("{path}: version {found}, this daemon reads {VERSION}")]
    Version { path: PathBuf, found: u32 },
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    version: u32,
    scopes: Vec<Scope>,
    entries: Vec<Entry>,
    dropped: u64,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Entry {
    #[serde(flatten)]
    dest: Dest,
    #[serde(flatten)]
    seen: Seen,
}

impl EgressSeen {
    /// What a previous run saved; empty when there is no file.
    pub fn load(path: &Path) -> Result<Self, LoadError> {
        let text = match std::fs::read(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Self::new()),
            Err(source) => {
                return Err(LoadError::Read {
                    path: path.into(),
                    source,
                })
            }
        };
        let file: File = serde_json::from_slice(&text).map_err(|source| LoadError::Parse {
            path: path.into(),
            source,
        })?;
        if file.version != VERSION {
            return Err(LoadError::Version {
                path: path.into(),
                found: file.version,
            });
        }
        let mut seen = Self::new();
        seen.dropped = file.dropped;
        // Indices are remapped through `intern`: a hand-edited file with
        // duplicate or excess scopes cannot break the bounds.
        let ids: Vec<Option<u32>> = file
            .scopes
            .into_iter()
            .take(MAX_SCOPES)
            .map(|s| seen.intern(s))
            .collect();
        for Entry { mut dest, seen: s } in file.entries.into_iter().take(MAX_ENTRIES) {
            let Some(Some(i)) = ids.get(dest.scope as usize) else {
                continue;
            };
            dest.scope = *i;
            seen.entries.insert(dest, s);
        }
        Ok(seen)
    }

    /// The bytes to save, when anything changed since the last call.
    pub fn snapshot(&mut self) -> Option<Vec<u8>> {
        if !std::mem::take(&mut self.dirty) {
            return None;
        }
        let file = File {
            version: VERSION,
            scopes: self.scopes.clone(),
            entries: self
                .entries
                .iter()
                .map(|(d, s)| Entry {
                    dest: d.clone(),
                    seen: *s,
                })
                .collect(),
            dropped: self.dropped,
        };
        Some(serde_json::to_vec(&file).expect("plain data serializes"))
    }

    /// A snapshot that could not be handed to the writer is taken again
    /// next time.
    pub fn unsaved(&mut self) {
        self.dirty = true;
    }
}

/// Writes snapshots to `path` on its own thread, one at a time.
#[derive(Debug)]
pub struct Saver {
    tx: SyncSender<Vec<u8>>,
    thread: std::thread::JoinHandle<()>,
}

impl Saver {
    pub fn spawn(path: PathBuf) -> std::io::Result<Self> {
        let (tx, rx) = sync_channel::<Vec<u8>>(1);
        let file = path;
        let thread = std::thread::Builder::new()
            .name("egress-save".into())
            .spawn(move || {
                // Saves come every second: a state directory that cannot be
                // written is said once, not every second.
                let mut failing = false;
                for bytes in rx {
                    match crate::sys::state_file::replace(&file, &bytes) {
                        Err(e) if !failing => {
                            warn!("saving remembered destinations to {}: {e}", file.display());
                            failing = true;
                        }
                        Ok(()) if failing => {
                            info!("saving remembered destinations to {} again", file.display());
                            failing = false;
                        }
                        _ => {}
                    }
                }
            })?;
        Ok(Self { tx, thread })
    }

    /// Hands a snapshot to the writer; false when it is still busy with
    /// the previous one.
    pub fn offer(&self, bytes: Vec<u8>) -> bool {
        match self.tx.try_send(bytes) {
            Ok(()) => true,
            Err(TrySendError::Full(_)) => false,
            Err(TrySendError::Disconnected(_)) => true,
        }
    }

    /// At stop: the last snapshot (if any) written after whatever the
    /// thread is doing, and the thread ended.
    pub fn finish(self, last: Option<Vec<u8>>) {
        if let Some(bytes) = last {
            let _ = self.tx.send(bytes);
        }
        drop(self.tx);
        let _ = self.thread.join();
    }
}
