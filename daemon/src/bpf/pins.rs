//! What lives in bpffs between two instances: the links (so tracing goes
//! on while the daemon restarts) and the maps whose content must survive a
//! restart. A new instance adopts what fits and replaces the rest; the
//! clean stop removes it all.

use std::path::{Path, PathBuf};

use libbpf_rs::{MapCore, Object, OpenObject};

use super::error::TracerError;

/// Maps whose content must survive a restart: counters, records not yet
/// read, per-socket state of open connections, the UDP dedup memory, the
/// addresses DNS answers gave hostname rules. The watch lists and
/// generation switch are rebuilt from the configuration.
pub const MAPS: [&str; 5] = ["events", "stats", "socks", "dgrams", "dns_addrs"];

/// What a start found pinned by an earlier instance.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Adoption {
    pub maps: Vec<&'static str>,
    /// Links whose program was replaced in place.
    pub links: Vec<&'static str>,
    /// Pinned state that could not be reused (and was replaced), with why.
    pub discarded: Vec<String>,
}

impl Adoption {
    fn adopted_map(&self, name: &str) -> bool {
        self.maps.contains(&name)
    }
}

/// Where the link of program `name` is pinned.
pub fn link_path(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!("link_{name}"))
}

fn pinned(name: &str) -> Option<&'static str> {
    MAPS.into_iter().find(|m| *m == name)
}

/// Before load: each pinned map still there is reused, unless it no longer
/// fits (another version, a new ring_buffer_size), when it starts afresh.
pub fn reuse(open: &mut OpenObject, dir: &Path, adoption: &mut Adoption) -> Result<(), TracerError> {
    std::fs::create_dir_all(dir).map_err(|e| TracerError::Pin {
        path: dir.to_path_buf(),
        source: libbpf_rs::Error::from(e),
    })?;
    for mut map in open.maps_mut() {
        let Some(name) = map.name().to_str().and_then(pinned) else {
            continue;
        };
        let path = dir.join(name);
        if !path.exists() {
            continue;
        }
        match map.reuse_pinned_map(&path) {
            Ok(()) => adoption.maps.push(name),
            Err(e) => {
                adoption.discarded.push(format!("map {name}: {e}"));
                let _ = std::fs::remove_file(&path);
            }
        }
    }
    // Reported in the list's order, not the object's.
    adoption.maps.sort_by_key(|m| MAPS.iter().position(|x| x == m));
    Ok(())
}

/// After load: pins the maps that were not adopted.
pub fn pin_new(object: &mut Object, dir: &Path, adoption: &Adoption) -> Result<(), TracerError> {
    for mut map in object.maps_mut() {
        let Some(name) = map.name().to_str().and_then(pinned) else {
            continue;
        };
        if !adoption.adopted_map(name) {
            let path = dir.join(name);
            map.pin(&path)
                .map_err(|source| TracerError::Pin { path, source })?;
        }
    }
    Ok(())
}

/// Removes the map pins, except those adopted when `keep_adopted`, and the
/// directory if that leaves it empty.
pub fn remove_maps(dir: &Path, adoption: &Adoption, keep_adopted: bool) {
    for name in MAPS {
        if !(keep_adopted && adoption.adopted_map(name)) {
            let _ = std::fs::remove_file(dir.join(name));
        }
    }
    let _ = std::fs::remove_dir(dir);
}

#[cfg(test)]
mod tests {
    use std::mem::MaybeUninit;

    use libbpf_rs::skel::{OpenSkel, SkelBuilder};

    use super::*;
    use crate::bpf::skel::ConnectracerSkelBuilder;

    /// Opening parses the object only: no kernel, no root.
    #[test]
    fn every_pinned_map_is_in_the_object() {
        let mut storage = MaybeUninit::uninit();
        let mut open = ConnectracerSkelBuilder::default().open(&mut storage).unwrap();
        let names: Vec<String> = open
            .open_object_mut()
            .maps()
            .map(|m| m.name().to_string_lossy().into_owned())
            .collect();
        for m in MAPS {
            assert!(names.iter().any(|n| n == m), "{m} not among {names:?}");
        }
    }
}
