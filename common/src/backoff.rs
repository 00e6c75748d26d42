//! Exponential delays between attempts, a pure value so every schedule is unit tested.
//! Crash restarts, database reconnects, update check retries and outbox redeliveries all
//! use it, each with its own first delay and cap.

use std::time::Duration;

/// Delays doubling from `initial` up to `max`.
#[derive(Debug, Clone)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    /// A schedule starting at `initial` and capped at `max`.
    pub const fn new(initial: Duration, max: Duration) -> Self {
        Self {
            initial,
            max,
            next: initial,
        }
    }

    /// The delay to wait before the next attempt.
    pub fn next_delay(&mut self) -> Duration {
        let delay = self.next;
        self.next = self.next.saturating_mul(2).min(self.max);
        delay
    }

    /// Starts the schedule over, after a success.
    pub fn reset(&mut self) {
        self.next = self.initial;
    }

    /// The delay before attempt `n` (0-based) of this schedule, without stepping it.
    pub fn nth(&self, n: u32) -> Duration {
        self.initial
            .saturating_mul(1u32.checked_shl(n.min(31)).unwrap_or(u32::MAX))
            .min(self.max)
    }
}

/// Spreads `delay` by up to `±spread` (a fraction, e.g. `0.2`), with `unit` in `[0, 1)`
/// choosing where, so that many failures at once do not retry in lockstep.
pub fn jitter(delay: Duration, spread: f64, unit: f64) -> Duration {
    let spread = spread.clamp(0.0, 1.0);
    delay.mul_f64(1.0 - spread + 2.0 * spread * unit.clamp(0.0, 1.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_until_the_cap() {
        let mut b = Backoff::new(Duration::from_millis(250), Duration::from_secs(1));
        let got: Vec<_> = (0..5).map(|_| b.next_delay().as_millis()).collect();
        assert_eq!(got, [250, 500, 1000, 1000, 1000]);
    }

    #[test]
    fn a_reset_starts_over_from_the_first_delay() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(10));
        b.next_delay();
        b.next_delay();
        b.reset();
        assert_eq!(b.next_delay(), Duration::from_millis(100));
    }

    #[test]
    fn the_nth_delay_is_the_schedule_without_stepping_and_never_overflows() {
        let b = Backoff::new(Duration::from_secs(1), Duration::from_secs(300));
        assert_eq!(b.nth(0), Duration::from_secs(1));
        assert_eq!(b.nth(3), Duration::from_secs(8));
        assert_eq!(b.nth(40), Duration::from_secs(300));
        assert_eq!(b.nth(u32::MAX), Duration::from_secs(300));
    }

    #[test]
    fn jitter_stays_within_its_spread() {
        let d = Duration::from_secs(10);
        assert_eq!(jitter(d, 0.2, 0.0), Duration::from_secs(8));
        assert_eq!(jitter(d, 0.2, 0.5), Duration::from_secs(10));
        assert!(jitter(d, 0.2, 0.999) < Duration::from_secs(12));
        assert_eq!(jitter(d, 0.0, 0.7), d);
    }
}
