//! The D-Bus face of the daemon: `org.connectracer.Tracer1` on the system
//! bus. Like the control socket it only parses and authorizes; answers come
//! from the task that owns the state. Without a reachable bus the daemon
//! says so once and runs on without it.

mod backend;
mod polkit;

use std::sync::Arc;

use connectracer_proto::dbus::{ConnectionInfo, Tracer, TracerSignals, NAME, PATH};
use connectracer_proto::{Connection, Verdict};
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::{broadcast, mpsc};
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};
use zbus::object_server::InterfaceRef;

pub use backend::{caller, DaemonBackend};

use crate::control::Request;
use crate::pipeline::WatchEvent;
use crate::snapshot::Snapshot;

type Iface = InterfaceRef<Tracer<DaemonBackend>>;

/// Connects to the system bus (`DBUS_SYSTEM_BUS_ADDRESS` or the standard
/// socket), takes the name and serves until aborted. Dropping the connection
/// with the task releases the name.
pub fn spawn(
    requests: mpsc::Sender<Request>,
    watchers: broadcast::Sender<Arc<WatchEvent>>,
    snapshots: tokio::sync::watch::Receiver<Snapshot>,
) -> JoinHandle<()> {
    // Subscribed before the (slow) bus handshake so no event is lost.
    let events = watchers.subscribe();
    tokio::spawn(async move {
        let backend = DaemonBackend {
            requests: requests.clone(),
        };
        let built = zbus::connection::Builder::system()
            .name(NAME)
            .serve_at(PATH, Tracer::new(backend))
            .build()
            .await;
        let conn = match built {
            Ok(c) => c,
            Err(e) => {
                warn!("D-Bus: {NAME} not served ({e}); continuing without D-Bus");
                return;
            }
        };
        let iface = match conn
            .object_server()
            .interface::<_, Tracer<DaemonBackend>>(PATH)
            .await
        {
            Ok(i) => i,
            Err(e) => {
                warn!("D-Bus: {PATH} not registered ({e}); continuing without D-Bus");
                return;
            }
        };
        info!(name = NAME, path = PATH, "D-Bus: serving on the system bus");
        tokio::join!(forward_signals(&iface, events), refresh_status(&iface, snapshots));
        drop(conn);
    })
}

/// Which signals an event raises.
#[derive(Debug, PartialEq, Eq)]
struct Signals {
    /// ConnectionEvent: the destination is a watched host.
    watched: bool,
    /// Denied: the policy denied it, or would have in audit mode.
    denied: bool,
}

fn signals_for(c: &Connection) -> Signals {
    Signals {
        watched: c.host.is_some(),
        denied: matches!(c.verdict, Verdict::Deny | Verdict::WouldDeny),
    }
}

/// Signals for watched-host events and for denials, from the same stream
/// the varlink Watch reads. Who may receive them is the bus policy's job:
/// a broadcast cannot be filtered per listener here.
async fn forward_signals(iface: &Iface, mut events: broadcast::Receiver<Arc<WatchEvent>>) {
    loop {
        let ev = match events.recv().await {
            Ok(ev) => ev,
            Err(RecvError::Lagged(n)) => {
                warn!("D-Bus: {n} events not signalled: the bus connection fell behind");
                continue;
            }
            Err(RecvError::Closed) => return,
        };
        let c = &ev.connection;
        let Signals { watched, denied } = signals_for(c);
        if !watched && !denied {
            continue;
        }
        let info = ConnectionInfo::from(c);
        let kind = ev.kind.as_str();
        let sent = if watched {
            iface.connection_event(kind, info.clone()).await
        } else {
            Ok(())
        };
        let sent = match sent {
            Ok(()) if denied => iface.denied(kind, info).await,
            other => other,
        };
        if let Err(e) = sent {
            debug!("D-Bus: emitting a signal: {e}");
        }
    }
}

/// Keeps the properties current from the snapshots the owner publishes;
/// PropertiesChanged for those that announce their changes (Mode,
/// ConfigEpoch).
async fn refresh_status(iface: &Iface, mut snapshots: tokio::sync::watch::Receiver<Snapshot>) {
    while snapshots.changed().await.is_ok() {
        let new = snapshots.borrow_and_update().status();
        let mut tracer = iface.get_mut().await;
        let old = tracer.status().clone();
        tracer.set_status(new.clone());
        let emitter = iface.signal_emitter();
        if old.mode != new.mode {
            let _ = tracer.mode_changed(emitter).await;
        }
        if old.config_epoch != new.config_epoch {
            let _ = tracer.config_epoch_changed(emitter).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watched_hosts_and_denials_raise_their_signals() {
        let mut c = crate::table::test_connection(1, 1, 0, "10.0.0.1:443");
        c.host = None;
        c.verdict = Verdict::Allow;
        assert_eq!(
            signals_for(&c),
            Signals {
                watched: false,
                denied: false
            }
        );
        c.verdict = Verdict::WouldDeny;
        assert!(signals_for(&c).denied && !signals_for(&c).watched);
        c.verdict = Verdict::Deny;
        c.host = Some("api.test".into());
        assert_eq!(
            signals_for(&c),
            Signals {
                watched: true,
                denied: true
            }
        );
    }
}
