//! Who is calling, from the socket's peer credentials (SO_PEERCRED), and
//! what they may see. Never from anything the client claims.

use connectracer_proto::api::{CallError, Operation};
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

/// What an operation asks of its caller; `None`: anyone may call it (and
/// sees only what `may_see` lets through).
fn needs_privilege(op: &Operation) -> Option<&'static str> {
    match op {
        Operation::GetVersion
        | Operation::GetStats
        | Operation::Who(_)
        | Operation::Ps(_)
        | Operation::Connections(_)
        | Operation::Hosts
        | Operation::Answers(_)
        | Operation::Gpu
        | Operation::Watch(_)
        // Places only the caller's own child: checked when it is placed.
        | Operation::Sandbox(_) => None,
        Operation::Reload => Some("reloading"),
        Operation::AddHost(_) | Operation::RemoveHost(_) => Some("changing watched hosts"),
        Operation::PolicyShow | Operation::PolicyCheck(_) => Some("reading the egress policy"),
        // Every unit's and user's destinations, not only the caller's.
        Operation::PolicySuggest(_) => Some("reading the destinations seen"),
        // A profile shows what any process on the host does, and costs every
        // syscall of the host while it records.
        Operation::Profile(_) => Some("recording a syscall profile"),
    }
}

/// The one rule of who may call what, for both transports (on D-Bus,
/// polkit is asked too, after this rule, for operations that mutate).
pub fn authorize(caller: &Caller, op: &Operation) -> Result<(), CallError> {
    match needs_privilege(op) {
        Some(what) if !caller.privileged => Err(CallError::AccessDenied {
            reason: format!("{what} needs root or membership in group {ADMIN_GROUP}"),
        }),
        _ => Ok(()),
    }
}

/// Which way a call came in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// The control socket: its mode (0660 root:connectracer) and the rule
    /// above are the whole check; no polkit, so that group members can
    /// manage the daemon on machines without it.
    Socket,
    /// The system bus, where anyone may call: mutations by anyone but root
    /// also need polkit's `org.connectracer.manage`.
    Bus,
}

/// The whole decision for a call: the one rule above first (so a non-member
/// is told about the group rather than about polkit), then polkit, asked
/// only when the transport and operation need it. polkit authorizes uid 0
/// for every action anyway; asking would only make root depend on polkit
/// running.
pub async fn admit<F, Fut>(
    transport: Transport,
    caller: &Caller,
    op: &Operation,
    polkit: F,
) -> Result<(), CallError>
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = Result<(), CallError>>,
{
    authorize(caller, op)?;
    if transport == Transport::Bus && op.mutates() && caller.uid != 0 {
        polkit().await?;
    }
    Ok(())
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

    /// Who may call what, for every operation on both transports: root, a
    /// group member and another user, with polkit saying yes and no.
    #[tokio::test]
    async fn who_may_call_what_on_each_transport() {
        let root = Caller::from_peer(0, 0, None);
        let member = Caller {
            uid: 1000,
            pid: None,
            privileged: true,
        };
        // uid 4_000_000 exists in no group database.
        let other = Caller::from_peer(4_000_000, 4_000_000, None);
        let privileged_only = |op: &Operation| {
            matches!(
                op,
                Operation::Reload
                    | Operation::AddHost(_)
                    | Operation::RemoveHost(_)
                    | Operation::PolicyShow
                    | Operation::PolicyCheck(_)
                    | Operation::Profile(_)
                    | Operation::PolicySuggest(_)
            )
        };
        for op in Operation::every() {
            for transport in [Transport::Socket, Transport::Bus] {
                for polkit_says in [true, false] {
                    for (who, caller) in [("root", root), ("member", member), ("other", other)] {
                        let asked = std::cell::Cell::new(false);
                        let polkit = || {
                            asked.set(true);
                            let answer = if polkit_says {
                                Ok(())
                            } else {
                                Err(CallError::AccessDenied {
                                    reason: "polkit said no".into(),
                                })
                            };
                            std::future::ready(answer)
                        };
                        let got = admit(transport, &caller, &op, polkit).await;
                        let refused_by_rule = who == "other" && privileged_only(&op);
                        let polkit_due =
                            transport == Transport::Bus && op.mutates() && who != "root" && !refused_by_rule;
                        let want_ok = !refused_by_rule && (!polkit_due || polkit_says);
                        let case = format!("{who} {op:?} on {transport:?}, polkit {polkit_says}");
                        assert_eq!(got.is_ok(), want_ok, "{case}: {got:?}");
                        assert_eq!(asked.get(), polkit_due, "{case}: polkit asked");
                        match got {
                            Err(CallError::AccessDenied { reason }) if refused_by_rule => assert!(
                                reason.ends_with("needs root or membership in group connectracer"),
                                "{case}: {reason}"
                            ),
                            Err(CallError::AccessDenied { reason }) => {
                                assert_eq!(reason, "polkit said no", "{case}")
                            }
                            Err(e) => panic!("{case}: {e:?}"),
                            Ok(()) => {}
                        }
                    }
                }
            }
        }
        let mutating: Vec<&str> = Operation::every()
            .iter()
            .filter(|op| op.mutates())
            .map(Operation::name)
            .collect();
        assert_eq!(mutating, ["Reload", "AddHost", "RemoveHost"]);
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
