//! Polling for what happens asynchronously, with a deadline.

use std::time::{Duration, Instant};

/// How often a condition is asked again.
const POLL: Duration = Duration::from_millis(100);

/// Asks `f` until it gives a value or `timeout` has passed.
pub fn eventually<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let end = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() > end {
            return None;
        }
        std::thread::sleep(POLL);
    }
}

/// Waits until `done`, failing the test (naming `what`) after `timeout`.
pub fn wait_until(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    assert!(
        eventually(timeout, || done().then_some(())).is_some(),
        "timed out waiting for {what}"
    );
}
