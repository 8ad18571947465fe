//! Least privilege: once the programs are attached, the maps open and the
//! control socket bound, the daemon keeps only what its steady state needs.

use caps::{CapSet, Capability, CapsHashSet};

/// What the running daemon still uses, and why.
pub const KEPT: [(Capability, &str); 1] = [(
    Capability::CAP_DAC_READ_SEARCH,
    "resolving cgroup ids to paths with open_by_handle_at",
)];

#[derive(Debug, thiserror::Error)]
#[error("dropping capabilities")]
pub struct DropError(#[source] caps::errors::CapsError);

/// Drops every other capability from the effective, permitted and
/// inheritable sets (and the bounding set where allowed). Map updates,
/// reloads, DNS and the control socket work on what is already open.
pub fn drop_to_steady_state() -> Result<Vec<&'static str>, DropError> {
    let keep: CapsHashSet = KEPT.iter().map(|(c, _)| *c).collect();
    let permitted = caps::read(None, CapSet::Permitted).map_err(DropError)?;
    let kept: CapsHashSet = permitted.intersection(&keep).copied().collect();
    // The bounding set needs CAP_SETPCAP, which goes with the rest below.
    for c in caps::all().difference(&keep) {
        let _ = caps::drop(None, CapSet::Bounding, *c);
    }
    caps::set(None, CapSet::Inheritable, &CapsHashSet::new()).map_err(DropError)?;
    caps::set(None, CapSet::Effective, &kept).map_err(DropError)?;
    caps::set(None, CapSet::Permitted, &kept).map_err(DropError)?;
    Ok(KEPT
        .iter()
        .filter(|(c, _)| kept.contains(c))
        .map(|(_, why)| *why)
        .collect())
}
