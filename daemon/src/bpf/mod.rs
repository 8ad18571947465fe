//! Everything that touches the kernel side: the generated skeleton, loading
//! and attaching, the ring-buffer records, map updates and counters.

#[allow(missing_debug_implementations, clippy::all, clippy::pedantic)]
mod skel {
    include!(concat!(env!("OUT_DIR"), "/connectracer.skel.rs"));
}

mod attach;
mod error;
pub mod event;
pub mod generation;
pub mod layout;
pub mod pins;
pub mod profile;
pub mod stats;
pub mod tracer;

pub use skel::types;
