//! Answers D-Bus calls: identify, authorize, then hand the operation to the
//! task that owns the state, exactly as the control socket does.

use connectracer_proto::api::{Answer, CallError, Operation};
use connectracer_proto::dbus::{Backend, Peer};
use tokio::sync::mpsc;
use zbus::message::Header;
use zbus::Connection;

use super::polkit;
use crate::control::authz::ADMIN_GROUP;
use crate::control::authz::{admit, Transport};
use crate::control::{Caller, Request};

#[derive(Debug, Clone)]
pub struct DaemonBackend {
    pub requests: mpsc::Sender<Request>,
}

/// The bus reports every group of the calling process, so membership of
/// group connectracer counts as it does for SO_PEERCRED plus the group
/// database.
pub fn caller(peer: &Peer) -> Caller {
    let admin_gid = nix::unistd::Group::from_name(ADMIN_GROUP)
        .ok()
        .flatten()
        .map(|g| g.gid.as_raw());
    let primary = peer.groups.first().copied().unwrap_or(u32::MAX);
    let by_database = Caller::from_peer(peer.uid, primary, peer.pid.and_then(|p| i32::try_from(p).ok()));
    Caller {
        privileged: by_database.privileged || admin_gid.is_some_and(|g| peer.groups.contains(&g)),
        ..by_database
    }
}

impl Backend for DaemonBackend {
    async fn call(
        &self,
        conn: &Connection,
        header: &Header<'_>,
        peer: &Peer,
        op: Operation,
    ) -> Result<Answer, CallError> {
        let caller = caller(peer);
        admit(Transport::Bus, &caller, &op, || {
            polkit::authorize(conn, header, &caller)
        })
        .await?;
        crate::control::ask(&self.requests, op, caller).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(uid: u32, groups: Vec<u32>) -> Peer {
        Peer {
            sender: zbus::names::UniqueName::try_from(":1.7").unwrap().into(),
            uid,
            pid: Some(42),
            groups,
        }
    }

    #[test]
    fn root_is_privileged_and_a_stranger_is_not() {
        let root = caller(&peer(0, vec![0]));
        assert!(root.privileged);
        assert_eq!(root.pid, Some(42));
        // uid and gid 4_000_000 exist in no database.
        let user = caller(&peer(4_000_000, vec![4_000_000]));
        assert!(!user.privileged);
        assert_eq!(user.uid, 4_000_000);
    }
}
