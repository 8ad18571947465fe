//! Attribution of a cgroup path to its systemd unit and container.
//!
//! The cgroup is the only owner identity an eBPF program gets for free, and
//! systemd and every container runtime encode who owns a process in the cgroup
//! names they create. Decoding those names as pure string functions lets the
//! daemon attribute connections without talking to the Docker, containerd or
//! kubelet APIs, and keeps the rules testable against real-world layouts.
//!
//! Layouts differ by runtime *and* by cgroup driver (systemd vs. cgroupfs);
//! each rule names the driver it comes from. Anything unrecognised yields empty
//! fields rather than a guess, because a wrong attribution is worse than none.

/// Container engine that created a cgroup.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ContainerRuntime {
    Docker,
    Containerd,
    CriO,
    Podman,
    Lxc,
    Nerdctl,
}

impl ContainerRuntime {
    /// Stable label value; separate from `Debug` so renaming a variant cannot
    /// change what the daemon emits.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Docker => "docker",
            Self::Containerd => "containerd",
            Self::CriO => "cri-o",
            Self::Podman => "podman",
            Self::Lxc => "lxc",
            Self::Nerdctl => "nerdctl",
        }
    }

    /// The runtime `as_str` names.
    pub fn parse(s: &str) -> Option<Self> {
        [
            Self::Docker,
            Self::Containerd,
            Self::CriO,
            Self::Podman,
            Self::Lxc,
            Self::Nerdctl,
        ]
        .into_iter()
        .find(|r| r.as_str() == s)
    }
}

/// The container a cgroup belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Container {
    /// The Kubernetes cgroupfs layout (`/kubepods/<qos>/pod<uid>/<id>`) does not
    /// name the runtime; it is reported as [`ContainerRuntime::Containerd`]
    /// because containerd is the Kubernetes default CRI runtime.
    pub runtime: ContainerRuntime,
    /// 64 lowercase hex digits, except for LXC, which has only container names.
    pub id: String,
    /// Canonical (dashed) pod UID, so it joins with the Kubernetes API's
    /// `metadata.uid`; only set when the container sits directly in a pod cgroup.
    pub pod_uid: Option<String>,
}

/// What a cgroup path says about its owner.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CgroupInfo {
    /// Unit in the system manager: the first `.service`/`.scope` below the
    /// leading slices. Sub-cgroups a unit creates (`foo.service/worker`, a
    /// delegated `payload`) still belong to it, as systemd accounts and stops
    /// them with the unit.
    pub unit: Option<String>,
    /// Unit inside a per-user manager when `unit` is `user@UID.service`; desktop
    /// apps and rootless containers live there, and reporting only
    /// `user@UID.service` would lump them all together.
    pub user_unit: Option<String>,
    /// Innermost slice of the leading run of slices, i.e. the system-manager
    /// slice containing `unit`. Also set without a unit (e.g. a bare Kubernetes
    /// pod slice), since it still says where the cgroup sits.
    pub slice: Option<String>,
    pub container: Option<Container>,
}

/// Accepts a path relative to the cgroup2 mount or a whole `/proc/PID/cgroup`
/// line, so callers holding either need no extra step. Never panics.
pub fn parse_cgroup_path(path: &str) -> CgroupInfo {
    let path = if path.starts_with('/') {
        path
    } else {
        proc_cgroup_line_path(path).unwrap_or(path)
    };
    let comps: Vec<&str> = path.split('/').filter(|c| !c.is_empty()).collect();
    let mut rest = comps.iter().copied();
    let mut slice = None;
    let unit = first_unit(&mut rest, &mut slice);
    let user_unit = match unit {
        Some(u) if is_user_manager(u) => first_unit(&mut rest, &mut None),
        _ => None,
    };
    CgroupInfo {
        unit: unit.map(str::to_owned),
        user_unit: user_unit.map(str::to_owned),
        slice: slice.map(str::to_owned),
        container: find_container(&comps),
    }
}

/// Parses one line of /proc/PID/cgroup (v1 or v2 format) and returns the path
/// part, or None if the line is malformed.
pub fn proc_cgroup_line_path(line: &str) -> Option<&str> {
    split_proc_line(line).map(|(_, _, path)| path)
}

/// Picks the most informative path from a whole /proc/PID/cgroup file: the v2
/// ("0::") line if present and not "/", else the v1 `name=systemd` line, else
/// the first v1 line whose path is not "/".
///
/// A `/` path is skipped at every step (so all-root files give `None`): in
/// hybrid mode the v2 line is often `/` while the v1 lines carry the real
/// location, and a root path attributes nothing anyway.
pub fn proc_cgroup_best_path(contents: &str) -> Option<&str> {
    let lines: Vec<(&str, &str, &str)> = contents
        .lines()
        .filter_map(split_proc_line)
        .filter(|(_, _, path)| *path != "/")
        .collect();
    let is_v2 = |l: &&(&str, &str, &str)| l.0 == "0" && l.1.is_empty();
    lines
        .iter()
        .find(is_v2)
        .or_else(|| lines.iter().find(|l| l.1 == "name=systemd"))
        .or_else(|| lines.iter().find(|l| !is_v2(l)))
        .map(|l| l.2)
}

/// Splits `hierarchy-id:controllers:path`; the path may itself contain `:`.
fn split_proc_line(line: &str) -> Option<(&str, &str, &str)> {
    let mut parts = line.trim_end_matches(['\n', '\r']).splitn(3, ':');
    let (id, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
    if id.is_empty() || !id.bytes().all(|b| b.is_ascii_digit()) || !path.starts_with('/') {
        return None;
    }
    // The kernel appends this to v2 paths of cgroups removed while still in use.
    Some((id, controllers, path.strip_suffix(" (deleted)").unwrap_or(path)))
}

/// Skips leading slices (remembering the innermost in `slice`) and returns the
/// next component if it is a unit. A non-unit there means the cgroup was not
/// created by systemd (e.g. `/docker/<id>`), so nothing below it is a unit.
fn first_unit<'a>(comps: &mut impl Iterator<Item = &'a str>, slice: &mut Option<&'a str>) -> Option<&'a str> {
    for comp in comps {
        if has_stem(comp, ".slice") {
            *slice = Some(comp);
            continue;
        }
        return (has_stem(comp, ".service") || has_stem(comp, ".scope")).then_some(comp);
    }
    None
}

fn has_stem(comp: &str, suffix: &str) -> bool {
    comp.strip_suffix(suffix).is_some_and(|stem| !stem.is_empty())
}

fn is_user_manager(unit: &str) -> bool {
    unit.strip_prefix("user@")
        .and_then(|rest| rest.strip_suffix(".service"))
        .is_some_and(|uid| !uid.is_empty() && uid.bytes().all(|b| b.is_ascii_digit()))
}

/// Returns the innermost container, so docker-in-docker attributes to the
/// inner container that actually owns the process.
fn find_container(comps: &[&str]) -> Option<Container> {
    let mut found = None;
    let mut in_kubepods = false;
    let mut prev = None;
    // Pod UID of the previous component, if it was a pod cgroup.
    let mut pod: Option<String> = None;
    for &comp in comps {
        if let Some((runtime, id)) = container_of(prev, comp, pod.is_some()) {
            let pod_uid = pod.take();
            found = Some(Container { runtime, id, pod_uid });
        } else {
            in_kubepods |= comp.contains("kubepods");
            pod = pod_uid_of(comp, in_kubepods);
        }
        prev = Some(comp);
    }
    found
}

/// systemd drivers name the container scope `<prefix>-<id>.scope`; the CRI-O
/// and Podman cgroupfs managers use the same names without `.scope`.
const PREFIXED: [(&str, ContainerRuntime); 5] = [
    ("docker-", ContainerRuntime::Docker),
    ("cri-containerd-", ContainerRuntime::Containerd),
    ("crio-", ContainerRuntime::CriO),
    ("libpod-", ContainerRuntime::Podman),
    ("nerdctl-", ContainerRuntime::Nerdctl),
];

fn container_of(prev: Option<&str>, comp: &str, after_pod: bool) -> Option<(ContainerRuntime, String)> {
    // LXC 4+ uses `lxc.payload.<name>` (its monitor is `lxc.monitor.<name>`);
    // older LXC on cgroup v1 uses `/lxc/<name>`.
    if let Some(name) = comp.strip_prefix("lxc.payload.") {
        return (!name.is_empty()).then(|| (ContainerRuntime::Lxc, name.to_owned()));
    }
    if prev == Some("lxc") {
        return Some((ContainerRuntime::Lxc, comp.to_owned()));
    }
    let stem = comp.strip_suffix(".scope").unwrap_or(comp);
    for (prefix, runtime) in PREFIXED {
        // `crio-conmon-<id>` / `libpod-conmon-<id>` (the monitor) fail the id check.
        if let Some(id) = stem.strip_prefix(prefix).filter(|id| is_container_id(id)) {
            return Some((runtime, id.to_owned()));
        }
    }
    if !is_container_id(comp) {
        return None;
    }
    let runtime = match prev {
        Some("docker") => ContainerRuntime::Docker,
        // containerd without Kubernetes, cgroupfs: `/<namespace>/<id>`.
        Some("default") => ContainerRuntime::Containerd,
        _ if after_pod => ContainerRuntime::Containerd,
        _ => return None,
    };
    Some((runtime, comp.to_owned()))
}

/// Pod cgroups are `[kubelet-]kubepods[-<qos>]-pod<uid>.slice` under the systemd
/// driver, where the UID's dashes become `_` because `-` means nesting in slice
/// names, and `pod<uid>` below a `kubepods` cgroup under cgroupfs.
fn pod_uid_of(comp: &str, in_kubepods: bool) -> Option<String> {
    let uid = match comp.strip_suffix(".slice") {
        Some(stem) if stem.contains("kubepods") => {
            stem.rsplit_once('-')?.1.strip_prefix("pod")?.replace('_', "-")
        }
        Some(_) => return None,
        None if in_kubepods => comp.strip_prefix("pod")?.to_owned(),
        None => return None,
    };
    is_pod_uid(&uid).then_some(uid)
}

fn is_lower_hex(b: u8) -> bool {
    matches!(b, b'0'..=b'9' | b'a'..=b'f')
}

fn is_container_id(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(is_lower_hex)
}

/// A UUID, or 32 hex digits: static (mirror) pods get an md5 hash as UID.
fn is_pod_uid(s: &str) -> bool {
    match s.len() {
        32 => s.bytes().all(is_lower_hex),
        36 => s.bytes().enumerate().all(|(i, b)| match i {
            8 | 13 | 18 | 23 => b == b'-',
            _ => is_lower_hex(b),
        }),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::ContainerRuntime::*;
    use super::*;

    const ID: &str = "968e6dfdbeb1b65955a90e207176376013bd90c6f0ee7a20121d722eeb55cb5e";
    const ID2: &str = "def6aa21eb47e1d739cdfd73b907dffd638c69536a9a4ccba8932c09039d3252";
    const UID: &str = "1a2b3c4d-5e6f-7a8b-9c0d-1e2f3a4b5c6d";
    const UID_: &str = "1a2b3c4d_5e6f_7a8b_9c0d_1e2f3a4b5c6d";
    const STATIC_UID: &str = "9ac5b9c26a41af22c95ddae67ae69c3b";

    /// Expected result; "" means `None`.
    fn info(unit: &str, user_unit: &str, slice: &str, c: Option<Container>) -> CgroupInfo {
        let opt = |s: &str| (!s.is_empty()).then(|| s.to_owned());
        CgroupInfo {
            unit: opt(unit),
            user_unit: opt(user_unit),
            slice: opt(slice),
            container: c,
        }
    }

    fn ctr(runtime: ContainerRuntime, id: &str, pod_uid: Option<&str>) -> Option<Container> {
        let pod_uid = pod_uid.map(str::to_owned);
        Some(Container {
            runtime,
            id: id.to_owned(),
            pod_uid,
        })
    }

    fn check(cases: &[(String, CgroupInfo)]) {
        for (path, want) in cases {
            assert_eq!(&parse_cgroup_path(path), want, "path {path:?}");
        }
    }

    #[test]
    fn runtime_names_parse_back() {
        for r in [Docker, Containerd, CriO, Podman, Lxc, Nerdctl] {
            assert_eq!(ContainerRuntime::parse(r.as_str()), Some(r));
        }
        assert_eq!(ContainerRuntime::parse("rkt"), None);
    }

    #[test]
    #[rustfmt::skip]
    fn systemd_units() {
        let user = "/user.slice/user-1000.slice/user@1000.service";
        let fsck = r"systemd-fsck@dev-disk-by\x2duuid-0a1b.service";
        let (sys, u1000) = ("system.slice", "user-1000.slice");
        check(&[
            ("/system.slice/nginx.service".into(), info("nginx.service", "", sys, None)),
            ("/system.slice/system-getty.slice/getty@tty1.service".into(), info("getty@tty1.service", "", "system-getty.slice", None)),
            ("/user.slice/user-1000.slice/session-3.scope".into(), info("session-3.scope", "", u1000, None)),
            (format!("{user}/app.slice/app-org.gnome.Terminal.slice/vte-spawn-1a2b.scope"), info("user@1000.service", "vte-spawn-1a2b.scope", u1000, None)),
            (format!("{user}/init.scope"), info("user@1000.service", "init.scope", u1000, None)),
            (format!("{user}/session.slice/pipewire.service"), info("user@1000.service", "pipewire.service", u1000, None)),
            (user.into(), info("user@1000.service", "", u1000, None)),
            // Not a user manager, so nothing below it is a user unit.
            ("/user.slice/user-1000.slice/user-runtime-dir@1000.service/x.scope".into(), info("user-runtime-dir@1000.service", "", u1000, None)),
            ("/init.scope".into(), info("init.scope", "", "", None)),
            ("/system.slice/foo.service/worker".into(), info("foo.service", "", sys, None)),
            ("/system.slice/foo.service/payload/".into(), info("foo.service", "", sys, None)),
            ("/system.slice/run-r2f3c.scope".into(), info("run-r2f3c.scope", "", sys, None)),
            (format!(r"/system.slice/system-systemd\x2dfsck.slice/{fsck}"), info(fsck, "", r"system-systemd\x2dfsck.slice", None)),
            ("/system.slice/docker.service".into(), info("docker.service", "", sys, None)),
            ("/user.slice".into(), info("", "", "user.slice", None)),
            ("0::/system.slice/sshd.service".into(), info("sshd.service", "", sys, None)),
            // Units must sit directly below the slices.
            ("/mnt/foo.service".into(), CgroupInfo::default()),
            ("/system.slice/.service".into(), info("", "", sys, None)),
        ]);
    }

    #[test]
    #[rustfmt::skip]
    fn containers() {
        let (bu, k8s) = (format!("kubepods-burstable-pod{UID_}.slice"), "/kubepods.slice/kubepods-burstable.slice");
        let (be, be_path) = (format!("kubepods-besteffort-pod{UID_}.slice"), "/kubepods.slice/kubepods-besteffort.slice");
        let (gu, st) = (format!("kubepods-pod{UID_}.slice"), format!("kubepods-burstable-pod{STATIC_UID}.slice"));
        let kind = format!("kubelet-kubepods-besteffort-pod{UID_}.slice");
        let kind_path = "/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-besteffort.slice";
        let sc = |p: &str, id: &str| format!("{p}-{id}.scope");
        let (uid, sys, mach) = (Some(UID), "system.slice", "machine.slice");
        check(&[
            (format!("/system.slice/docker-{ID}.scope"), info(&sc("docker", ID), "", sys, ctr(Docker, ID, None))),
            (format!("/docker/{ID}"), info("", "", "", ctr(Docker, ID, None))),
            (format!("/docker/{ID}/docker/{ID2}"), info("", "", "", ctr(Docker, ID2, None))),
            (format!("12:pids:/docker/{ID}"), info("", "", "", ctr(Docker, ID, None))),
            (format!("1:name=systemd:/system.slice/docker-{ID}.scope"), info(&sc("docker", ID), "", sys, ctr(Docker, ID, None))),
            (format!("{k8s}/{bu}/cri-containerd-{ID}.scope"), info(&sc("cri-containerd", ID), "", &bu, ctr(Containerd, ID, uid))),
            // Pause (sandbox) container of a guaranteed pod.
            (format!("/kubepods.slice/{gu}/cri-containerd-{ID2}.scope"), info(&sc("cri-containerd", ID2), "", &gu, ctr(Containerd, ID2, uid))),
            (format!("{k8s}/{st}/cri-containerd-{ID}.scope"), info(&sc("cri-containerd", ID), "", &st, ctr(Containerd, ID, Some(STATIC_UID)))),
            // kind runs kubelet with --cgroup-root=/kubelet.
            (format!("{kind_path}/{kind}/cri-containerd-{ID}.scope"), info(&sc("cri-containerd", ID), "", &kind, ctr(Containerd, ID, uid))),
            (format!("/kubepods/burstable/pod{UID}/{ID}"), info("", "", "", ctr(Containerd, ID, uid))),
            (format!("/kubepods/pod{UID}/{ID2}"), info("", "", "", ctr(Containerd, ID2, uid))),
            (format!("4:cpu,cpuacct:/kubepods/besteffort/pod{UID}/{ID}"), info("", "", "", ctr(Containerd, ID, uid))),
            (format!("/kubepods/burstable/pod{UID}/crio-{ID}"), info("", "", "", ctr(CriO, ID, uid))),
            (format!("{be_path}/{be}"), info("", "", &be, None)),
            (format!("{be_path}/{be}/crio-{ID}.scope"), info(&sc("crio", ID), "", &be, ctr(CriO, ID, uid))),
            (format!("{be_path}/{be}/crio-{ID}.scope/container"), info(&sc("crio", ID), "", &be, ctr(CriO, ID, uid))),
            (format!("{be_path}/{be}/crio-conmon-{ID}.scope"), info(&sc("crio-conmon", ID), "", &be, None)),
            // cri-dockerd with the systemd driver.
            (format!("{k8s}/{bu}/docker-{ID}.scope"), info(&sc("docker", ID), "", &bu, ctr(Docker, ID, uid))),
            (format!("/machine.slice/libpod-{ID}.scope"), info(&sc("libpod", ID), "", mach, ctr(Podman, ID, None))),
            (format!("/machine.slice/libpod-{ID}.scope/container"), info(&sc("libpod", ID), "", mach, ctr(Podman, ID, None))),
            (format!("/user.slice/user-1000.slice/user@1000.service/user.slice/libpod-{ID}.scope"),
             info("user@1000.service", &sc("libpod", ID), "user-1000.slice", ctr(Podman, ID, None))),
            // A podman pod is not a Kubernetes pod: no pod_uid.
            (format!("/machine.slice/machine-libpod_pod_{ID2}.slice/libpod-{ID}.scope"),
             info(&sc("libpod", ID), "", &format!("machine-libpod_pod_{ID2}.slice"), ctr(Podman, ID, None))),
            (format!("/machine.slice/libpod-conmon-{ID}.scope"), info(&sc("libpod-conmon", ID), "", mach, None)),
            (format!("/libpod_parent/libpod-{ID}"), info("", "", "", ctr(Podman, ID, None))),
            (format!("/system.slice/nerdctl-{ID}.scope"), info(&sc("nerdctl", ID), "", sys, ctr(Nerdctl, ID, None))),
            (format!("/default/{ID}"), info("", "", "", ctr(Containerd, ID, None))),
            ("/lxc.payload.web01".into(), info("", "", "", ctr(Lxc, "web01", None))),
            ("/lxc.payload.web01/system.slice/sshd.service".into(), info("", "", "", ctr(Lxc, "web01", None))),
            ("3:cpuset:/lxc/web01".into(), info("", "", "", ctr(Lxc, "web01", None))),
            ("/lxc.monitor.web01".into(), CgroupInfo::default()),
        ]);
    }

    #[test]
    #[rustfmt::skip]
    fn rejects_invalid_ids_and_garbage() {
        let (short, upper) = (&ID[..63], ID.to_uppercase());
        check(&[
            (format!("/system.slice/docker-{short}.scope"), info(&format!("docker-{short}.scope"), "", "system.slice", None)),
            (format!("/system.slice/docker-{upper}.scope"), info(&format!("docker-{upper}.scope"), "", "system.slice", None)),
            (format!("/docker/{short}"), CgroupInfo::default()),
            (format!("/docker/{ID}x"), CgroupInfo::default()),
            (format!("/kubepods/burstable/pod{}/{ID}", UID.to_uppercase()), CgroupInfo::default()),
            (format!("/kubepods/burstable/podnot-a-uid/{ID}"), CgroupInfo::default()),
            // A bare id needs a known parent; `pod<uid>` only counts under kubepods.
            (format!("/other/{ID}"), CgroupInfo::default()),
            (format!("/pod{UID}/{ID}"), CgroupInfo::default()),
            (format!("/kubepods/pod1a2b3c4d05e6f-7a8b-9c0d-1e2f3a4b5c6d/{ID}"), CgroupInfo::default()),
            // The id must sit directly in the pod cgroup, and pod slices need "kubepods".
            (format!("/kubepods/burstable/pod{UID}/sandbox/{ID}"), CgroupInfo::default()),
            (format!("/system.slice/app-pod{UID_}.slice/{ID}"), info("", "", &format!("app-pod{UID_}.slice"), None)),
        ]);
        for garbage in ["", "/", "//", "garbage", "12:pids", "/lxc.payload.", "\u{0}:/\u{ff}"] {
            assert_eq!(parse_cgroup_path(garbage), CgroupInfo::default(), "path {garbage:?}");
        }
    }

    #[test]
    #[rustfmt::skip]
    fn proc_line_path() {
        let cases: &[(&str, Option<&str>)] = &[
            ("0::/system.slice/x.service", Some("/system.slice/x.service")),
            ("12:pids:/docker/abc", Some("/docker/abc")),
            ("1:name=systemd:/system.slice/a.scope\n", Some("/system.slice/a.scope")),
            ("0::/system.slice/x.service (deleted)", Some("/system.slice/x.service")),
            ("0::/a:b", Some("/a:b")),
            ("0::/", Some("/")),
        ];
        for (line, want) in cases {
            assert_eq!(proc_cgroup_line_path(line), *want, "line {line:?}");
        }
        for bad in ["garbage", "12:pids", "12:pids:", "12:pids:docker", ":pids:/x", "x1:pids:/x", ""] {
            assert_eq!(proc_cgroup_line_path(bad), None, "line {bad:?}");
        }
    }

    #[test]
    #[rustfmt::skip]
    fn proc_best_path() {
        let cases: &[(&str, Option<&str>)] = &[
            ("12:pids:/user.slice\n1:name=systemd:/user.slice/a.scope\n0::/system.slice/b.service\n", Some("/system.slice/b.service")),
            ("12:pids:/docker/x\n1:name=systemd:/system.slice/docker-x.scope\n0::/\n", Some("/system.slice/docker-x.scope")),
            ("garbage\n12:pids:/\n4:cpu,cpuacct:/kubepods/pod1/x\n3:memory:/kubepods\n", Some("/kubepods/pod1/x")),
            ("12:pids:/\n1:name=systemd:/\n0::/\n", None),
            ("0::/", None),
            ("", None),
        ];
        for (contents, want) in cases {
            assert_eq!(proc_cgroup_best_path(contents), *want, "contents {contents:?}");
        }
    }

    #[test]
    fn runtime_names() {
        let all = [Docker, Containerd, CriO, Podman, Lxc, Nerdctl];
        let names: Vec<_> = all.iter().map(ContainerRuntime::as_str).collect();
        assert_eq!(
            names,
            ["docker", "containerd", "cri-o", "podman", "lxc", "nerdctl"]
        );
    }
}
