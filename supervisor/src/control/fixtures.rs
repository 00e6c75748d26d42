//! Test fixtures shared by the control tests and the CLI's: a sample status report and a
//! fake supervisor behind the [`Service`] trait.

use tokio::sync::mpsc;

use super::protocol::{
    Body, CheckReport, ErrorCode, GatewayInfo, GatewayState, ProcessInfo, Progress, RestartReport,
    Stage, StatusReport, SupervisorState, UpToDateReport, UpdateInfo, VersionReport,
};
use super::server::Service;

/// A supervisor running one ready 1.0.0 gateway, updates off.
pub fn status() -> StatusReport {
    StatusReport {
        supervisor: ProcessInfo {
            version: "1.0.0".into(),
            pid: 1,
            started_at: "2026-01-01T00:00:00Z".into(),
        },
        state: SupervisorState::Running,
        active: Some(GatewayInfo {
            pid: 2,
            version: Some("1.0.0".into()),
            state: GatewayState::Ready,
            health_only: false,
            binary: "/bin/gw".into(),
            started_at: "2026-01-01T00:00:00Z".into(),
        }),
        candidate: None,
        draining: None,
        update: UpdateInfo {
            mode: "off".into(),
            channel: "stable".into(),
            last_check: None,
            last_result: None,
            available: None,
        },
        quarantined: vec![],
        last_error: None,
        last_handoff: None,
        crash_restarts: 0,
        node: None,
    }
}

/// A supervisor that answers at once: restarts stream two stages and succeed, updates
/// stream a download and find nothing newer (or refuse an asked-for version), rollbacks
/// have nothing to roll back to.
pub struct Fake;

impl Service for Fake {
    fn status(&self) -> StatusReport {
        status()
    }

    fn version(&self) -> VersionReport {
        VersionReport {
            version: "1.0.0".into(),
            pid: 1,
            gateway: None,
        }
    }

    fn restart(&self) -> mpsc::UnboundedReceiver<Body> {
        let (tx, rx) = mpsc::unbounded_channel();
        for stage in [Stage::CandidateStarted, Stage::Switched] {
            let _ = tx.send(Body::Progress(Progress {
                stage,
                message: format!("{stage:?}"),
                pid: Some(3),
                done: None,
                total: None,
            }));
        }
        let _ = tx.send(Body::Restarted(RestartReport {
            old_pid: Some(2),
            new_pid: 3,
            version: Some("1.0.0".into()),
            duration_ms: 12,
        }));
        rx
    }

    fn update(&self, version: Option<String>) -> mpsc::UnboundedReceiver<Body> {
        let (tx, rx) = mpsc::unbounded_channel();
        let _ = tx.send(Body::Progress(Progress {
            stage: Stage::Downloading,
            message: "downloading".into(),
            pid: None,
            done: Some(5),
            total: Some(10),
        }));
        let _ = tx.send(match version {
            Some(v) => Body::error(ErrorCode::UpdateFailed, format!("{v} is not offered")),
            None => Body::UpToDate(UpToDateReport {
                version: "1.0.0".into(),
            }),
        });
        rx
    }

    fn rollback(&self) -> mpsc::UnboundedReceiver<Body> {
        let (tx, rx) = mpsc::unbounded_channel();
        let _ = tx.send(Body::error(
            ErrorCode::NoRollback,
            "nothing to roll back to",
        ));
        rx
    }

    fn check(&self) -> mpsc::UnboundedReceiver<Body> {
        let (tx, rx) = mpsc::unbounded_channel();
        let _ = tx.send(Body::Checked(CheckReport {
            running: "1.0.0".into(),
            offered: "1.1.0".into(),
            available: true,
        }));
        rx
    }
}
