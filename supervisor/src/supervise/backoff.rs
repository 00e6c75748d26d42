//! Crash-restart delays: the shared exponential schedule, started over once a child has
//! run long enough to count as healthy, so one crash a day never waits the capped delay.

use std::time::Duration;

use aihummer_common::backoff::Backoff;

/// The first delay after a crash: short, because clients wait in the listen queue.
pub const INITIAL: Duration = Duration::from_millis(100);
/// The longest delay between two starts of a crash-looping gateway.
pub const MAX: Duration = Duration::from_secs(10);
/// A child that ran this long before dying resets the schedule.
pub const STABLE_AFTER: Duration = Duration::from_secs(30);

/// Doubles from [`INITIAL`] up to [`MAX`]; resets after a stable run.
#[derive(Debug, Clone)]
pub struct RestartDelay(Backoff);

impl Default for RestartDelay {
    fn default() -> Self {
        Self(Backoff::new(INITIAL, MAX))
    }
}

impl RestartDelay {
    /// The delay before the next start, after a child that ran for `ran_for` died or
    /// failed to start.
    pub fn after_exit(&mut self, ran_for: Duration) -> Duration {
        if ran_for >= STABLE_AFTER {
            self.0.reset();
        }
        self.0.next_delay()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_until_the_cap() {
        let mut b = RestartDelay::default();
        let got: Vec<_> = (0..9)
            .map(|_| b.after_exit(Duration::ZERO).as_millis())
            .collect();
        assert_eq!(got, [100, 200, 400, 800, 1600, 3200, 6400, 10000, 10000]);
    }

    #[test]
    fn a_child_that_ran_long_enough_resets_the_schedule() {
        let mut b = RestartDelay::default();
        b.after_exit(Duration::ZERO);
        b.after_exit(Duration::ZERO);
        assert_eq!(b.after_exit(STABLE_AFTER), INITIAL);
        assert_eq!(b.after_exit(Duration::from_secs(1)), INITIAL * 2);
    }
}
