//! A profile as an OCI seccomp profile or a systemd drop-in.

use std::collections::BTreeSet;

use connectracer_proto::api::{ProfileReply, SyscallArch};
use serde_json::json;

use super::groups::{collapse, system_service_plus, Groups};

/// Every syscall name seen, whatever the ABI (seccomp profiles and
/// SystemCallFilter= name syscalls, each ABI resolving them in its table).
fn names(r: &ProfileReply) -> BTreeSet<String> {
    r.syscalls.iter().filter_map(|s| s.name.clone()).collect()
}

fn compat_seen(r: &ProfileReply) -> bool {
    r.syscalls.iter().any(|s| s.arch == SyscallArch::X86)
}

/// The OCI runtime spec's `linux.seccomp`: the seen syscalls allowed, any
/// other failing with EPERM. SCMP_ARCH_X86 only where i386 calls were
/// seen; x32 calls are never named (the kernel program does not tell them
/// from numbers outside the tables), so SCMP_ARCH_X32 is never listed.
pub fn oci(r: &ProfileReply) -> String {
    let mut arches = vec!["SCMP_ARCH_X86_64"];
    if compat_seen(r) {
        arches.push("SCMP_ARCH_X86");
    }
    let profile = json!({
        "defaultAction": "SCMP_ACT_ERRNO",
        "defaultErrnoRet": libc::EPERM,
        "architectures": arches,
        "syscalls": [{
            "names": names(r),
            "action": "SCMP_ACT_ALLOW",
        }],
    });
    let mut s = serde_json::to_string_pretty(&profile).expect("plain data serializes");
    s.push('\n');
    s
}

/// AF_* names as RestrictAddressFamilies= takes them.
const FAMILIES: &[(i32, &str)] = &[
    (libc::AF_UNIX, "AF_UNIX"),
    (libc::AF_INET, "AF_INET"),
    (libc::AF_INET6, "AF_INET6"),
    (libc::AF_NETLINK, "AF_NETLINK"),
    (libc::AF_PACKET, "AF_PACKET"),
    (libc::AF_KEY, "AF_KEY"),
    (libc::AF_ALG, "AF_ALG"),
    (libc::AF_BLUETOOTH, "AF_BLUETOOTH"),
    (libc::AF_CAN, "AF_CAN"),
    (libc::AF_VSOCK, "AF_VSOCK"),
    (libc::AF_TIPC, "AF_TIPC"),
    (libc::AF_RDS, "AF_RDS"),
    (libc::AF_XDP, "AF_XDP"),
    (libc::AF_APPLETALK, "AF_APPLETALK"),
    (libc::AF_X25, "AF_X25"),
    (libc::AF_AX25, "AF_AX25"),
    (libc::AF_IPX, "AF_IPX"),
    (libc::AF_NFC, "AF_NFC"),
    (libc::AF_PPPOX, "AF_PPPOX"),
    (libc::AF_IB, "AF_IB"),
    (libc::AF_MPLS, "AF_MPLS"),
    (libc::AF_LLC, "AF_LLC"),
];

fn family_name(n: u32) -> Option<&'static str> {
    FAMILIES
        .iter()
        .find(|(f, _)| i32::try_from(n).is_ok_and(|n| n == *f))
        .map(|(_, name)| *name)
}

fn native_exists(name: &str) -> bool {
    name.parse::<syscalls::x86_64::Sysno>().is_ok()
}

/// A `[Service]` drop-in that allows what was seen: `@system-service`
/// and the rest, or (`exact`) only what was seen, groups named where
/// every member was. Without systemd's groups, plain names.
pub fn systemd(r: &ProfileReply, groups: Option<&Groups>, exact: bool) -> String {
    let seen = names(r);
    let filter = match groups {
        Some(g) if exact => collapse(&seen, g, native_exists),
        Some(g) => system_service_plus(&seen, g, native_exists),
        None => seen.into_iter().collect(),
    };
    let mut s = format!(
        "# Syscall profile of {} over {} ms, recorded by connectracerd.\n[Service]\n",
        r.cgroup, r.duration_ms
    );
    s.push_str(&format!("SystemCallFilter={}\n", filter.join(" ")));
    s.push_str("SystemCallErrorNumber=EPERM\n");
    if compat_seen(r) {
        s.push_str("SystemCallArchitectures=native x86\n");
    } else {
        s.push_str("SystemCallArchitectures=native\n");
    }
    let unnamed: Vec<u32> = r
        .families
        .iter()
        .copied()
        .filter(|f| family_name(*f).is_none())
        .collect();
    if r.socketcall > 0 || !unnamed.is_empty() {
        // The families of i386 socketcall(2) are not read: restricting
        // them could refuse a family the service needs.
        s.push_str(&format!(
            "# RestrictAddressFamilies= left out: socketcall(2) calls {}, families without a name {unnamed:?}\n",
            r.socketcall
        ));
    } else if r.families.is_empty() {
        s.push_str("RestrictAddressFamilies=none\n");
    } else {
        let names: Vec<&str> = r.families.iter().filter_map(|f| family_name(*f)).collect();
        s.push_str(&format!("RestrictAddressFamilies={}\n", names.join(" ")));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use connectracer_proto::api::ProfiledSyscall;

    fn reply(calls: &[(SyscallArch, &str)], families: &[u32]) -> ProfileReply {
        ProfileReply {
            cgroup: "/t".into(),
            duration_ms: 5,
            syscalls: calls
                .iter()
                .map(|(arch, n)| ProfiledSyscall {
                    arch: *arch,
                    number: 0,
                    name: Some(n.to_string()),
                    count: 1,
                })
                .collect(),
            families: families.to_vec(),
            unknown: 0,
            socketcall: 0,
        }
    }

    #[test]
    fn oci_lists_names_once_and_x86_only_when_seen() {
        let r = reply(
            &[(SyscallArch::X86_64, "read"), (SyscallArch::X86_64, "write")],
            &[],
        );
        let v: serde_json::Value = serde_json::from_str(&oci(&r)).unwrap();
        assert_eq!(v["defaultAction"], "SCMP_ACT_ERRNO");
        assert_eq!(v["architectures"], json!(["SCMP_ARCH_X86_64"]));
        assert_eq!(v["syscalls"][0]["names"], json!(["read", "write"]));
        assert_eq!(v["syscalls"][0]["action"], "SCMP_ACT_ALLOW");
        let r = reply(&[(SyscallArch::X86_64, "read"), (SyscallArch::X86, "read")], &[]);
        let v: serde_json::Value = serde_json::from_str(&oci(&r)).unwrap();
        assert_eq!(v["architectures"], json!(["SCMP_ARCH_X86_64", "SCMP_ARCH_X86"]));
        assert_eq!(v["syscalls"][0]["names"], json!(["read"]));
    }

    #[test]
    fn systemd_drop_in_names_families_and_arches() {
        let r = reply(
            &[(SyscallArch::X86_64, "socket"), (SyscallArch::X86_64, "read")],
            &[1, 10],
        );
        assert_eq!(
            systemd(&r, None, false),
            "# Syscall profile of /t over 5 ms, recorded by connectracerd.\n[Service]\n\
             SystemCallFilter=read socket\nSystemCallErrorNumber=EPERM\n\
             SystemCallArchitectures=native\nRestrictAddressFamilies=AF_UNIX AF_INET6\n"
        );
        let r = reply(&[(SyscallArch::X86, "read")], &[]);
        let d = systemd(&r, None, false);
        assert!(d.contains("SystemCallArchitectures=native x86\n"), "{d}");
        assert!(d.contains("RestrictAddressFamilies=none\n"), "{d}");
    }
}
