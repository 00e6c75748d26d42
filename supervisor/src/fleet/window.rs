//! `AIHUMMER_UPDATE_WINDOW`: the daily UTC window in which `apply` may start a handoff on
//! its own. `HH:MM-HH:MM`, 24-hour clock, UTC; the start is inside the window and the end
//! is not; a window whose end is before its start runs over midnight (`22:00-02:00`).
//! Checks go on outside it (status shows what is on offer); the download, the stage and
//! the handoff of an automatic update wait for it. An operator's `aihummer update` does
//! not.

use std::fmt;
use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

const DAY: u64 = 24 * 60 * 60;

/// A daily window, in seconds after midnight UTC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UpdateWindow {
    start: u64,
    end: u64,
}

/// Why a window was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "AIHUMMER_UPDATE_WINDOW={value:?} is not a window: {why}; expected HH:MM-HH:MM in UTC, e.g. 02:00-05:00"
)]
pub struct WindowError {
    value: String,
    why: &'static str,
}

impl FromStr for UpdateWindow {
    type Err = WindowError;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        let refuse = |why| WindowError {
            value: value.to_string(),
            why,
        };
        let (start, end) = value.split_once('-').ok_or_else(|| refuse("no '-'"))?;
        let start = clock(start).ok_or_else(|| refuse("the start is not HH:MM"))?;
        let end = clock(end).ok_or_else(|| refuse("the end is not HH:MM"))?;
        if start == end {
            return Err(refuse("start and end are the same time"));
        }
        Ok(UpdateWindow { start, end })
    }
}

/// `HH:MM` as seconds after midnight.
fn clock(text: &str) -> Option<u64> {
    let (hours, minutes) = text.split_once(':')?;
    let two_digits = |s: &str| s.len() == 2 && s.bytes().all(|b| b.is_ascii_digit());
    if !two_digits(hours) || !two_digits(minutes) {
        return None;
    }
    let (hours, minutes): (u64, u64) = (hours.parse().ok()?, minutes.parse().ok()?);
    (hours < 24 && minutes < 60).then_some(hours * 3600 + minutes * 60)
}

impl UpdateWindow {
    /// `None` when `now` is inside the window; otherwise how long until it opens.
    pub fn wait(&self, now: SystemTime) -> Option<Duration> {
        let since_epoch = now.duration_since(UNIX_EPOCH).unwrap_or_default();
        let of_day = since_epoch.as_secs() % DAY;
        let inside = if self.start < self.end {
            (self.start..self.end).contains(&of_day)
        } else {
            of_day >= self.start || of_day < self.end
        };
        if inside {
            return None;
        }
        let seconds = (self.start + DAY - of_day) % DAY;
        Some(Duration::from_secs(seconds) - Duration::from_nanos(since_epoch.subsec_nanos().into()))
    }
}

impl fmt::Display for UpdateWindow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let hm = |s: u64| format!("{:02}:{:02}", s / 3600, s % 3600 / 60);
        write!(f, "{}-{} UTC", hm(self.start), hm(self.end))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(hours: u64, minutes: u64) -> SystemTime {
        // A day well after the epoch, so nothing depends on day zero.
        UNIX_EPOCH + Duration::from_secs(20_000 * DAY + hours * 3600 + minutes * 60)
    }

    #[test]
    fn inside_a_window_nothing_waits() {
        let window: UpdateWindow = "02:00-05:00".parse().expect("window");
        assert_eq!(window.wait(at(2, 0)), None);
        assert_eq!(window.wait(at(4, 59)), None);
        assert_eq!(window.wait(at(5, 0)), Some(Duration::from_secs(21 * 3600)));
        assert_eq!(window.wait(at(1, 30)), Some(Duration::from_secs(30 * 60)));
    }

    #[test]
    fn a_window_over_midnight_wraps() {
        let window: UpdateWindow = "22:00-02:00".parse().expect("window");
        assert_eq!(window.wait(at(23, 0)), None);
        assert_eq!(window.wait(at(1, 59)), None);
        assert_eq!(window.wait(at(2, 0)), Some(Duration::from_secs(20 * 3600)));
        assert_eq!(window.to_string(), "22:00-02:00 UTC");
    }

    #[test]
    fn malformed_windows_are_refused_with_the_format() {
        for bad in [
            "",
            "2:00-5:00",
            "02:00",
            "02:00-24:00",
            "02:60-03:00",
            "03:00-03:00",
            "02:00-05:00 ",
            "aa:bb-cc:dd",
        ] {
            let err = bad.parse::<UpdateWindow>().expect_err(bad);
            assert!(err.to_string().contains("HH:MM-HH:MM"), "{err}");
        }
    }
}
