//! systemd's syscall groups, as `systemd-analyze syscall-filter` lists them
//! for the systemd installed here: what SystemCallFilter= will accept.

use std::collections::{BTreeMap, BTreeSet};

/// Group name (with its `@`) to every syscall in it, nested groups expanded.
pub type Groups = BTreeMap<String, BTreeSet<String>>;

/// The installed systemd's groups; None where systemd-analyze is missing or
/// fails (the drop-in then lists plain names).
pub fn from_systemd_analyze() -> Option<Groups> {
    let out = std::process::Command::new("systemd-analyze")
        .arg("syscall-filter")
        .stderr(std::process::Stdio::null())
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let groups = parse(&String::from_utf8_lossy(&out.stdout));
    (!groups.is_empty()).then_some(groups)
}

/// Parses the listing: `@group` at the start of a line, then its members
/// (syscalls or `@groups`) indented, `#` comments anywhere.
pub fn parse(text: &str) -> Groups {
    let mut direct: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut current: Option<String> = None;
    for line in text.lines() {
        let trimmed = line.trim();
        if trimmed.is_empty() || line.starts_with('#') {
            // A blank line ends a group; the trailing "# Ungrouped" section
            // is no group.
            current = None;
            continue;
        }
        if trimmed.starts_with('#') {
            continue;
        }
        if !line.starts_with(char::is_whitespace) {
            current = trimmed.starts_with('@').then(|| trimmed.to_string());
            if let Some(g) = &current {
                direct.entry(g.clone()).or_default();
            }
        } else if let Some(g) = &current {
            direct.entry(g.clone()).or_default().push(trimmed.to_string());
        }
    }
    direct
        .keys()
        .map(|g| (g.clone(), expand(g, &direct, &mut BTreeSet::new())))
        .collect()
}

fn expand(
    group: &str,
    direct: &BTreeMap<String, Vec<String>>,
    seen: &mut BTreeSet<String>,
) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    if !seen.insert(group.to_string()) {
        return out;
    }
    for m in direct.get(group).into_iter().flatten() {
        if m.starts_with('@') {
            out.extend(expand(m, direct, seen));
        } else {
            out.insert(m.clone());
        }
    }
    out
}

/// The seen syscalls as SystemCallFilter= entries: every group whose
/// members (those this machine's ABIs have) were all seen, largest first,
/// then the names no chosen group covers. Exact: it allows what was seen
/// and nothing else.
pub fn collapse(seen: &BTreeSet<String>, groups: &Groups, exists: impl Fn(&str) -> bool) -> Vec<String> {
    let mut candidates: Vec<(&String, BTreeSet<&String>)> = groups
        .iter()
        .map(|(g, members)| (g, members.iter().filter(|m| exists(m)).collect::<BTreeSet<_>>()))
        .filter(|(_, m)| !m.is_empty() && m.iter().all(|s| seen.contains(*s)))
        .collect();
    candidates.sort_by(|a, b| b.1.len().cmp(&a.1.len()).then(a.0.cmp(b.0)));
    let mut covered: BTreeSet<&String> = BTreeSet::new();
    let mut out = Vec::new();
    for (g, members) in candidates {
        if !members.is_subset(&covered) {
            covered.extend(members);
            out.push(g.clone());
        }
    }
    out.extend(seen.iter().filter(|s| !covered.contains(s)).cloned());
    out
}

/// The group systemd recommends for services.
pub const SYSTEM_SERVICE: &str = "@system-service";

/// As systemd users write it: `@system-service`, then what was seen
/// outside it (collapsed as by [`collapse`]). Broader than what was seen:
/// @system-service holds some 400 syscalls.
pub fn system_service_plus(
    seen: &BTreeSet<String>,
    groups: &Groups,
    exists: impl Fn(&str) -> bool,
) -> Vec<String> {
    let Some(base) = groups.get(SYSTEM_SERVICE) else {
        return collapse(seen, groups, exists);
    };
    let rest: BTreeSet<String> = seen.difference(base).cloned().collect();
    let mut out = vec![SYSTEM_SERVICE.to_string()];
    out.extend(collapse(&rest, groups, exists));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const LISTING: &str = "@default\n    # Always permitted\n    brk\n    exit\n\n@io\n    # IO\n    read\n    write\n    cacheflush\n\n@svc\n    # Service\n    @default\n    @io\n    open\n\n# Ungrouped System Calls (known but not included):\n#   ptrace\n";

    #[test]
    fn groups_expand_nested_groups() {
        let g = parse(LISTING);
        assert_eq!(g.keys().collect::<Vec<_>>(), ["@default", "@io", "@svc"]);
        let svc: Vec<&str> = g["@svc"].iter().map(String::as_str).collect();
        assert_eq!(svc, ["brk", "cacheflush", "exit", "open", "read", "write"]);
    }

    #[test]
    fn system_service_then_what_it_lacks() {
        let listing = LISTING.replace("@svc", "@system-service");
        let g = parse(&listing);
        let seen = ["brk", "read", "mmap", "ptrace"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert_eq!(
            system_service_plus(&seen, &g, |_| true),
            ["@system-service", "mmap", "ptrace"]
        );
        let without = parse(LISTING);
        assert_eq!(
            system_service_plus(&seen, &without, |_| true),
            ["brk", "mmap", "ptrace", "read"]
        );
    }

    #[test]
    fn only_wholly_seen_groups_collapse() {
        let g = parse(LISTING);
        // cacheflush exists on no x86 ABI: @io needs only read and write.
        let exists = |s: &str| s != "cacheflush";
        let seen = |names: &[&str]| names.iter().map(|s| s.to_string()).collect::<BTreeSet<_>>();
        assert_eq!(
            collapse(&seen(&["brk", "exit", "read", "write", "mmap"]), &g, exists),
            ["@default", "@io", "mmap"]
        );
        assert_eq!(
            collapse(&seen(&["brk", "exit", "read", "write", "open"]), &g, exists),
            ["@svc"]
        );
        assert_eq!(collapse(&seen(&["brk", "read"]), &g, exists), ["brk", "read"]);
    }
}
