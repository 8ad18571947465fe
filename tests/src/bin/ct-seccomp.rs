//! Applies an OCI seccomp profile (as `tracectl profile --format oci`
//! writes it) to itself, then either execs a command under it or makes one
//! syscall and reports how it went. A test helper, standing in for a
//! container runtime's seccomp loader.
//!
//!   ct-seccomp PROFILE exec CMD [ARGS...]
//!   ct-seccomp PROFILE call SYSCALL
//!
//!   ct-seccomp int80
//!
//! `int80` applies nothing: it makes i386 syscalls through `int 0x80`
//! (getpid, and socket(AF_INET6) then close), as a 32-bit program would,
//! and exits 0 if they worked.
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

/// One i386 syscall, as a 32-bit program makes it: the kernel marks the
/// task TS_COMPAT for it and takes the number from the i386 table.
fn int80(nr: u32, a: u32, b: u32, c: u32) -> i32 {
    let ret: i32;
    // SAFETY: int 0x80 with register arguments only; the syscalls used
    // take no pointers. rbx is reserved by LLVM, hence the swap.
    unsafe {
        std::arch::asm!(
            "xchg {a:r}, rbx",
            "int 0x80",
            "xchg {a:r}, rbx",
            a = inout(reg) u64::from(a) => _,
            inlateout("eax") nr => ret,
            in("ecx") b,
            in("edx") c,
        );
    }
    ret
}

fn compat_calls() -> anyhow::Result<()> {
    const GETPID: u32 = 20;
    const SOCKET: u32 = 359;
    const CLOSE: u32 = 6;
    let pid = int80(GETPID, 0, 0, 0);
    if pid != std::process::id() as i32 {
        bail!("i386 getpid answered {pid}");
    }
    let fd = int80(SOCKET, libc::AF_INET6 as u32, libc::SOCK_DGRAM as u32, 0);
    if fd < 0 {
        bail!("i386 socket failed: {fd}");
    }
    int80(CLOSE, fd as u32, 0, 0);
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().is_some_and(|a| a == "int80") {
        return compat_calls();
    }
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
