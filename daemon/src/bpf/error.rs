//! Why loading, attaching or writing the kernel's state failed.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum TracerError {
    #[error("opening cgroup {path}")]
    Cgroup {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("opening the BPF object")]
    Open(#[source] libbpf_rs::Error),
    #[error("kernel map {map} has room for {limit} entries: this configuration needs {needed}, beside {in_use} of the one in force")]
    Capacity {
        map: &'static str,
        needed: usize,
        in_use: usize,
        limit: usize,
    },
    #[error("writing kernel map {map}")]
    Map {
        map: &'static str,
        #[source]
        source: libbpf_rs::Error,
    },
    #[error("loading BPF programs into the kernel (libbpf's log above says why)")]
    Load(#[source] libbpf_rs::Error),
    #[error("attaching {prog}")]
    Attach {
        prog: &'static str,
        #[source]
        source: libbpf_rs::Error,
    },
    #[error("pinning {path}")]
    Pin {
        path: PathBuf,
        #[source]
        source: libbpf_rs::Error,
    },
}
