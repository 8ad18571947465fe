//! Checks that need every file: duplicates and sizes that depend on each
//! other. Whether the kernel can hold the result is the ruleset stage's
//! question (`crate::ruleset::check_files`).

use super::*;

/// Numbers hosts and rules, rejects duplicates and settings that
/// contradict each other.
pub(super) fn finish(mut m: Merge, mut errors: Vec<ConfigError>) -> Validated {
    let hosts = number_hosts(&mut m, &mut errors);
    let rules = policy::finish(&mut m, &mut errors);
    sinks::finish(&mut m, &mut errors);
    if m.wakeup_loc.is_none() {
        // Unset: a sixteenth of the ring, so that a small ring still gets a
        // valid threshold and a large one is not woken for a trickle.
        let bpf = &mut m.config.bpf;
        bpf.wakeup_threshold = crate::config::default_wakeup_threshold(bpf.ring_buffer_size);
    }
    let bpf = &m.config.bpf;
    if bpf.wakeup_threshold >= u64::from(bpf.ring_buffer_size) {
        let loc = m.wakeup_loc.or(m.ring_loc).unwrap_or_default();
        let msg = format!(
            "{} bytes: must be below bpf.ring_buffer_size ({} bytes)",
            bpf.wakeup_threshold, bpf.ring_buffer_size
        );
        push(&mut errors, &loc, "bpf.wakeup_threshold", msg);
    }
    if let Some(msg) = m.config.dns.problem() {
        push(&mut errors, &m.dns_loc.unwrap_or_default(), "dns", msg);
    }
    Validated {
        config: m.config,
        errors,
        hosts,
        rules,
    }
}

/// Drops hosts already watched with the same ports and numbers the rest
/// from 1 (0 means "not watched" in the kernel); returns where each was written.
fn number_hosts(m: &mut Merge, errors: &mut Vec<ConfigError>) -> Vec<(Place, String)> {
    let mut seen: HashMap<(HostTarget, Vec<(u16, u16)>), Place> = HashMap::new();
    let mut placed = Vec::new();
    for (h, loc, key) in std::mem::take(&mut m.hosts) {
        let dedup = (
            h.target.clone(),
            h.ports.0.iter().map(|r| (*r.start(), *r.end())).collect(),
        );
        if let Some(first) = seen.get(&dedup) {
            let msg = format!(
                "`{}` with the same ports is already watched ({}:{})",
                h.name,
                first.file.display(),
                first.line
            );
            push(errors, &loc, format!("{key}.name"), msg);
            continue;
        }
        seen.insert(dedup, loc.clone());
        m.config.hosts.push(WatchedHost {
            id: m.config.hosts.len() as u32 + 1,
            origin: loc.file.clone(),
            ..h
        });
        placed.push((loc, key));
    }
    placed
}
