//! What a delivery attempt's result means, and how long to wait before the next one.

use std::time::Duration;

use aihummer_common::backoff::{Backoff, jitter};

/// The most attempts a reply gets before it is dead-lettered.
pub const MAX_ATTEMPTS: i32 = 10;
/// Doubling from a second, capped at 5 minutes.
const RETRIES: Backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(300));

/// What an attempt ended in, as the receiver (or the network) answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attempt {
    /// The receiver answered with this HTTP status.
    Status(u16),
    /// No answer: connection refused, reset, or timed out.
    Transport(String),
}

/// What to do with the row after an attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Delivered: done.
    Delivered,
    /// Try again later; the reason is kept as the row's last error.
    Retry(String),
    /// Give up; the reason is kept for the operator.
    Dead(String),
}

/// Judges an attempt: 2xx delivers; 408, 429, 5xx and transport errors are worth retrying
/// until `attempts` reaches [`MAX_ATTEMPTS`]; any other status is the receiver refusing
/// the reply for good.
pub fn judge(attempt: &Attempt, attempts: i32) -> Verdict {
    let retry = |reason: String| {
        if attempts >= MAX_ATTEMPTS {
            Verdict::Dead(format!("gave up after {attempts} attempts; last: {reason}"))
        } else {
            Verdict::Retry(reason)
        }
    };
    match attempt {
        Attempt::Status(code) if (200..300).contains(code) => Verdict::Delivered,
        Attempt::Status(code @ (408 | 429 | 500..=599)) => retry(format!("HTTP {code}")),
        Attempt::Status(code) => Verdict::Dead(format!("receiver refused the reply: HTTP {code}")),
        Attempt::Transport(why) => retry(why.clone()),
    }
}

/// The wait before retry number `attempts` (1-based): doubling from 1s, capped at 5
/// minutes, spread by `unit` in `[0, 1)` to ±20% so a burst of failures does not retry
/// in lockstep.
pub fn retry_delay(attempts: i32, unit: f64) -> Duration {
    let n = u32::try_from(attempts.saturating_sub(1)).unwrap_or(0);
    jitter(RETRIES.nth(n), 0.2, unit)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn success_statuses_deliver_and_client_errors_dead_letter() {
        assert_eq!(judge(&Attempt::Status(200), 1), Verdict::Delivered);
        assert_eq!(judge(&Attempt::Status(204), 1), Verdict::Delivered);
        assert!(matches!(judge(&Attempt::Status(400), 1), Verdict::Dead(r) if r.contains("400")));
        assert!(matches!(judge(&Attempt::Status(404), 1), Verdict::Dead(_)));
        assert!(matches!(judge(&Attempt::Status(301), 1), Verdict::Dead(_)));
    }

    #[test]
    fn timeouts_throttling_server_errors_and_transport_errors_retry_until_the_limit() {
        for attempt in [
            Attempt::Status(408),
            Attempt::Status(429),
            Attempt::Status(500),
            Attempt::Status(503),
            Attempt::Transport("connection refused".into()),
        ] {
            assert!(
                matches!(judge(&attempt, 1), Verdict::Retry(_)),
                "{attempt:?}"
            );
            assert!(
                matches!(judge(&attempt, MAX_ATTEMPTS), Verdict::Dead(r) if r.contains("gave up")),
                "{attempt:?}"
            );
        }
    }

    #[test]
    fn retry_delays_double_from_a_second_up_to_five_minutes_with_bounded_jitter() {
        assert_eq!(retry_delay(1, 0.5), Duration::from_secs(1));
        assert_eq!(retry_delay(2, 0.5), Duration::from_secs(2));
        assert_eq!(retry_delay(4, 0.5), Duration::from_secs(8));
        assert_eq!(retry_delay(30, 0.5), Duration::from_secs(300));
        assert_eq!(retry_delay(1, 0.0), Duration::from_millis(800));
        assert!(retry_delay(1, 0.999) < Duration::from_millis(1200));
        assert_eq!(retry_delay(0, 0.5), Duration::from_secs(1));
    }
}
