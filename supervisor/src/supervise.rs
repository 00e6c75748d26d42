//! The supervisor's state machine: one function per state, each returning the next.
//!
//! ```text
//!            ┌──────────── start failed ───────────────┐
//!            ▼                                         │
//! start ─► Starting ── ready ──► Running ── restart ──► HandingOff ── ready: switch, drain old ──┐
//!            ▲                   │   ▲                   │                                      │
//!            │        child died │   └── candidate failed: the old child keeps serving ◄───────┘
//!            │                   ▼                                   (or the new one serves)
//!            └── delay over ── BackingOff   (restart during the delay: start at once)
//!
//! any state ── SIGTERM/SIGINT ──► Stopping (drain every child, then exit 0)
//! ```
//!
//! Updates use the same handoff: a check (SIGHUP, the periodic timer) runs in its own task
//! so a slow CDN never blocks signals or status, and its outcome comes back as an input;
//! in `apply` mode a staged version is handed off to with the gate expecting its version,
//! then `current` is switched. A failure before the switch quarantines that version.
//! After the switch the version soaks ([`crate::soak`]): if it keeps dying, `current` is
//! pointed back at `previous` and the next start (gated like any) runs that.
//!
//! All inputs (signals, control requests, finished checks) arrive on one inbox, so they are handled in
//! order and merged where the state calls for it: a restart during a handoff joins it, an
//! update check during a handoff runs once afterwards, a second SIGTERM is ignored. The
//! status that `aihummer status` reads is published on a watch channel, so a status
//! request never waits for a handoff. Pure decisions live in [`crate::handoff`],
//! [`crate::backoff`] and [`crate::checks`].

use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use semver::Version;

use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use crate::VERSION;
use crate::backoff::RestartDelay;
use crate::checks::{self, Action};
use crate::child::{self, Gateway, Stopped};
use crate::config::{Settings, UpdateMode};
use crate::control::{
    Body, ErrorCode, Event, GatewayInfo, GatewayState, GatewayVersion, HandoffRecord, ProcessInfo,
    Progress, RestartReport, Service, Stage, StatusReport, SupervisorState, UpToDateReport,
    UpdateInfo, VersionReport,
};
use crate::handoff::{Decision, Failure, Gate, Waiter, Waiters};
use crate::install::{self, CheckOutcome, Layout};
use crate::notify;
use crate::probe;
use crate::soak::{Soak, Verdict};
use crate::update::{self, Checked, Updater};

/// How often a starting gateway is probed.
const PROBE_INTERVAL: Duration = Duration::from_millis(100);
/// Time a draining gateway gets beyond `AIHUMMER_DRAIN_TIMEOUT` before it is killed: it
/// enforces that deadline itself and then needs a moment to close its pools and exit, so
/// the supervisor's kill is only the backstop for a stuck process.
const DRAIN_GRACE: Duration = Duration::from_secs(2);

/// Something for the supervisor to act on.
#[derive(Debug)]
pub enum Input {
    /// SIGTERM or SIGINT: drain and exit.
    Stop(&'static str),
    /// SIGHUP: check for an update.
    UpdateCheck,
    /// A client asked for a restart; progress and the result go to the waiter.
    Restart(Waiter),
    /// A client asked for an update (to `version`, if given).
    Update {
        /// Progress and the result go here.
        waiter: Waiter,
        /// The version asked for explicitly.
        version: Option<String>,
    },
    /// A client asked to hand back to the previous version.
    Rollback(Waiter),
    /// Download progress of the update clients wait on.
    UpdateProgress(Progress),
    /// An update check (and a stage, in `apply` mode or for a client) run off the loop
    /// ended.
    Checked {
        /// What the pipeline did.
        run: Box<update::Run>,
        /// Whether `aihummer update` asked for it (its waiters get the result).
        explicit: bool,
    },
}

/// Why a known binary is handed off to.
#[derive(Debug, Clone)]
enum Kind {
    /// An update: a failure quarantines the version.
    Update,
    /// Back to `previous`: the version handed away from is quarantined for `reason`, so
    /// an `apply` mode supervisor does not install it again by itself.
    Rollback {
        /// Why, for the quarantine and the log.
        reason: String,
    },
}

/// A known binary to hand off to, instead of whatever `current` is.
#[derive(Debug, Clone)]
struct Target {
    /// The version the candidate must report.
    version: Version,
    /// Its installed, versioned path.
    binary: PathBuf,
    /// Why.
    kind: Kind,
}

/// The state a state function hands over to the next.
#[expect(
    clippy::large_enum_variant,
    reason = "one value exists at a time and moves once per state change"
)]
enum State {
    Starting,
    Running(Gateway),
    BackingOff(Duration),
    Stopping(Vec<Gateway>),
}

/// How starting a candidate ended.
enum Gated {
    Ready(Gateway),
    Failed(Failure),
    Stop(Option<Gateway>),
}

/// The supervisor: owns the public listener and every gateway child.
pub struct Supervisor {
    settings: Settings,
    public: TcpListener,
    inbox: mpsc::UnboundedReceiver<Input>,
    status: watch::Sender<StatusReport>,
    active_probe: watch::Sender<Option<(u32, SocketAddr)>>,
    backoff: RestartDelay,
    updates: checks::Requests,
    /// The update pipeline; none without a CDN.
    updater: Option<Arc<Updater>>,
    /// The install dir; none without `AIHUMMER_STATE_DIR`.
    layout: Option<Layout>,
    /// For tasks that report back (update checks).
    sender: mpsc::UnboundedSender<Input>,
    start_waiters: Waiters,
    /// Clients of the `aihummer update` under way, while it checks and stages.
    update_waiters: Waiters,
    /// Whether a client's update is checking or staging.
    update_running: bool,
    /// The version switched to by the last update, while its soak window lasts.
    soak: Option<Soak>,
    announced_ready: bool,
}

/// What the rest of the process reads from a running supervisor.
pub struct Views {
    /// The status report, updated on every change.
    pub status: watch::Receiver<StatusReport>,
    /// The active gateway's pid and probe address, for the watchdog.
    pub active_probe: watch::Receiver<Option<(u32, SocketAddr)>>,
}

impl Supervisor {
    /// A supervisor serving `public`, taking its inputs from `inbox`, into which `sender`
    /// sends. `updater` is the update pipeline, if a CDN is configured.
    pub fn new(
        settings: Settings,
        public: TcpListener,
        (sender, inbox): (mpsc::UnboundedSender<Input>, mpsc::UnboundedReceiver<Input>),
        updater: Option<Updater>,
    ) -> (Self, Views) {
        let layout = settings.state_dir.clone().map(Layout::new);
        let mut initial = initial_status(&settings);
        if let Some(layout) = &layout {
            match layout.load_state() {
                Ok(state) => initial.quarantined = install::quarantine_list(&state),
                Err(err) => tracing::warn!(error = %err, "cannot read the install state"),
            }
        }
        let (status, status_rx) = watch::channel(initial);
        let (active_probe, active_rx) = watch::channel(None);
        let supervisor = Self {
            settings,
            public,
            inbox,
            status,
            active_probe,
            backoff: RestartDelay::default(),
            updates: checks::Requests::default(),
            updater: updater.map(Arc::new),
            layout,
            sender,
            start_waiters: Waiters::default(),
            update_waiters: Waiters::default(),
            update_running: false,
            soak: None,
            announced_ready: false,
        };
        let views = Views {
            status: status_rx,
            active_probe: active_rx,
        };
        (supervisor, views)
    }

    /// Runs until a stop signal has drained every child.
    pub async fn run(mut self) {
        self.install_bootstrap().await;
        if self.settings.update_mode != UpdateMode::Off {
            tokio::spawn(update_timer(
                self.sender.clone(),
                self.settings.update_interval,
            ));
        }
        let mut state = State::Starting;
        loop {
            state = match state {
                State::Starting => self.starting().await,
                State::Running(gateway) => self.running(gateway).await,
                State::BackingOff(delay) => self.backing_off(delay).await,
                State::Stopping(children) => return self.stopping(children).await,
            }
        }
    }

    /// Starts a gateway with nothing serving: at launch, or after a crash.
    async fn starting(&mut self) -> State {
        self.set_state(SupervisorState::Starting);
        let requested = Instant::now();
        let mut waiters = std::mem::take(&mut self.start_waiters);
        match self.start_candidate(&mut waiters, None).await {
            Gated::Ready(gateway) => {
                waiters.finish(Body::Restarted(RestartReport {
                    old_pid: None,
                    new_pid: gateway.pid,
                    version: gateway.version.clone(),
                    duration_ms: millis(requested.elapsed()),
                }));
                State::Running(gateway)
            }
            Gated::Failed(failure) => {
                if self.soak_death() {
                    waiters.finish(failure.reply());
                    return State::Starting;
                }
                let delay = self.backoff.after_exit(Duration::ZERO);
                self.record_error(format!(
                    "{failure}; trying again in {}",
                    humantime::format_duration(delay)
                ));
                waiters.finish(failure.reply());
                State::BackingOff(delay)
            }
            Gated::Stop(candidate) => {
                waiters.finish(Failure::Stopping.reply());
                State::Stopping(candidate.into_iter().collect())
            }
        }
    }

    /// One gateway serves. Leaves on its death, a restart request or a stop signal.
    async fn running(&mut self, mut gateway: Gateway) -> State {
        self.set_state(SupervisorState::Running);
        self.status.send_modify(|s| {
            s.active = Some(info(&gateway, GatewayState::Ready));
            s.candidate = None;
        });
        self.active_probe
            .send_replace(Some((gateway.pid, gateway.probe)));
        let line = format!(
            "serving: gateway {} (pid {})",
            gateway.version.as_deref().unwrap_or("?"),
            gateway.pid
        );
        tracing::info!(
            pid = gateway.pid,
            version = gateway.version.as_deref().unwrap_or("?"),
            "gateway serving"
        );
        if self.announced_ready {
            notify::status(&line);
        } else {
            notify::ready(&line);
            self.announced_ready = true;
        }
        if self.updates.take_pending() {
            self.check_for_update();
        }
        loop {
            tokio::select! {
                status = gateway.exited() => return self.crashed(&gateway, status),
                input = next_input(&mut self.inbox) => match input {
                    Input::Stop(signal) => {
                        tracing::info!(signal, "stopping");
                        return State::Stopping(vec![gateway]);
                    }
                    Input::UpdateCheck => self.request_update_check(false),
                    Input::Restart(waiter) => {
                        let mut waiters = Waiters::default();
                        waiters.join(waiter);
                        return self.handing_off(gateway, waiters, None).await;
                    }
                    Input::Update { waiter, version } => self.start_update(waiter, version),
                    Input::Rollback(waiter) => match self.rollback_target("asked by the operator") {
                        Ok(target) => {
                            let mut waiters = Waiters::default();
                            waiters.join(waiter);
                            return self.handing_off(gateway, waiters, Some(target)).await;
                        }
                        Err(message) => {
                            let _ = waiter.send(Body::error(ErrorCode::NoRollback, message));
                        }
                    },
                    Input::UpdateProgress(progress) => self.update_waiters.send(progress),
                    Input::Checked { run, explicit } => {
                        if let Some((target, waiters)) = self.on_checked(*run, explicit, true) {
                            return self.handing_off(gateway, waiters, Some(target)).await;
                        }
                    }
                },
            }
        }
    }

    /// The active gateway died on its own: schedule a new start. The public listener stays
    /// open meanwhile, so new connections queue instead of being refused.
    fn crashed(&mut self, gateway: &Gateway, status: Option<std::process::ExitStatus>) -> State {
        self.status.send_modify(|s| {
            s.active = None;
            s.crash_restarts += 1;
        });
        self.active_probe.send_replace(None);
        if self.soak_death() {
            // `current` is `previous` again: start it now, gated like any start.
            self.backoff = RestartDelay::default();
            return State::Starting;
        }
        let delay = self.backoff.after_exit(gateway.started.elapsed());
        let message = format!(
            "gateway pid {} exited with {} after {}; starting a new one in {}",
            gateway.pid,
            child::describe(status),
            humantime::format_duration(Duration::from_secs(gateway.started.elapsed().as_secs())),
            humantime::format_duration(delay)
        );
        self.record_error(message);
        State::BackingOff(delay)
    }

    /// Counts a death against the version in its soak window. At the last one allowed,
    /// quarantines it and points `current` back at `previous`, and returns true: the next
    /// start runs the previous version.
    fn soak_death(&mut self) -> bool {
        let now = Instant::now();
        let Some(soak) = self.soak.as_mut() else {
            return false;
        };
        if soak.is_over(now) {
            self.soak = None;
            return false;
        }
        let Verdict::RollBack { reason } = soak.on_death(now) else {
            return false;
        };
        let version = soak.version().clone();
        self.soak = None;
        let Some(layout) = &self.layout else {
            return false;
        };
        self.quarantine(&version, &reason);
        let previous = match layout.previous() {
            Ok(Some(previous)) => previous,
            Ok(None) => {
                self.record_error(format!(
                    "{version}: {reason}; no previous version to roll back to"
                ));
                return false;
            }
            Err(err) => {
                self.record_error(format!("{version}: {reason}; cannot roll back: {err}"));
                return false;
            }
        };
        match install::switch(layout, &previous) {
            Ok(_) => {
                self.record_error(format!(
                    "automatic rollback from {version} to {previous}: {reason}"
                ));
                true
            }
            Err(err) => {
                self.record_error(format!(
                    "{version}: {reason}; rolling back to {previous} failed: {err}"
                ));
                false
            }
        }
    }

    /// A handoff from `old` to a new gateway, reported to `waiters`: to `target` when
    /// given (an update), else to whatever is installed (a restart).
    async fn handing_off(
        &mut self,
        mut old: Gateway,
        mut waiters: Waiters,
        target: Option<Target>,
    ) -> State {
        let requested = Instant::now();
        self.set_state(SupervisorState::HandingOff);
        notify::status(&format!("handing off from gateway pid {}", old.pid));
        tracing::info!(old_pid = old.pid, to = ?target.as_ref().map(|t| t.version.to_string()), "handoff requested");
        let new = match self.start_candidate(&mut waiters, target.as_ref()).await {
            Gated::Ready(new) => new,
            Gated::Failed(failure) => {
                if let Some(Target {
                    version,
                    kind: Kind::Update,
                    ..
                }) = &target
                {
                    self.quarantine(version, &failure.to_string());
                }
                let message = format!("{failure}; the old gateway pid {} keeps serving", old.pid);
                self.record_error(message.clone());
                self.record_handoff(false, requested, message.clone());
                waiters.finish(match failure {
                    Failure::Stopping => failure.reply(),
                    _ => Body::error(ErrorCode::HandoffFailed, message),
                });
                return State::Running(old);
            }
            Gated::Stop(candidate) => {
                waiters.finish(Failure::Stopping.reply());
                let mut children = vec![old];
                children.extend(candidate);
                return State::Stopping(children);
            }
        };

        // Switch: the new gateway is ready, and already accepts from the shared queue.
        if let Some(target) = &target {
            self.switch(&target.version);
            self.soak = match target.kind {
                Kind::Update => Some(Soak::new(target.version.clone(), Instant::now())),
                Kind::Rollback { .. } => None,
            };
            if let (Kind::Rollback { reason }, Some(from)) = (&target.kind, &old.version)
                && let Ok(from) = Version::parse(from)
            {
                self.quarantine(
                    &from,
                    &format!("rolled back to {}: {reason}", target.version),
                );
            }
        }
        self.status.send_modify(|s| {
            s.active = Some(info(&new, GatewayState::Ready));
            s.candidate = None;
            s.draining = Some(info(&old, GatewayState::Draining));
        });
        self.active_probe.send_replace(Some((new.pid, new.probe)));
        waiters.progress(
            Stage::Switched,
            Some(new.pid),
            format!(
                "gateway pid {} (version {}) is ready and serving",
                new.pid,
                new.version.as_deref().unwrap_or("?")
            ),
        );

        // Drain the old one. Inputs keep flowing: a stop waits for the drain to end.
        waiters.progress(
            Stage::Draining,
            Some(old.pid),
            format!("draining the old gateway pid {}", old.pid),
        );
        old.terminate();
        let drain_end = Instant::now() + self.drain_deadline();
        let mut stop = None;
        let stopped = loop {
            tokio::select! {
                exited = tokio::time::timeout_at(drain_end, old.exited()) => break match exited {
                    Ok(status) => Stopped { status, killed: false },
                    Err(_) => old.wait_or_kill(Duration::ZERO).await,
                },
                input = next_input(&mut self.inbox) => match input {
                    Input::Stop(signal) => {
                        tracing::info!(signal, "stop requested; it follows the drain under way");
                        stop = Some(signal);
                    }
                    Input::UpdateCheck => self.request_update_check(true),
                    Input::Restart(waiter) => waiters.join(waiter),
                    other => self.busy_input(other),
                },
            }
        };
        let elapsed = requested.elapsed();
        let message = format!(
            "handed off from gateway pid {} to pid {} in {}ms; the old one {} with {}",
            old.pid,
            new.pid,
            millis(elapsed),
            if stopped.killed {
                "was killed"
            } else {
                "exited"
            },
            child::describe(stopped.status)
        );
        tracing::info!(%message, "handoff done");
        waiters.progress(Stage::Drained, Some(old.pid), message.clone());
        self.status.send_modify(|s| s.draining = None);
        self.record_handoff(true, requested, message);
        waiters.finish(Body::Restarted(RestartReport {
            old_pid: Some(old.pid),
            new_pid: new.pid,
            version: new.version.clone(),
            duration_ms: millis(elapsed),
        }));
        match stop {
            Some(_) => State::Stopping(vec![new]),
            None => State::Running(new),
        }
    }

    /// Waits out a crash-restart delay. A restart request cuts it short.
    async fn backing_off(&mut self, delay: Duration) -> State {
        self.set_state(SupervisorState::BackingOff);
        notify::status(&format!(
            "gateway down; starting a new one in {}",
            humantime::format_duration(delay)
        ));
        let until = Instant::now() + delay;
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(until) => return State::Starting,
                input = next_input(&mut self.inbox) => match input {
                    Input::Stop(signal) => {
                        tracing::info!(signal, "stopping");
                        return State::Stopping(Vec::new());
                    }
                    Input::UpdateCheck => self.request_update_check(true),
                    Input::Restart(waiter) => {
                        self.start_waiters.join(waiter);
                        return State::Starting;
                    }
                    other => self.busy_input(other),
                },
            }
        }
    }

    /// Drains every child (SIGTERM, then SIGKILL at the deadline) and reaps them all.
    async fn stopping(&mut self, mut children: Vec<Gateway>) {
        self.set_state(SupervisorState::Stopping);
        notify::stopping();
        self.active_probe.send_replace(None);
        for child in &mut children {
            child.terminate();
        }
        let end = Instant::now() + self.drain_deadline();
        for child in &mut children {
            let stopped = match tokio::time::timeout_at(end, child.exited()).await {
                Ok(status) => Stopped {
                    status,
                    killed: false,
                },
                Err(_) => child.wait_or_kill(Duration::ZERO).await,
            };
            tracing::info!(
                pid = child.pid,
                status = %child::describe(stopped.status),
                killed = stopped.killed,
                "gateway stopped"
            );
        }
        self.status.send_modify(|s| {
            s.active = None;
            s.candidate = None;
            s.draining = None;
        });
        self.start_waiters.finish(Failure::Stopping.reply());
    }

    /// Spawns a gateway and gates it on its readiness. A failed candidate is stopped (and
    /// reaped) before this returns, so a failure leaves nothing behind.
    async fn start_candidate(&mut self, waiters: &mut Waiters, target: Option<&Target>) -> Gated {
        let binary = match target {
            Some(target) => target.binary.clone(),
            None => match self.settings.gateway_binary() {
                Ok(binary) => binary,
                Err(err) => return Gated::Failed(Failure::Spawn(err.to_string())),
            },
        };
        let mut candidate = match Gateway::spawn(&binary, &self.public) {
            Ok(candidate) => candidate,
            Err(err) => return Gated::Failed(Failure::Spawn(err.to_string())),
        };
        let pid = candidate.pid;
        tracing::info!(pid, binary = %binary.display(), probe = %candidate.probe, "gateway started");
        waiters.progress(
            Stage::CandidateStarted,
            Some(pid),
            format!("started {} as pid {pid}", binary.display()),
        );
        self.status
            .send_modify(|s| s.candidate = Some(info(&candidate, GatewayState::Starting)));

        let mut gate = Gate::new(pid, Instant::now(), self.settings.ready_timeout);
        if let Some(target) = target {
            gate = gate.expecting_version(target.version.to_string());
        }
        let mut tick = tokio::time::interval(PROBE_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let outcome = loop {
            let decision = tokio::select! {
                status = candidate.exited() => gate.on_exit(child::describe(status)),
                _ = tick.tick() => {
                    let verdict = probe::readiness(candidate.probe, pid).await;
                    gate.on_probe(verdict, Instant::now())
                }
                input = next_input(&mut self.inbox) => {
                    match input {
                        Input::Stop(signal) => {
                            tracing::info!(signal, pid, "stopping while a gateway starts");
                            self.status.send_modify(|s| s.candidate = None);
                            return Gated::Stop(Some(candidate));
                        }
                        Input::UpdateCheck => self.request_update_check(true),
                        Input::Restart(waiter) => waiters.join(waiter),
                        other => self.busy_input(other),
                    }
                    Decision::Wait
                }
            };
            match decision {
                Decision::Wait => {}
                Decision::Ready {
                    version,
                    health_only,
                } => break Ok((version, health_only)),
                Decision::Fail(failure) => break Err(failure),
            }
        };
        match outcome {
            Ok((version, health_only)) => {
                tracing::info!(pid, %version, health_only, "gateway ready");
                candidate.version = Some(version);
                candidate.health_only = health_only;
                Gated::Ready(candidate)
            }
            Err(failure) => {
                tracing::error!(pid, reason = %failure, "gateway did not become ready; stopping it");
                waiters.progress(Stage::Aborting, Some(pid), failure.to_string());
                // SIGTERM, not SIGKILL: it may already hold connections from the shared
                // queue, and a drain answers them instead of resetting them.
                candidate.stop(self.drain_deadline()).await;
                self.status.send_modify(|s| s.candidate = None);
                Gated::Failed(failure)
            }
        }
    }

    fn drain_deadline(&self) -> Duration {
        self.settings.drain_timeout + DRAIN_GRACE
    }

    fn set_state(&self, state: SupervisorState) {
        self.status.send_modify(|s| s.state = state);
    }

    fn record_error(&self, message: String) {
        tracing::error!(%message, "gateway failure");
        notify::status(&message);
        self.status
            .send_modify(|s| s.last_error = Some(Event { at: now(), message }));
    }

    fn record_handoff(&self, ok: bool, requested: Instant, message: String) {
        self.status.send_modify(|s| {
            s.last_handoff = Some(HandoffRecord {
                at: now(),
                ok,
                duration_ms: millis(requested.elapsed()),
                message,
            })
        });
    }

    /// A check asked for by SIGHUP: now when idle, once after the handoff when `busy`.
    fn request_update_check(&mut self, busy: bool) {
        match self.updates.request(busy) {
            Action::CheckNow => self.check_for_update(),
            Action::Deferred => {
                tracing::info!("update check requested; it runs once the current handoff ends")
            }
            Action::Merged => tracing::info!("update check already pending; request merged"),
        }
    }

    /// Starts a check in its own task; its outcome comes back as [`Input::Checked`].
    fn check_for_update(&mut self) {
        let Some(updater) = self.updater.clone() else {
            self.updates.finished();
            self.record_check(update::UpdaterError::NoSource.to_string(), None);
            return;
        };
        let running = match self.running_version() {
            Ok(version) => version,
            Err(reason) => {
                self.updates.finished();
                self.record_check(format!("check failed: {reason}"), None);
                return;
            }
        };
        let apply = self.settings.update_mode == UpdateMode::Apply;
        let sender = self.sender.clone();
        tracing::info!(url = %updater.manifest_url(), %running, apply, "checking for an update");
        tokio::spawn(async move {
            let run = updater.run(&running, None, apply, |_, _| {}).await;
            let _ = sender.send(Input::Checked {
                run: Box::new(run),
                explicit: false,
            });
        });
    }

    /// The serving gateway's version.
    fn running_version(&self) -> Result<Version, String> {
        let status = self.status.borrow();
        let reported = status
            .active
            .as_ref()
            .and_then(|a| a.version.as_deref())
            .ok_or("no gateway serves, so the running version is unknown")?;
        Version::parse(reported).map_err(|err| {
            format!("the gateway reports {reported:?}, not a SemVer version ({err})")
        })
    }

    /// `aihummer update`: checks and stages in a task (progress comes back as
    /// [`Input::UpdateProgress`], the outcome as [`Input::Checked`]); a second request
    /// joins the one under way.
    fn start_update(&mut self, waiter: Waiter, version: Option<String>) {
        if self.update_running {
            self.update_waiters.join(waiter);
            return;
        }
        let fail = |message: String| {
            let _ = waiter.send(Body::error(ErrorCode::UpdateFailed, message));
        };
        let requested = match version.as_deref().map(Version::parse).transpose() {
            Ok(requested) => requested,
            Err(err) => {
                return fail(format!(
                    "--version {version:?} is not a SemVer version: {err}"
                ));
            }
        };
        let Some(updater) = self.updater.clone() else {
            return fail(update::UpdaterError::NoSource.to_string());
        };
        let running = match self.running_version() {
            Ok(version) => version,
            Err(reason) => return fail(reason),
        };
        self.update_waiters.join(waiter);
        self.update_running = true;
        let sender = self.sender.clone();
        tokio::spawn(async move {
            let progress = |stage, message: String, done, total| {
                let _ = sender.send(Input::UpdateProgress(Progress {
                    stage,
                    message,
                    pid: None,
                    done,
                    total,
                }));
            };
            progress(
                Stage::Checking,
                format!("checking {}", updater.manifest_url()),
                None,
                None,
            );
            let mut reported = 0;
            let run = updater
                .run(&running, requested.as_ref(), true, |done, total| {
                    // One event per MiB (and the last): enough for a bar, few enough for
                    // the inbox.
                    if done == total || done >= reported + (1 << 20) {
                        reported = done;
                        progress(
                            Stage::Downloading,
                            format!("downloaded {done} of {total} bytes"),
                            Some(done),
                            Some(total),
                        );
                    }
                })
                .await;
            let _ = sender.send(Input::Checked {
                run: Box::new(run),
                explicit: true,
            });
        });
    }

    /// The handoff back to `previous`, or why there is none.
    fn rollback_target(&self, reason: &str) -> Result<Target, String> {
        let layout = self.layout.as_ref().ok_or(
            "rolling back needs AIHUMMER_STATE_DIR (the install dir holding the previous version)",
        )?;
        let previous = layout
            .previous()
            .map_err(|err| err.to_string())?
            .ok_or("no previous version is installed to roll back to")?;
        Ok(Target {
            binary: layout.binary(&previous),
            version: previous,
            kind: Kind::Rollback {
                reason: reason.to_string(),
            },
        })
    }

    /// Inputs that mean the same in every state where a start or a handoff is under way:
    /// checks wait for it, updates and rollbacks are told to try again (or join an update
    /// already checking), progress flows, finished checks are recorded.
    fn busy_input(&mut self, input: Input) {
        match input {
            Input::UpdateCheck => self.request_update_check(true),
            Input::Update { waiter, .. } if self.update_running => self.update_waiters.join(waiter),
            Input::Update { waiter, .. } | Input::Rollback(waiter) => {
                let _ = waiter.send(Body::error(
                    ErrorCode::Busy,
                    "a gateway start or handoff is under way; try again once it ends",
                ));
            }
            Input::UpdateProgress(progress) => self.update_waiters.send(progress),
            Input::Checked { run, explicit } => {
                self.on_checked(*run, explicit, false);
            }
            // Each state handles these itself before asking here.
            Input::Stop(_) | Input::Restart(_) => {}
        }
    }

    /// A check ended: records it, quarantines a version whose stage failed, and returns
    /// the handoff to run when a version was staged and `can_apply` (the supervisor is
    /// idle). A staged version that arrives during a handoff is checked again afterwards
    /// (staging it again finds it installed and only smoke tests it).
    fn on_checked(
        &mut self,
        run: update::Run,
        explicit: bool,
        can_apply: bool,
    ) -> Option<(Target, Waiters)> {
        let mut waiters = if explicit {
            self.update_running = false;
            std::mem::take(&mut self.update_waiters)
        } else {
            self.updates.finished();
            Waiters::default()
        };
        let (line, available, outcome) = match &run.checked {
            Ok(checked @ Checked::UpToDate(version)) => {
                (format!("up to date: {version}"), None, checked.outcome())
            }
            Ok(checked @ Checked::Available(offer)) => (
                format!("update available: {}", offer.version),
                Some(offer.version.to_string()),
                checked.outcome(),
            ),
            Ok(checked @ Checked::Refused(refusal)) => {
                (format!("refused: {refusal}"), None, checked.outcome())
            }
            Err(err) => (
                format!("check failed: {err}"),
                None,
                CheckOutcome::Failed {
                    reason: err.to_string(),
                },
            ),
        };
        if let Some(layout) = &self.layout
            && let Err(err) = install::record_check(layout, outcome)
        {
            tracing::warn!(error = %err, "cannot record the update check in the state file");
        }
        self.record_check(line, available);
        let failed = |message: String| Body::error(ErrorCode::UpdateFailed, message);
        match run.staged {
            None => {
                waiters.finish(match run.checked {
                    Ok(Checked::UpToDate(version)) => Body::UpToDate(UpToDateReport {
                        version: version.to_string(),
                    }),
                    Ok(Checked::Available(offer)) => {
                        failed(format!("{} is available but was not staged", offer.version))
                    }
                    Ok(Checked::Refused(refusal)) => failed(refusal.to_string()),
                    Err(err) => failed(err.to_string()),
                });
                None
            }
            Some((version, Err(err))) => {
                let message =
                    format!("staging {version} failed: {err}; the running gateway keeps serving");
                if err.blames_release() {
                    self.quarantine(&version, &err.to_string());
                }
                self.record_error(message.clone());
                waiters.finish(failed(message));
                None
            }
            Some((version, Ok(binary))) if can_apply => {
                tracing::info!(%version, binary = %binary.display(), "update staged; handing off");
                waiters.progress(
                    Stage::Staged,
                    None,
                    format!("{version} verified and installed at {}", binary.display()),
                );
                Some((
                    Target {
                        version,
                        binary,
                        kind: Kind::Update,
                    },
                    waiters,
                ))
            }
            Some((version, Ok(_))) => {
                tracing::info!(%version, "update staged during a handoff; checking again after it");
                if explicit {
                    waiters.finish(Body::error(
                        ErrorCode::Busy,
                        format!(
                            "{version} is staged, but a handoff ran meanwhile; run the update again"
                        ),
                    ));
                } else {
                    self.updates.request(true);
                }
                None
            }
        }
    }

    /// Shows a check's outcome (and a newer version found, if any) in status and the log.
    fn record_check(&self, line: String, available: Option<String>) {
        tracing::info!(result = %line, "update check");
        self.status.send_modify(|s| {
            s.update.last_check = Some(now());
            s.update.last_result = Some(line);
            s.update.available = available;
        });
    }

    /// Quarantines `version` (persisted when an install dir exists) and shows it in status.
    fn quarantine(&self, version: &Version, reason: &str) {
        tracing::error!(%version, %reason, "version quarantined");
        let listed = match &self.layout {
            Some(layout) => match install::quarantine(layout, version, reason) {
                Ok(state) => install::quarantine_list(&state),
                Err(err) => {
                    tracing::error!(error = %err, "cannot persist the quarantine");
                    vec![format!("{version}: {reason}")]
                }
            },
            None => vec![format!("{version}: {reason}")],
        };
        let version = version.to_string();
        self.status.send_modify(|s| {
            s.quarantined = listed;
            // A quarantined version is no longer on offer until asked for by name.
            if s.update.available.as_deref() == Some(version.as_str()) {
                s.update.available = None;
            }
        });
    }

    /// Points `current` at `version` after its gateway passed the gate. A failure here
    /// leaves the new gateway serving; only a later restart would run the old `current`.
    fn switch(&self, version: &Version) {
        let Some(layout) = &self.layout else { return };
        match install::switch(layout, version) {
            Ok(state) => {
                tracing::info!(%version, previous = ?state.previous.map(|v| v.to_string()), "current switched");
                self.status.send_modify(|s| s.update.available = None);
            }
            Err(err) => self.record_error(format!(
                "gateway {version} serves, but switching current to it failed: {err}"
            )),
        }
    }

    /// On a first start with an install dir but nothing installed, installs the gateway
    /// about to run as `versions/<its version>/` and `current`, so a rollback target exists
    /// after the first update. A failure is logged; the gateway still runs from where it is.
    async fn install_bootstrap(&mut self) {
        let Some(layout) = &self.layout else { return };
        if matches!(layout.current(), Ok(Some(_))) {
            return;
        }
        let binary = match self.settings.gateway_binary() {
            Ok(binary) => binary,
            Err(err) => {
                tracing::warn!(error = %err, "no gateway to install into the install dir");
                return;
            }
        };
        match install::install_bootstrap(layout, &binary, install::SMOKE_TIMEOUT).await {
            Ok(version) => {
                tracing::info!(%version, from = %binary.display(), "installed the bootstrap gateway")
            }
            Err(err) => tracing::warn!(error = %err, "cannot install the bootstrap gateway"),
        }
    }
}

/// Asks for a check at [`checks::FIRST_CHECK`], then every `interval`, each with jitter.
async fn update_timer(inbox: mpsc::UnboundedSender<Input>, interval: Duration) {
    let mut delay = interval.min(checks::FIRST_CHECK);
    loop {
        tokio::time::sleep(checks::jittered(delay, checks::seed())).await;
        if inbox.send(Input::UpdateCheck).is_err() {
            return;
        }
        delay = interval;
    }
}

/// The next input. The inbox cannot close while the supervisor runs (the control server
/// and the signal task hold senders); if it ever did, nothing more can arrive.
async fn next_input(inbox: &mut mpsc::UnboundedReceiver<Input>) -> Input {
    match inbox.recv().await {
        Some(input) => input,
        None => std::future::pending().await,
    }
}

/// Turns SIGTERM, SIGINT and SIGHUP into inputs. The handlers stay installed for the
/// life of the process, so a repeated signal never falls back to the default action.
pub fn forward_signals(inbox: mpsc::UnboundedSender<Input>) -> std::io::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    tokio::spawn(async move {
        loop {
            let input = tokio::select! {
                _ = term.recv() => Input::Stop("SIGTERM"),
                _ = int.recv() => Input::Stop("SIGINT"),
                _ = hup.recv() => Input::UpdateCheck,
            };
            if inbox.send(input).is_err() {
                return;
            }
        }
    });
    Ok(())
}

/// What the control server asks of the supervisor, answered from the published status
/// and the inbox.
pub struct Handle {
    status: watch::Receiver<StatusReport>,
    inbox: mpsc::UnboundedSender<Input>,
}

impl Handle {
    /// A handle reading `status` and sending restart requests to `inbox`.
    pub fn new(status: watch::Receiver<StatusReport>, inbox: mpsc::UnboundedSender<Input>) -> Self {
        Self { status, inbox }
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
        let (waiter, events) = mpsc::unbounded_channel();
        // If the supervisor is gone the waiter drops with the input, and the connection
        // reports that the supervisor stopped.
        let _ = self.inbox.send(Input::Restart(waiter));
        events
    }

    fn update(&self, version: Option<String>) -> mpsc::UnboundedReceiver<Body> {
        let (waiter, events) = mpsc::unbounded_channel();
        let _ = self.inbox.send(Input::Update { waiter, version });
        events
    }

    fn rollback(&self) -> mpsc::UnboundedReceiver<Body> {
        let (waiter, events) = mpsc::unbounded_channel();
        let _ = self.inbox.send(Input::Rollback(waiter));
        events
    }
}

/// The status before the first gateway starts.
pub fn initial_status(settings: &Settings) -> StatusReport {
    StatusReport {
        supervisor: ProcessInfo {
            version: VERSION.to_string(),
            pid: std::process::id(),
            started_at: now(),
        },
        state: SupervisorState::Starting,
        active: None,
        candidate: None,
        draining: None,
        update: UpdateInfo {
            mode: settings.update_mode.as_str().into(),
            channel: settings.update_channel.as_str().into(),
            last_check: None,
            last_result: None,
            available: None,
        },
        quarantined: Vec::new(),
        last_error: None,
        last_handoff: None,
        crash_restarts: 0,
    }
}

fn info(gateway: &Gateway, state: GatewayState) -> GatewayInfo {
    GatewayInfo {
        pid: gateway.pid,
        version: gateway.version.clone(),
        state,
        health_only: gateway.health_only,
        binary: gateway.binary.display().to_string(),
        started_at: humantime::format_rfc3339_seconds(gateway.started_at).to_string(),
    }
}

fn now() -> String {
    humantime::format_rfc3339_seconds(SystemTime::now()).to_string()
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}
