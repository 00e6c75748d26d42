//! When update checks run: requests from SIGHUP, the periodic timer and the CLI, merged so
//! that they never stack, and the timer's jittered schedule. Pure: the supervisor owns
//! the I/O ([`crate::update::pipeline`]) and feeds the outcome back.
//!
//! Merging: while a check runs, a new request joins it; while a handoff (or a start) runs,
//! any number of requests leave one check to run afterwards.

use std::time::Duration;

/// What to do with a request for a check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Nothing else runs: check now.
    CheckNow,
    /// A handoff runs: the check waits for it to end.
    Deferred,
    /// A check is already running or waiting; this request joins it.
    Merged,
}

/// Check requests: one may run, one may wait.
#[derive(Debug, Default)]
pub struct Requests {
    pending: bool,
    running: bool,
}

impl Requests {
    /// Records a request; `busy` is whether a handoff or a start is under way.
    pub fn request(&mut self, busy: bool) -> Action {
        if self.pending || self.running {
            Action::Merged
        } else if busy {
            self.pending = true;
            Action::Deferred
        } else {
            self.running = true;
            Action::CheckNow
        }
    }

    /// Takes the deferred request, if any and no check runs, once the supervisor is idle
    /// again; the caller then starts that check.
    pub fn take_pending(&mut self) -> bool {
        if self.pending && !self.running {
            self.pending = false;
            self.running = true;
            true
        } else {
            false
        }
    }

    /// The running check ended.
    pub fn finished(&mut self) {
        self.running = false;
    }
}

/// The delay before the first periodic check: soon after start, so an operator sees the
/// channel's state in `status` without waiting hours, but never before the interval.
pub const FIRST_CHECK: Duration = Duration::from_secs(60);

/// `base` plus up to a tenth of it, picked by `seed` (any random number): a fleet started
/// together spreads its CDN requests instead of arriving in the same second.
pub fn jittered(base: Duration, seed: u64) -> Duration {
    let spread = base / 10;
    let nanos = u64::try_from(spread.as_nanos()).unwrap_or(u64::MAX);
    base + Duration::from_nanos(if nanos == 0 { 0 } else { seed % nanos })
}

/// A random seed for [`jittered`] from the standard library's per-process hash keys.
pub fn seed() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_during_a_handoff_merge_into_one_check_afterwards() {
        let mut r = Requests::default();
        assert_eq!(r.request(true), Action::Deferred);
        assert_eq!(r.request(true), Action::Merged);
        assert_eq!(r.request(false), Action::Merged);
        assert!(r.take_pending());
        assert!(!r.take_pending());
        assert_eq!(r.request(false), Action::Merged, "the deferred check runs");
        r.finished();
        assert_eq!(r.request(false), Action::CheckNow);
    }

    #[test]
    fn a_request_while_a_check_runs_joins_it() {
        let mut r = Requests::default();
        assert_eq!(r.request(false), Action::CheckNow);
        assert_eq!(r.request(false), Action::Merged);
        assert_eq!(r.request(true), Action::Merged);
        assert!(!r.take_pending(), "nothing was deferred");
        r.finished();
        assert_eq!(r.request(false), Action::CheckNow);
    }

    #[test]
    fn jitter_adds_at_most_a_tenth_of_the_interval() {
        let base = Duration::from_secs(3600);
        for seed in [0, 1, 359_999_999_999, u64::MAX, 12_345_678_901] {
            let d = jittered(base, seed);
            assert!(d >= base && d < base + base / 10, "{d:?}");
        }
        assert_ne!(jittered(base, 1), jittered(base, 2));
        assert_eq!(jittered(Duration::ZERO, 7), Duration::ZERO);
    }
}
