//! The soak window after an update: a new version that keeps dying soon after it took
//! over is rolled back. Pure: fed deaths and the clock, it says when to give up.
//!
//! ```text
//! switch to vN ──► soaking ── death (inside the window) ──► soaking, one more death
//!                    │                 └─ the DEATHS-th ──► RollBack (to `previous`, vN quarantined)
//!                    └── window passed ─────────────────────► done (crashes are plain restarts again)
//! ```
//!
//! A death counts whether the gateway died while serving or while a restart of it was
//! being gated: a version that cannot stay up is a bad version either way.

use std::time::Duration;

use semver::Version;
use std::time::Instant;

/// How long after a switch deaths count against the new version, unless
/// `AIHUMMER_SOAK_WINDOW` says otherwise. In a fleet, the rollout lease is held through it.
pub const WINDOW: Duration = Duration::from_secs(5 * 60);
/// Deaths inside the window that roll the version back.
pub const DEATHS: usize = 3;

/// What to do after a death.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Restart it as usual.
    Restart,
    /// Roll back to `previous`: the version crash-loops.
    RollBack {
        /// Why, for the quarantine, the log and status.
        reason: String,
    },
}

/// A version under watch since its switch.
#[derive(Debug, Clone)]
pub struct Soak {
    version: Version,
    switched: Instant,
    window: Duration,
    deaths: usize,
}

impl Soak {
    /// Starts watching `version`, switched to at `now`, for `window`.
    pub fn new(version: Version, now: Instant, window: Duration) -> Self {
        Soak {
            version,
            switched: now,
            window,
            deaths: 0,
        }
    }

    /// When the window ends.
    pub fn ends_at(&self) -> Instant {
        super::machine::after(self.switched, self.window)
    }

    /// The version watched.
    pub fn version(&self) -> &Version {
        &self.version
    }

    /// Whether the window has passed at `now`.
    pub fn is_over(&self, now: Instant) -> bool {
        now >= self.ends_at()
    }

    /// The watched version died at `now`.
    pub fn on_death(&mut self, now: Instant) -> Verdict {
        if self.is_over(now) {
            return Verdict::Restart;
        }
        self.deaths += 1;
        if self.deaths >= DEATHS {
            Verdict::RollBack {
                reason: format!(
                    "crash loop: died {} times within {} of the switch to it",
                    self.deaths,
                    humantime::format_duration(Duration::from_secs(
                        now.duration_since(self.switched).as_secs().max(1)
                    ))
                ),
            }
        } else {
            Verdict::Restart
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v() -> Version {
        Version::new(1, 1, 0)
    }

    #[test]
    fn the_third_death_inside_the_window_rolls_back() {
        let t0 = Instant::now();
        let mut soak = Soak::new(v(), t0, WINDOW);
        assert_eq!(soak.on_death(t0 + Duration::from_secs(2)), Verdict::Restart);
        assert_eq!(soak.on_death(t0 + Duration::from_secs(4)), Verdict::Restart);
        let Verdict::RollBack { reason } = soak.on_death(t0 + Duration::from_secs(6)) else {
            panic!("the third death should roll back");
        };
        assert_eq!(
            reason,
            "crash loop: died 3 times within 6s of the switch to it"
        );
    }

    #[test]
    fn deaths_after_the_window_are_plain_restarts() {
        let t0 = Instant::now();
        let mut soak = Soak::new(v(), t0, WINDOW);
        soak.on_death(t0);
        soak.on_death(t0 + Duration::from_secs(1));
        assert!(soak.is_over(t0 + WINDOW));
        assert_eq!(soak.on_death(t0 + WINDOW), Verdict::Restart);
    }
}
