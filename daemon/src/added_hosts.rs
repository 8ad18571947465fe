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
    /// A change being tried: what the sources say while its reload runs.
    /// Only `commit` (after the reload applied it) writes it to disk; a
    /// refused change is dropped and leaves no trace.
    staged: Option<Staged>,
}

#[derive(Debug, Clone)]
struct Staged {
    persisted: Vec<AddedHost>,
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
            staged: None,
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

    /// Whether `file` is one of the sources added hosts are read from.
    pub fn is_source(&self, file: &Path) -> bool {
        file == self.path || file == Path::new(RUNTIME_SOURCE)
    }

    pub fn runtime(&self) -> &[AddedHost] {
        &self.runtime
    }

    /// Extra configuration sources, after /etc's: the persisted file (as
    /// written, so errors point into it) and the run-time hosts; with a
    /// change staged, what they will be once it is committed.
    pub fn sources(&self) -> Vec<(PathBuf, String)> {
        let mut out = Vec::new();
        let runtime = match &self.staged {
            Some(s) => {
                if !s.persisted.is_empty() {
                    out.push((self.path.clone(), render(&s.persisted)));
                }
                &s.runtime
            }
            None => {
                if let Ok(text) = std::fs::read_to_string(&self.path) {
                    out.push((self.path.clone(), text));
                }
                &self.runtime
            }
        };
        if !runtime.is_empty() {
            out.push((PathBuf::from(RUNTIME_SOURCE), render(runtime)));
        }
        out
    }

    /// Stages `host`: the sources include it, nothing is written yet.
    pub fn stage_add(&mut self, host: AddedHost, runtime: bool) -> Result<(), AddedHostsError> {
        let mut staged = Staged {
            persisted: self.persisted()?,
            runtime: self.runtime.clone(),
        };
        if runtime {
            staged.runtime.push(host);
        } else {
            staged.persisted.push(host);
        }
        self.staged = Some(staged);
        Ok(())
    }

    /// Stages the removal of every added host named `name`; returns how many.
    pub fn stage_remove(&mut self, name: &str) -> Result<usize, AddedHostsError> {
        let mut staged = Staged {
            persisted: self.persisted()?,
            runtime: self.runtime.clone(),
        };
        let before = staged.persisted.len() + staged.runtime.len();
        staged.persisted.retain(|h| h.name != name);
        staged.runtime.retain(|h| h.name != name);
        let removed = before - staged.persisted.len() - staged.runtime.len();
        if removed > 0 {
            self.staged = Some(staged);
        }
        Ok(removed)
    }

    /// The staged change was applied: make it what is kept. If the file
    /// cannot be written, the change stays in force for this run only.
    pub fn commit(&mut self) -> Result<(), AddedHostsError> {
        let Some(s) = self.staged.take() else {
            return Ok(());
        };
        let saved = self.save(&s.persisted);
        self.runtime = s.runtime;
        if saved.is_err() {
            // Keep in memory what is in force so the next reload agrees.
            let on_disk = self.persisted().unwrap_or_default();
            self.runtime
                .extend(s.persisted.into_iter().filter(|h| !on_disk.contains(h)));
        }
        saved
    }

    /// The staged change was refused: forget it.
    pub fn discard(&mut self) {
        self.staged = None;
    }

    fn save(&self, hosts: &[AddedHost]) -> Result<(), AddedHostsError> {
        let write_err = |source| AddedHostsError::Write {
            path: self.path.clone(),
            source,
        };
        if let Some(dir) = self.path.parent() {
            std::fs::create_dir_all(dir).map_err(write_err)?;
        }
        crate::sys::state_file::replace(&self.path, render(hosts)).map_err(write_err)
    }
}

/// Checks one host on its own, through the configuration parser, before it
/// goes near a reload: a host that cannot be valid is the request's fault,
/// not the configuration's, and must not count as a failed reload. Errors
/// name the request's argument (`port`, `label`, `name`) and say why.
pub fn check(host: &AddedHost) -> Result<(), (String, String)> {
    let text = render(std::slice::from_ref(host));
    let Err(errors) = crate::config::parse_config(Path::new(RUNTIME_SOURCE), &text) else {
        return Ok(());
    };
    let first = errors.0.into_iter().next().map(|e| {
        let field = match e.key.rsplit_once('.').map_or(e.key.as_str(), |(_, k)| k) {
            k if k.starts_with("ports") => "port",
            "label" => "label",
            _ => "name",
        };
        (field.to_string(), e.message)
    });
    Err(first.unwrap_or_else(|| ("name".into(), "not a valid host".into())))
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
    fn a_bad_host_is_refused_naming_its_argument() {
        let host = |name: &str, ports: Vec<toml::Value>| AddedHost {
            name: name.into(),
            ports,
            label: None,
        };
        let field = |h: &AddedHost| check(h).unwrap_err().0;
        assert_eq!(check(&host("127.0.0.2", vec![toml::Value::Integer(443)])), Ok(()));
        assert_eq!(field(&host("127.0.0.2", vec![toml::Value::Integer(0)])), "port");
        assert_eq!(field(&host("10.0.0.1/99", vec![])), "name");
    }

    #[test]
    fn round_trips_through_the_config_parser() {
        let dir = std::env::temp_dir().join(format!("connectracer-added-{}", std::process::id()));
        let mut a = AddedHosts::new(&dir);
        a.stage_add(
            AddedHost {
                name: "api.example.com".into(),
                ports: vec![toml::Value::Integer(443), toml::Value::String("8000-8100".into())],
                label: Some("with \"quotes\"".into()),
            },
            false,
        )
        .unwrap();
        a.commit().unwrap();
        a.stage_add(
            AddedHost {
                name: "10.0.0.1".into(),
                ports: vec![],
                label: None,
            },
            true,
        )
        .unwrap();
        a.commit().unwrap();
        let c = crate::config::parse_files(&a.sources()).unwrap();
        assert_eq!(c.hosts.len(), 2);
        assert_eq!(c.hosts[0].label.as_deref(), Some("with \"quotes\""));
        assert_eq!(c.hosts[0].ports.0, vec![443..=443, 8000..=8100]);
        assert_eq!(a.stage_remove("api.example.com").unwrap(), 1);
        a.commit().unwrap();
        assert_eq!(a.stage_remove("10.0.0.1").unwrap(), 1);
        a.commit().unwrap();
        assert!(a.persisted().unwrap().is_empty());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_discarded_change_leaves_nothing() {
        let dir = std::env::temp_dir().join(format!("connectracer-staged-{}", std::process::id()));
        let mut a = AddedHosts::new(&dir);
        let host = |name: &str| AddedHost {
            name: name.into(),
            ports: vec![],
            label: None,
        };
        a.stage_add(host("10.0.0.1"), false).unwrap();
        assert_eq!(crate::config::parse_files(&a.sources()).unwrap().hosts.len(), 1);
        a.discard();
        assert!(a.sources().is_empty());
        assert!(!dir.join(FILE).exists(), "nothing written before commit");
        a.stage_add(host("10.0.0.2"), true).unwrap();
        a.discard();
        assert!(a.runtime().is_empty());
        a.stage_add(host("10.0.0.3"), false).unwrap();
        a.commit().unwrap();
        assert_eq!(a.stage_remove("10.0.0.3").unwrap(), 1);
        a.discard();
        assert_eq!(a.persisted().unwrap(), vec![host("10.0.0.3")]);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
