//! The errors a call can end with. On the control socket each is a varlink
//! error reply (`{"error": NAME, "parameters": {...}}`); the D-Bus
//! interface maps them onto its own error names (`dbus::TracerError`).

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::{Map, Value};

use crate::varlink::{INTERFACE, SERVICE_INTERFACE};

/// Errors a call can end with, by their varlink names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CallError {
    HostNotFound {
        name: String,
    },
    AccessDenied {
        reason: String,
    },
    InvalidArgument {
        field: String,
        reason: String,
    },
    MethodNotFound {
        method: String,
    },
    InterfaceNotFound {
        interface: String,
    },
    InvalidParameter {
        parameter: String,
    },
    /// A reload found errors; the running configuration stays in force.
    ConfigInvalid {
        errors: Vec<String>,
    },
}

impl CallError {
    pub fn name(&self) -> String {
        match self {
            CallError::AccessDenied { .. } => format!("{INTERFACE}.AccessDenied"),
            CallError::InvalidArgument { .. } => format!("{INTERFACE}.InvalidArgument"),
            CallError::MethodNotFound { .. } => format!("{SERVICE_INTERFACE}.MethodNotFound"),
            CallError::InterfaceNotFound { .. } => format!("{SERVICE_INTERFACE}.InterfaceNotFound"),
            CallError::InvalidParameter { .. } => format!("{SERVICE_INTERFACE}.InvalidParameter"),
            CallError::ConfigInvalid { .. } => format!("{INTERFACE}.ConfigInvalid"),
            CallError::HostNotFound { .. } => format!("{INTERFACE}.HostNotFound"),
        }
    }

    /// The error's parameters, by their IDL names.
    fn parameters(&self) -> Map<String, Value> {
        let mut p = Map::new();
        let mut put = |k: &str, v: Value| {
            p.insert(k.to_string(), v);
        };
        match self {
            CallError::AccessDenied { reason } => put("reason", reason.as_str().into()),
            CallError::InvalidArgument { field, reason } => {
                put("field", field.as_str().into());
                put("reason", reason.as_str().into());
            }
            CallError::MethodNotFound { method } => put("method", method.as_str().into()),
            CallError::InterfaceNotFound { interface } => put("interface", interface.as_str().into()),
            CallError::InvalidParameter { parameter } => put("parameter", parameter.as_str().into()),
            CallError::ConfigInvalid { errors } => put("errors", errors.clone().into()),
            CallError::HostNotFound { name } => put("name", name.as_str().into()),
        }
        p
    }

    /// Back from an error's name and parameters; None for a name this
    /// version does not know.
    fn from_wire(name: &str, p: &Map<String, Value>) -> Option<Self> {
        let get = |k: &str| p.get(k).and_then(Value::as_str).unwrap_or_default().to_string();
        let (interface, short) = name.rsplit_once('.')?;
        Some(match (interface, short) {
            (INTERFACE, "AccessDenied") => CallError::AccessDenied {
                reason: get("reason"),
            },
            (INTERFACE, "InvalidArgument") => CallError::InvalidArgument {
                field: get("field"),
                reason: get("reason"),
            },
            (INTERFACE, "HostNotFound") => CallError::HostNotFound { name: get("name") },
            (INTERFACE, "ConfigInvalid") => CallError::ConfigInvalid {
                errors: p
                    .get("errors")
                    .and_then(Value::as_array)
                    .map(|a| a.iter().filter_map(|e| e.as_str().map(String::from)).collect())
                    .unwrap_or_default(),
            },
            (SERVICE_INTERFACE, "MethodNotFound") => CallError::MethodNotFound {
                method: get("method"),
            },
            (SERVICE_INTERFACE, "InterfaceNotFound") => CallError::InterfaceNotFound {
                interface: get("interface"),
            },
            (SERVICE_INTERFACE, "InvalidParameter") => CallError::InvalidParameter {
                parameter: get("parameter"),
            },
            _ => return None,
        })
    }
}

/// The error reply as it travels.
#[derive(Serialize, Deserialize)]
struct Wire {
    error: String,
    #[serde(default)]
    parameters: Map<String, Value>,
}

impl Serialize for CallError {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        Wire {
            error: self.name(),
            parameters: self.parameters(),
        }
        .serialize(s)
    }
}

/// Fails on a reply without an `error` or with an unknown one, as zlink
/// expects of a reply error type: it then reports the reply for what it is.
impl<'de> Deserialize<'de> for CallError {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let w = Wire::deserialize(d)?;
        CallError::from_wire(&w.error, &w.parameters)
            .ok_or_else(|| serde::de::Error::custom(format!("unknown error {}", w.error)))
    }
}

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CallError::HostNotFound { name } => write!(f, "no added host named `{name}`"),
            CallError::AccessDenied { reason } => write!(f, "access denied: {reason}"),
            CallError::InvalidArgument { field, reason } => write!(f, "invalid {field}: {reason}"),
            CallError::MethodNotFound { method } => write!(f, "the daemon has no method {method}"),
            CallError::InterfaceNotFound { interface } => {
                write!(f, "the daemon has no interface {interface}")
            }
            CallError::InvalidParameter { parameter } => write!(f, "invalid parameter {parameter}"),
            CallError::ConfigInvalid { errors } => {
                write!(
                    f,
                    "the new configuration is invalid; the running one stays in force:"
                )?;
                for e in errors {
                    write!(f, "\n  {e}")?;
                }
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_round_trip_through_their_wire_form() {
        for e in [
            CallError::AccessDenied { reason: "r".into() },
            CallError::InvalidArgument {
                field: "address".into(),
                reason: "bad".into(),
            },
            CallError::MethodNotFound { method: "x.Y".into() },
            CallError::HostNotFound { name: "h".into() },
            CallError::ConfigInvalid {
                errors: vec!["a:1:1: x".into()],
            },
        ] {
            let text = serde_json::to_string(&e).unwrap();
            assert_eq!(serde_json::from_str::<CallError>(&text).unwrap(), e);
        }
        assert_eq!(
            serde_json::to_value(CallError::HostNotFound { name: "h".into() }).unwrap(),
            serde_json::json!({"error": "org.connectracer.Tracer.HostNotFound", "parameters": {"name": "h"}})
        );
        assert!(serde_json::from_str::<CallError>(r#"{"parameters":{}}"#).is_err());
        assert!(serde_json::from_str::<CallError>(r#"{"error":"com.example.Other"}"#).is_err());
    }
}
