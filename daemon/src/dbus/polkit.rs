//! polkit for D-Bus mutations: the subject is the caller's bus name (polkit
//! looks up its credentials itself), never this daemon's pid.
//!
//! Without polkit on the bus, only root may change anything over D-Bus:
//! nobody could confirm that a group member's request passes the site's
//! policy, and failing closed keeps the socket path (which needs no
//! polkit) the documented way for group members on such machines.

use std::collections::HashMap;

use connectracer_proto::api::CallError;
use connectracer_proto::dbus::{error_reply, MANAGE_ACTION};
use zbus::message::{Flags, Header};
use zbus::Connection;
use zbus_polkit::policykit1::{AuthorityProxy, CheckAuthorizationFlags, Subject};

use crate::control::Caller;

const POLKIT_NAME: &str = "org.freedesktop.PolicyKit1";

fn denied(reason: String) -> CallError {
    CallError::AccessDenied { reason }
}

/// polkit is not running (or not allowed to be reached) on this bus.
fn absent(e: &zbus::Error) -> bool {
    error_reply(e).is_some_and(|(name, _)| {
        matches!(
            name.as_str(),
            "org.freedesktop.DBus.Error.ServiceUnknown"
                | "org.freedesktop.DBus.Error.NameHasNoOwner"
                | "org.freedesktop.DBus.Error.Spawn.ServiceNotFound"
        )
    })
}

/// Asks polkit for `org.connectracer.manage` on behalf of the message's
/// sender; whether to ask at all is `authz::admit`'s decision.
pub async fn authorize(conn: &Connection, header: &Header<'_>, caller: &Caller) -> Result<(), CallError> {
    let subject =
        Subject::new_for_message_header(header).map_err(|e| denied(format!("polkit subject: {e}")))?;
    // Prompt only when the client said it can wait for a password dialog.
    let flags = if header.primary().flags().contains(Flags::ALLOW_INTERACTIVE_AUTH) {
        CheckAuthorizationFlags::ALLOW_USER_INTERACTION
    } else {
        CheckAuthorizationFlags::empty()
    };
    let authority = AuthorityProxy::builder(conn)
        .cache_properties(zbus::proxy::CacheProperties::No)
        .build()
        .await
        .map_err(|e| denied(format!("polkit: {e}")))?;
    let result = authority
        .check_authorization(&subject, MANAGE_ACTION, &HashMap::new(), flags, "")
        .await;
    match result {
        Ok(r) if r.is_authorized => Ok(()),
        Ok(r) => Err(denied(format!(
            "polkit did not grant {MANAGE_ACTION} to uid {}{}",
            caller.uid,
            if r.is_challenge {
                " (it needs authentication, and no agent answered)"
            } else {
                ""
            }
        ))),
        Err(e) if absent(&e) => Err(denied(format!(
            "polkit ({POLKIT_NAME}) is not running on the system bus, so only root may change the configuration over D-Bus (the control socket still serves group {})",
            crate::control::authz::ADMIN_GROUP
        ))),
        Err(e) => Err(denied(format!("polkit check failed: {e}"))),
    }
}
