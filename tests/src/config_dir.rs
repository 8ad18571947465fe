//! A configuration directory that disappears with the test. Each daemon
//! gets its own: the daemon watches its configuration directory.

use std::path::{Path, PathBuf};

#[derive(Debug)]
pub struct ConfigDir {
    path: PathBuf,
    /// Removes the directory when dropped; None for a placeholder that owns nothing.
    #[allow(dead_code, reason = "held for its Drop")]
    owned: Option<tempfile::TempDir>,
}

impl ConfigDir {
    pub fn new(name: &str, contents: &str) -> Self {
        let owned = tempfile::Builder::new()
            .prefix(&format!("connectracer-test-{name}-"))
            .tempdir()
            .expect("creating the config dir");
        let path = owned.path().to_path_buf();
        std::fs::create_dir_all(path.join("conf.d")).expect("creating conf.d");
        // Daemons run side by side in tests: none takes the default
        // metrics port or the system's node_exporter textfile. Tests
        // that want metrics add a later drop-in.
        std::fs::write(
            path.join("conf.d/00-test.toml"),
            "[metrics]\nlisten = \"off\"\ntextfile = \"off\"\n",
        )
        .expect("writing the test drop-in");
        let dir = Self {
            path,
            owned: Some(owned),
        };
        dir.write(contents);
        dir
    }

    /// Stands in for a directory handed on to another owner.
    pub(crate) fn placeholder() -> Self {
        Self {
            path: PathBuf::new(),
            owned: None,
        }
    }

    pub fn dir(&self) -> &Path {
        &self.path
    }

    /// Adds or replaces `conf.d/NAME`.
    pub fn write_dropin(&self, name: &str, contents: &str) {
        std::fs::write(self.path.join("conf.d").join(name), contents).expect("writing drop-in");
    }

    pub fn main(&self) -> PathBuf {
        self.path.join("connectracer.toml")
    }

    /// Replaces the main file the way editors do: write aside, rename over.
    pub fn write(&self, contents: &str) {
        let tmp = self.path.join(".connectracer.toml.swp");
        std::fs::write(&tmp, contents).expect("writing config");
        std::fs::rename(&tmp, self.main()).expect("renaming config");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn removed_with_the_test_and_placeholders_own_nothing() {
        let d = ConfigDir::new("unit", "trace = \"all\"\n");
        let path = d.dir().to_path_buf();
        assert!(d.owned.is_some());
        assert_eq!(std::fs::read_to_string(d.main()).unwrap(), "trace = \"all\"\n");
        drop(d);
        assert!(!path.exists());
        assert!(ConfigDir::placeholder().owned.is_none());
    }
}
