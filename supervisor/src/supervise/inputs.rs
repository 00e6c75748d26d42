//! Where the machine's inputs come from, besides its own effects: signals, the periodic
//! update timer, and the control socket. This is also the control protocol's edge: client
//! requests become [`Input`]s here, and the machine's replies become wire [`Body`]s.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};

use super::checks;
use super::events::{ClientId, FailureKind, Input, Outcome, Reply};
use super::status::millis;
use crate::VERSION;
use crate::control::protocol::ResumeReport;
use crate::control::{
    Body, CheckReport, ErrorCode, GatewayVersion, Progress, RestartReport, Service, StatusReport,
    UpToDateReport, VersionReport,
};
use crate::fleet::{Fleet, FleetError};

/// What reaches the driver's inbox.
#[derive(Debug)]
pub enum Message {
    /// An input as it is.
    Input(Input),
    /// A client's request; its replies go to `replies`.
    Client {
        /// What the client asked.
        request: Request,
        /// Where its progress and final reply go.
        replies: mpsc::UnboundedSender<Body>,
    },
}

/// A client request that waits for an outcome.
#[derive(Debug, Clone)]
pub enum Request {
    /// `aihummer restart`.
    Restart,
    /// `aihummer update [--version X]`.
    Update(Option<String>),
    /// `aihummer rollback`.
    Rollback,
    /// `aihummer update --check`.
    Check,
}

impl Request {
    /// The machine's input for this request from `client`.
    pub fn input(self, client: ClientId) -> Input {
        match self {
            Request::Restart => Input::Restart(client),
            Request::Update(version) => Input::Update { client, version },
            Request::Rollback => Input::Rollback(client),
            Request::Check => Input::CheckOnly(client),
        }
    }
}

/// Turns SIGTERM, SIGINT and SIGHUP into inputs. The handlers stay installed for the
/// life of the process, so a repeated signal never falls back to the default action.
pub fn forward_signals(inbox: mpsc::UnboundedSender<Message>) -> std::io::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    tokio::spawn(async move {
        loop {
            let input = tokio::select! {
                _ = term.recv() => Input::Stop("SIGTERM"),
                _ = int.recv() => Input::Stop("SIGINT"),
                _ = hup.recv() => Input::CheckRequested,
            };
            if inbox.send(Message::Input(input)).is_err() {
                return;
            }
        }
    });
    Ok(())
}

/// Asks for a check at [`checks::FIRST_CHECK`], then every `interval`, each with jitter.
pub async fn update_timer(inbox: mpsc::UnboundedSender<Message>, interval: Duration) {
    let mut delay = interval.min(checks::FIRST_CHECK);
    loop {
        tokio::time::sleep(checks::jittered(delay, checks::seed())).await;
        if inbox.send(Message::Input(Input::CheckRequested)).is_err() {
            return;
        }
        delay = interval;
    }
}

/// What the control server asks of the supervisor, answered from the published status
/// and the inbox.
pub struct Handle {
    status: watch::Receiver<StatusReport>,
    inbox: mpsc::UnboundedSender<Message>,
    fleet: Option<Arc<Fleet>>,
}

impl Handle {
    /// A handle reading `status`, sending requests to `inbox` and answering fleet queries
    /// from `fleet`.
    pub fn new(
        status: watch::Receiver<StatusReport>,
        inbox: mpsc::UnboundedSender<Message>,
        fleet: Option<Arc<Fleet>>,
    ) -> Self {
        Self {
            status,
            inbox,
            fleet,
        }
    }

    fn ask(&self, request: Request) -> mpsc::UnboundedReceiver<Body> {
        let (replies, events) = mpsc::unbounded_channel();
        // If the supervisor is gone the sender drops with the message, and the connection
        // reports that the supervisor stopped.
        let _ = self.inbox.send(Message::Client { request, replies });
        events
    }
}

impl Service for Handle {
    fn status(&self) -> StatusReport {
        self.status.borrow().clone()
    }

    fn version(&self) -> VersionReport {
        let status = self.status.borrow();
        VersionReport {
            version: VERSION.to_string(),
            pid: std::process::id(),
            gateway: status.active.as_ref().map(|a| GatewayVersion {
                version: a.version.clone(),
                pid: a.pid,
            }),
        }
    }

    fn restart(&self) -> mpsc::UnboundedReceiver<Body> {
        self.ask(Request::Restart)
    }

    fn update(&self, version: Option<String>) -> mpsc::UnboundedReceiver<Body> {
        self.ask(Request::Update(version))
    }

    fn rollback(&self) -> mpsc::UnboundedReceiver<Body> {
        self.ask(Request::Rollback)
    }

    fn check(&self) -> mpsc::UnboundedReceiver<Body> {
        self.ask(Request::Check)
    }

    fn fleet(&self, resume: Option<String>) -> mpsc::UnboundedReceiver<Body> {
        let (reply, events) = mpsc::unbounded_channel();
        let Some(fleet) = self.fleet.clone() else {
            let _ = reply.send(Body::error(
                ErrorCode::FleetUnavailable,
                "this supervisor has no fleet database (AIHUMMER_DATABASE_URL is unset)",
            ));
            return events;
        };
        // Off the control server's task: the database may be slow.
        tokio::spawn(async move {
            let _ = reply.send(fleet_query(&fleet, resume).await);
        });
        events
    }
}

/// Answers `aihummer fleet status` or `aihummer fleet resume VERSION` from the database.
pub async fn fleet_query(fleet: &Fleet, resume: Option<String>) -> Body {
    let unavailable = |err: FleetError| Body::error(ErrorCode::FleetUnavailable, err.to_string());
    match resume {
        None => match fleet.report().await {
            Ok(report) => Body::Fleet(Box::new(report)),
            Err(err) => unavailable(err),
        },
        Some(version) => {
            let parsed = match semver::Version::parse(&version) {
                Ok(parsed) => parsed,
                Err(err) => {
                    return Body::error(
                        ErrorCode::BadRequest,
                        format!("{version:?} is not a SemVer version: {err}"),
                    );
                }
            };
            match fleet.resume(&parsed).await {
                Ok(was_halted) => {
                    if was_halted {
                        tracing::warn!(%version, "fleet-wide halt lifted by an operator");
                    }
                    Body::FleetResumed(ResumeReport {
                        version,
                        was_halted,
                    })
                }
                Err(err) => unavailable(err),
            }
        }
    }
}

/// A reply of the machine as the control protocol carries it.
pub fn body(reply: Reply) -> Body {
    match reply {
        Reply::Step(step) => Body::Progress(Progress {
            stage: step.stage,
            message: step.message,
            pid: step.pid,
            done: step.bytes.map(|(done, _)| done),
            total: step.bytes.map(|(_, total)| total),
        }),
        Reply::Done(Outcome::HandedOff {
            old_pid,
            new_pid,
            version,
            took,
        }) => Body::Restarted(RestartReport {
            old_pid,
            new_pid,
            version,
            duration_ms: millis(took),
        }),
        Reply::Done(Outcome::UpToDate(version)) => Body::UpToDate(UpToDateReport {
            version: version.to_string(),
        }),
        Reply::Done(Outcome::Checked {
            running,
            offered,
            available,
        }) => Body::Checked(CheckReport {
            running: running.to_string(),
            offered: offered.to_string(),
            available,
        }),
        Reply::Done(Outcome::Failed { kind, message }) => Body::error(
            match kind {
                FailureKind::Busy => ErrorCode::Busy,
                FailureKind::HandoffFailed => ErrorCode::HandoffFailed,
                FailureKind::UpdateFailed => ErrorCode::UpdateFailed,
                FailureKind::NoRollback => ErrorCode::NoRollback,
                FailureKind::Stopping => ErrorCode::Stopping,
            },
            message,
        ),
    }
}
