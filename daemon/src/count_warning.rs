//! A growing count of losses (ring-buffer drops, a sink's lost lines) turned
//! into warnings: the first at once, then at most one every `INTERVAL`,
//! each with what was lost since the one before, so no loss goes unsaid and
//! a steady loss does not flood the log.

use std::time::{Duration, Instant};

pub const INTERVAL: Duration = Duration::from_secs(10);

#[derive(Debug)]
pub struct CountWarning {
    reported: u64,
    last: Option<Instant>,
}

impl CountWarning {
    /// Starts counting from `total` (already reported, or known).
    pub fn new(total: u64) -> Self {
        Self {
            reported: total,
            last: None,
        }
    }

    /// The warning due now, if any: the count since the last one.
    pub fn check(&mut self, total: u64, now: Instant) -> Option<u64> {
        if total <= self.reported {
            return None;
        }
        if self.last.is_some_and(|t| now.duration_since(t) < INTERVAL) {
            return None;
        }
        let new = total - self.reported;
        self.reported = total;
        self.last = Some(now);
        Some(new)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warnings_are_rate_limited_and_lose_no_count() {
        let t0 = Instant::now();
        let mut w = CountWarning::new(5);
        assert_eq!(w.check(5, t0), None);
        assert_eq!(w.check(8, t0), Some(3));
        assert_eq!(w.check(20, t0 + Duration::from_secs(3)), None);
        assert_eq!(w.check(25, t0 + Duration::from_secs(11)), Some(17));
    }
}
