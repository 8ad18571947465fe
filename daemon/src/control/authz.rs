//! Who is calling, from the socket's peer credentials (SO_PEERCRED), and
//! what they may see. Never from anything the client claims.

use connectracer_proto::varlink::CallError;
use connectracer_proto::Connection;

use super::Method;
use nix::unistd::{Gid, Group, Uid, User};

/// Members of this group (and root) may query everything.
pub const ADMIN_GROUP: &str = "connectracer";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Caller {
    pub uid: u32,
    pub pid: Option<i32>,
    /// Root or a member of group connectracer.
    pub privileged: bool,
}

impl Caller {
    pub fn from_peer(uid: u32, gid: u32, pid: Option<i32>) -> Self {
        Self {
            uid,
            pid,
            privileged: uid == 0 || in_admin_group(uid, gid),
        }
    }

    /// Unprivileged callers see only their own processes' connections.
    pub fn may_see(&self, c: &Connection) -> bool {
        self.privileged || c.process.uid == self.uid
    }
}

/// What a method asks of its caller; `None`: anyone may call it (and sees
/// only what `may_see` lets through).
fn needs_privilege(m: &Method) -> Option<&'static str> {
    match m {
        Method::GetVersion
        | Method::GetStats
        | Method::Who(_)
        | Method::Ps(_)
        | Method::Connections(_)
        | Method::Hosts => None,
        Method::Reload => Some("reloading"),
        Method::AddHost(_) | Method::RemoveHost(_) => Some("changing watched hosts"),
        Method::PolicyShow | Method::PolicyCheck(_) => Some("reading the egress policy"),
    }
}

/// Whether the method changes the daemon's configuration (on D-Bus, polkit
/// is asked too, after this rule).
pub fn mutates(m: &Method) -> bool {
    matches!(m, Method::Reload | Method::AddHost(_) | Method::RemoveHost(_))
}

/// The one rule of who may call what, for both transports.
pub fn authorize(caller: &Caller, m: &Method) -> Result<(), CallError> {
    match needs_privilege(m) {
        Some(what) if !caller.privileged => Err(CallError::AccessDenied {
            reason: format!("{what} needs root or membership in group {ADMIN_GROUP}"),
        }),
        _ => Ok(()),
    }
}

/// Membership from the group database (primary and supplementary groups of
/// the uid's user), so it matches what `id USER` says.
fn in_admin_group(uid: u32, gid: u32) -> bool {
    let Ok(Some(group)) = Group::from_name(ADMIN_GROUP) else {
        return false;
    };
    if group.gid == Gid::from_raw(gid) {
        return true;
    }
    let Ok(Some(user)) = User::from_uid(Uid::from_raw(uid)) else {
        return false;
    };
    let Ok(name) = std::ffi::CString::new(user.name) else {
        return false;
    };
    nix::unistd::getgrouplist(&name, user.gid).is_ok_and(|gs| gs.contains(&group.gid))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conn_of(uid: u32) -> Connection {
        crate::table::test_connection(1, 1, uid, "10.0.0.1:443")
    }

    #[test]
    fn who_may_call_what() {
        use connectracer_proto::varlink::{
            AddHostParams, ConnectionsParams, PolicyCheckParams, PsParams, RemoveHostParams, WhoParams,
        };
        let all = [
            (Method::GetVersion, false),
            (Method::GetStats, false),
            (Method::Who(WhoParams::default()), false),
            (Method::Ps(PsParams { pid: 1, limit: None }), false),
            (Method::Connections(ConnectionsParams::default()), false),
            (Method::Hosts, false),
            (Method::Reload, true),
            (Method::AddHost(AddHostParams::default()), true),
            (Method::RemoveHost(RemoveHostParams { name: "x".into() }), true),
            (Method::PolicyShow, true),
            (Method::PolicyCheck(PolicyCheckParams::default()), true),
        ];
        let root = Caller::from_peer(0, 0, None);
        let member = Caller {
            uid: 1000,
            pid: None,
            privileged: true,
        };
        let other = Caller::from_peer(4_000_000, 4_000_000, None);
        for (m, privileged_only) in &all {
            assert!(authorize(&root, m).is_ok(), "root: {m:?}");
            assert!(authorize(&member, m).is_ok(), "member: {m:?}");
            let refused = authorize(&other, m);
            assert_eq!(refused.is_err(), *privileged_only, "other user: {m:?}");
            if let Err(CallError::AccessDenied { reason }) = refused {
                assert!(
                    reason.ends_with("needs root or membership in group connectracer"),
                    "{reason}"
                );
            }
        }
        assert_eq!(
            all.iter().filter(|(m, _)| mutates(m)).count(),
            3,
            "reload, add-host, remove-host"
        );
    }

    #[test]
    fn root_sees_all_others_only_their_own() {
        let root = Caller::from_peer(0, 0, None);
        assert!(root.privileged && root.may_see(&conn_of(1000)));
        // uid 4_000_000 exists in no group database.
        let user = Caller::from_peer(4_000_000, 4_000_000, None);
        assert!(!user.privileged);
        assert!(user.may_see(&conn_of(4_000_000)));
        assert!(!user.may_see(&conn_of(0)));
    }
}
