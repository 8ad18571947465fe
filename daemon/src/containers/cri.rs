//! The Kubernetes Container Runtime Interface (containerd's CRI plugin,
//! CRI-O) over its Unix socket: a container's name and image, and its pod's
//! name, namespace and labels.

use std::path::PathBuf;

use connectracer_proto::ContainerMeta;
use hyper_util::rt::TokioIo;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use k8s_cri::v1::{ContainerFilter, ContainerStatusRequest, ListContainersRequest, PodSandboxStatusRequest};
use tonic::transport::{Channel, Endpoint, Uri};

use super::LookupError;

#[derive(Debug)]
pub struct CriApi {
    socket: PathBuf,
    /// Label keys copied from the pod.
    pod_labels: Vec<String>,
    client: Option<RuntimeServiceClient<Channel>>,
}

fn not_found(s: &tonic::Status) -> bool {
    s.code() == tonic::Code::NotFound
}

impl CriApi {
    pub fn new(socket: PathBuf, pod_labels: Vec<String>) -> Self {
        Self {
            socket,
            pod_labels,
            client: None,
        }
    }

    /// A lazy channel: it connects at the first call and again after the
    /// runtime restarted, so a runtime that is down fails that call only.
    fn client(&mut self) -> Result<RuntimeServiceClient<Channel>, LookupError> {
        if let Some(c) = &self.client {
            return Ok(c.clone());
        }
        let socket = self.socket.clone();
        // The URI is required by tonic and never used: the connector dials the socket.
        let channel = Endpoint::from_static("http://[::1]:1").connect_with_connector_lazy(tower::service_fn(
            move |_: Uri| {
                let socket = socket.clone();
                async move {
                    Ok::<_, std::io::Error>(TokioIo::new(tokio::net::UnixStream::connect(socket).await?))
                }
            },
        ));
        let c = RuntimeServiceClient::new(channel);
        self.client = Some(c.clone());
        Ok(c)
    }

    /// None: the runtime knows neither a container nor a pod sandbox by
    /// this id.
    pub async fn lookup(&mut self, id: &str) -> Result<Option<ContainerMeta>, LookupError> {
        let mut client = self.client()?;
        let listed = client
            .list_containers(ListContainersRequest {
                filter: Some(ContainerFilter {
                    id: id.to_string(),
                    ..Default::default()
                }),
            })
            .await?
            .into_inner()
            .containers
            .into_iter()
            .find(|c| c.id == id);
        let Some(container) = listed else {
            // The pod's sandbox (pause) container has a cgroup of its own,
            // and its id is the sandbox's.
            return self.pod(&mut client, id).await;
        };
        // The status names the image by its tag where the listing has the
        // image id the container was created from.
        let status = match client
            .container_status(ContainerStatusRequest {
                container_id: id.to_string(),
                verbose: false,
            })
            .await
        {
            Ok(s) => s.into_inner().status,
            Err(s) if not_found(&s) => return Ok(None),
            Err(s) => return Err(s.into()),
        };
        let image = status
            .as_ref()
            .and_then(|s| s.image.as_ref())
            .or(container.image.as_ref())
            .map(|i| i.image.clone())
            .filter(|i| !i.is_empty());
        let mut meta = self
            .pod(&mut client, &container.pod_sandbox_id)
            .await?
            .unwrap_or_default();
        meta.container_name = container.metadata.map(|m| m.name).filter(|n| !n.is_empty());
        meta.container_image = image;
        Ok(Some(meta))
    }

    /// The pod's name, namespace and selected labels.
    async fn pod(
        &self,
        client: &mut RuntimeServiceClient<Channel>,
        sandbox: &str,
    ) -> Result<Option<ContainerMeta>, LookupError> {
        if sandbox.is_empty() {
            return Ok(None);
        }
        let status = match client
            .pod_sandbox_status(PodSandboxStatusRequest {
                pod_sandbox_id: sandbox.to_string(),
                verbose: false,
            })
            .await
        {
            Ok(s) => s.into_inner().status,
            Err(s) if not_found(&s) => return Ok(None),
            Err(s) => return Err(s.into()),
        };
        let Some(status) = status else {
            return Ok(None);
        };
        let metadata = status.metadata.unwrap_or_default();
        let nonempty = |s: String| (!s.is_empty()).then_some(s);
        Ok(Some(ContainerMeta {
            pod_name: nonempty(metadata.name),
            pod_namespace: nonempty(metadata.namespace),
            pod_labels: status
                .labels
                .into_iter()
                .filter(|(k, _)| self.pod_labels.contains(k))
                .collect(),
            ..Default::default()
        }))
    }
}
