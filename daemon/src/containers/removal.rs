//! When a container's cgroup is removed, its names are forgotten: the id
//! will not come back, and a cache that outlived its containers would only
//! grow. cgroupfs reports an rmdir to inotify watches on the *parent*
//! directory (IN_DELETE), not to one on the removed directory itself (no
//! IN_DELETE_SELF), so the parents are watched.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use notify::{EventKind, RecursiveMode, Watcher};
use tokio::sync::mpsc;

use super::Answer;

#[derive(Debug, Default)]
struct Watched {
    /// Container cgroup directory to its container id.
    ids: HashMap<PathBuf, String>,
    /// Watched parents and how many watched children each has.
    parents: HashMap<PathBuf, usize>,
}

#[derive(Debug)]
pub struct Removals {
    watcher: Mutex<notify::RecommendedWatcher>,
    watched: Arc<Mutex<Watched>>,
}

fn lock(m: &Mutex<Watched>) -> std::sync::MutexGuard<'_, Watched> {
    // Nothing held under the lock can panic halfway through an update.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Removals {
    /// Sends `Answer::Gone` for every watched directory removed.
    pub fn new(answers: mpsc::UnboundedSender<Answer>, generation: u32) -> notify::Result<Self> {
        let watched = Arc::new(Mutex::new(Watched::default()));
        let seen = watched.clone();
        let watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
            let Ok(ev) = res else { return };
            if !matches!(ev.kind, EventKind::Remove(_)) {
                return;
            }
            let mut w = lock(&seen);
            for path in &ev.paths {
                if let Some(id) = w.ids.remove(path) {
                    if let Some(n) = path.parent().and_then(|p| w.parents.get_mut(p)) {
                        *n = n.saturating_sub(1);
                    }
                    let _ = answers.send(Answer::Gone { id, generation });
                }
            }
        })?;
        Ok(Self {
            watcher: Mutex::new(watcher),
            watched,
        })
    }

    /// Watches `dir` for removal on behalf of container `id`; false when
    /// it is already gone (or cannot be watched), so the caller forgets
    /// the container at once.
    pub fn watch(&self, dir: &Path, id: &str) -> bool {
        let Some(parent) = dir.parent() else {
            return false;
        };
        let mut watcher = self
            .watcher
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let idle: Vec<PathBuf> = {
            let mut w = lock(&self.watched);
            let idle = w
                .parents
                .iter()
                .filter(|(p, n)| **n == 0 && *p != parent)
                .map(|(p, _)| p.clone())
                .collect();
            w.parents.retain(|p, n| *n > 0 || p == parent);
            idle
        };
        // Parents of containers all gone (a pod's directory) are let go.
        for p in idle {
            let _ = watcher.unwatch(&p);
        }
        let known = lock(&self.watched).parents.contains_key(parent);
        if !known && watcher.watch(parent, RecursiveMode::NonRecursive).is_err() {
            return false;
        }
        {
            let mut w = lock(&self.watched);
            w.parents.entry(parent.to_path_buf()).or_insert(0);
            if w.ids.insert(dir.to_path_buf(), id.to_string()).is_none() {
                *w.parents.entry(parent.to_path_buf()).or_insert(0) += 1;
            }
        }
        // Removed before the watch was in place: no event will say so.
        if !dir.exists() {
            let mut w = lock(&self.watched);
            if w.ids.remove(dir).is_some() {
                if let Some(n) = w.parents.get_mut(parent) {
                    *n = n.saturating_sub(1);
                }
            }
            return false;
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_removed_directory_is_reported_once_with_its_id() {
        let tmp = tempfile::tempdir().unwrap();
        let (tx, mut rx) = mpsc::unbounded_channel();
        let r = Removals::new(tx, 3).unwrap();
        let dir = tmp.path().join("docker").join("c1");
        std::fs::create_dir_all(&dir).unwrap();
        assert!(r.watch(&dir, "c1"));
        assert!(
            !r.watch(&tmp.path().join("docker/never"), "c2"),
            "a missing directory is gone already"
        );
        std::fs::remove_dir(&dir).unwrap();
        let got = rx.blocking_recv().unwrap();
        assert!(
            matches!(got, Answer::Gone { ref id, generation: 3 } if id == "c1"),
            "{got:?}"
        );
        assert!(lock(&r.watched).ids.is_empty());
    }
}
