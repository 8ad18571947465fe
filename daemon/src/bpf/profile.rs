//! Syscall profiles in the kernel: which cgroups are recorded, in which
//! slot of `profiles`, and the sys_enter program's link, held only while
//! some profile records (attached, it slows every syscall of the host).

use libbpf_rs::{Link, MapCore, MapFlags};

use super::error::TracerError;
use super::layout::bytes;
use super::tracer::Tracer;
use super::types::{ct_profile, ct_profile_capacity, ct_profile_levels, ct_profile_state, ct_profile_target};

// SAFETY: plain integer structs generated from connectracer.h.
unsafe impl plain::Plain for ct_profile {}
// SAFETY: as above.
unsafe impl plain::Plain for ct_profile_levels {}
// SAFETY: as above.
unsafe impl plain::Plain for ct_profile_target {}

/// Profiles recorded at once.
pub const SLOTS: usize = ct_profile_capacity::CT_PROFILE_SLOTS.0 as usize;
/// Syscall numbers per architecture.
pub const SYSCALLS: usize = ct_profile_capacity::CT_PROFILE_SYSCALLS.0 as usize;
const LEVELS: usize = ct_profile_capacity::CT_PROFILE_LEVELS.0 as usize;

/// What one profile recorded, as the kernel counted it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawProfile {
    /// Calls per syscall number: native ABI.
    pub native: Vec<u64>,
    /// Calls per syscall number: 32-bit compat ABI.
    pub compat: Vec<u64>,
    /// Bit n: address family n passed to socket(2)/socketpair(2).
    pub families: u64,
    pub unknown: u64,
    pub socketcall: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum ProfileError {
    #[error("{SLOTS} profiles are recording already")]
    NoSlot,
    #[error("cgroup {0} is being profiled already")]
    Busy(u64),
    #[error("profiles are recording at {LEVELS} cgroup levels already")]
    NoLevel,
    #[error("no profile is recording in slot {0}")]
    NotRecording(usize),
    #[error("kernel map profiles answered {0} bytes, fewer than a profile's")]
    Short(usize),
    #[error(transparent)]
    Kernel(#[from] TracerError),
}

/// The profiles recording now: (cgroup id, level) per slot.
#[derive(Debug)]
pub struct Recording {
    slots: [Option<(u64, u32)>; SLOTS],
    link: Option<Link>,
}

impl Default for Recording {
    fn default() -> Self {
        Self {
            slots: [None; SLOTS],
            link: None,
        }
    }
}

impl Recording {
    fn levels(&self) -> ct_profile_levels {
        let mut lv = ct_profile_levels::default();
        let mut seen: Vec<u32> = self.slots.iter().flatten().map(|&(_, l)| l).collect();
        seen.sort_unstable();
        seen.dedup();
        for (i, l) in seen.iter().take(LEVELS).enumerate() {
            lv.level[i] = *l;
        }
        lv.count = seen.len().min(LEVELS) as u32;
        lv
    }

    fn distinct_levels_with(&self, level: u32) -> usize {
        let mut seen: Vec<u32> = self.slots.iter().flatten().map(|&(_, l)| l).collect();
        seen.push(level);
        seen.sort_unstable();
        seen.dedup();
        seen.len()
    }
}

fn map_err(map: &'static str) -> impl FnOnce(libbpf_rs::Error) -> TracerError {
    move |source| TracerError::Map { map, source }
}

impl Tracer {
    /// Starts recording the cgroup `cgroup_id` at `level` (counted from the
    /// cgroup2 mount, whose own is 0) and its descendants; returns the slot
    /// to stop it with. `armed`: nothing is counted until a task of the
    /// cgroup execs (that exec is).
    pub fn profile_start(&self, cgroup_id: u64, level: u32, armed: bool) -> Result<usize, ProfileError> {
        let level = level + self.level_offset;
        let mut rec = self.profiles.borrow_mut();
        if rec.slots.iter().flatten().any(|&(id, _)| id == cgroup_id) {
            return Err(ProfileError::Busy(cgroup_id));
        }
        if rec.distinct_levels_with(level) > LEVELS {
            return Err(ProfileError::NoLevel);
        }
        let slot = rec
            .slots
            .iter()
            .position(Option::is_none)
            .ok_or(ProfileError::NoSlot)?;
        let maps = &self.skel.maps;
        let key = (slot as u32).to_ne_bytes();
        maps.profiles
            .update(&key, bytes(&ct_profile::default()), MapFlags::ANY)
            .map_err(map_err("profiles"))?;
        let state = if armed {
            ct_profile_state::CT_PROFILE_ARMED
        } else {
            ct_profile_state::CT_PROFILE_RECORDING
        };
        let target = ct_profile_target {
            slot: slot as u32,
            state: state.0,
            exec_nr: -1,
            exec_compat: 0,
        };
        maps.profile_cgroups
            .update(&cgroup_id.to_ne_bytes(), bytes(&target), MapFlags::ANY)
            .map_err(map_err("profile_cgroups"))?;
        rec.slots[slot] = Some((cgroup_id, level));
        let written = write_levels(self, &rec.levels()).map_err(ProfileError::from);
        let attached = written.and_then(|()| {
            if rec.link.is_none() {
                let link = self
                    .skel
                    .progs
                    .ct_sys_enter
                    .attach()
                    .map_err(|source| TracerError::Attach {
                        prog: "sys_enter",
                        source,
                    })?;
                rec.link = Some(link);
            }
            Ok(())
        });
        if let Err(e) = attached {
            drop(rec);
            let _ = self.profile_stop(slot);
            return Err(e);
        }
        Ok(slot)
    }

    /// Stops the profile in `slot` and returns what it recorded; the
    /// program is detached with the last one.
    pub fn profile_stop(&self, slot: usize) -> Result<RawProfile, ProfileError> {
        let mut rec = self.profiles.borrow_mut();
        let (cgroup_id, _) = rec
            .slots
            .get(slot)
            .copied()
            .flatten()
            .ok_or(ProfileError::NotRecording(slot))?;
        rec.slots[slot] = None;
        if rec.slots.iter().all(Option::is_none) {
            rec.link = None;
        }
        let maps = &self.skel.maps;
        let _ = maps.profile_cgroups.delete(&cgroup_id.to_ne_bytes());
        write_levels(self, &rec.levels())?;
        let value = maps
            .profiles
            .lookup(&(slot as u32).to_ne_bytes(), MapFlags::ANY)
            .map_err(map_err("profiles"))?
            .unwrap_or_default();
        let mut p = ct_profile::default();
        plain::copy_from_bytes(&mut p, &value).map_err(|_| ProfileError::Short(value.len()))?;
        Ok(RawProfile {
            native: p.counts[..SYSCALLS].to_vec(),
            compat: p.counts[SYSCALLS..].to_vec(),
            families: p.families,
            unknown: p.unknown,
            socketcall: p.socketcall,
        })
    }
}

fn write_levels(tracer: &Tracer, lv: &ct_profile_levels) -> Result<(), TracerError> {
    tracer
        .skel
        .maps
        .profile_levels
        .update(&0u32.to_ne_bytes(), bytes(lv), MapFlags::ANY)
        .map_err(map_err("profile_levels"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_are_distinct_and_sorted() {
        let mut r = Recording::default();
        r.slots[0] = Some((10, 3));
        r.slots[5] = Some((11, 2));
        r.slots[7] = Some((12, 3));
        let lv = r.levels();
        assert_eq!(lv.count, 2);
        assert_eq!(&lv.level[..2], &[2, 3]);
        assert_eq!(r.distinct_levels_with(3), 2);
        assert_eq!(r.distinct_levels_with(4), 3);
    }
}
