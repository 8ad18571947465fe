//! The validated model of `[containers]`: which container runtimes are
//! asked for the names behind the container ids cgroup paths carry.

use std::path::PathBuf;

/// Where each runtime's API listens (None: not asked), and what of a
/// pod's labels events carry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainersConfig {
    /// Off: events carry the ids from cgroup paths only, no runtime is asked.
    pub enabled: bool,
    /// The Docker Engine API.
    pub docker_socket: Option<PathBuf>,
    /// Podman's Docker-compatible API (the same client).
    pub podman_socket: Option<PathBuf>,
    /// containerd's CRI service (Kubernetes containers, namespace k8s.io).
    pub containerd_socket: Option<PathBuf>,
    /// CRI-O's CRI service.
    pub crio_socket: Option<PathBuf>,
    /// Pod label keys copied onto events; pods carry many labels, and
    /// each one copied is a cost on every event and in every sink.
    pub pod_labels: Vec<String>,
}

pub const DEFAULT_DOCKER_SOCKET: &str = "/run/docker.sock";
pub const DEFAULT_PODMAN_SOCKET: &str = "/run/podman/podman.sock";
pub const DEFAULT_CONTAINERD_SOCKET: &str = "/run/containerd/containerd.sock";
pub const DEFAULT_CRIO_SOCKET: &str = "/run/crio/crio.sock";

impl Default for ContainersConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            docker_socket: Some(DEFAULT_DOCKER_SOCKET.into()),
            podman_socket: Some(DEFAULT_PODMAN_SOCKET.into()),
            containerd_socket: Some(DEFAULT_CONTAINERD_SOCKET.into()),
            crio_socket: Some(DEFAULT_CRIO_SOCKET.into()),
            pod_labels: vec!["app".into(), "app.kubernetes.io/name".into()],
        }
    }
}

/// Why a string is not a Kubernetes label key (`[prefix/]name`: the
/// prefix a DNS subdomain, the name 1 to 63 characters of letters,
/// digits, `-`, `_` and `.`, starting and ending with a letter or digit).
pub fn label_key_problem(key: &str) -> Option<&'static str> {
    let (prefix, name) = match key.rsplit_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, key),
    };
    let alnum_ends = |s: &str| {
        s.starts_with(|c: char| c.is_ascii_alphanumeric()) && s.ends_with(|c: char| c.is_ascii_alphanumeric())
    };
    if name.is_empty() || name.len() > 63 {
        return Some("the name part is 1 to 63 characters");
    }
    if !alnum_ends(name)
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    {
        return Some("the name part holds letters, digits, '-', '_' and '.', and starts and ends with a letter or digit");
    }
    if let Some(p) = prefix {
        let label_ok = |l: &str| {
            !l.is_empty()
                && l.len() <= 63
                && alnum_ends(l)
                && l.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        };
        if p.is_empty() || p.len() > 253 || !p.split('.').all(label_ok) {
            return Some("the prefix before '/' is a lowercase DNS subdomain (example.com)");
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_keys_as_kubernetes_accepts_them() {
        for ok in [
            "app",
            "app.kubernetes.io/name",
            "tier_1",
            "a",
            "k8s-app",
            "x.y/Z.9",
        ] {
            assert_eq!(label_key_problem(ok), None, "{ok}");
        }
        for bad in [
            "",
            "-app",
            "app-",
            "a b",
            "/app",
            "Example.com/app",
            "ex..com/app",
            "app/",
            &"a".repeat(64),
        ] {
            assert!(label_key_problem(bad).is_some(), "{bad}");
        }
    }
}
