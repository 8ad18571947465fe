//! A real containerd owned by one test, with its CRI plugin: its own
//! configuration, root, state and sockets in a temporary directory, the
//! cgroupfs driver, a sandbox (pause) image imported locally. Pods run in
//! the host's network namespace, so no CNI is needed. The CRI client is the
//! one kubelet's API defines (k8s-cri), over the socket.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context};
use hyper_util::rt::TokioIo;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use k8s_cri::v1::{
    ContainerConfig, ContainerMetadata, CreateContainerRequest, ImageSpec, LinuxContainerConfig,
    LinuxContainerSecurityContext, LinuxPodSandboxConfig, LinuxSandboxSecurityContext, NamespaceMode,
    NamespaceOption, PodSandboxConfig, PodSandboxMetadata, RemovePodSandboxRequest, RunPodSandboxRequest,
    StartContainerRequest, StopPodSandboxRequest,
};
use tonic::transport::{Channel, Endpoint, Uri};

use crate::cgroup::TestCgroup;
use crate::rootfs::{busybox_rootfs, oci_archive};
use crate::wait::eventually;

/// The images the test imports: the sandbox's, and the workload's.
pub const PAUSE_IMAGE: &str = "docker.io/connectracer/pause:1";
pub const BUSYBOX_IMAGE: &str = "docker.io/connectracer/busybox:1";

#[derive(Debug)]
pub struct Containerd {
    pub dir: tempfile::TempDir,
    pub socket: PathBuf,
    child: Option<Child>,
    rt: tokio::runtime::Runtime,
    client: RuntimeServiceClient<Channel>,
    pods: Vec<String>,
    /// The test cgroup the pods' cgroups are made below.
    test_cgroup: String,
}

/// A pod as the test asks for it.
#[derive(Debug, Clone)]
pub struct PodSpec<'a> {
    pub name: &'a str,
    pub namespace: &'a str,
    pub uid: &'a str,
    pub labels: &'a [(&'a str, &'a str)],
}

fn host_network() -> NamespaceOption {
    NamespaceOption {
        network: NamespaceMode::Node as i32,
        pid: NamespaceMode::Container as i32,
        ipc: NamespaceMode::Pod as i32,
        ..Default::default()
    }
}

fn config(root: &Path) -> String {
    let d = root.display();
    format!(
        r#"version = 2
root = "{d}/root"
state = "{d}/state"
[grpc]
  address = "{d}/containerd.sock"
[ttrpc]
  address = "{d}/containerd.sock.ttrpc"
[plugins."io.containerd.internal.v1.opt"]
  path = "{d}/opt"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{PAUSE_IMAGE}"
  # CRI gives sandboxes oom_score_adj -998, which needs CAP_SYS_RESOURCE;
  # where root lacks it (this VM's bounding set has every capability but
  # that one) runc init dies writing it ("can't get final child's PID from
  # pipe: EOF"). Restricted: no lower than containerd's own.
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{d}/cni/bin"
    conf_dir = "{d}/cni/conf"
"#
    )
}

impl Containerd {
    /// Starts containerd and imports the two images; pods' cgroups go
    /// below `cg`, where kubelet's cgroupfs driver puts them below the root.
    pub fn start(cg: &TestCgroup) -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("connectracer-containerd-")
            .tempdir()?;
        let root = dir.path();
        std::fs::write(root.join("config.toml"), config(root))?;
        let log = std::fs::File::create(root.join("containerd.log"))?;
        let child = Command::new("containerd")
            .arg("--config")
            .arg(root.join("config.toml"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("starting containerd (package containerd)")?;
        let socket = root.join("containerd.sock");
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let path = socket.clone();
        // The lazy channel spawns its worker on the runtime it is made in.
        let guard = rt.enter();
        let channel =
            Endpoint::from_static("http://[::1]:1").connect_with_connector_lazy(tower::service_fn(
                move |_: Uri| {
                    let path = path.clone();
                    async move {
                        Ok::<_, std::io::Error>(TokioIo::new(tokio::net::UnixStream::connect(path).await?))
                    }
                },
            ));
        drop(guard);
        let c = Self {
            socket,
            child: Some(child),
            rt,
            client: RuntimeServiceClient::new(channel),
            pods: Vec::new(),
            test_cgroup: cg.rel.clone(),
            dir,
        };
        let up = eventually(Duration::from_secs(30), || {
            let mut client = c.client.clone();
            c.rt.block_on(client.version(k8s_cri::v1::VersionRequest::default()))
                .ok()
        });
        if up.is_none() {
            let log = std::fs::read_to_string(c.dir.path().join("containerd.log")).unwrap_or_default();
            bail!("containerd's CRI did not answer within 30 s:\n{log}");
        }
        c.import_images()?;
        Ok(c)
    }

    fn import_images(&self) -> anyhow::Result<()> {
        let root = self.dir.path();
        let layer = busybox_rootfs(root)?;
        let pause = oci_archive(root, "pause.tar", &layer, PAUSE_IMAGE, &["/bin/sleep", "100000"])?;
        let busybox = oci_archive(root, "busybox.tar", &layer, BUSYBOX_IMAGE, &["/bin/sh"])?;
        for archive in [pause, busybox] {
            let out = Command::new("ctr")
                .arg("--address")
                .arg(&self.socket)
                .args(["--namespace", "k8s.io", "images", "import"])
                .arg(&archive)
                .output()
                .context("running ctr")?;
            if !out.status.success() {
                bail!(
                    "ctr images import {}: {}",
                    archive.display(),
                    String::from_utf8_lossy(&out.stderr)
                );
            }
        }
        Ok(())
    }

    /// containerd's last log lines, for a failure's message.
    fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.dir.path().join("containerd.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(15)..].join("\n")
    }

    /// The cgroup (below the cgroup2 mount) a pod's containers get theirs
    /// in: `<test>/kubepods/besteffort/pod<uid>`, kubelet's cgroupfs layout.
    pub fn pod_cgroup(&self, uid: &str) -> String {
        format!("{}/kubepods/besteffort/pod{uid}", self.test_cgroup)
    }

    /// Runs a pod sandbox and in it a container named `container` running
    /// `script`; returns (sandbox id, container id).
    pub fn run_pod(
        &mut self,
        pod: &PodSpec<'_>,
        container: &str,
        script: &str,
    ) -> anyhow::Result<(String, String)> {
        let labels: HashMap<String, String> = pod
            .labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let logs = self.dir.path().join("pods").join(pod.uid);
        std::fs::create_dir_all(&logs)?;
        let sandbox_config = PodSandboxConfig {
            metadata: Some(PodSandboxMetadata {
                name: pod.name.into(),
                uid: pod.uid.into(),
                namespace: pod.namespace.into(),
                attempt: 0,
            }),
            log_directory: logs.to_string_lossy().into(),
            labels,
            linux: Some(LinuxPodSandboxConfig {
                cgroup_parent: self.pod_cgroup(pod.uid),
                security_context: Some(LinuxSandboxSecurityContext {
                    namespace_options: Some(host_network()),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        let mut client = self.client.clone();
        let sandbox = self
            .rt
            .block_on(client.run_pod_sandbox(RunPodSandboxRequest {
                config: Some(sandbox_config.clone()),
                runtime_handler: String::new(),
            }))
            .map_err(|s| anyhow::anyhow!("RunPodSandbox: {}\n{}", s.message(), self.log_tail()))?
            .into_inner()
            .pod_sandbox_id;
        self.pods.push(sandbox.clone());
        let config = ContainerConfig {
            metadata: Some(ContainerMetadata {
                name: container.into(),
                attempt: 0,
            }),
            image: Some(ImageSpec {
                image: BUSYBOX_IMAGE.into(),
                ..Default::default()
            }),
            command: vec!["/bin/sh".into(), "-c".into(), script.into()],
            log_path: format!("{container}.log"),
            linux: Some(LinuxContainerConfig {
                security_context: Some(LinuxContainerSecurityContext {
                    namespace_options: Some(host_network()),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        let id = self
            .rt
            .block_on(client.create_container(CreateContainerRequest {
                pod_sandbox_id: sandbox.clone(),
                config: Some(config),
                sandbox_config: Some(sandbox_config),
            }))
            .map_err(|s| anyhow::anyhow!("CreateContainer: {}", s.message()))?
            .into_inner()
            .container_id;
        self.rt
            .block_on(client.start_container(StartContainerRequest {
                container_id: id.clone(),
            }))
            .map_err(|s| anyhow::anyhow!("StartContainer: {}", s.message()))?;
        Ok((sandbox, id))
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        let mut client = self.client.clone();
        for pod in std::mem::take(&mut self.pods) {
            let _ = self.rt.block_on(client.stop_pod_sandbox(StopPodSandboxRequest {
                pod_sandbox_id: pod.clone(),
            }));
            let _ = self
                .rt
                .block_on(client.remove_pod_sandbox(RemovePodSandboxRequest { pod_sandbox_id: pod }));
        }
        if let Some(mut c) = self.child.take() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(c.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
            let _ = c.wait();
        }
        crate::dockerd::unmount_below(self.dir.path());
        crate::dockerd::remove_cgroups(&self.test_cgroup, "kubepods");
    }
}
