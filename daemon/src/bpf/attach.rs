//! Attaching the programs, adopting the links an earlier instance pinned.

use std::os::fd::AsRawFd;
use std::path::Path;

use libbpf_rs::{Link, ProgramMut};

use super::error::TracerError;
use super::pins::{link_path, Adoption};
use super::skel::ConnectracerSkel;

/// What the links are attached with and where they are pinned.
pub struct Target<'a> {
    pub cgroup: &'a std::fs::File,
    pub pin_dir: Option<&'a Path>,
    /// Whether the DNS answer programs are attached.
    pub dns_answers: bool,
}

/// Attaches every program; the links made or adopted go to `links` even
/// when a later one fails, so that the caller can undo them.
pub fn attach_all(
    skel: &ConnectracerSkel<'_>,
    to: &Target<'_>,
    adoption: &mut Adoption,
    links: &mut Vec<Link>,
) -> Result<(), TracerError> {
    let progs = &skel.progs;
    for (name, prog) in [
        ("connect4", &progs.ct_connect4),
        ("connect6", &progs.ct_connect6),
        ("sendmsg4", &progs.ct_sendmsg4),
        ("sendmsg6", &progs.ct_sendmsg6),
        ("sock_release", &progs.ct_sock_release),
    ] {
        links.push(cgroup_link(name, prog, to, adoption)?);
    }
    // Off: not attached at all, so that they cost the packets nothing.
    if to.dns_answers {
        for (name, prog) in [
            ("dns_egress", &progs.ct_dns_egress),
            ("dns_ingress", &progs.ct_dns_ingress),
        ] {
            links.push(cgroup_link(name, prog, to, adoption)?);
        }
    } else if let Some(dir) = to.pin_dir {
        // An earlier instance's pinned links would keep them attached.
        for name in ["dns_egress", "dns_ingress"] {
            let p = link_path(dir, name);
            if let Some(mut old) = p.exists().then(|| Link::open(&p).ok()).flatten() {
                let _ = old.detach();
                let _ = old.unpin();
            }
        }
    }
    for (name, prog) in [
        ("inet_sock_set_state", &progs.ct_state),
        ("sched_process_exec", &progs.ct_exec),
        ("sched_process_fork", &progs.ct_fork),
        ("sched_process_exit", &progs.ct_exit),
    ] {
        links.push(tracing_link(name, prog, to, adoption)?);
    }
    Ok(())
}

/// cgroup links are always multi-attach (BPF_F_ALLOW_MULTI semantics):
/// programs systemd or others attached to the same cgroup keep running.
fn cgroup_link(
    name: &'static str,
    prog: &ProgramMut<'_>,
    to: &Target<'_>,
    adoption: &mut Adoption,
) -> Result<Link, TracerError> {
    let pinned = to.pin_dir.map(|d| link_path(d, name));
    // Only pins that exist: libbpf logs every failed open as a warning,
    // nine of them in the journal at each fresh start.
    if let Some(mut old) = pinned
        .as_ref()
        .filter(|p| p.exists())
        .and_then(|p| Link::open(p).ok())
    {
        // Swapping the program inside the live link leaves no moment
        // without a hook (or with two).
        if same_cgroup(&old, to.cgroup) && old.update_prog(prog).is_ok() {
            adoption.links.push(name);
            return Ok(old);
        }
        adoption
            .discarded
            .push(format!("link {name}: attached elsewhere or not updatable"));
        let _ = old.detach();
        let _ = old.unpin();
    }
    let mut link = prog
        .attach_cgroup(to.cgroup.as_raw_fd())
        .map_err(|source| TracerError::Attach { prog: name, source })?;
    if let Some(p) = &pinned {
        link.pin(p).map_err(|source| TracerError::Pin {
            path: p.clone(),
            source,
        })?;
    }
    Ok(link)
}

fn same_cgroup(link: &Link, cgroup: &std::fs::File) -> bool {
    use std::os::unix::fs::MetadataExt;
    let Ok(id) = cgroup.metadata().map(|m| m.ino()) else {
        return false;
    };
    match link.info().map(|i| i.info) {
        Ok(libbpf_rs::query::LinkTypeInfo::Cgroup(c)) => c.cgroup_id == id,
        _ => false,
    }
}

/// Tracing links cannot swap programs: the new one is attached before the
/// old one goes, so for an instant both run (the pipeline ignores the
/// doubled state change) rather than neither.
fn tracing_link(
    name: &'static str,
    prog: &ProgramMut<'_>,
    to: &Target<'_>,
    adoption: &mut Adoption,
) -> Result<Link, TracerError> {
    let mut link = prog
        .attach()
        .map_err(|source| TracerError::Attach { prog: name, source })?;
    if let Some(p) = to.pin_dir.map(|d| link_path(d, name)) {
        if let Some(mut old) = p.exists().then(|| Link::open(&p).ok()).flatten() {
            let _ = old.unpin();
            let _ = old.detach();
            adoption.links.push(name);
        }
        link.pin(&p).map_err(|source| TracerError::Pin {
            path: p.clone(),
            source,
        })?;
    }
    Ok(link)
}
