//! `[containers]`: the runtimes' sockets and the pod labels events carry.

use std::path::{Path, PathBuf};

use toml::Spanned;

use super::Ctx;
use crate::config::containers::label_key_problem;
use crate::config::raw::RawContainers;
use crate::config::ContainersConfig;

/// At most this many label keys: each is copied onto every event of a pod.
const MAX_POD_LABELS: usize = 32;

pub(super) fn apply(ctx: &mut Ctx<'_>, r: &RawContainers, out: &mut ContainersConfig) {
    if let Some(v) = &r.enabled {
        out.enabled = *v.get_ref();
    }
    for (v, key, slot) in [
        (
            &r.docker_socket,
            "containers.docker_socket",
            &mut out.docker_socket,
        ),
        (
            &r.podman_socket,
            "containers.podman_socket",
            &mut out.podman_socket,
        ),
        (
            &r.containerd_socket,
            "containers.containerd_socket",
            &mut out.containerd_socket,
        ),
        (&r.crio_socket, "containers.crio_socket", &mut out.crio_socket),
    ] {
        if let Some(v) = v {
            if let Some(path) = socket(ctx, v, key) {
                *slot = path;
            }
        }
    }
    if let Some(list) = &r.pod_labels {
        if list.len() > MAX_POD_LABELS {
            ctx.spanned(
                &list[MAX_POD_LABELS],
                "containers.pod_labels",
                format!("at most {MAX_POD_LABELS} labels: each is copied onto every event of the pod"),
            );
        }
        let mut keys: Vec<String> = Vec::new();
        for (i, v) in list.iter().enumerate() {
            let key = v.get_ref();
            if let Some(problem) = label_key_problem(key) {
                ctx.spanned(
                    v,
                    &format!("containers.pod_labels[{i}]"),
                    format!("`{key}` is not a Kubernetes label key: {problem}"),
                );
            } else if keys.contains(key) {
                ctx.spanned(
                    v,
                    &format!("containers.pod_labels[{i}]"),
                    format!("`{key}` is listed twice"),
                );
            } else {
                keys.push(key.clone());
            }
        }
        out.pod_labels = keys;
    }
}

/// `Some(None)` for "off", `Some(Some(path))` for an absolute path.
fn socket(ctx: &mut Ctx<'_>, v: &Spanned<String>, key: &str) -> Option<Option<PathBuf>> {
    match v.get_ref().trim() {
        "off" => Some(None),
        s if Path::new(s).is_absolute() && !s.ends_with('/') => Some(Some(PathBuf::from(s))),
        s => {
            ctx.spanned(
                v,
                key,
                format!("`{s}`: the absolute path of the runtime's Unix socket, or \"off\""),
            );
            None
        }
    }
}
