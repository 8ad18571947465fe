//! Kernel-side counters from the per-CPU `stats` array.

use connectracer_proto::varlink::KernelCounters;
use libbpf_rs::{MapCore, MapFlags};

use super::types::ct_stat;

/// Sums over CPUs, plus ring-buffer drops per CPU (where loss happened).
pub type KernelStats = KernelCounters;

fn per_cpu(map: &dyn MapCore, idx: ct_stat) -> libbpf_rs::Result<Vec<u64>> {
    let vals = map
        .lookup_percpu(&idx.0.to_ne_bytes(), MapFlags::ANY)?
        .unwrap_or_default();
    Ok(vals
        .iter()
        .map(|v| {
            v.get(..8)
                .map_or(0, |b| u64::from_ne_bytes(b.try_into().unwrap_or([0; 8])))
        })
        .collect())
}

/// Reads the counters from the `stats` map.
pub fn read(map: &dyn MapCore) -> libbpf_rs::Result<KernelStats> {
    let sum = |idx| per_cpu(map, idx).map(|v| v.iter().sum());
    let drops_per_cpu = per_cpu(map, ct_stat::CT_STAT_RB_DROPS)?;
    Ok(KernelCounters {
        connects: sum(ct_stat::CT_STAT_CONNECTS)?,
        sendmsg_new: sum(ct_stat::CT_STAT_SENDMSG_NEW)?,
        sendmsg_dup: sum(ct_stat::CT_STAT_SENDMSG_DUP)?,
        unwatched: sum(ct_stat::CT_STAT_UNWATCHED)?,
        events: sum(ct_stat::CT_STAT_EVENTS)?,
        drops: drops_per_cpu.iter().sum(),
        state_changes: sum(ct_stat::CT_STAT_STATE_CHANGES)?,
        proc_events: sum(ct_stat::CT_STAT_PROC_EVENTS)?,
        other_proto: sum(ct_stat::CT_STAT_OTHER_PROTO)?,
        drops_per_cpu,
    })
}
