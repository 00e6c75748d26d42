//! What `aihummer status` shows, as the machine keeps it: phases, gateways, the last
//! check, error and handoff, all stamped on the machine's one monotonic clock. The
//! driver turns it into the control protocol's report ([`Status::report`]), mapping
//! instants to wall-clock times only there, at the edge.

use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime};

use crate::control::{
    Event, GatewayInfo, GatewayState, HandoffRecord, ProcessInfo, StatusReport, SupervisorState,
    UpdateInfo,
};

/// The supervisor's phase.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Starting a gateway with none serving.
    Starting,
    /// A gateway serves.
    Running,
    /// A candidate starts beside the serving gateway, or the old one drains.
    HandingOff,
    /// Waiting before starting a gateway again.
    BackingOff,
    /// Draining every gateway before exiting.
    Stopping,
}

/// A gateway's state as the supervisor sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Started, not yet ready.
    Starting,
    /// Ready and serving.
    Ready,
    /// Told to drain.
    Draining,
}

/// One gateway child.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Gateway {
    /// Its pid.
    pub pid: u32,
    /// The version it reported, once it answered a probe.
    pub version: Option<String>,
    /// Its state.
    pub role: Role,
    /// Whether it runs without a database.
    pub health_only: bool,
    /// The binary it runs.
    pub binary: PathBuf,
    /// When it started.
    pub started: Instant,
}

/// The last handoff.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Handoff {
    /// When it ended.
    pub at: Instant,
    /// Whether the candidate took over.
    pub ok: bool,
    /// From the request to its end.
    pub took: Duration,
    /// For people.
    pub message: String,
}

/// The machine's status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    /// The phase.
    pub phase: Phase,
    /// The gateway serving traffic.
    pub active: Option<Gateway>,
    /// A gateway starting to take over.
    pub candidate: Option<Gateway>,
    /// An old gateway still draining after a handoff.
    pub draining: Option<Gateway>,
    /// When the last update check ended.
    pub last_check: Option<Instant>,
    /// What it found.
    pub last_result: Option<String>,
    /// A newer version found and not installed yet.
    pub available: Option<String>,
    /// Versions refused for good, as `version: reason`.
    pub quarantined: Vec<String>,
    /// The most recent failure.
    pub last_error: Option<(Instant, String)>,
    /// The most recent handoff.
    pub last_handoff: Option<Handoff>,
    /// Starts after a gateway died on its own.
    pub crash_restarts: u64,
}

impl Status {
    /// The status before the first gateway starts.
    pub fn new(quarantined: Vec<String>) -> Self {
        Status {
            phase: Phase::Starting,
            active: None,
            candidate: None,
            draining: None,
            last_check: None,
            last_result: None,
            available: None,
            quarantined,
            last_error: None,
            last_handoff: None,
            crash_restarts: 0,
        }
    }

    /// The control protocol's report. `clock` pairs one instant with the wall-clock time
    /// it was, so every instant here can be shown as a time of day.
    pub fn report(
        &self,
        supervisor: ProcessInfo,
        update: (&str, &str),
        clock: (Instant, SystemTime),
    ) -> StatusReport {
        let at = |instant: Instant| rfc3339(wall(instant, clock));
        let gateway = |g: &Gateway| GatewayInfo {
            pid: g.pid,
            version: g.version.clone(),
            state: match g.role {
                Role::Starting => GatewayState::Starting,
                Role::Ready => GatewayState::Ready,
                Role::Draining => GatewayState::Draining,
            },
            health_only: g.health_only,
            binary: g.binary.display().to_string(),
            started_at: at(g.started),
        };
        StatusReport {
            supervisor,
            state: match self.phase {
                Phase::Starting => SupervisorState::Starting,
                Phase::Running => SupervisorState::Running,
                Phase::HandingOff => SupervisorState::HandingOff,
                Phase::BackingOff => SupervisorState::BackingOff,
                Phase::Stopping => SupervisorState::Stopping,
            },
            active: self.active.as_ref().map(gateway),
            candidate: self.candidate.as_ref().map(gateway),
            draining: self.draining.as_ref().map(gateway),
            update: UpdateInfo {
                mode: update.0.to_string(),
                channel: update.1.to_string(),
                last_check: self.last_check.map(at),
                last_result: self.last_result.clone(),
                available: self.available.clone(),
            },
            quarantined: self.quarantined.clone(),
            last_error: self.last_error.as_ref().map(|(when, message)| Event {
                at: at(*when),
                message: message.clone(),
            }),
            last_handoff: self.last_handoff.as_ref().map(|h| HandoffRecord {
                at: at(h.at),
                ok: h.ok,
                duration_ms: millis(h.took),
                message: h.message.clone(),
            }),
            crash_restarts: self.crash_restarts,
            node: None,
        }
    }
}

/// The wall-clock time of `instant`, given that `clock.0` was `clock.1`.
fn wall(instant: Instant, (now, wall_now): (Instant, SystemTime)) -> SystemTime {
    match now.checked_duration_since(instant) {
        Some(ago) => wall_now.checked_sub(ago).unwrap_or(wall_now),
        None => wall_now
            .checked_add(instant.duration_since(now))
            .unwrap_or(wall_now),
    }
}

/// A time as RFC 3339, to the second.
pub fn rfc3339(at: SystemTime) -> String {
    humantime::format_rfc3339_seconds(at).to_string()
}

/// Whole milliseconds, saturating.
pub fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instants_are_shown_as_the_wall_clock_time_they_were() {
        let now = Instant::now();
        let wall_now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let mut status = Status::new(vec!["1.2.0: crash loop".into()]);
        status.last_error = Some((now - Duration::from_secs(60), "boom".into()));
        let info = ProcessInfo {
            version: "1.0.0".into(),
            pid: 7,
            started_at: rfc3339(wall_now),
        };
        let report = status.report(info, ("check", "stable"), (now, wall_now));
        let error = report.last_error.unwrap();
        assert_eq!(error.at, "2027-01-15T07:59:00Z");
        assert_eq!(report.update.mode, "check");
        assert_eq!(report.quarantined, ["1.2.0: crash loop"]);
        assert_eq!(report.state, SupervisorState::Starting);
    }
}
