//! A busybox root filesystem built from the host's static busybox, as a
//! tar for `docker import` and as an OCI image archive for `ctr images
//! import`: container images made here, since nothing can be pulled.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context};
use serde_json::json;
use sha2::{Digest, Sha256};

/// Debian's busybox-static.
const BUSYBOX: &str = "/bin/busybox";
const APPLETS: [&str; 4] = ["sh", "nc", "sleep", "true"];

/// `dir/rootfs.tar`: /bin/busybox and the applets the tests run.
pub fn busybox_rootfs(dir: &Path) -> anyhow::Result<PathBuf> {
    let root = dir.join("rootfs");
    let bin = root.join("bin");
    std::fs::create_dir_all(&bin)?;
    let out = Command::new("file").arg(BUSYBOX).output();
    if let Ok(o) = out {
        // A dynamically linked busybox would need the host's libraries.
        if String::from_utf8_lossy(&o.stdout).contains("dynamically linked") {
            bail!("{BUSYBOX} is dynamically linked: install busybox-static");
        }
    }
    std::fs::copy(BUSYBOX, bin.join("busybox")).with_context(|| format!("copying {BUSYBOX}"))?;
    for a in APPLETS {
        std::os::unix::fs::symlink("busybox", bin.join(a))?;
    }
    for d in ["proc", "sys", "dev", "etc", "tmp"] {
        std::fs::create_dir_all(root.join(d))?;
    }
    let tar = dir.join("rootfs.tar");
    let status = Command::new("tar")
        .arg("-C")
        .arg(&root)
        .args(["--owner=0", "--group=0", "-cf"])
        .arg(&tar)
        .arg(".")
        .status()?;
    if !status.success() {
        bail!("tar of {} failed", root.display());
    }
    Ok(tar)
}

fn sha256(bytes: &[u8]) -> String {
    format!("sha256:{:x}", Sha256::digest(bytes))
}

/// An OCI image archive of `layer` (an uncompressed tar) named `name`
/// (`docker.io/connectracer/busybox:1`), whose default command is `cmd`:
/// `dir/<file>`, for `ctr images import`.
pub fn oci_archive(
    dir: &Path,
    file: &str,
    layer: &Path,
    name: &str,
    cmd: &[&str],
) -> anyhow::Result<PathBuf> {
    let layout = dir.join(format!("{file}.d"));
    let blobs = layout.join("blobs").join("sha256");
    std::fs::create_dir_all(&blobs)?;
    let put = |bytes: &[u8]| -> anyhow::Result<(String, usize)> {
        let digest = sha256(bytes);
        std::fs::write(blobs.join(&digest["sha256:".len()..]), bytes)?;
        Ok((digest, bytes.len()))
    };
    let layer_bytes = std::fs::read(layer)?;
    let (layer_digest, layer_size) = put(&layer_bytes)?;
    let config = json!({
        "architecture": "amd64", "os": "linux",
        "config": {"Cmd": cmd},
        "rootfs": {"type": "layers", "diff_ids": [layer_digest]},
    });
    let (config_digest, config_size) = put(&serde_json::to_vec(&config)?)?;
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest, "size": config_size},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": layer_digest, "size": layer_size}],
    });
    let (manifest_digest, manifest_size) = put(&serde_json::to_vec(&manifest)?)?;
    let index = json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": manifest_digest, "size": manifest_size,
            "platform": {"architecture": "amd64", "os": "linux"},
            "annotations": {"io.containerd.image.name": name},
        }],
    });
    std::fs::write(layout.join("index.json"), serde_json::to_vec(&index)?)?;
    std::fs::write(layout.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#)?;
    let tar = dir.join(file);
    let status = Command::new("tar")
        .arg("-C")
        .arg(&layout)
        .arg("-cf")
        .arg(&tar)
        .args(["oci-layout", "index.json", "blobs"])
        .status()?;
    if !status.success() {
        bail!("tar of {} failed", layout.display());
    }
    Ok(tar)
}
