//! `connectracer_connections_total`: one counter per label set, its handle
//! cached per (host, port, protocol, outcome, process image, container
//! names) so that a repeated connection costs one hash lookup.

use std::sync::Arc;

use connectracer_proto::{Connection, ContainerMeta, Process, Protocol};
use metrics::counter;

use super::{Metrics, CONNECTIONS};

/// A shared attribution, compared by identity: connections from the same
/// process image share one `Arc`, so this is a cheap exact key.
/// The same holds for a container's names: one `Arc` per container, another
/// once its runtime answered.
#[derive(Debug)]
pub(super) struct ByIdentity<T>(Arc<T>);

impl<T> PartialEq for ByIdentity<T> {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl<T> Eq for ByIdentity<T> {}

impl<T> std::hash::Hash for ByIdentity<T> {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        Arc::as_ptr(&self.0).hash(state);
    }
}

pub(super) type ConnKey = (
    Option<String>,
    u16,
    Protocol,
    &'static str,
    ByIdentity<Process>,
    ByIdentity<ContainerMeta>,
);

/// Counter handles kept per key, so a repeated connection costs one hash
/// lookup instead of building and registering seven labels.
pub(super) const MAX_CACHED_COUNTERS: usize = 8192;

impl Metrics {
    /// The label names of `connections_total`, in exposition order.
    pub(super) fn connection_label_names(&self) -> Vec<&'static str> {
        let mut names = vec!["host"];
        if self.labels.port {
            names.push("port");
        }
        names.extend(["protocol", "outcome"]);
        if self.labels.comm {
            names.push("comm");
        }
        names.extend(["unit", "container"]);
        if self.labels.container_name {
            names.push("container_name");
        }
        if self.labels.pod {
            names.push("pod");
        }
        names
    }

    /// One connection reached an outcome: established, failed (and, with
    /// enforcement, denied or would_deny).
    pub fn connection(&mut self, c: &Connection, outcome: &'static str) {
        let key: ConnKey = (
            c.host.clone(),
            c.dst.port(),
            c.protocol,
            outcome,
            ByIdentity(c.process.clone()),
            ByIdentity(c.container.clone()),
        );
        if let Some((counter, outcomes)) = self.counters.get(&key) {
            counter.increment(1);
            outcomes.increment(1);
            return;
        }
        let p = &c.process;
        let mut values = vec![c.host.clone().unwrap_or_default()];
        if self.labels.port {
            values.push(c.dst.port().to_string());
        }
        values.extend([c.protocol.as_str().to_string(), outcome.to_string()]);
        if self.labels.comm {
            values.push(p.comm.clone());
        }
        values.extend([
            p.unit.clone().unwrap_or_default(),
            p.container_id
                .as_deref()
                .map(|id| id[..id.len().min(12)].to_string())
                .unwrap_or_default(),
        ]);
        // Opt-in: names change with every deployment, ids with every start.
        if self.labels.container_name {
            values.push(c.container.container_name.clone().unwrap_or_default());
        }
        if self.labels.pod {
            values.push(c.container.pod().unwrap_or_default());
        }
        let v = self.budget.admit(CONNECTIONS, values);
        let labels: Vec<metrics::Label> = self
            .connection_label_names()
            .into_iter()
            .zip(v)
            .map(|(k, v)| metrics::Label::new(k, v))
            .collect();
        let counter = counter!(CONNECTIONS, labels);
        counter.increment(1);
        // Registered with the per-process counter, so a repeated connection
        // costs no label lookup for the aggregate either.
        let outcomes = counter!(
            "connectracer_connection_outcomes_total",
            "protocol" => c.protocol.as_str(),
            "outcome" => outcome
        );
        outcomes.increment(1);
        if self.counters.len() >= MAX_CACHED_COUNTERS {
            self.counters.clear();
        }
        self.counters.insert(key, (counter, outcomes));
    }
}
