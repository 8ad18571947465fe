//! Who is calling, from the socket's peer credentials (SO_PEERCRED), and
//! what they may see. Never from anything the client claims.

use connectracer_proto::Connection;
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
