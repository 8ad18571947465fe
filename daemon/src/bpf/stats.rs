//! Kernel-side counters from the per-CPU `stats` array.

use connectracer_proto::api::KernelCounters;
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
        denied: sum(ct_stat::CT_STAT_DENIED)?,
        would_deny: sum(ct_stat::CT_STAT_WOULD_DENY)?,
        drops_per_cpu,
        ring_pending_bytes: 0,
        ring_size_bytes: 0,
    })
}

/// Producer and consumer positions of a ring buffer, read through a
/// read-only mapping of its first two pages (the consumer page, then the
/// producer page, as the kernel lays them out).
#[derive(Debug)]
pub struct RingPositions {
    consumer: std::ptr::NonNull<libc::c_void>,
    producer: std::ptr::NonNull<libc::c_void>,
    page: usize,
}

// SAFETY: the mappings are read-only and live as long as the struct.
unsafe impl Send for RingPositions {}

impl RingPositions {
    pub fn map(fd: std::os::fd::BorrowedFd<'_>) -> std::io::Result<Self> {
        use std::os::fd::AsRawFd;
        let page = nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE)
            .ok()
            .flatten()
            .unwrap_or(4096) as usize;
        let map_at = |offset: usize| {
            // SAFETY: a fresh shared read-only mapping of one page of the
            // ring buffer map's fd; the kernel allows PROT_READ on both.
            let p = unsafe {
                libc::mmap(
                    std::ptr::null_mut(),
                    page,
                    libc::PROT_READ,
                    libc::MAP_SHARED,
                    fd.as_raw_fd(),
                    offset as libc::off_t,
                )
            };
            if p == libc::MAP_FAILED {
                return Err(std::io::Error::last_os_error());
            }
            std::ptr::NonNull::new(p).ok_or_else(|| std::io::Error::other("mmap returned NULL"))
        };
        let consumer = map_at(0)?;
        let producer = match map_at(page) {
            Ok(p) => p,
            Err(e) => {
                // SAFETY: consumer was mapped above with this length.
                unsafe { libc::munmap(consumer.as_ptr(), page) };
                return Err(e);
            }
        };
        Ok(Self {
            consumer,
            producer,
            page,
        })
    }

    /// Bytes submitted (or reserved) and not yet consumed.
    pub fn pending(&self) -> u64 {
        // SAFETY: both pages stay mapped while self lives; the positions are
        // the first 8 bytes of each, updated atomically by kernel and reader.
        let (c, p) = unsafe {
            (
                std::ptr::read_volatile(self.consumer.as_ptr().cast::<u64>()),
                std::ptr::read_volatile(self.producer.as_ptr().cast::<u64>()),
            )
        };
        p.saturating_sub(c)
    }
}

impl Drop for RingPositions {
    fn drop(&mut self) {
        // SAFETY: both were mapped in `map` with length `page`.
        unsafe {
            libc::munmap(self.consumer.as_ptr(), self.page);
            libc::munmap(self.producer.as_ptr(), self.page);
        }
    }
}
