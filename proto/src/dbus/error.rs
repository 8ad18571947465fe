//! The interface's errors: D-Bus names for the API's `CallError`s, and
//! back, so that clients print and exit the same whichever transport
//! answered.

use zbus::DBusError;

use crate::api::CallError;

/// Errors of the interface, by D-Bus error name
/// (`org.connectracer.Tracer1.Error.<Variant>`); the text says why.
#[derive(Debug, DBusError)]
#[zbus(prefix = "org.connectracer.Tracer1.Error")]
pub enum TracerError {
    #[zbus(error)]
    ZBus(zbus::Error),
    /// The caller may not do this; the message says what it needs.
    AccessDenied(String),
    HostNotFound(String),
    /// `FIELD: REASON`.
    InvalidArgument(String),
    /// A reload found errors, one per line; the running configuration stays.
    ConfigInvalid(String),
    /// The daemon could not answer (shutting down, kernel thread gone).
    Unavailable(String),
}

impl From<CallError> for TracerError {
    fn from(e: CallError) -> Self {
        match e {
            CallError::AccessDenied { reason } => Self::AccessDenied(reason),
            CallError::HostNotFound { name } => Self::HostNotFound(name),
            CallError::InvalidArgument { field, reason } => {
                Self::InvalidArgument(format!("{field}: {reason}"))
            }
            CallError::ConfigInvalid { errors } => Self::ConfigInvalid(errors.join("\n")),
            CallError::InvalidParameter { parameter } => {
                Self::InvalidArgument(format!("{parameter}: invalid"))
            }
            e @ (CallError::MethodNotFound { .. } | CallError::InterfaceNotFound { .. }) => {
                Self::Unavailable(e.to_string())
            }
        }
    }
}

impl TracerError {
    /// Back to the varlink form, so clients print and exit the same way
    /// whichever transport answered. Bus-level errors stay `Err`.
    pub fn into_call_error(self) -> Result<CallError, zbus::Error> {
        Ok(match self {
            Self::ZBus(e) => return Err(e),
            Self::AccessDenied(reason) => CallError::AccessDenied { reason },
            Self::HostNotFound(name) => CallError::HostNotFound { name },
            Self::InvalidArgument(m) => {
                let (field, reason) = m.split_once(": ").unwrap_or(("argument", m.as_str()));
                CallError::InvalidArgument {
                    field: field.into(),
                    reason: reason.into(),
                }
            }
            Self::ConfigInvalid(m) => CallError::ConfigInvalid {
                errors: m.lines().map(String::from).collect(),
            },
            Self::Unavailable(reason) => CallError::InvalidArgument {
                field: "daemon".into(),
                reason,
            },
        })
    }
}

/// The D-Bus error name and message of an error reply, whether zbus kept it
/// as a standard `org.freedesktop.DBus.Error.*` or as another name.
pub fn error_reply(e: &zbus::Error) -> Option<(String, String)> {
    match e {
        zbus::Error::MethodError(name, detail, _) => {
            Some((name.to_string(), detail.clone().unwrap_or_default()))
        }
        zbus::Error::FDO(fdo) => Some((
            fdo.name().to_string(),
            fdo.description().unwrap_or_default().to_string(),
        )),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_keep_their_field_through_the_bus_form() {
        let e = CallError::InvalidArgument {
            field: "address".into(),
            reason: "`x` is not an IP address or ADDRESS:PORT".into(),
        };
        let back = TracerError::from(e.clone()).into_call_error().unwrap();
        assert_eq!(back, e);
        let e = CallError::ConfigInvalid {
            errors: vec!["a:1:1: x".into(), "b:2:3: y".into()],
        };
        assert_eq!(TracerError::from(e.clone()).into_call_error().unwrap(), e);
        assert_eq!(
            zbus::DBusError::name(&TracerError::AccessDenied("r".into())).as_str(),
            "org.connectracer.Tracer1.Error.AccessDenied"
        );
    }
}
