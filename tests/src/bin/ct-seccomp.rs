//! Applies an OCI seccomp profile (as `tracectl profile --format oci`
//! writes it) to itself, then either execs a command under it or makes one
//! syscall and reports how it went. A test helper, standing in for a
//! container runtime's seccomp loader.
//!
//!   ct-seccomp PROFILE exec CMD [ARGS...]
//!   ct-seccomp PROFILE call SYSCALL
//!
//! `call` exits 0 when the syscall failed with EPERM, 1 when it succeeded,
//! 2 when it failed otherwise: after the filter, nothing is printed (the
//! profile may not allow the writes).

use std::collections::BTreeMap;
use std::ffi::CString;

use anyhow::{bail, Context};
use seccompiler::{apply_filter, BpfProgram, SeccompAction, SeccompFilter, TargetArch};
use serde_json::Value;
use syscalls::x86_64::Sysno;

/// The profile's allowed syscalls, checked to be what tracectl writes.
fn allowed(profile: &Value) -> anyhow::Result<Vec<Sysno>> {
    if profile["defaultAction"] != "SCMP_ACT_ERRNO" {
        bail!(
            "defaultAction is {}, not SCMP_ACT_ERRNO",
            profile["defaultAction"]
        );
    }
    let arches = profile["architectures"].as_array().context("no architectures")?;
    if !arches.iter().any(|a| a == "SCMP_ARCH_X86_64") {
        bail!("architectures {arches:?} lack SCMP_ARCH_X86_64");
    }
    let mut out = Vec::new();
    for rule in profile["syscalls"].as_array().context("no syscalls")? {
        if rule["action"] != "SCMP_ACT_ALLOW" {
            bail!("a rule with action {}", rule["action"]);
        }
        for name in rule["names"].as_array().context("a rule without names")? {
            let name = name.as_str().context("a name that is no string")?;
            out.push(
                name.parse::<Sysno>()
                    .map_err(|_| anyhow::anyhow!("unknown syscall {name}"))?,
            );
        }
    }
    Ok(out)
}

fn filter(names: &[Sysno]) -> anyhow::Result<BpfProgram> {
    let rules: BTreeMap<i64, Vec<seccompiler::SeccompRule>> =
        names.iter().map(|s| (i64::from(s.id()), Vec::new())).collect();
    let f = SeccompFilter::new(
        rules,
        SeccompAction::Errno(libc::EPERM as u32),
        SeccompAction::Allow,
        TargetArch::x86_64,
    )?;
    Ok(f.try_into()?)
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [path, mode, rest @ ..] = args.as_slice() else {
        bail!("usage: ct-seccomp PROFILE exec CMD [ARGS...] | ct-seccomp PROFILE call SYSCALL");
    };
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {path}"))?;
    let profile: Value = serde_json::from_str(&text).with_context(|| format!("parsing {path}"))?;
    let prog = filter(&allowed(&profile)?)?;
    match (mode.as_str(), rest) {
        ("exec", [cmd, ..]) => {
            let argv: Vec<CString> = rest
                .iter()
                .map(|a| CString::new(a.as_str()))
                .collect::<Result<_, _>>()?;
            let cmd = CString::new(cmd.as_str())?;
            apply_filter(&prog)?;
            // execve alone: std's Command would make syscalls of its own
            // first, which the profile need not allow.
            let e = nix::unistd::execv(&cmd, &argv).unwrap_err();
            bail!("exec {}: {e}", rest[0])
        }
        ("call", [name]) => {
            let nr = name
                .parse::<Sysno>()
                .map_err(|_| anyhow::anyhow!("unknown syscall {name}"))?;
            apply_filter(&prog)?;
            // SAFETY: the syscalls this is used with take no pointers (or
            // none that zero makes unsafe: getppid, sync, ...).
            let r = unsafe { libc::syscall(nr.id() as libc::c_long, 0, 0, 0, 0, 0, 0) };
            let code = match (r, std::io::Error::last_os_error().raw_os_error()) {
                (-1, Some(libc::EPERM)) => 0,
                (-1, _) => 2,
                _ => 1,
            };
            std::process::exit(code)
        }
        _ => bail!("usage: ct-seccomp PROFILE exec CMD [ARGS...] | ct-seccomp PROFILE call SYSCALL"),
    }
}
