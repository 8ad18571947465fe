//! Checks made before touching BPF, so that a failure names its real cause
//! instead of surfacing as an opaque EPERM from the loader.

use std::path::Path;

use caps::{CapSet, Capability};

#[derive(Debug, thiserror::Error)]
pub enum PreflightError {
    #[error("connectracerd must run as root or with CAP_BPF, CAP_PERFMON and CAP_NET_ADMIN (running as uid {uid}, missing {missing})")]
    Privileges { uid: u32, missing: String },
    #[error("the kernel exposes no BTF at /sys/kernel/btf/vmlinux; connectracerd needs a kernel built with CONFIG_DEBUG_INFO_BTF=y")]
    NoBtf,
}

const NEEDED: [Capability; 3] = [
    Capability::CAP_BPF,
    Capability::CAP_PERFMON,
    Capability::CAP_NET_ADMIN,
];

pub fn check() -> Result<(), PreflightError> {
    let has = |c| caps::has_cap(None, CapSet::Effective, c).unwrap_or(false);
    // CAP_SYS_ADMIN stands in for CAP_BPF + CAP_PERFMON on every kernel.
    let missing: Vec<String> = NEEDED
        .iter()
        .filter(|c| !(has(**c) || has(Capability::CAP_SYS_ADMIN) && **c != Capability::CAP_NET_ADMIN))
        .map(|c| c.to_string())
        .collect();
    if !missing.is_empty() {
        return Err(PreflightError::Privileges {
            uid: nix::unistd::geteuid().as_raw(),
            missing: missing.join(", "),
        });
    }
    if !Path::new("/sys/kernel/btf/vmlinux").exists() {
        return Err(PreflightError::NoBtf);
    }
    // Kernels before 5.11 charge BPF maps to RLIMIT_MEMLOCK; later ones use
    // memcg and ignore it, so failing to raise it is not an error.
    let _ = nix::sys::resource::setrlimit(
        nix::sys::resource::Resource::RLIMIT_MEMLOCK,
        nix::sys::resource::RLIM_INFINITY,
        nix::sys::resource::RLIM_INFINITY,
    );
    Ok(())
}
