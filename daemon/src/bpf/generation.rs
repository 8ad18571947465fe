//! The transactional write that puts one generation's layout into the
//! kernel's maps: the daemon's record of each generation always equals
//! what the map holds, and a write that fails partway is undone, so the
//! idle generation is never left holding rules nobody reported.

use libbpf_rs::{MapCore, MapFlags};

use super::error::TracerError;
use super::layout::{Entries, Generation, MAPS, MAP_NAMES};

/// The maps of one generation. The policy maps are shared with the other
/// generation (its entries carry the other generation number), so their
/// room is what the other one leaves.
pub struct GenerationMaps<'a> {
    pub maps: [&'a dyn MapCore; MAPS],
    /// Whether the map at the same index is shared by both generations.
    pub shared: [bool; MAPS],
}

impl std::fmt::Debug for GenerationMaps<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GenerationMaps")
            .field("shared", &self.shared)
            .finish_non_exhaustive()
    }
}

/// Makes `map` hold `want` where it held `had`: deletes what went, then
/// writes what is new or changed. `had` follows every successful kernel
/// write, so on failure it still says exactly what the map holds.
fn sync_map(
    map: &dyn MapCore,
    name: &'static str,
    had: &mut Entries,
    want: &Entries,
) -> Result<(), TracerError> {
    let map_err = |source| TracerError::Map { map: name, source };
    let gone: Vec<Vec<u8>> = had.keys().filter(|k| !want.contains_key(*k)).cloned().collect();
    for k in gone {
        match map.delete(&k) {
            Ok(()) => {}
            Err(e) if e.kind() == libbpf_rs::ErrorKind::NotFound => {}
            Err(e) => return Err(map_err(e)),
        }
        had.remove(&k);
    }
    for (k, v) in want {
        if had.get(k) != Some(v) {
            map.update(k, v, MapFlags::ANY).map_err(map_err)?;
            had.insert(k.clone(), v.clone());
        }
    }
    Ok(())
}

/// Room check before the first write: `other` is what the generation in
/// force holds in the shared maps.
fn check_room(maps: &GenerationMaps<'_>, want: &Generation, other: &Generation) -> Result<(), TracerError> {
    for (i, (map, want)) in maps.maps.iter().zip(want.parts()).enumerate() {
        let in_use = if maps.shared[i] { other.parts()[i].len() } else { 0 };
        let limit = map.max_entries() as usize;
        if want.len() + in_use > limit {
            return Err(TracerError::Capacity {
                map: MAP_NAMES[i],
                needed: want.len(),
                in_use,
                limit,
            });
        }
    }
    Ok(())
}

/// Makes the maps hold `want` for the generation recorded in `had`, all or
/// nothing: a kernel write that fails undoes the ones before it, so the
/// generation holds again exactly what it held (and `had` says so even if
/// the undo itself failed).
pub fn write_generation(
    maps: &GenerationMaps<'_>,
    had: &mut Generation,
    want: &Generation,
    other: &Generation,
) -> Result<(), TracerError> {
    check_room(maps, want, other)?;
    let before = had.clone();
    let mut result = Ok(());
    for ((i, part), want) in had.parts_mut().into_iter().enumerate().zip(want.parts()) {
        result = sync_map(maps.maps[i], MAP_NAMES[i], part, want);
        if result.is_err() {
            break;
        }
    }
    if let Err(e) = result {
        // Deleting first frees the room the old entries need.
        for ((i, part), old) in had.parts_mut().into_iter().enumerate().zip(before.parts()) {
            if let Err(undo) = sync_map(maps.maps[i], MAP_NAMES[i], part, old) {
                tracing::error!(
                    "undoing a failed write to {}: {:#}; the idle generation is rebuilt at the next apply",
                    MAP_NAMES[i],
                    anyhow::Error::from(undo)
                );
            }
        }
        return Err(e);
    }
    Ok(())
}

#[cfg(test)]
mod tests;
