//! The readiness gate of one candidate, and the ways a candidate fails. Pure: fed probe
//! verdicts, its exit and the clock, it says whether to wait, switch or give up.
//!
//! ```text
//!            probe: not ready (before the deadline)
//!              ┌──────┐
//!              ▼      │
//! spawned ──► gating ─┴─ probe: ready ──────────────► Ready (switch, then drain the old)
//!              │
//!              ├── candidate exited ────────────────► Fail(Exited)
//!              └── deadline passed ─────────────────► Fail(NotReady, with the last reason)
//! ```

use std::time::Duration;

use std::time::Instant;

use super::events::{FailureKind, Outcome};
use crate::process::probe::Verdict;

/// Why a candidate did not take over. The old gateway, if any, keeps serving untouched.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Failure {
    /// No gateway binary, or `exec` failed.
    #[error("the new gateway could not be started: {0}")]
    Spawn(String),
    /// The candidate exited before it was ready.
    #[error("the new gateway (pid {pid}) exited with {status} before it was ready")]
    Exited {
        /// Its pid.
        pid: u32,
        /// How it exited.
        status: String,
    },
    /// The candidate was not ready within the timeout.
    #[error("the new gateway (pid {pid}) was not ready within {}: {reason}", humantime::format_duration(*.timeout))]
    NotReady {
        /// Its pid.
        pid: u32,
        /// `AIHUMMER_READY_TIMEOUT`.
        timeout: Duration,
        /// The last reason its probe gave.
        reason: String,
    },
    /// The candidate is ready but reports another version than the one staged for it.
    #[error("the new gateway (pid {pid}) reports version {reported}, expected {expected}")]
    WrongVersion {
        /// Its pid.
        pid: u32,
        /// The version it was started for.
        expected: String,
        /// The version it reported.
        reported: String,
    },
    /// The supervisor was asked to stop while the candidate started.
    #[error("the supervisor is stopping")]
    Stopping,
    /// An operator's rollback or update replaced the start while no gateway served.
    #[error("the start was replaced by a start of {0}")]
    Superseded(String),
}

impl Failure {
    /// What a waiting client is told.
    pub fn outcome(&self) -> Outcome {
        let kind = match self {
            Failure::Stopping => FailureKind::Stopping,
            _ => FailureKind::HandoffFailed,
        };
        Outcome::failed(kind, self.to_string())
    }
}

/// What the gate decided after an observation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Keep probing.
    Wait,
    /// The candidate is ready: switch to it.
    Ready {
        /// The version it reported.
        version: String,
        /// Whether it runs without a database.
        health_only: bool,
    },
    /// Give up on the candidate.
    Fail(Failure),
}

/// The readiness gate of one candidate: fed probe verdicts, its exit and the clock.
#[derive(Debug, Clone)]
pub struct Gate {
    pid: u32,
    expected_version: Option<String>,
    timeout: Duration,
    deadline: Instant,
    last_reason: String,
}

impl Gate {
    /// A gate for the candidate `pid`, started at `now`, giving up after `timeout`.
    pub fn new(pid: u32, now: Instant, timeout: Duration) -> Self {
        Self {
            pid,
            expected_version: None,
            timeout,
            deadline: super::machine::after(now, timeout),
            last_reason: "no probe answered yet".into(),
        }
    }

    /// Also requires the candidate to report `version` (an update hands off to a known
    /// version; a restart takes whatever is installed).
    pub fn expecting_version(mut self, version: impl Into<String>) -> Self {
        self.expected_version = Some(version.into());
        self
    }

    /// When the gate gives up on a candidate that has not become ready.
    pub fn deadline(&self) -> Instant {
        self.deadline
    }

    /// A probe verdict arrived at `now`.
    pub fn on_probe(&mut self, verdict: Verdict, now: Instant) -> Decision {
        match verdict {
            Verdict::Ready { version, .. }
                if self
                    .expected_version
                    .as_ref()
                    .is_some_and(|expected| *expected != version) =>
            {
                // A process that answers as another version will not change its mind.
                Decision::Fail(Failure::WrongVersion {
                    pid: self.pid,
                    expected: self.expected_version.clone().unwrap_or_default(),
                    reported: version,
                })
            }
            Verdict::Ready {
                version,
                health_only,
            } => Decision::Ready {
                version,
                health_only,
            },
            Verdict::NotReady(reason) => {
                self.last_reason = reason;
                self.on_tick(now)
            }
        }
    }

    /// Time passed without a verdict.
    pub fn on_tick(&self, now: Instant) -> Decision {
        if now >= self.deadline {
            Decision::Fail(Failure::NotReady {
                pid: self.pid,
                timeout: self.timeout,
                reason: self.last_reason.clone(),
            })
        } else {
            Decision::Wait
        }
    }

    /// The candidate exited, described as `status`.
    pub fn on_exit(&self, status: String) -> Decision {
        Decision::Fail(Failure::Exited {
            pid: self.pid,
            status,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TIMEOUT: Duration = Duration::from_secs(3);

    #[test]
    fn a_ready_verdict_switches_to_the_candidate() {
        let now = Instant::now();
        let mut gate = Gate::new(9, now, TIMEOUT);
        let ready = Verdict::Ready {
            version: "1.0.0".into(),
            health_only: false,
        };
        assert!(
            matches!(gate.on_probe(ready, now), Decision::Ready { version, .. } if version == "1.0.0")
        );
    }

    #[test]
    fn a_candidate_reporting_another_version_than_expected_fails_at_once() {
        let now = Instant::now();
        let mut gate = Gate::new(9, now, TIMEOUT).expecting_version("1.1.0");
        let wrong = Verdict::Ready {
            version: "1.0.0".into(),
            health_only: false,
        };
        let Decision::Fail(failure) = gate.on_probe(wrong, now) else {
            panic!("a wrong version should fail the gate");
        };
        assert_eq!(
            failure.to_string(),
            "the new gateway (pid 9) reports version 1.0.0, expected 1.1.0"
        );
        let right = Verdict::Ready {
            version: "1.1.0".into(),
            health_only: false,
        };
        assert!(matches!(gate.on_probe(right, now), Decision::Ready { .. }));
    }

    #[test]
    fn a_candidate_not_ready_by_the_deadline_fails_with_its_last_reason() {
        let now = Instant::now();
        let mut gate = Gate::new(9, now, TIMEOUT);
        let waiting = Verdict::NotReady("database unavailable: refused".into());
        assert_eq!(
            gate.on_probe(waiting.clone(), now + TIMEOUT / 2),
            Decision::Wait
        );
        let Decision::Fail(failure) = gate.on_probe(waiting, now + TIMEOUT) else {
            panic!("the gate should fail at its deadline");
        };
        let message = failure.to_string();
        assert!(
            message.contains("pid 9") && message.contains("within 3s"),
            "{message}"
        );
        assert!(
            message.contains("database unavailable: refused"),
            "{message}"
        );
        assert!(matches!(gate.on_tick(now + TIMEOUT), Decision::Fail(_)));
    }

    #[test]
    fn a_candidate_that_exits_fails_the_gate_at_once() {
        let gate = Gate::new(9, Instant::now(), TIMEOUT);
        let Decision::Fail(failure) = gate.on_exit("exit code 1".into()) else {
            panic!("an exit should fail the gate");
        };
        assert_eq!(
            failure.to_string(),
            "the new gateway (pid 9) exited with exit code 1 before it was ready"
        );
    }
}
