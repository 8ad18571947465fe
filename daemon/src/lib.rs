//! connectracerd: the egress connection tracer daemon, as a library so the
//! binary stays thin and integration tests can reach its parts.

pub mod added_hosts;
pub mod answers;
pub mod attribution;
pub mod bpf;
pub mod cli;
pub mod config;
pub mod containers;
pub mod control;
pub mod count_warning;
pub mod daemon;
pub mod dbus;
pub mod dns;
pub mod downtime;
pub mod egress;
pub mod epochs;
pub mod gpu;
pub mod kernel;
#[cfg(test)]
mod layers;
pub mod logging;
pub mod metrics;
pub mod metrics_http;
pub mod pipeline;
pub mod policy;
pub mod profiles;
pub mod reload;
pub mod ruleset;
pub mod sandbox;
pub mod service;
pub mod sinks;
pub mod snapshot;
pub mod sys;
pub mod table;
