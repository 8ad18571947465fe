//! Checks that need every file: duplicates, kernel capacity, sizes that
//! depend on each other.

use super::*;

/// Where rule `id` (1-based) was written, for errors about it.
fn rule_loc(c: &Config, id: Option<u32>) -> Loc {
    let rule = id.and_then(|id| c.policy.rules.get((id as usize).wrapping_sub(1)));
    let (file, line) = rule
        .and_then(|r| r.origin.rsplit_once(':'))
        .map_or((PathBuf::new(), 0), |(f, l)| {
            (PathBuf::from(f), l.parse().unwrap_or(0))
        });
    Loc {
        file,
        line,
        column: 1,
    }
}

/// Checks that need every file: duplicates, kernel capacity, sizes that
/// depend on each other. Assigns host ids.
pub(super) fn finish(mut m: Merge, errors: &mut Vec<ConfigError>) -> Config {
    let mut seen: HashMap<(HostTarget, Vec<(u16, u16)>), Loc> = HashMap::new();
    let mut hosts: Vec<WatchedHost> = Vec::new();
    let mut locs = Vec::new();
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
        hosts.push(WatchedHost {
            id: hosts.len() as u32 + 1,
            origin: loc.file.clone(),
            ..h
        });
        locs.push((loc, key));
    }
    let (watch, too_many) = watchlist::build(&hosts, &HashMap::new());
    for e in too_many {
        let (loc, key) = &locs[e.host_index];
        push(errors, loc, key.clone(), e.to_string());
    }
    m.config.hosts = hosts;
    policy::finish(&mut m, errors);
    sinks::finish(&mut m, errors);
    let (compiled, too_many) = crate::policy::compile::compile(
        &m.config.policy,
        &crate::policy::Environment::empty(),
        &crate::policy::scopes::Identities::default(),
    );
    for e in too_many {
        let key = e
            .rule
            .map_or_else(|| "rule".to_string(), |id| format!("rule {id}"));
        push(errors, &rule_loc(&m.config, e.rule), key, e.to_string());
    }
    // Hostnames count once resolved: every apply checks again with them.
    for o in crate::capacity::check(&watch, &compiled) {
        let (loc, key) = match o.culprit {
            crate::capacity::Culprit::Host(i) if i < locs.len() => locs[i].clone(),
            crate::capacity::Culprit::Rule(id) => (rule_loc(&m.config, Some(id)), format!("rule {id}")),
            _ => (rule_loc(&m.config, None), "scope".to_string()),
        };
        push(errors, &loc, key, o.to_string());
    }
    if m.wakeup_loc.is_none() {
        // Unset: a sixteenth of the ring, so that a small ring still gets a
        // valid threshold and a large one is not woken for a trickle.
        let bpf = &mut m.config.bpf;
        bpf.wakeup_threshold = crate::config::default_wakeup_threshold(bpf.ring_buffer_size);
    }
    let bpf = &m.config.bpf;
    if bpf.wakeup_threshold >= u64::from(bpf.ring_buffer_size) {
        let loc = m.wakeup_loc.or(m.ring_loc).unwrap_or(Loc {
            file: PathBuf::new(),
            line: 0,
            column: 0,
        });
        let msg = format!(
            "{} bytes: must be below bpf.ring_buffer_size ({} bytes)",
            bpf.wakeup_threshold, bpf.ring_buffer_size
        );
        push(errors, &loc, "bpf.wakeup_threshold", msg);
    }
    if m.config.dns.min_ttl > m.config.dns.max_ttl {
        let msg = "dns.min_ttl is longer than dns.max_ttl";
        push(
            errors,
            &Loc {
                file: PathBuf::new(),
                line: 0,
                column: 0,
            },
            "dns",
            msg,
        );
    }
    m.config
}
