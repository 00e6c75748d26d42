//! The machine's update side: when checks run (merged, never stacked), what a finished
//! check means (record it, quarantine a release that failed staging, hand off to a staged
//! version), rollback targets, quarantine, and the soak window that rolls a crash-looping
//! version back. Still no I/O: checks, switches and quarantines are effects whose results
//! come back as inputs.

use std::time::{Duration, Instant};

use semver::Version;

use super::checks::Action;
use super::clients::Waiters;
use super::events::{
    Binary, CheckReport, CheckRequest, ClientId, Effect, FailureKind, Found, InstallView, Outcome,
    Permit, Stage,
};
use super::machine::{Death, Kind, Machine, RollingBack, State, Target, after};
use super::soak::Verdict;

impl Machine {
    /// A check asked for by SIGHUP or the timer: now when idle, once after the start or
    /// handoff under way when `busy`.
    pub(super) fn request_check(&mut self, busy: bool) {
        match self.checks.request(busy) {
            Action::CheckNow => self.check_for_update(),
            Action::Deferred => {
                tracing::info!("update check requested; it runs once the current handoff ends");
            }
            Action::Merged => tracing::info!("update check already pending; request merged"),
        }
    }

    /// Asks for a background check; its outcome comes back as a [`CheckReport`].
    pub(super) fn check_for_update(&mut self) {
        if let Err(reason) = self.config.update_source.clone() {
            self.checks.finished();
            self.record_check(reason, None, true);
            return;
        }
        let running = match self.running_version() {
            Ok(version) => version,
            Err(reason) => {
                self.checks.finished();
                self.record_check(format!("check failed: {reason}"), None, true);
                return;
            }
        };
        tracing::info!(%running, apply = self.config.apply, "checking for an update");
        self.effects.push(Effect::Check(CheckRequest {
            running,
            requested: None,
            stage: self.config.apply,
            explicit: false,
            check_only: false,
            automatic: true,
        }));
    }

    /// `aihummer update --check`: a check with this supervisor's settings that installs
    /// nothing, in any state (it touches no gateway); its outcome is recorded in status
    /// like any other check. A second request joins the check under way.
    pub(super) fn start_check_only(&mut self, client: ClientId) {
        let running = self
            .config
            .update_source
            .clone()
            .and_then(|()| self.running_version());
        let running = match running {
            Ok(running) => running,
            Err(reason) => {
                return self.reply(client, Outcome::failed(FailureKind::UpdateFailed, reason));
            }
        };
        self.check_clients.push(client);
        if self.check_clients.len() > 1 {
            return;
        }
        tracing::info!(%running, "checking for an update, as asked by the operator");
        self.effects.push(Effect::Check(CheckRequest {
            running,
            requested: None,
            stage: false,
            explicit: false,
            check_only: true,
            automatic: false,
        }));
    }

    /// The check `aihummer update --check` asked for ended: recorded, and its clients told.
    pub(super) fn on_check_only(&mut self, now: Instant, found: Found) {
        let outcome = match &found {
            Found::UpToDate(version) => Outcome::Checked {
                running: version.clone(),
                offered: version.clone(),
                available: false,
            },
            Found::Ahead { running, offered } => Outcome::Checked {
                running: running.clone(),
                offered: offered.clone(),
                available: false,
            },
            Found::Available(version)
            | Found::OutsideRollout {
                offered: version, ..
            } => Outcome::Checked {
                running: self.running_version().unwrap_or_else(|_| version.clone()),
                offered: version.clone(),
                available: true,
            },
            Found::Refused(reason) => {
                Outcome::failed(FailureKind::UpdateFailed, format!("refused: {reason}"))
            }
            Found::Failed(reason) => Outcome::failed(FailureKind::UpdateFailed, reason.clone()),
        };
        self.status.last_check = Some(now);
        self.record_found(&found);
        for client in std::mem::take(&mut self.check_clients) {
            self.reply(client, outcome.clone());
        }
    }

    /// The serving gateway's version; with none serving (a crash loop, a start failing),
    /// the installed `current` one.
    fn running_version(&self) -> Result<Version, String> {
        let serving = self
            .status
            .active
            .as_ref()
            .and_then(|a| a.version.as_deref());
        let Some(reported) = serving else {
            return self
                .config
                .install
                .as_ref()
                .and_then(|install| install.current.clone())
                .ok_or_else(|| "no gateway serves, so the running version is unknown".into());
        };
        Version::parse(reported).map_err(|err| {
            format!("the gateway reports {reported:?}, not a SemVer version ({err})")
        })
    }

    /// `aihummer update`: checks and stages off the loop; a second request joins the one
    /// under way.
    pub(super) fn start_update(&mut self, client: ClientId, version: Option<String>) {
        if self.update_running {
            self.update_waiters.join(client, &mut self.effects);
            return;
        }
        let requested = match version.as_deref().map(Version::parse).transpose() {
            Ok(requested) => requested,
            Err(err) => {
                let message = format!("--version {version:?} is not a SemVer version: {err}");
                return self.reply(client, Outcome::failed(FailureKind::UpdateFailed, message));
            }
        };
        if let Err(reason) = self.config.update_source.clone() {
            return self.reply(client, Outcome::failed(FailureKind::UpdateFailed, reason));
        }
        let running = match self.running_version() {
            Ok(version) => version,
            Err(reason) => {
                return self.reply(client, Outcome::failed(FailureKind::UpdateFailed, reason));
            }
        };
        self.update_waiters.join(client, &mut self.effects);
        self.update_running = true;
        self.effects.push(Effect::Check(CheckRequest {
            running,
            requested,
            stage: true,
            explicit: true,
            check_only: false,
            automatic: false,
        }));
    }

    /// A check ended: records it, quarantines a version whose stage the release is to
    /// blame for, and returns the handoff to run when a version was staged and
    /// `can_apply` (nothing else runs). A version staged while a handoff ran is checked
    /// again afterwards (staging it again finds it installed and only smoke tests it).
    pub(super) fn on_checked(
        &mut self,
        now: Instant,
        report: CheckReport,
        can_apply: bool,
    ) -> Option<(Target, Waiters)> {
        let mut waiters = if report.explicit {
            self.update_running = false;
            std::mem::take(&mut self.update_waiters)
        } else {
            self.checks.finished();
            Waiters::default()
        };
        self.status.last_check = Some(now);
        self.record_found(&report.found);
        let failed = |message: String| Outcome::failed(FailureKind::UpdateFailed, message);
        if let (Some(permit), Found::Available(version)) = (&report.permit, &report.found)
            && !self.on_permit(now, version, permit.clone())
        {
            return None;
        }
        let Some(staged) = report.staged else {
            let outcome = match report.found {
                Found::UpToDate(version)
                | Found::Ahead {
                    running: version, ..
                } => Outcome::UpToDate(version),
                Found::Available(version)
                | Found::OutsideRollout {
                    offered: version, ..
                } => failed(format!("{version} is available but was not staged")),
                Found::Refused(reason) | Found::Failed(reason) => failed(reason),
            };
            waiters.finish(outcome, &mut self.effects);
            return None;
        };
        let version = staged.version;
        match staged.result {
            Err(failure) => {
                let message = format!(
                    "staging {version} failed: {}; the running gateway keeps serving",
                    failure.message
                );
                if failure.blames_release {
                    self.quarantine(&version, &failure.message);
                }
                // A quarantine's halt freed the lease already; otherwise it goes back now.
                self.release_lease("the version was not staged");
                self.record_error(now, message.clone());
                waiters.finish(failed(message), &mut self.effects);
                None
            }
            Ok(binary) if can_apply => {
                tracing::info!(%version, binary = %binary.display(), "update staged; handing off");
                waiters.step(
                    Stage::Staged,
                    None,
                    format!("{version} verified and installed at {}", binary.display()),
                    &mut self.effects,
                );
                let target = Target {
                    version,
                    binary: Binary::Staged(binary),
                    kind: Kind::Update,
                };
                Some((target, waiters))
            }
            Ok(_) => {
                tracing::info!(%version, "update staged during a handoff; checking again after it");
                self.release_lease("another handoff runs");
                if report.explicit {
                    let message = format!(
                        "{version} is staged, but a handoff ran meanwhile; run the update again"
                    );
                    waiters.finish(
                        Outcome::failed(FailureKind::Busy, message),
                        &mut self.effects,
                    );
                } else {
                    self.checks.request(true);
                }
                None
            }
        }
    }

    /// In `apply` mode, schedules another check after an update failed through no fault
    /// of its own; returns how that reads in a message.
    pub(super) fn retry_update(&mut self, now: Instant) -> String {
        if !self.config.apply {
            return String::new();
        }
        let delay = self.update_backoff.next_delay();
        self.update_retry = Some(after(now, delay));
        format!(
            " and is tried again in {}",
            humantime::format_duration(delay)
        )
    }

    /// Shows what a check found in status and the log.
    fn record_found(&mut self, found: &Found) {
        let failed = matches!(found, Found::Refused(_) | Found::Failed(_));
        let (line, available) = match found {
            Found::UpToDate(version) => (format!("up to date: {version}"), None),
            Found::Ahead { running, offered } => (
                format!("up to date: {running} runs; the channel offers {offered}"),
                None,
            ),
            Found::Available(version) => (
                format!("update available: {version}"),
                Some(version.to_string()),
            ),
            Found::OutsideRollout {
                offered,
                rollout,
                cohort,
            } => (
                format!(
                    "{offered} is rolling out to {rollout}% of nodes; this node (cohort {cohort}) is not among them yet"
                ),
                None,
            ),
            Found::Refused(reason) => (format!("refused: {reason}"), None),
            Found::Failed(reason) => (format!("check failed: {reason}"), None),
        };
        self.record_check(line, available, failed);
    }

    /// Shows a check's outcome (and a newer version found, if any) in status and the log;
    /// a failed check at WARN, like the retries before it.
    fn record_check(&mut self, line: String, available: Option<String>, failed: bool) {
        if failed {
            tracing::warn!(result = %line, "update check");
        } else {
            tracing::info!(result = %line, "update check");
        }
        self.status.last_result = Some(line);
        self.status.available = available;
    }

    /// The handoff back to `previous`, or why there is none.
    pub(super) fn rollback_target(&self, reason: &str) -> Result<Target, String> {
        let install = self.config.install.as_ref().ok_or(
            "rolling back needs AIHUMMER_STATE_DIR (the install dir holding the previous version)",
        )?;
        let previous = install
            .previous
            .clone()
            .ok_or("no previous version is installed to roll back to")?;
        Ok(Target {
            binary: Binary::Installed(previous.clone()),
            version: previous,
            kind: Kind::Rollback {
                reason: reason.to_string(),
            },
        })
    }

    /// Quarantines `version`: saved in the install dir when there is one, shown in status.
    /// The version serving is never quarantined: refusing what runs would leave a node
    /// with no version it may start.
    pub(super) fn quarantine(&mut self, version: &Version, reason: &str) {
        let serving = self
            .status
            .active
            .as_ref()
            .and_then(|a| a.version.as_deref());
        if serving.and_then(|v| Version::parse(v).ok()).as_ref() == Some(version) {
            tracing::warn!(%version, %reason, "not quarantining the version that serves");
            if self.lease.as_ref() == Some(version) {
                // No halt frees the lease then: it goes back as it is.
                self.release_lease("the version serves already");
            }
            return;
        }
        tracing::error!(%version, %reason, "version quarantined");
        // A quarantined version is no longer on offer until asked for by name.
        if self.status.available.as_deref() == Some(version.to_string().as_str()) {
            self.status.available = None;
        }
        if self.lease.as_ref() == Some(version) {
            // The quarantine's halt frees the lease in the same transaction.
            self.lease = None;
        }
        if self.config.install.is_some() {
            self.effects.push(Effect::Quarantine {
                version: version.clone(),
                reason: reason.to_string(),
            });
        } else {
            self.listed_in_quarantine(version, reason);
        }
    }

    /// The install dir saved a quarantine, or could not.
    pub(super) fn on_quarantined(
        &mut self,
        version: Version,
        reason: String,
        result: Result<InstallView, String>,
    ) {
        match result {
            Ok(install) => {
                self.status.quarantined = install.quarantined.clone();
                self.config.install = Some(install);
            }
            Err(err) => {
                tracing::error!(error = %err, "cannot persist the quarantine");
                self.listed_in_quarantine(&version, &reason);
            }
        }
    }

    fn listed_in_quarantine(&mut self, version: &Version, reason: &str) {
        let line = format!("{version}: {reason}");
        if !self.status.quarantined.contains(&line) {
            self.status.quarantined.push(line);
        }
    }

    /// `current` was switched (or not): after a handoff that is only reported; after a
    /// soak rollback the next start depends on it.
    pub(super) fn on_switched(
        &mut self,
        now: Instant,
        version: Version,
        result: Result<InstallView, String>,
    ) {
        if let Ok(install) = &result {
            self.status.quarantined = install.quarantined.clone();
            self.config.install = Some(install.clone());
        }
        let rolling = match std::mem::replace(&mut self.state, State::Stopped) {
            State::RollingBack(rolling) if rolling.to == version => rolling,
            other => {
                self.state = other;
                match result {
                    Ok(install) => {
                        let previous = install.previous.map(|v| v.to_string()).unwrap_or_default();
                        tracing::info!(%version, %previous, "current switched");
                        self.status.available = None;
                    }
                    Err(err) => self.record_error(
                        now,
                        format!(
                            "gateway {version} serves, but switching current to it failed: {err}"
                        ),
                    ),
                }
                return;
            }
        };
        let RollingBack {
            death,
            from,
            to,
            reason,
        } = rolling;
        match result {
            Ok(_) => {
                self.record_error(
                    now,
                    format!("automatic rollback from {from} to {to}: {reason}"),
                );
                if let Death::Crash { .. } = death {
                    self.restart_delay = Default::default();
                }
                self.enter_starting(now);
            }
            Err(err) => {
                self.record_error(
                    now,
                    format!("{from}: {reason}; rolling back to {to} failed: {err}"),
                );
                self.back_off_after(now, death);
            }
        }
    }

    /// Counts a death against the version in its soak window. At the last one allowed,
    /// quarantines it, asks for `current` to point back at `previous`, and returns true:
    /// the machine then waits for that switch before starting anything.
    pub(super) fn soak_death(&mut self, now: Instant, death: Death) -> bool {
        if self.soak.as_ref().is_some_and(|soak| soak.is_over(now)) {
            self.soak_passed();
            return false;
        }
        let Some(soak) = self.soak.as_mut() else {
            return false;
        };
        let Verdict::RollBack { reason } = soak.on_death(now) else {
            return false;
        };
        let from = soak.version().clone();
        self.soak = None;
        let Some(install) = self.config.install.clone() else {
            return false;
        };
        self.quarantine(&from, &reason);
        let Some(to) = install.previous.filter(|previous| *previous != from) else {
            self.record_error(
                now,
                format!("{from}: {reason}; no previous version to roll back to"),
            );
            return false;
        };
        self.effects.push(Effect::Switch(to.clone()));
        self.state = State::RollingBack(RollingBack {
            death,
            from,
            to,
            reason,
        });
        true
    }

    /// An automatic update's permit came back: whether to go on to the stage's outcome
    /// (granted) or stop here (wait, or halted), which this records.
    fn on_permit(&mut self, now: Instant, version: &Version, permit: Permit) -> bool {
        match permit {
            Permit::Granted { lease } => {
                if lease {
                    tracing::info!(%version, "rollout lease taken");
                    self.lease = Some(version.clone());
                }
                true
            }
            Permit::Wait { reason, retry_in } => {
                let line = format!(
                    "update available: {version}; waiting: {reason}; checking again in {}",
                    humantime::format_duration(Duration::from_secs(retry_in.as_secs().max(1)))
                );
                self.record_check(line, Some(version.to_string()), false);
                let at = after(now, retry_in);
                if self.update_retry.is_none_or(|retry| retry > at) {
                    self.update_retry = Some(at);
                }
                false
            }
            Permit::Halted(reason) => {
                let line = format!(
                    "{version} is halted fleet-wide ({reason}); `aihummer update --version {version}` installs it on this node anyway"
                );
                self.record_check(line, None, true);
                false
            }
        }
    }

    /// Gives the rollout lease back, if this node holds it.
    pub(super) fn release_lease(&mut self, why: &str) {
        if let Some(version) = self.lease.take() {
            tracing::info!(%version, why, "giving the rollout lease back");
            self.effects.push(Effect::ReleaseLease);
        }
    }

    /// The soaking version outlived its window: it is good, and the next node may go.
    pub(super) fn soak_passed(&mut self) {
        if let Some(soak) = self.soak.take() {
            tracing::info!(version = %soak.version(), "the new version served through its soak window");
        }
        self.release_lease("the new version soaked");
    }

    /// Backs off after `death`, as if no rollback had been tried.
    fn back_off_after(&mut self, now: Instant, death: Death) {
        match death {
            Death::Crash { message, ran_for } => self.back_off(now, ran_for, |delay| {
                format!(
                    "{message}; starting a new one in {}",
                    humantime::format_duration(delay)
                )
            }),
            Death::StartFailed(failure) => self.back_off(now, Duration::ZERO, |delay| {
                format!(
                    "{failure}; trying again in {}",
                    humantime::format_duration(delay)
                )
            }),
        }
    }
}
