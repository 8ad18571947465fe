//! The control socket's varlink interface `org.connectracer.Tracer`: its
//! names, its IDL, and how a call's `method` and `parameters` become an
//! [`Operation`]. Framing and the message envelope are zlink's.

use serde::Deserialize;
use serde_json::Value;

use crate::api::{CallError, Operation};

pub const INTERFACE: &str = "org.connectracer.Tracer";
/// The interface definition, served by `GetInterfaceDescription`; checked
/// against the Rust definitions by `proto/tests/idl.rs`.
pub const DESCRIPTION: &str = include_str!("org.connectracer.Tracer.varlink");
pub const SERVICE_INTERFACE: &str = "org.varlink.service";
pub const DEFAULT_SOCKET: &str = "/run/connectracer/control.sock";
/// The sandbox socket (`tracectl run`, anyone may connect) beside a control
/// socket: `sandbox.sock` beside `control.sock`, `NAME.sandbox.sock` beside
/// any other `NAME.sock`. One rule for the daemon and tracectl, so that a
/// control socket given to both (`--socket`, `CONNECTRACER_SOCKET`) names
/// its sandbox socket too.
pub fn sandbox_socket_for(control: &std::path::Path) -> std::path::PathBuf {
    let name = control
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let sibling = match name.as_str() {
        "control.sock" => "sandbox.sock".to_string(),
        other => format!("{}.sandbox.sock", other.strip_suffix(".sock").unwrap_or(other)),
    };
    control.with_file_name(sibling)
}

/// Requests longer than this are refused and the connection closed.
pub const MAX_MESSAGE: usize = 64 * 1024;

/// A call's method and parameters as received, before they are checked:
/// what the server asks zlink to decode, so that an unknown method or bad
/// parameters get their own typed error instead of a failed decode.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct RawMethod {
    pub method: String,
    #[serde(default)]
    pub parameters: Option<Value>,
}

/// What a call asks for: the service interface's introspection, or one
/// of the tracer's operations.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Method {
    GetInfo,
    GetInterfaceDescription {
        interface: String,
    },
    /// Boxed: the filters make operations ten times the size of the rest.
    Operation(Box<Operation>),
}

fn params<T: serde::de::DeserializeOwned>(p: Option<&Value>) -> Result<T, CallError> {
    let empty = Value::Object(serde_json::Map::new());
    let p = match p {
        None | Some(Value::Null) => &empty,
        Some(v) => v,
    };
    T::deserialize(p).map_err(|e| CallError::InvalidArgument {
        field: "parameters".into(),
        reason: e.to_string(),
    })
}

impl Method {
    /// Decodes and checks a call. Pure, so it can be fuzzed.
    pub fn parse(raw: &RawMethod) -> Result<Method, CallError> {
        let p = raw.parameters.as_ref();
        let (interface, name) = raw.method.rsplit_once('.').unwrap_or(("", raw.method.as_str()));
        let op = match (interface, name) {
            (SERVICE_INTERFACE, "GetInfo") => return Ok(Method::GetInfo),
            (SERVICE_INTERFACE, "GetInterfaceDescription") => {
                let interface = p
                    .and_then(|p| p.get("interface"))
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string();
                return Ok(Method::GetInterfaceDescription { interface });
            }
            (INTERFACE, "GetVersion") => Operation::GetVersion,
            (INTERFACE, "GetStats") => Operation::GetStats,
            (INTERFACE, "Who") => Operation::Who(params(p)?),
            (INTERFACE, "Ps") => Operation::Ps(params(p)?),
            (INTERFACE, "Answers") => Operation::Answers(params(p)?),
            (INTERFACE, "Gpu") => Operation::Gpu,
            (INTERFACE, "Profile") => Operation::Profile(params(p)?),
            (INTERFACE, "PolicySuggest") => Operation::PolicySuggest(params(p)?),
            (INTERFACE, "Connections") => Operation::Connections(params(p)?),
            (INTERFACE, "Reload") => Operation::Reload,
            (INTERFACE, "AddHost") => Operation::AddHost(params(p)?),
            (INTERFACE, "RemoveHost") => Operation::RemoveHost(params(p)?),
            (INTERFACE, "Hosts") => Operation::Hosts,
            (INTERFACE, "PolicyShow") => Operation::PolicyShow,
            (INTERFACE, "PolicyCheck") => Operation::PolicyCheck(params(p)?),
            (INTERFACE, "Watch") => Operation::Watch(params(p)?),
            (INTERFACE, "Sandbox") => Operation::Sandbox(params(p)?),
            (SERVICE_INTERFACE | INTERFACE, _) => {
                return Err(CallError::MethodNotFound {
                    method: raw.method.clone(),
                })
            }
            _ => {
                return Err(CallError::InterfaceNotFound {
                    interface: interface.to_string(),
                })
            }
        };
        Ok(Method::Operation(Box::new(op)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(method: &str, parameters: Option<Value>) -> RawMethod {
        RawMethod {
            method: method.to_string(),
            parameters,
        }
    }

    /// What the client sends for an operation is what the server parses
    /// back into it, for every operation.
    #[test]
    fn every_operation_parses_back_from_its_call() {
        for op in Operation::every() {
            let call: RawMethod = serde_json::from_value(serde_json::to_value(&op).unwrap()).unwrap();
            assert_eq!(Method::parse(&call), Ok(Method::Operation(Box::new(op))));
        }
    }

    #[test]
    fn the_sandbox_socket_sits_beside_the_control_socket() {
        use std::path::Path;
        assert_eq!(
            sandbox_socket_for(Path::new(DEFAULT_SOCKET)),
            Path::new("/run/connectracer/sandbox.sock")
        );
        assert_eq!(
            sandbox_socket_for(Path::new("/tmp/connectracer-test-a.sock")),
            Path::new("/tmp/connectracer-test-a.sandbox.sock")
        );
        assert_eq!(
            sandbox_socket_for(Path::new("/tmp/ctl")),
            Path::new("/tmp/ctl.sandbox.sock")
        );
    }

    #[test]
    fn unknown_names_and_bad_parameters_have_their_own_errors() {
        assert_eq!(
            Method::parse(&raw("org.connectracer.Tracer.Nope", None)),
            Err(CallError::MethodNotFound {
                method: "org.connectracer.Tracer.Nope".into()
            })
        );
        assert_eq!(
            Method::parse(&raw("com.example.Other.Get", None)),
            Err(CallError::InterfaceNotFound {
                interface: "com.example.Other".into()
            })
        );
        let bad = Method::parse(&raw(
            "org.connectracer.Tracer.Ps",
            Some(serde_json::json!({"pid": "x"})),
        ));
        assert!(
            matches!(&bad, Err(CallError::InvalidArgument { field, .. }) if field == "parameters"),
            "{bad:?}"
        );
        // systemd's varlinkctl sends `"parameters": {}` to methods without any.
        assert_eq!(
            Method::parse(&raw(
                "org.connectracer.Tracer.GetVersion",
                Some(serde_json::json!({}))
            )),
            Ok(Method::Operation(Box::new(Operation::GetVersion)))
        );
    }
}
