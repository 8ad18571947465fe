//! The host around the daemon: mounts it needs and the privileges it runs with.

pub mod cgroup_tree;
pub mod memory;
pub mod mounts;
pub mod preflight;
pub mod privileges;
pub mod state_file;
