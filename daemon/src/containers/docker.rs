//! The Docker Engine API (and Podman's compatible one) over its Unix
//! socket: a container's name and image from `GET /containers/{id}/json`.

use std::path::PathBuf;

use bollard::query_parameters::InspectContainerOptions;
use bollard::{ClientVersion, Docker};
use connectracer_proto::ContainerMeta;

use super::LookupError;

/// Docker 20.10 answers up to 1.41 and Podman's compatible API 1.40 and
/// up; what is read here has not changed since long before.
const API_VERSION: ClientVersion = ClientVersion {
    major_version: 1,
    minor_version: 41,
};
/// Seconds bollard waits for an answer; the worker's own timeout is shorter.
const CLIENT_TIMEOUT_S: u64 = 5;

/// Labels kubelet's dockershim (cri-dockerd) puts on pod containers.
const POD_NAME_LABEL: &str = "io.kubernetes.pod.name";
const POD_NAMESPACE_LABEL: &str = "io.kubernetes.pod.namespace";

#[derive(Debug)]
pub struct DockerApi {
    socket: PathBuf,
    /// Made at the first lookup, and again after a failure: bollard refuses
    /// to make a client while the socket file does not exist.
    client: Option<Docker>,
}

impl DockerApi {
    pub fn new(socket: PathBuf) -> Self {
        Self { socket, client: None }
    }

    fn client(&mut self) -> Result<Docker, LookupError> {
        if let Some(c) = &self.client {
            return Ok(c.clone());
        }
        let path = self.socket.to_string_lossy();
        let c = Docker::connect_with_unix(&path, CLIENT_TIMEOUT_S, &API_VERSION)?;
        self.client = Some(c.clone());
        Ok(c)
    }

    /// None: the runtime does not know the id (the container is gone).
    pub async fn lookup(&mut self, id: &str) -> Result<Option<ContainerMeta>, LookupError> {
        let client = self.client()?;
        match client
            .inspect_container(id, None::<InspectContainerOptions>)
            .await
        {
            Ok(c) => Ok(Some(meta_of(c))),
            Err(bollard::errors::Error::DockerResponseServerError { status_code: 404, .. }) => Ok(None),
            Err(e) => {
                self.client = None;
                Err(e.into())
            }
        }
    }
}

fn meta_of(c: bollard::models::ContainerInspectResponse) -> ContainerMeta {
    let config = c.config.unwrap_or_default();
    let labels = config.labels.unwrap_or_default();
    ContainerMeta {
        // The API names containers with a leading slash (`/web`).
        container_name: c
            .name
            .map(|n| n.trim_start_matches('/').to_string())
            .filter(|n| !n.is_empty()),
        container_image: config.image.filter(|i| !i.is_empty()),
        pod_name: labels.get(POD_NAME_LABEL).cloned(),
        pod_namespace: labels.get(POD_NAMESPACE_LABEL).cloned(),
        pod_labels: Default::default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_leading_slash_goes_and_pod_labels_are_read() {
        let c: bollard::models::ContainerInspectResponse = serde_json::from_value(serde_json::json!({
            "Id": "f84d", "Name": "/web",
            "Config": {"Image": "probe/busybox:1", "Labels": {
                "io.kubernetes.pod.name": "web-1", "io.kubernetes.pod.namespace": "shop"}}
        }))
        .unwrap();
        let m = meta_of(c);
        assert_eq!(m.container_name.as_deref(), Some("web"));
        assert_eq!(m.container_image.as_deref(), Some("probe/busybox:1"));
        assert_eq!(
            (m.pod_name.as_deref(), m.pod_namespace.as_deref()),
            (Some("web-1"), Some("shop"))
        );
        let bare: bollard::models::ContainerInspectResponse =
            serde_json::from_value(serde_json::json!({"Id": "f84d"})).unwrap();
        assert!(meta_of(bare).is_empty());
    }
}
