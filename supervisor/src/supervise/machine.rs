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

use aihummer_common::backoff::Backoff;

use super::backoff::RestartDelay;
use super::checks::Requests;
use super::clients::Waiters;
use super::events::{Binary, ChildId, ClientId, Effect, Input, InstallView};
use super::gate::{Failure, Gate};
use super::soak::Soak;
use super::status::Status;

/// How often a starting gateway is probed.
pub const PROBE_INTERVAL: Duration = Duration::from_millis(100);
/// Time a draining gateway gets beyond `AIHUMMER_DRAIN_TIMEOUT` before it is killed: it
/// enforces that deadline itself and then needs a moment to close its pools and exit, so
/// the supervisor's kill is only the backstop for a stuck process.
pub const DRAIN_GRACE: Duration = Duration::from_secs(2);

/// The first wait before trying an update again that failed through no fault of its own
/// (the database was down during its handoff); it doubles up to [`UPDATE_RETRY_MAX`].
pub const UPDATE_RETRY_FIRST: Duration = Duration::from_secs(10);
/// The longest wait between such retries.
pub const UPDATE_RETRY_MAX: Duration = Duration::from_secs(3600);

/// What the machine is told once, at start.
#[derive(Debug, Clone)]
pub struct Config {
    /// `AIHUMMER_READY_TIMEOUT`.
    pub ready_timeout: Duration,
    /// `AIHUMMER_DRAIN_TIMEOUT`.
    pub drain_timeout: Duration,
    /// `AIHUMMER_SHUTDOWN_DELAY`.
    pub shutdown_delay: Duration,
    /// `AIHUMMER_SOAK_WINDOW`: how long an updated version is watched for a crash loop
    /// (and, in a fleet, holds the rollout lease).
    pub soak_window: Duration,
    /// Whether `apply` mode stages and installs what checks find.
    pub apply: bool,
    /// Whether updates can be checked at all, or why not.
    pub update_source: Result<(), String>,
    /// The install dir; `None` without one.
    pub install: Option<InstallView>,
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
    pub(super) candidate: ChildId,
    pub(super) gate: Option<Gate>,
    pub(super) waiters: Waiters,
    pub(super) target: Option<Target>,
    pub(super) requested: Instant,
    /// When to probe next; `None` while a probe is under way.
    pub(super) next_probe: Option<Instant>,
    pub(super) probe_started: Instant,
    /// The candidate failed and is being stopped; the kill comes at the instant given.
    pub(super) failed: Option<(Failure, Instant)>,
    /// The candidate was not ready in time; the serving gateway is being asked whether
    /// it is ready itself before the release is blamed.
    pub(super) judging: Option<Failure>,
    /// Why the serving gateway was not ready either: the failure is not the release's.
    pub(super) blameless: Option<String>,
}

/// The old gateway draining after a switch.
#[derive(Debug)]
pub(super) struct Drain {
    pub(super) old: ChildId,
    pub(super) new: ChildId,
    pub(super) deadline: Instant,
    pub(super) waiters: Waiters,
    pub(super) requested: Instant,
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
    /// Stopping: the serving gateway answers `/readyz` 503 but keeps serving until the
    /// instant given, so proxies take the node out of rotation first.
    Withdrawn {
        active: ChildId,
        until: Instant,
    },
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
    pub(super) next_child: u64,
    pub(super) effects: Vec<Effect>,
    pub(super) status: Status,
    pub(super) restart_delay: RestartDelay,
    pub(super) checks: Requests,
    pub(super) start_waiters: Waiters,
    pub(super) update_waiters: Waiters,
    pub(super) update_running: bool,
    /// Clients of `aihummer update --check` waiting for the check under way.
    pub(super) check_clients: Vec<ClientId>,
    pub(super) soak: Option<Soak>,
    /// The version this node holds the fleet's rollout lease for.
    pub(super) lease: Option<Version>,
    /// A start asked for while another start was gated: it runs once that one is gone.
    pub(super) next_start: Option<(Target, Waiters)>,
    /// When to check for an update again after one failed through no fault of its own.
    pub(super) update_retry: Option<Instant>,
    /// The delays between such retries.
    pub(super) update_backoff: Backoff,
    pub(super) announced_ready: bool,
    deferred: VecDeque<Input>,
}

impl Machine {
    /// A machine that starts the first gateway at `now`.
    pub fn new(config: Config, now: Instant) -> Self {
        let quarantined = config
            .install
            .as_ref()
            .map(|install| install.quarantined.clone())
            .unwrap_or_default();
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
            check_clients: Vec::new(),
            soak: None,
            lease: None,
            next_start: None,
            update_retry: None,
            update_backoff: Backoff::new(UPDATE_RETRY_FIRST, UPDATE_RETRY_MAX),
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

    /// While the first gateway ever is being gated (none has served yet), when its gate
    /// gives up.
    pub fn first_start_deadline(&self) -> Option<Instant> {
        match &self.state {
            State::Starting(gating) if !self.announced_ready => {
                Some(gating.gate.as_ref().map_or_else(
                    || after(gating.requested, self.config.ready_timeout),
                    Gate::deadline,
                ))
            }
            _ => None,
        }
    }

    /// Whether the machine has exited.
    pub fn is_stopped(&self) -> bool {
        matches!(self.state, State::Stopped)
    }

    /// The next instant [`Machine::handle_timeout`] has something to do at, if any.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let retry = self.update_retry.filter(|_| !self.is_stopping());
        [self.state_timeout(), retry, self.soak_end()]
            .into_iter()
            .flatten()
            .min()
    }

    /// When the soak window of the version this node holds the rollout lease for ends:
    /// the lease is given back then, without waiting for anything else to happen.
    fn soak_end(&self) -> Option<Instant> {
        self.lease.as_ref()?;
        self.soak.as_ref().map(Soak::ends_at)
    }

    fn is_stopping(&self) -> bool {
        matches!(
            self.state,
            State::Withdrawn { .. } | State::Stopping { .. } | State::Stopped
        )
    }

    /// The next instant the current state has something to do at.
    fn state_timeout(&self) -> Option<Instant> {
        let unkilled = |child: &ChildId| self.children.get(child).is_some_and(|c| !c.killed);
        match &self.state {
            State::Starting(gating) | State::HandingOff { gating, .. } => match &gating.failed {
                Some((_, kill_at)) => unkilled(&gating.candidate).then_some(*kill_at),
                None if gating.judging.is_some() => None,
                None => {
                    let deadline = gating.gate.as_ref().map(Gate::deadline);
                    [deadline, gating.next_probe].into_iter().flatten().min()
                }
            },
            State::Draining(drain) => unkilled(&drain.old).then_some(drain.deadline),
            State::BackingOff(until) | State::Withdrawn { until, .. } => Some(*until),
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
        if self.soak_end().is_some_and(|end| now >= end) {
            self.soak_passed();
        }
        if self.update_retry.is_some_and(|at| now >= at) && !self.is_stopping() {
            self.update_retry = None;
            tracing::info!("trying the update again");
            let busy = !matches!(self.state, State::Running(_));
            self.request_check(busy);
        }
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
            State::Withdrawn { until, .. } if now >= until => self.enter_stopping(now, None),
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

    pub(super) fn dispatch(&mut self, now: Instant, input: Input) {
        match input {
            Input::UpdateProgress(step) => self.update_waiters.send(step, &mut self.effects),
            Input::CheckOnly(client) => self.start_check_only(client),
            Input::Checked(report) if report.check_only => self.on_check_only(now, report.found),
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
                State::Withdrawn { active, until } => {
                    self.state = State::Withdrawn { active, until };
                    self.withdrawn(now, request);
                }
                state @ (State::Stopping { .. } | State::Stopped) => {
                    self.state = state;
                    self.stopping(now, request);
                }
            },
        }
    }

    pub(super) fn is_aborting(&self) -> bool {
        matches!(&self.state, State::Starting(g) | State::HandingOff { gating: g, .. } if g.failed.is_some())
    }

    /// Requests that waited for a failed candidate to be gone, handled in order.
    pub(super) fn replay_deferred(&mut self, now: Instant) {
        while !self.is_aborting() {
            let Some(input) = self.deferred.pop_front() else {
                return;
            };
            self.dispatch(now, input);
        }
    }
}

/// A gating state again, with or without a gateway serving beside it.
pub(super) fn gating_state(old: Option<ChildId>, gating: Gating) -> State {
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
pub(super) fn joined(client: ClientId) -> Waiters {
    let mut waiters = Waiters::default();
    waiters.join(client, &mut Vec::new());
    waiters
}
