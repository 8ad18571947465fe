//! Hosts added at run time (`tracectl add-host`): persisted in the state
//! directory so they survive restarts (or kept in memory with --runtime),
//! and merged after /etc's files through the same parser, so they are
//! validated, numbered and reloaded exactly like configured hosts.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// File in the state directory holding the persisted hosts.
pub const FILE: &str = "hosts.toml";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AddedHost {
    pub name: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<toml::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct HostsFile {
    #[serde(default)]
    host: Vec<AddedHost>,
}

/// Persisted and run-time-only added hosts.
#[derive(Debug)]
pub struct AddedHosts {
    path: PathBuf,
    runtime: Vec<AddedHost>,
}

#[derive(Debug, thiserror::Error)]
pub enum AddedHostsError {
    #[error("reading {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not a hosts file: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("writing {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The pseudo-file run-time hosts are reported under in errors.
pub const RUNTIME_SOURCE: &str = "<tracectl add-host --runtime>";

impl AddedHosts {
    pub fn new(state_dir: &Path) -> Self {
        Self {
            path: state_dir.join(FILE),
            runtime: Vec::new(),
        }
    }

    pub fn persisted(&self) -> Result<Vec<AddedHost>, AddedHostsError> {
        match std::fs::read_to_string(&self.path) {
            Ok(text) => {
                toml::from_str::<HostsFile>(&text)
                    .map(|f| f.host)
                    .map_err(|e| AddedHostsError::Parse {
                        path: self.path.clone(),
                        message: e.message().to_string(),
                    })
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
            Err(source) => Err(AddedHostsError::Read {
                path: self.path.clone(),
                source,
            }),
        }
    }

    pub fn runtime(&self) -> &[AddedHost] {
        &self.runtime
    }

    /// Extra configuration sources, after /etc's: the persisted file (as
    /// written, so errors point into it) and the run-time hosts.
    pub fn sources(&self) -> Vec<(PathBuf, String)> {
        let mut out = Vec::new();
        if let Ok(text) = std::fs::read_to_string(&self.path) {
            out.push((self.path.clone(), text));
        }
        if !self.runtime.is_empty() {
            out.push((PathBuf::from(RUNTIME_SOURCE), render(&self.runtime)));
        }
        out
    }

    pub fn add(&mut self, host: AddedHost, runtime: bool) -> Result<(), AddedHostsError> {
        if runtime {
            self.runtime.push(host);
            return Ok(());
        }
        let mut hosts = self.persisted()?;
        hosts.push(host);
        self.save(&hosts)
    }

    /// Removes every added host named `name`; returns how many.
    pub fn remove(&mut self, name: &str) -> Result<usize, AddedHostsError> {
        let before = self.runtime.len();
        self.runtime.retain(|h| h.name != name);
        let mut removed = before - self.runtime.len();
        let mut hosts = self.persisted()?;
        let before = hosts.len();
        hosts.retain(|h| h.name != name);
        if hosts.len() != before {
            removed += before - hosts.len();
            self.save(&hosts)?;
        }
        Ok(removed)
    }

    /// Puts back exactly this state (undo of a change a reload rejected).
    pub fn restore(
        &mut self,
        persisted: &[AddedHost],
        runtime: Vec<AddedHost>,
    ) -> Result<(), AddedHostsError> {
        self.runtime = runtime;
        self.save(persisted)
    }

    fn save(&self, hosts: &[AddedHost]) -> Result<(), AddedHostsError> {
        let write_err = |source| AddedHostsError::Write {
            path: self.path.clone(),
            source,
        };
        if let Some(dir) = self.path.parent() {
            std::fs::create_dir_all(dir).map_err(write_err)?;
        }
        let tmp = self.path.with_extension("toml.tmp");
        std::fs::write(&tmp, render(hosts)).map_err(write_err)?;
        std::fs::rename(&tmp, &self.path).map_err(write_err)
    }
}

fn render(hosts: &[AddedHost]) -> String {
    let header = "# Hosts added with `tracectl add-host`; managed by connectracerd.\n";
    let body = toml::to_string(&HostsFile { host: hosts.to_vec() }).unwrap_or_default();
    format!("{header}{body}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_through_the_config_parser() {
        let dir = std::env::temp_dir().join(format!("connectracer-added-{}", std::process::id()));
        let mut a = AddedHosts::new(&dir);
        a.add(
            AddedHost {
                name: "api.example.com".into(),
                ports: vec![toml::Value::Integer(443), toml::Value::String("8000-8100".into())],
                label: Some("with \"quotes\"".into()),
            },
            false,
        )
        .unwrap();
        a.add(
            AddedHost {
                name: "10.0.0.1".into(),
                ports: vec![],
                label: None,
            },
            true,
        )
        .unwrap();
        let c = crate::config::parse_files(&a.sources()).unwrap();
        assert_eq!(c.hosts.len(), 2);
        assert_eq!(c.hosts[0].label.as_deref(), Some("with \"quotes\""));
        assert_eq!(c.hosts[0].ports.0, vec![443..=443, 8000..=8100]);
        assert_eq!(a.remove("api.example.com").unwrap(), 1);
        assert_eq!(a.remove("10.0.0.1").unwrap(), 1);
        assert!(a.persisted().unwrap().is_empty());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
