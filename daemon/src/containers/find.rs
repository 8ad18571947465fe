//! `--container ID|NAME` (`tracectl profile`, `policy suggest`): which
//! container a user means, among those whose cgroups the caller offers
//! (the cgroup tree for a running one, the destinations store for one
//! that connected): by full id, by a unique prefix of 12 hex digits or
//! more, or by the name its runtime gives it (from the cache of names, or
//! asked of the runtime for containers not in it).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use connectracer_proto::ContainerMeta;

use super::{cri::CriApi, docker::DockerApi, LookupError};
use crate::attribution::cgroup_path::{parse_cgroup_path, ContainerRuntime};
use crate::config::ContainersConfig;

/// The shortest id prefix taken as an id (as Docker prints them).
pub const MIN_PREFIX: usize = 12;
/// How long one runtime may take to name one container.
const ASK_TIMEOUT: Duration = Duration::from_secs(2);

/// A container, and its cgroups (paths below the cgroup2 mount),
/// outermost first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    pub id: String,
    pub runtime: ContainerRuntime,
    pub cgroups: Vec<String>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FindError {
    #[error("no container `{query}` {where_}: not an id, id prefix ({MIN_PREFIX} hex digits or more) or name the runtimes know")]
    Unknown { query: String, where_: &'static str },
    #[error("`{query}` names {} containers ({}): give more of the id", .ids.len(), .ids.join(", "))]
    Ambiguous { query: String, ids: Vec<String> },
}

/// The containers of cgroup paths, grouped by id; paths of no container
/// are passed over.
pub fn containers<'a>(paths: impl IntoIterator<Item = &'a str>) -> Vec<Found> {
    let mut by_id: HashMap<String, Found> = HashMap::new();
    for path in paths {
        let Some(c) = parse_cgroup_path(path).container else {
            continue;
        };
        let found = by_id.entry(c.id.clone()).or_insert_with(|| Found {
            id: c.id,
            runtime: c.runtime,
            cgroups: Vec::new(),
        });
        found.cgroups.push(path.to_string());
    }
    let mut all: Vec<Found> = by_id.into_values().collect();
    for f in &mut all {
        f.cgroups.sort_by_key(|p| (p.matches('/').count(), p.clone()));
        f.cgroups.dedup();
    }
    all.sort_by(|a, b| a.id.cmp(&b.id));
    all
}

/// The candidates whose id `query` is, or starts: None when it cannot be
/// an id (too short, not hex) or matches none.
fn by_id(query: &str, candidates: &[Found]) -> Option<Result<Found, FindError>> {
    if query.len() < MIN_PREFIX || !query.chars().all(|c| c.is_ascii_hexdigit()) {
        return None;
    }
    let q = query.to_ascii_lowercase();
    let hits: Vec<&Found> = candidates.iter().filter(|f| f.id.starts_with(&q)).collect();
    match hits.as_slice() {
        [] => None,
        [one] => Some(Ok((*one).clone())),
        many => Some(Err(FindError::Ambiguous {
            query: query.to_string(),
            ids: many.iter().map(|f| f.id.clone()).collect(),
        })),
    }
}

/// Asks runtimes for containers' names, giving up on a runtime at its
/// first failure (a runtime that is down would cost every container a
/// timeout).
struct Asker<'a> {
    config: &'a ContainersConfig,
    docker: HashMap<ContainerRuntime, DockerApi>,
    cri: HashMap<ContainerRuntime, CriApi>,
    down: Vec<ContainerRuntime>,
}

impl Asker<'_> {
    async fn name(&mut self, f: &Found) -> Option<String> {
        if self.down.contains(&f.runtime) {
            return None;
        }
        let c = self.config;
        let asked = match f.runtime {
            ContainerRuntime::Docker | ContainerRuntime::Podman => {
                let socket = match f.runtime {
                    ContainerRuntime::Docker => c.docker_socket.as_ref()?,
                    _ => c.podman_socket.as_ref()?,
                };
                let api = self
                    .docker
                    .entry(f.runtime)
                    .or_insert_with(|| DockerApi::new(socket.clone()));
                timed(api.lookup(&f.id)).await
            }
            ContainerRuntime::Containerd | ContainerRuntime::CriO => {
                let socket = match f.runtime {
                    ContainerRuntime::Containerd => c.containerd_socket.as_ref()?,
                    _ => c.crio_socket.as_ref()?,
                };
                let api = self
                    .cri
                    .entry(f.runtime)
                    .or_insert_with(|| CriApi::new(socket.clone(), Vec::new()));
                timed(api.lookup(&f.id)).await
            }
            ContainerRuntime::Lxc | ContainerRuntime::Nerdctl => return None,
        };
        match asked {
            Ok(meta) => meta.and_then(|m| m.container_name),
            Err(_) => {
                self.down.push(f.runtime);
                None
            }
        }
    }
}

async fn timed<F>(lookup: F) -> Result<Option<ContainerMeta>, LookupError>
where
    F: std::future::Future<Output = Result<Option<ContainerMeta>, LookupError>>,
{
    tokio::time::timeout(ASK_TIMEOUT, lookup)
        .await
        .unwrap_or(Err(LookupError::Timeout(ASK_TIMEOUT)))
}

/// The one container among `candidates` that `query` names. `known`:
/// names already known by id (the cache); the runtimes (as configured)
/// are asked about the others, one at a time. `where_` ends the message
/// for a container not found ("running", "in the destinations seen").
pub async fn find(
    query: &str,
    candidates: &[Found],
    known: &HashMap<String, Arc<ContainerMeta>>,
    config: &ContainersConfig,
    where_: &'static str,
) -> Result<Found, FindError> {
    if let Some(r) = by_id(query, candidates) {
        return r;
    }
    let mut asker = Asker {
        config,
        docker: HashMap::new(),
        cri: HashMap::new(),
        down: Vec::new(),
    };
    let mut hits = Vec::new();
    for f in candidates {
        let name = match known.get(&f.id).and_then(|m| m.container_name.clone()) {
            Some(n) => Some(n),
            None if config.enabled => asker.name(f).await,
            None => None,
        };
        if name.as_deref() == Some(query) {
            hits.push(f.clone());
        }
    }
    match hits.len() {
        0 => Err(FindError::Unknown {
            query: query.to_string(),
            where_,
        }),
        1 => Ok(hits.remove(0)),
        _ => Err(FindError::Ambiguous {
            query: query.to_string(),
            ids: hits.iter().map(|f| f.id.clone()).collect(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(c: char) -> String {
        c.to_string().repeat(64)
    }

    fn config() -> ContainersConfig {
        ContainersConfig {
            enabled: false,
            docker_socket: None,
            podman_socket: None,
            containerd_socket: None,
            crio_socket: None,
            pod_labels: Vec::new(),
        }
    }

    #[test]
    fn cgroups_group_by_container_outermost_first() {
        let (a, b) = (id('a'), id('b'));
        let paths = [
            format!("/system.slice/docker-{a}.scope/init"),
            format!("/system.slice/docker-{a}.scope"),
            format!("/t/docker/{b}"),
            "/system.slice/ssh.service".to_string(),
        ];
        let found = containers(paths.iter().map(String::as_str));
        assert_eq!(found.len(), 2);
        assert_eq!(found[0].id, a);
        assert_eq!(found[0].runtime, ContainerRuntime::Docker);
        assert_eq!(
            found[0].cgroups,
            [
                format!("/system.slice/docker-{a}.scope"),
                format!("/system.slice/docker-{a}.scope/init")
            ]
        );
        assert_eq!(found[1].cgroups, [format!("/t/docker/{b}")]);
    }

    #[tokio::test]
    async fn ids_prefixes_and_names() {
        let a = format!("0123456789ab{}", "c".repeat(52));
        let b = format!("0123456789ab{}", "d".repeat(52));
        let paths = [format!("/docker/{a}"), format!("/docker/{b}")];
        let cands = containers(paths.iter().map(String::as_str));
        let known: HashMap<String, Arc<ContainerMeta>> = [(
            b.clone(),
            Arc::new(ContainerMeta {
                container_name: Some("web".into()),
                ..Default::default()
            }),
        )]
        .into();
        let config = config();
        let find = |q: &'static str| find(q, &cands, &known, &config, "running");
        assert_eq!(find("0123456789abc").await.unwrap().id, a);
        assert_eq!(find("0123456789ABD").await.unwrap().id, b);
        assert_eq!(
            find("0123456789ab").await,
            Err(FindError::Ambiguous {
                query: "0123456789ab".into(),
                ids: vec![a.clone(), b.clone()],
            })
        );
        assert_eq!(find("web").await.unwrap().id, b);
        let e = find("0123456789").await.unwrap_err().to_string();
        assert!(e.starts_with("no container `0123456789` running"), "{e}");
        let e = find("db").await.unwrap_err().to_string();
        assert!(e.contains("`db`"), "{e}");
    }
}
