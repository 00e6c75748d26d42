//! One update check off the driver's loop: fetch and decide (retrying what may pass),
//! then, when a version is found and staging was asked for, clear it with the fleet and
//! stage it. Progress and the outcome come back to the machine as inputs.
//!
//! Nothing is staged that may not be installed: an automatic update stages only after
//! its [`Permit`] is granted, and an operator's plain `aihummer update` refuses a
//! version the fleet halted (`--version` installs it anyway).

use std::sync::Arc;

use tokio::sync::mpsc;

use super::coordination::Coordination;
use super::events::{
    CheckReport, CheckRequest, Found, Input, Permit, Stage, StageFailure, Staged, Step,
};
use super::inputs::Message;
use crate::install::{self, CheckOutcome, Layout};
use crate::update::{Checked, Updater};

/// What a check needs besides its request.
#[derive(Clone)]
pub struct Checker {
    /// The update pipeline.
    pub updater: Arc<Updater>,
    /// The install dir, where the check is recorded.
    pub layout: Option<Layout>,
    /// The update window and the fleet.
    pub coordination: Coordination,
    /// This node's rollout cohort.
    pub cohort: u8,
    /// The driver's inbox.
    pub sender: mpsc::UnboundedSender<Message>,
}

impl Checker {
    /// Runs `request` in its own task, so a slow CDN or database never blocks signals or
    /// status.
    pub fn spawn(&self, request: CheckRequest) {
        let this = self.clone();
        tokio::spawn(async move { this.run(request).await });
    }

    async fn run(self, request: CheckRequest) {
        let url = self.updater.manifest_url().to_string();
        let sender = self.sender.clone();
        let explicit = request.explicit;
        let progress = move |stage, message: String, bytes| {
            if explicit {
                let step = Step {
                    stage,
                    message,
                    pid: None,
                    bytes,
                };
                let _ = sender.send(Message::Input(Input::UpdateProgress(step)));
            }
        };
        progress(Stage::Checking, format!("checking {url}"), None);
        let cohort = request.automatic.then_some(self.cohort);
        let (running, requested) = (request.running.clone(), request.requested.clone());
        let on_retry = progress.clone();
        let checked = self
            .updater
            .check_retrying(&running, requested.as_ref(), cohort, move |err, delay| {
                let delay = humantime::format_duration(delay);
                on_retry(Stage::Checking, format!("{err}; retrying in {delay}"), None);
            })
            .await;
        if let Some(layout) = &self.layout {
            let outcome = match &checked {
                Ok(checked) => checked.outcome(),
                Err(err) => CheckOutcome::Failed {
                    reason: err.to_string(),
                },
            };
            if let Err(err) = install::record_check(layout, outcome) {
                tracing::warn!(error = %err, "cannot record the update check in the state file");
            }
        }
        let mut found = match &checked {
            Ok(Checked::UpToDate(version)) => Found::UpToDate(version.clone()),
            Ok(Checked::Ahead { running, offered }) => Found::Ahead {
                running: running.clone(),
                offered: offered.clone(),
            },
            Ok(Checked::Available(offer)) => Found::Available(offer.version.clone()),
            Ok(Checked::OutsideRollout {
                offered,
                rollout,
                cohort,
            }) => Found::OutsideRollout {
                offered: offered.clone(),
                rollout: *rollout,
                cohort: *cohort,
            },
            Ok(Checked::Refused(refusal)) => Found::Refused(refusal.to_string()),
            Err(err) => Found::Failed(err.to_string()),
        };
        let offer = match &checked {
            Ok(Checked::Available(offer)) if request.stage => Some(offer.clone()),
            _ => None,
        };
        let (mut permit, mut staged) = (None, None);
        if let Some(offer) = offer {
            let version = offer.version.clone();
            let go = if request.automatic {
                let granted = self.coordination.permit(&version).await;
                let go = matches!(granted, Permit::Granted { .. });
                permit = Some(granted);
                go
            } else if request.requested.is_none() {
                match self.coordination.halted(&version).await {
                    Some(halt) => {
                        found = Found::Refused(format!(
                            "{version} is {halt}; `aihummer update --version {version}` installs it on this node anyway"
                        ));
                        false
                    }
                    None => true,
                }
            } else {
                true
            };
            if go {
                let mut reported = 0;
                let on_bytes = progress.clone();
                let result = self
                    .updater
                    .stage(&offer, move |done, total| {
                        // One event per MiB (and the last): enough for a bar, few enough
                        // for the inbox.
                        if done == total || done >= reported + (1 << 20) {
                            reported = done;
                            let message = format!("downloaded {done} of {total} bytes");
                            on_bytes(Stage::Downloading, message, Some((done, total)));
                        }
                    })
                    .await;
                staged = Some(Staged {
                    version,
                    result: result.map_err(|err| StageFailure {
                        message: err.to_string(),
                        blames_release: err.blames_release(),
                    }),
                });
            }
        }
        let report = CheckReport {
            explicit: request.explicit,
            check_only: request.check_only,
            found,
            staged,
            permit,
        };
        let _ = self.sender.send(Message::Input(Input::Checked(report)));
    }
}
