//! The filter of FindConnections, as D-Bus clients give it: a string
//! dictionary with the keys of tracectl's filter options.

use std::collections::HashMap;

use serde::de::DeserializeOwned;
use serde_json::Value;

use super::error::TracerError;
use crate::api::{ConnectionsParams, Filter};

fn invalid(field: &str, reason: String) -> TracerError {
    TracerError::InvalidArgument(format!("{field}: {reason}"))
}

fn named<T: DeserializeOwned>(field: &str, v: String) -> Result<T, TracerError> {
    serde_json::from_value(Value::String(v.clone()))
        .map_err(|_| invalid(field, format!("`{v}` is not one of the accepted values")))
}

/// `{"unit": "nginx.service", "port": "443", "state": "established"}` into
/// the parameters of Connections; an unknown key or a bad value is an
/// InvalidArgument naming it.
pub fn connections_params(
    mut d: HashMap<String, String>,
    limit: u32,
) -> Result<ConnectionsParams, TracerError> {
    let mut f = Filter {
        unit: d.remove("unit"),
        container: d.remove("container"),
        comm: d.remove("comm"),
        exe: d.remove("exe"),
        user: d.remove("user"),
        dest: d.remove("dest"),
        name: d.remove("name"),
        pod: d.remove("pod"),
        namespace: d.remove("namespace"),
        container_name: d.remove("container_name"),
        ..Filter::default()
    };
    if let Some(p) = d.remove("port") {
        f.port = Some(
            p.parse()
                .map_err(|_| invalid("port", format!("`{p}` is not a port")))?,
        );
    }
    f.verdict = d.remove("verdict").map(|v| named("verdict", v)).transpose()?;
    let state = d.remove("state").map(|v| named("state", v)).transpose()?;
    let protocol = d.remove("protocol").map(|v| named("protocol", v)).transpose()?;
    if let Some(k) = d.keys().min() {
        return Err(invalid(
            k,
            "not a filter key (state, protocol, unit, container, container_name, pod, namespace, comm, exe, user, dest, port, verdict, name)"
                .to_string(),
        ));
    }
    // Globs and the CIDR are checked here, before any work is queued.
    f.matcher().map_err(|e| invalid("filter", e.to_string()))?;
    Ok(ConnectionsParams {
        state,
        protocol,
        limit: (limit != 0).then_some(limit),
        filter: f,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dict(kv: &[(&str, &str)]) -> HashMap<String, String> {
        kv.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn keys_become_the_filter_and_bad_ones_are_named() {
        let p = connections_params(
            dict(&[("unit", "a*.service"), ("port", "443"), ("state", "closed")]),
            5,
        )
        .unwrap();
        assert_eq!(
            (p.filter.unit.as_deref(), p.filter.port, p.limit),
            (Some("a*.service"), Some(443), Some(5))
        );
        assert_eq!(p.state, Some(crate::ConnState::Closed));
        for (kv, field) in [
            (("port", "https"), "port"),
            (("state", "half-open"), "state"),
            (("colour", "red"), "colour"),
        ] {
            match connections_params(dict(&[kv]), 0) {
                Err(TracerError::InvalidArgument(m)) => assert!(m.starts_with(&format!("{field}: ")), "{m}"),
                other => panic!("{kv:?}: {other:?}"),
            }
        }
    }
}
