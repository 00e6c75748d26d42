//! The supervisor's state machine. It does no I/O: it is fed [`Input`]s and the time,
//! and asks for [`Effect`]s that [`super::driver`] carries out (and whose results come
//! back as inputs). One function per state handles a request in that state.
//!
//! ```text
//!            ┌─────────── start failed ────────────────┐
//!            ▼                                         │
//! start ─► Starting ── ready ──► Running ── restart ──► HandingOff ── ready: switch ──► Draining ─┐
//!            ▲                   │   ▲                   │                                       │
//!            │        child died │   └── candidate failed: the old child keeps serving           │
//!            │                   ▼   └──────────────────────── the old child is gone ◄───────────┘
//!            └── delay over ── BackingOff   (restart during the delay: start at once)
//!            └── switched ──── RollingBack  (a soaking version died too often: back to previous)
//!
//! any state ── SIGTERM/SIGINT ──► Stopping (drain every child under one deadline) ──► exit
//! ```
//!
//! A failed candidate is stopped (SIGTERM, SIGKILL at the drain deadline) before anything
//! else starts, so at most two gateways ever run; requests arriving meanwhile wait and are
//! handled once it is gone, except a stop, which is never delayed. Update checks, their
//! merging and the soak window live in [`super::updates`].

use std::collections::{BTreeMap, VecDeque};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use semver::Version;

use super::backoff::RestartDelay;
use super::checks::Requests;
use super::clients::Waiters;
use super::events::{
    Binary, ChildId, ClientId, Effect, FailureKind, Input, Notify, Outcome, Reply, Stage,
};
use super::gate::{Decision, Failure, Gate};
use super::soak::Soak;
use super::status::{self, Handoff, Phase, Role, Status};
use crate::process::probe::Verdict;

/// How often a starting gateway is probed.
pub const PROBE_INTERVAL: Duration = Duration::from_millis(100);
/// Time a draining gateway gets beyond `AIHUMMER_DRAIN_TIMEOUT` before it is killed: it
/// enforces that deadline itself and then needs a moment to close its pools and exit, so
/// the supervisor's kill is only the backstop for a stuck process.
pub const DRAIN_GRACE: Duration = Duration::from_secs(2);

/// What the machine is told once, at start.
#[derive(Debug, Clone)]
pub struct Config {
    /// `AIHUMMER_READY_TIMEOUT`.
    pub ready_timeout: Duration,
    /// `AIHUMMER_DRAIN_TIMEOUT`.
    pub drain_timeout: Duration,
    /// Whether `apply` mode stages and installs what checks find.
    pub apply: bool,
    /// Whether updates can be checked at all, or why not.
    pub update_source: Result<(), String>,
    /// The install dir's rollback target; `None` without an install dir.
    pub install: Option<Option<Version>>,
}

/// `now + duration`, or a time beyond any deadline that matters when that overflows, so
/// that no setting can make the supervisor panic.
pub fn after(now: Instant, duration: Duration) -> Instant {
    const CENTURY: Duration = Duration::from_secs(100 * 365 * 24 * 3600);
    now.checked_add(duration.min(CENTURY))
        .or_else(|| now.checked_add(Duration::from_secs(24 * 3600)))
        .unwrap_or(now)
}

/// One gateway child.
#[derive(Debug, Clone)]
pub(super) struct Child {
    pub(super) pid: Option<u32>,
    pub(super) binary: PathBuf,
    pub(super) started: Instant,
    pub(super) version: Option<String>,
    pub(super) health_only: bool,
    pub(super) exit: Option<String>,
    pub(super) terminated: bool,
    pub(super) killed: bool,
}

/// Why a known binary is handed off to.
#[derive(Debug, Clone)]
pub(super) enum Kind {
    /// An update: a failure quarantines the version.
    Update,
    /// Back to `previous`: the version handed away from is quarantined for `reason`.
    Rollback { reason: String },
}

/// A known version to hand off to, instead of whatever is installed.
#[derive(Debug, Clone)]
pub(super) struct Target {
    pub(super) version: Version,
    pub(super) binary: Binary,
    pub(super) kind: Kind,
}

/// A candidate being started and gated.
#[derive(Debug)]
pub(super) struct Gating {
    candidate: ChildId,
    gate: Option<Gate>,
    waiters: Waiters,
    target: Option<Target>,
    requested: Instant,
    /// When to probe next; `None` while a probe is under way.
    next_probe: Option<Instant>,
    probe_started: Instant,
    /// The candidate failed and is being stopped; the kill comes at the instant given.
    failed: Option<(Failure, Instant)>,
}

/// The old gateway draining after a switch.
#[derive(Debug)]
pub(super) struct Drain {
    old: ChildId,
    new: ChildId,
    deadline: Instant,
    waiters: Waiters,
    requested: Instant,
}

/// How the gateway that rolled a soaking version back died.
#[derive(Debug, Clone)]
pub(super) enum Death {
    /// It crashed while serving, after running for a while.
    Crash { message: String, ran_for: Duration },
    /// It failed its start.
    StartFailed(Failure),
}

/// A soak rollback waiting for its switch to be carried out.
#[derive(Debug)]
pub(super) struct RollingBack {
    pub(super) death: Death,
    pub(super) from: Version,
    pub(super) to: Version,
    pub(super) reason: String,
}

/// The machine's states.
#[derive(Debug)]
pub(super) enum State {
    Starting(Gating),
    Running(ChildId),
    HandingOff {
        old: ChildId,
        gating: Gating,
    },
    Draining(Drain),
    RollingBack(RollingBack),
    BackingOff(Instant),
    Stopping {
        deadline: Instant,
        handoff: Option<Drain>,
    },
    Stopped,
}

/// The supervisor's state machine.
#[derive(Debug)]
pub struct Machine {
    pub(super) config: Config,
    pub(super) state: State,
    pub(super) children: BTreeMap<ChildId, Child>,
    next_child: u64,
    pub(super) effects: Vec<Effect>,
    pub(super) status: Status,
    pub(super) restart_delay: RestartDelay,
    pub(super) checks: Requests,
    pub(super) start_waiters: Waiters,
    pub(super) update_waiters: Waiters,
    pub(super) update_running: bool,
    pub(super) soak: Option<Soak>,
    announced_ready: bool,
    deferred: VecDeque<Input>,
}

impl Machine {
    /// A machine that starts the first gateway at `now`. `quarantined` is the install's
    /// quarantine as `status` lists it.
    pub fn new(config: Config, quarantined: Vec<String>, now: Instant) -> Self {
        let mut machine = Machine {
            config,
            state: State::Stopped,
            children: BTreeMap::new(),
            next_child: 0,
            effects: Vec::new(),
            status: Status::new(quarantined),
            restart_delay: RestartDelay::default(),
            checks: Requests::default(),
            start_waiters: Waiters::default(),
            update_waiters: Waiters::default(),
            update_running: false,
            soak: None,
            announced_ready: false,
            deferred: VecDeque::new(),
        };
        machine.enter_starting(now);
        machine
    }

    /// The effects asked for since the last call, in order.
    pub fn take_effects(&mut self) -> Vec<Effect> {
        std::mem::take(&mut self.effects)
    }

    /// The status `aihummer status` shows.
    pub fn status(&self) -> &Status {
        &self.status
    }

    /// Whether the machine has exited.
    pub fn is_stopped(&self) -> bool {
        matches!(self.state, State::Stopped)
    }

    /// The next instant [`Machine::handle_timeout`] has something to do at, if any.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let unkilled = |child: &ChildId| self.children.get(child).is_some_and(|c| !c.killed);
        match &self.state {
            State::Starting(gating) | State::HandingOff { gating, .. } => match &gating.failed {
                Some((_, kill_at)) => unkilled(&gating.candidate).then_some(*kill_at),
                None => {
                    let deadline = gating.gate.as_ref().map(Gate::deadline);
                    [deadline, gating.next_probe].into_iter().flatten().min()
                }
            },
            State::Draining(drain) => unkilled(&drain.old).then_some(drain.deadline),
            State::BackingOff(until) => Some(*until),
            State::Stopping { deadline, .. } => {
                let live = self
                    .children
                    .values()
                    .any(|c| c.exit.is_none() && !c.killed);
                live.then_some(*deadline)
            }
            State::Running(_) | State::RollingBack(_) | State::Stopped => None,
        }
    }

    /// Time passed: probes, deadlines and delays that are due at `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        match std::mem::replace(&mut self.state, State::Stopped) {
            State::Starting(gating) => self.gating_timeout(now, None, gating),
            State::HandingOff { old, gating } => self.gating_timeout(now, Some(old), gating),
            State::Draining(drain) => {
                if now >= drain.deadline {
                    self.kill(drain.old);
                }
                self.state = State::Draining(drain);
            }
            State::BackingOff(until) if now >= until => self.enter_starting(now),
            State::Stopping { deadline, handoff } => {
                if now >= deadline {
                    let live: Vec<ChildId> = self.live_children().collect();
                    for child in live {
                        self.kill(child);
                    }
                }
                self.state = State::Stopping { deadline, handoff };
            }
            other => self.state = other,
        }
        self.replay_deferred(now);
    }

    /// Handles one input at `now`.
    pub fn handle(&mut self, now: Instant, input: Input) {
        if self.is_aborting() && defers(&input) {
            self.deferred.push_back(input);
            return;
        }
        self.dispatch(now, input);
        self.replay_deferred(now);
    }

    fn dispatch(&mut self, now: Instant, input: Input) {
        match input {
            Input::UpdateProgress(step) => self.update_waiters.send(step, &mut self.effects),
            Input::Spawned { child, pid, binary } => self.on_spawned(now, child, pid, binary),
            Input::SpawnFailed { child, reason } => self.on_spawn_failed(now, child, reason),
            Input::Probed { child, verdict } => self.on_probed(now, child, verdict),
            Input::Exited { child, status } => self.on_exited(now, child, status),
            Input::Switched { version, result } => self.on_switched(now, version, result),
            Input::Quarantined {
                version,
                reason,
                result,
            } => self.on_quarantined(version, reason, result),
            request => match std::mem::replace(&mut self.state, State::Stopped) {
                State::Running(active) => self.running(now, active, request),
                State::Starting(gating) => self.gating(now, None, gating, request),
                State::HandingOff { old, gating } => self.gating(now, Some(old), gating, request),
                State::Draining(drain) => self.draining(now, drain, request),
                State::RollingBack(rolling) => self.rolling_back(now, rolling, request),
                State::BackingOff(until) => self.backing_off(now, until, request),
                state @ (State::Stopping { .. } | State::Stopped) => {
                    self.state = state;
                    self.stopping(now, request);
                }
            },
        }
    }

    fn is_aborting(&self) -> bool {
        matches!(&self.state, State::Starting(g) | State::HandingOff { gating: g, .. } if g.failed.is_some())
    }

    /// Requests that waited for a failed candidate to be gone, handled in order.
    fn replay_deferred(&mut self, now: Instant) {
        while !self.is_aborting() {
            let Some(input) = self.deferred.pop_front() else {
                return;
            };
            self.dispatch(now, input);
        }
    }

    // ── One function per state: a request (signal, client, finished check) in it. ──

    /// One gateway serves.
    fn running(&mut self, now: Instant, active: ChildId, input: Input) {
        self.state = State::Running(active);
        match input {
            Input::Stop(signal) => {
                tracing::info!(signal, "stopping");
                self.enter_stopping(now, None);
            }
            Input::CheckRequested => self.request_check(false),
            Input::Restart(client) => self.begin_handoff(now, active, joined(client), None),
            Input::Update { client, version } => self.start_update(client, version),
            Input::Rollback(client) => match self.rollback_target("asked by the operator") {
                Ok(target) => self.begin_handoff(now, active, joined(client), Some(target)),
                Err(message) => {
                    self.reply(client, Outcome::failed(FailureKind::NoRollback, message))
                }
            },
            Input::Checked(report) => {
                if let Some((target, waiters)) = self.on_checked(now, report, true) {
                    self.begin_handoff(now, active, waiters, Some(target));
                }
            }
            _ => {}
        }
    }

    /// A candidate starts, with (`old`) or without a gateway serving.
    fn gating(&mut self, now: Instant, old: Option<ChildId>, mut gating: Gating, input: Input) {
        match input {
            Input::Stop(signal) => {
                tracing::info!(signal, "stopping while a gateway starts");
                gating
                    .waiters
                    .finish(Failure::Stopping.outcome(), &mut self.effects);
                self.status.candidate = None;
                self.enter_stopping(now, None);
                return;
            }
            Input::CheckRequested => self.request_check(true),
            Input::Restart(client) => gating.waiters.join(client, &mut self.effects),
            other => self.busy(now, other),
        }
        self.state = gating_state(old, gating);
    }

    /// The old gateway drains after a switch.
    fn draining(&mut self, now: Instant, mut drain: Drain, input: Input) {
        match input {
            Input::Stop(signal) => {
                tracing::info!(
                    signal,
                    "stopping; the drain under way shares the stop's deadline"
                );
                self.enter_stopping(now, Some(drain));
                return;
            }
            Input::CheckRequested => self.request_check(true),
            Input::Restart(client) => drain.waiters.join(client, &mut self.effects),
            other => self.busy(now, other),
        }
        self.state = State::Draining(drain);
    }

    /// A soak rollback waits for `current` to point back at `previous`.
    fn rolling_back(&mut self, now: Instant, rolling: RollingBack, input: Input) {
        self.state = State::RollingBack(rolling);
        match input {
            Input::Stop(signal) => {
                tracing::info!(signal, "stopping");
                self.enter_stopping(now, None);
            }
            Input::CheckRequested => self.request_check(true),
            Input::Restart(client) => self.start_waiters.join(client, &mut self.effects),
            other => self.busy(now, other),
        }
    }

    /// No gateway runs; one starts at `until`. A restart cuts the delay short.
    fn backing_off(&mut self, now: Instant, until: Instant, input: Input) {
        self.state = State::BackingOff(until);
        match input {
            Input::Stop(signal) => {
                tracing::info!(signal, "stopping");
                self.enter_stopping(now, None);
            }
            Input::CheckRequested => self.request_check(true),
            Input::Restart(client) => {
                self.start_waiters.join(client, &mut self.effects);
                self.enter_starting(now);
            }
            other => self.busy(now, other),
        }
    }

    /// Stopping, or stopped: nothing new starts, and clients are told so.
    fn stopping(&mut self, now: Instant, input: Input) {
        let refuse = || Outcome::failed(FailureKind::Stopping, "the supervisor is stopping");
        match input {
            Input::Restart(client) | Input::Update { client, .. } | Input::Rollback(client) => {
                self.reply(client, refuse());
            }
            Input::Checked(report) => {
                self.on_checked(now, report, false);
            }
            _ => {}
        }
    }

    /// Requests that mean the same wherever a start or a handoff is under way: updates
    /// and rollbacks are told to try again (or join an update already checking), finished
    /// checks are recorded.
    fn busy(&mut self, now: Instant, input: Input) {
        match input {
            Input::Update { client, .. } if self.update_running => {
                self.update_waiters.join(client, &mut self.effects);
            }
            Input::Update { client, .. } | Input::Rollback(client) => self.reply(
                client,
                Outcome::failed(
                    FailureKind::Busy,
                    "a gateway start or handoff is under way; try again once it ends",
                ),
            ),
            Input::Checked(report) => {
                self.on_checked(now, report, false);
            }
            _ => {}
        }
    }

    // ── Entering states. ──

    /// Starts a gateway with nothing serving: at launch, after a crash or a rollback.
    pub(super) fn enter_starting(&mut self, now: Instant) {
        self.status.phase = Phase::Starting;
        let waiters = std::mem::take(&mut self.start_waiters);
        let gating = self.start_candidate(now, waiters, None);
        self.state = State::Starting(gating);
    }

    fn begin_handoff(
        &mut self,
        now: Instant,
        old: ChildId,
        waiters: Waiters,
        target: Option<Target>,
    ) {
        self.status.phase = Phase::HandingOff;
        let old_pid = self.pid(old);
        self.notify(Notify::Status(format!(
            "handing off from gateway pid {old_pid}"
        )));
        let to = target
            .as_ref()
            .map_or("the installed version".to_string(), |t| {
                t.version.to_string()
            });
        tracing::info!(old_pid, %to, "handoff requested");
        let gating = self.start_candidate(now, waiters, target);
        self.state = State::HandingOff { old, gating };
    }

    fn start_candidate(
        &mut self,
        now: Instant,
        waiters: Waiters,
        target: Option<Target>,
    ) -> Gating {
        let candidate = ChildId(self.next_child);
        self.next_child += 1;
        self.children.insert(
            candidate,
            Child {
                pid: None,
                binary: PathBuf::new(),
                started: now,
                version: None,
                health_only: false,
                exit: None,
                terminated: false,
                killed: false,
            },
        );
        let binary = target
            .as_ref()
            .map_or(Binary::Current, |t| t.binary.clone());
        self.effects.push(Effect::Spawn {
            child: candidate,
            binary,
        });
        Gating {
            candidate,
            gate: None,
            waiters,
            target,
            requested: now,
            next_probe: None,
            probe_started: now,
            failed: None,
        }
    }

    fn enter_running(&mut self, now: Instant, active: ChildId) {
        self.state = State::Running(active);
        if self.children.get(&active).is_some_and(|c| c.exit.is_some()) {
            // It died while the handoff around it ran; that is a crash like any.
            self.crashed(now, active);
            return;
        }
        self.status.phase = Phase::Running;
        self.status.active = self.view(active, Role::Ready);
        self.status.candidate = None;
        let (pid, version) = (self.pid(active), self.version(active));
        tracing::info!(pid, %version, "gateway serving");
        let line = format!("serving: gateway {version} (pid {pid})");
        if self.announced_ready {
            self.notify(Notify::Status(line));
        } else {
            self.announced_ready = true;
            self.notify(Notify::Ready(line));
        }
        if self.checks.take_pending() {
            self.check_for_update();
        }
    }

    fn enter_stopping(&mut self, now: Instant, handoff: Option<Drain>) {
        self.status.phase = Phase::Stopping;
        self.notify(Notify::Stopping);
        let live: Vec<ChildId> = self.live_children().collect();
        for child in live {
            self.terminate(child);
        }
        self.state = State::Stopping {
            deadline: after(now, self.drain_deadline()),
            handoff,
        };
        self.finish_stop_if_done();
    }

    /// Schedules the next start after a failure, `ran_for` after the child started.
    pub(super) fn back_off(
        &mut self,
        now: Instant,
        ran_for: Duration,
        message: impl FnOnce(Duration) -> String,
    ) {
        let delay = self.restart_delay.after_exit(ran_for);
        let message = message(delay);
        self.record_error(now, message);
        self.status.phase = Phase::BackingOff;
        self.notify(Notify::Status(format!(
            "gateway down; starting a new one in {}",
            humantime::format_duration(delay)
        )));
        self.state = State::BackingOff(after(now, delay));
    }

    // ── Children. ──

    fn on_spawned(&mut self, now: Instant, child: ChildId, pid: u32, binary: PathBuf) {
        let Some(entry) = self.children.get_mut(&child) else {
            return;
        };
        entry.pid = Some(pid);
        entry.binary = binary.clone();
        entry.started = now;
        if matches!(self.state, State::Stopping { .. }) {
            self.terminate(child);
            return;
        }
        let ready_timeout = self.config.ready_timeout;
        let candidate_view = self.view(child, Role::Starting);
        let (State::Starting(gating) | State::HandingOff { gating, .. }) = &mut self.state else {
            return;
        };
        if gating.candidate != child {
            return;
        }
        tracing::info!(pid, binary = %binary.display(), "gateway started");
        gating.waiters.step(
            Stage::CandidateStarted,
            Some(pid),
            format!("started {} as pid {pid}", binary.display()),
            &mut self.effects,
        );
        let mut gate = Gate::new(pid, now, ready_timeout);
        if let Some(target) = &gating.target {
            gate = gate.expecting_version(target.version.to_string());
        }
        gating.gate = Some(gate);
        gating.probe_started = now;
        self.effects.push(Effect::Probe(child));
        self.status.candidate = candidate_view;
    }

    fn on_spawn_failed(&mut self, now: Instant, child: ChildId, reason: String) {
        if let Some(entry) = self.children.get_mut(&child) {
            entry.exit = Some("not started".into());
        }
        match std::mem::replace(&mut self.state, State::Stopped) {
            State::Starting(gating) if gating.candidate == child => {
                self.gate_failed(now, None, gating, Failure::Spawn(reason));
            }
            State::HandingOff { old, gating } if gating.candidate == child => {
                self.gate_failed(now, Some(old), gating, Failure::Spawn(reason));
            }
            other => {
                self.state = other;
                self.children.remove(&child);
                self.finish_stop_if_done();
            }
        }
    }

    fn on_probed(&mut self, now: Instant, child: ChildId, verdict: Verdict) {
        let (State::Starting(gating) | State::HandingOff { gating, .. }) = &mut self.state else {
            return;
        };
        if gating.candidate != child || gating.failed.is_some() {
            return;
        }
        let Some(gate) = gating.gate.as_mut() else {
            return;
        };
        match gate.on_probe(verdict, now) {
            Decision::Wait => {
                gating.next_probe = Some((gating.probe_started + PROBE_INTERVAL).max(now));
            }
            Decision::Ready {
                version,
                health_only,
            } => self.gate_passed(now, version, health_only),
            Decision::Fail(failure) => self.abort(now, failure),
        }
    }

    fn gating_timeout(&mut self, now: Instant, old: Option<ChildId>, mut gating: Gating) {
        if let Some((_, kill_at)) = &gating.failed {
            if now >= *kill_at {
                self.kill(gating.candidate);
            }
        } else if let Some(gate) = &gating.gate {
            if let Decision::Fail(failure) = gate.on_tick(now) {
                self.state = gating_state(old, gating);
                self.abort(now, failure);
                return;
            }
            if gating.next_probe.is_some_and(|at| now >= at) {
                gating.next_probe = None;
                gating.probe_started = now;
                self.effects.push(Effect::Probe(gating.candidate));
            }
        }
        self.state = gating_state(old, gating);
    }

    fn on_exited(&mut self, now: Instant, child: ChildId, status: String) {
        let Some(entry) = self.children.get_mut(&child) else {
            return;
        };
        entry.exit = Some(status.clone());
        match std::mem::replace(&mut self.state, State::Stopped) {
            State::Running(active) if active == child => self.crashed(now, active),
            State::Starting(gating) if gating.candidate == child => {
                self.candidate_exited(now, None, gating, status);
            }
            State::HandingOff { old, gating } if gating.candidate == child => {
                self.candidate_exited(now, Some(old), gating, status);
            }
            State::Draining(drain) if drain.old == child => {
                let new = drain.new;
                self.complete_drain(now, drain);
                self.enter_running(now, new);
            }
            State::Stopping { deadline, handoff } => {
                let killed = self.children.get(&child).is_some_and(|c| c.killed);
                tracing::info!(pid = self.pid(child), %status, killed, "gateway stopped");
                let handoff = match handoff {
                    Some(drain) if drain.old == child => {
                        self.complete_drain(now, drain);
                        None
                    }
                    other => other,
                };
                self.children.remove(&child);
                self.state = State::Stopping { deadline, handoff };
                self.finish_stop_if_done();
            }
            // Any other child (an old gateway dying mid-handoff, a new one while the old
            // drains) is noticed when the state that owns it moves on.
            other => self.state = other,
        }
    }

    /// The serving gateway died on its own. The public listener stays open meanwhile, so
    /// new connections queue instead of being refused.
    fn crashed(&mut self, now: Instant, active: ChildId) {
        self.status.active = None;
        self.status.crash_restarts += 1;
        let Some(dead) = self.children.remove(&active) else {
            return;
        };
        let ran_for = now.saturating_duration_since(dead.started);
        let message = format!(
            "gateway pid {} exited with {} after {}",
            dead.pid.unwrap_or(0),
            dead.exit.as_deref().unwrap_or("an unknown status"),
            humantime::format_duration(Duration::from_secs(ran_for.as_secs())),
        );
        if self.soak_death(
            now,
            Death::Crash {
                message: message.clone(),
                ran_for,
            },
        ) {
            return;
        }
        self.back_off(now, ran_for, |delay| {
            format!(
                "{message}; starting a new one in {}",
                humantime::format_duration(delay)
            )
        });
    }

    // ── Gating. ──

    fn candidate_exited(
        &mut self,
        now: Instant,
        old: Option<ChildId>,
        gating: Gating,
        status: String,
    ) {
        let failure = match (&gating.failed, &gating.gate) {
            (Some((failure, _)), _) => failure.clone(),
            (None, Some(gate)) => match gate.on_exit(status) {
                Decision::Fail(failure) => failure,
                _ => Failure::Exited {
                    pid: self.pid(gating.candidate),
                    status: "an unknown status".into(),
                },
            },
            (None, None) => Failure::Exited {
                pid: self.pid(gating.candidate),
                status,
            },
        };
        self.gate_failed(now, old, gating, failure);
    }

    /// The gate failed while the candidate still runs: stop it first (SIGTERM: it may
    /// already hold connections from the shared queue, and a drain answers them instead
    /// of resetting them), and conclude once it is gone.
    fn abort(&mut self, now: Instant, failure: Failure) {
        let kill_at = after(now, self.drain_deadline());
        let (State::Starting(gating) | State::HandingOff { gating, .. }) = &mut self.state else {
            return;
        };
        let candidate = gating.candidate;
        let pid = self.children.get(&candidate).and_then(|c| c.pid);
        tracing::error!(pid, reason = %failure, "gateway did not become ready; stopping it");
        gating
            .waiters
            .step(Stage::Aborting, pid, failure.to_string(), &mut self.effects);
        gating.failed = Some((failure, kill_at));
        self.terminate(candidate);
    }

    /// The candidate is gone and did not take over.
    fn gate_failed(
        &mut self,
        now: Instant,
        old: Option<ChildId>,
        gating: Gating,
        failure: Failure,
    ) {
        self.children.remove(&gating.candidate);
        self.status.candidate = None;
        let mut waiters = gating.waiters;
        let Some(old) = old else {
            waiters.finish(failure.outcome(), &mut self.effects);
            if self.soak_death(now, Death::StartFailed(failure.clone())) {
                return;
            }
            self.back_off(now, Duration::ZERO, |delay| {
                format!(
                    "{failure}; trying again in {}",
                    humantime::format_duration(delay)
                )
            });
            return;
        };
        if let Some(Target {
            version,
            kind: Kind::Update,
            ..
        }) = &gating.target
        {
            self.quarantine(version, &failure.to_string());
        }
        let message = format!(
            "{failure}; the old gateway pid {} keeps serving",
            self.pid(old)
        );
        self.record_error(now, message.clone());
        self.record_handoff(now, false, gating.requested, message.clone());
        let outcome = match failure {
            Failure::Stopping => failure.outcome(),
            _ => Outcome::failed(FailureKind::HandoffFailed, message),
        };
        waiters.finish(outcome, &mut self.effects);
        self.enter_running(now, old);
    }

    /// The candidate is ready: it already accepts from the shared queue.
    fn gate_passed(&mut self, now: Instant, version: String, health_only: bool) {
        let (old, gating) = match std::mem::replace(&mut self.state, State::Stopped) {
            State::Starting(gating) => (None, gating),
            State::HandingOff { old, gating } => (Some(old), gating),
            other => {
                self.state = other;
                return;
            }
        };
        let new = gating.candidate;
        if let Some(child) = self.children.get_mut(&new) {
            child.version = Some(version.clone());
            child.health_only = health_only;
        }
        let pid = self.pid(new);
        tracing::info!(pid, %version, health_only, "gateway ready");
        let mut waiters = gating.waiters;
        let Some(old) = old else {
            let outcome = Outcome::HandedOff {
                old_pid: None,
                new_pid: pid,
                version: Some(version),
                took: now.saturating_duration_since(gating.requested),
            };
            waiters.finish(outcome, &mut self.effects);
            self.enter_running(now, new);
            return;
        };
        self.status.active = self.view(new, Role::Ready);
        self.status.candidate = None;
        self.status.draining = self.view(old, Role::Draining);
        if let Some(target) = &gating.target {
            self.effects.push(Effect::Switch(target.version.clone()));
            self.soak = match target.kind {
                Kind::Update => Some(Soak::new(target.version.clone(), now)),
                Kind::Rollback { .. } => None,
            };
            let from = self.children.get(&old).and_then(|c| c.version.as_deref());
            if let (Kind::Rollback { reason }, Some(Ok(from))) =
                (&target.kind, from.map(Version::parse))
            {
                self.quarantine(
                    &from,
                    &format!("rolled back to {}: {reason}", target.version),
                );
            }
        }
        waiters.step(
            Stage::Switched,
            Some(pid),
            format!("gateway pid {pid} (version {version}) is ready and serving"),
            &mut self.effects,
        );
        let old_pid = self.pid(old);
        waiters.step(
            Stage::Draining,
            Some(old_pid),
            format!("draining the old gateway pid {old_pid}"),
            &mut self.effects,
        );
        self.terminate(old);
        let drain = Drain {
            old,
            new,
            deadline: after(now, self.drain_deadline()),
            waiters,
            requested: gating.requested,
        };
        self.state = State::Draining(drain);
        if let Some(status) = self.children.get(&old).and_then(|c| c.exit.clone()) {
            // It died during the handoff: there is nothing left to drain.
            self.on_exited(now, old, status);
        }
    }

    /// The old gateway is gone: the handoff is done, and its clients are told so.
    fn complete_drain(&mut self, now: Instant, drain: Drain) {
        let (old_pid, new_pid) = (self.pid(drain.old), self.pid(drain.new));
        let (killed, status) = self
            .children
            .get(&drain.old)
            .map(|c| (c.killed, c.exit.clone().unwrap_or_default()))
            .unwrap_or_default();
        let took = now.saturating_duration_since(drain.requested);
        let message = format!(
            "handed off from gateway pid {old_pid} to pid {new_pid} in {}ms; the old one {} with {status}",
            status::millis(took),
            if killed { "was killed" } else { "exited" },
        );
        tracing::info!(summary = %message, "handoff done");
        drain.waiters.step(
            Stage::Drained,
            Some(old_pid),
            message.clone(),
            &mut self.effects,
        );
        self.status.draining = None;
        self.record_handoff(now, true, drain.requested, message);
        let outcome = Outcome::HandedOff {
            old_pid: Some(old_pid),
            new_pid,
            version: self
                .children
                .get(&drain.new)
                .and_then(|c| c.version.clone()),
            took,
        };
        let mut waiters = drain.waiters;
        waiters.finish(outcome, &mut self.effects);
        self.children.remove(&drain.old);
    }

    // ── Small helpers. ──

    pub(super) fn drain_deadline(&self) -> Duration {
        self.config.drain_timeout.saturating_add(DRAIN_GRACE)
    }

    fn live_children(&self) -> impl Iterator<Item = ChildId> + '_ {
        self.children
            .iter()
            .filter(|(_, c)| c.exit.is_none())
            .map(|(id, _)| *id)
    }

    fn terminate(&mut self, child: ChildId) {
        if let Some(entry) = self.children.get_mut(&child)
            && entry.exit.is_none()
            && entry.pid.is_some()
            && !entry.terminated
        {
            entry.terminated = true;
            self.effects.push(Effect::Terminate(child));
        }
    }

    fn kill(&mut self, child: ChildId) {
        if let Some(entry) = self.children.get_mut(&child)
            && entry.exit.is_none()
            && entry.pid.is_some()
            && !entry.killed
        {
            let pid = entry.pid;
            entry.killed = true;
            tracing::warn!(pid, "the gateway did not exit in time; killing it");
            self.effects.push(Effect::Kill(child));
        }
    }

    pub(super) fn pid(&self, child: ChildId) -> u32 {
        self.children.get(&child).and_then(|c| c.pid).unwrap_or(0)
    }

    fn version(&self, child: ChildId) -> String {
        self.children
            .get(&child)
            .and_then(|c| c.version.clone())
            .unwrap_or_else(|| "?".into())
    }

    fn view(&self, child: ChildId, role: Role) -> Option<status::Gateway> {
        let c = self.children.get(&child)?;
        Some(status::Gateway {
            pid: c.pid?,
            version: c.version.clone(),
            role,
            health_only: c.health_only,
            binary: c.binary.clone(),
            started: c.started,
        })
    }

    pub(super) fn reply(&mut self, client: ClientId, outcome: Outcome) {
        self.effects.push(Effect::Reply {
            client,
            reply: Reply::Done(outcome),
        });
    }

    pub(super) fn notify(&mut self, notify: Notify) {
        self.effects.push(Effect::Notify(notify));
    }

    pub(super) fn record_error(&mut self, now: Instant, message: String) {
        tracing::error!(%message, "gateway failure");
        self.notify(Notify::Status(message.clone()));
        self.status.last_error = Some((now, message));
    }

    fn record_handoff(&mut self, now: Instant, ok: bool, requested: Instant, message: String) {
        self.status.last_handoff = Some(Handoff {
            at: now,
            ok,
            took: now.saturating_duration_since(requested),
            message,
        });
    }

    fn finish_stop_if_done(&mut self) {
        if !matches!(self.state, State::Stopping { .. }) || self.live_children().next().is_some() {
            return;
        }
        self.status.active = None;
        self.status.candidate = None;
        self.status.draining = None;
        let stopping = || Outcome::failed(FailureKind::Stopping, "the supervisor is stopping");
        self.start_waiters.finish(stopping(), &mut self.effects);
        self.update_waiters.finish(stopping(), &mut self.effects);
        self.update_running = false;
        self.state = State::Stopped;
        self.effects.push(Effect::Exit);
    }
}

/// A gating state again, with or without a gateway serving beside it.
fn gating_state(old: Option<ChildId>, gating: Gating) -> State {
    match old {
        Some(old) => State::HandingOff { old, gating },
        None => State::Starting(gating),
    }
}

/// Requests that wait while a failed candidate is being stopped.
fn defers(input: &Input) -> bool {
    matches!(
        input,
        Input::CheckRequested
            | Input::Restart(_)
            | Input::Update { .. }
            | Input::Rollback(_)
            | Input::Checked(_)
    )
}

/// Waiters holding one client.
fn joined(client: ClientId) -> Waiters {
    let mut waiters = Waiters::default();
    waiters.join(client, &mut Vec::new());
    waiters
}
