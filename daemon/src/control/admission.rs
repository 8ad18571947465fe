//! Who gets a connection to the control socket, and how much of the
//! daemon's memory an answer may hold: a few members (or one) must not be
//! able to lock out root or grow the daemon without bound.
//!
//! - Connections are accepted at once and admitted by peer credentials, so
//!   a full house is answered with an error, never left in the backlog.
//! - Root has slots of its own that nobody else can take; every other uid
//!   has a cap of its own below the shared pool.
//! - Row-returning answers (`Who`, `Ps`, `Connections`) draw on a budget of
//!   rows in flight (root has its own), held until the answer is written:
//!   clients that ask for the whole table and then do not read hold at most
//!   that budget, and only until their write times out.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Connections open at once, root's reserve included.
pub const MAX_CLIENTS: usize = 128;
/// Of those, kept for uid 0 alone.
pub const ROOT_RESERVE: usize = 16;
/// Connections one non-root uid may hold.
pub const PER_UID: usize = 32;
/// Rows of answers being built or written at once (non-root, and root's
/// own): one largest answer each.
pub const ROWS_IN_FLIGHT: usize = crate::control::query::MAX_CONNECTIONS;

#[derive(Debug)]
pub struct Admission {
    shared: Arc<Semaphore>,
    root: Arc<Semaphore>,
    per_uid: Arc<Mutex<HashMap<u32, usize>>>,
    rows: Arc<Semaphore>,
    root_rows: Arc<Semaphore>,
}

/// A connection's place; freed when dropped.
#[derive(Debug)]
pub struct Slot {
    _permit: OwnedSemaphorePermit,
    uid: u32,
    per_uid: Arc<Mutex<HashMap<u32, usize>>>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        if self.uid == 0 {
            return;
        }
        let mut m = self
            .per_uid
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(n) = m.get_mut(&self.uid) {
            *n -= 1;
            if *n == 0 {
                m.remove(&self.uid);
            }
        }
    }
}

impl Default for Admission {
    fn default() -> Self {
        Self {
            shared: Arc::new(Semaphore::new(MAX_CLIENTS - ROOT_RESERVE)),
            root: Arc::new(Semaphore::new(ROOT_RESERVE)),
            per_uid: Arc::default(),
            rows: Arc::new(Semaphore::new(ROWS_IN_FLIGHT)),
            root_rows: Arc::new(Semaphore::new(ROWS_IN_FLIGHT)),
        }
    }
}

impl Admission {
    /// A slot for a connection from `uid`, or why there is none.
    pub fn admit(&self, uid: u32) -> Result<Slot, String> {
        let slot = |permit| Slot {
            _permit: permit,
            uid,
            per_uid: self.per_uid.clone(),
        };
        if uid == 0 {
            return self
                .shared
                .clone()
                .try_acquire_owned()
                .or_else(|_| self.root.clone().try_acquire_owned())
                .map(slot)
                .map_err(|_| format!("all {MAX_CLIENTS} control connections are in use"));
        }
        let mut m = self
            .per_uid
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let n = m.entry(uid).or_default();
        if *n >= PER_UID {
            return Err(format!(
                "uid {uid} already holds {PER_UID} control connections; close some"
            ));
        }
        let permit = self.shared.clone().try_acquire_owned().map_err(|_| {
            format!(
                "all {} control connections open to non-root callers are in use",
                MAX_CLIENTS - ROOT_RESERVE
            )
        })?;
        *n += 1;
        drop(m);
        Ok(slot(permit))
    }

    /// Waits (up to the answer timeout) for room for `rows` rows of answer.
    pub async fn rows(&self, uid: u32, rows: usize) -> Option<OwnedSemaphorePermit> {
        let pool = if uid == 0 { &self.root_rows } else { &self.rows };
        let rows = rows.clamp(1, ROWS_IN_FLIGHT) as u32;
        tokio::time::timeout(super::ANSWER_TIMEOUT, pool.clone().acquire_many_owned(rows))
            .await
            .ok()?
            .ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn members_cannot_take_roots_reserve() {
        let a = Admission::default();
        let mut held = Vec::new();
        for uid in 1000..1000 + (MAX_CLIENTS - ROOT_RESERVE) as u32 {
            held.push(a.admit(uid).unwrap());
        }
        assert!(a.admit(5000).unwrap_err().contains("non-root"));
        let root: Vec<Slot> = (0..ROOT_RESERVE).map(|_| a.admit(0).unwrap()).collect();
        assert!(a.admit(0).is_err());
        drop(root);
        assert!(a.admit(0).is_ok());
        held.pop();
        assert!(a.admit(5000).is_ok());
    }

    #[test]
    fn one_uid_is_capped_and_its_slots_come_back() {
        let a = Admission::default();
        let mine: Vec<Slot> = (0..PER_UID).map(|_| a.admit(1000).unwrap()).collect();
        assert!(a.admit(1000).unwrap_err().contains("already holds"));
        assert!(a.admit(1001).is_ok());
        drop(mine);
        assert!(a.admit(1000).is_ok());
        assert!(a.per_uid.lock().unwrap().get(&1000).is_none_or(|n| *n == 0));
    }
}
