//! The machine entering its states, and the small verbs every state uses: starting a
//! candidate, serving, backing off, stopping; signalling children, replying, notifying
//! and recording errors as effects.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use super::clients::Waiters;
use super::events::{Binary, ChildId, ClientId, Effect, FailureKind, Notify, Outcome, Reply};
use super::gate::Failure;
use super::machine::{Child, DRAIN_GRACE, Drain, Gating, Machine, State, Target, after};
use super::status::{self, Handoff, Phase, Role};

impl Machine {
    /// Starts a gateway with nothing serving: at launch, after a crash or a rollback.
    pub(super) fn enter_starting(&mut self, now: Instant) {
        self.status.phase = Phase::Starting;
        let waiters = std::mem::take(&mut self.start_waiters);
        let gating = self.start_candidate(now, waiters, None);
        self.state = State::Starting(gating);
    }

    /// Starts `target` with nothing serving: a rollback or an update out of a crash loop.
    pub(super) fn start_target(&mut self, now: Instant, waiters: Waiters, target: Target) {
        self.status.phase = Phase::Starting;
        tracing::info!(to = %target.version, "starting a known version with no gateway serving");
        let gating = self.start_candidate(now, waiters, Some(target));
        self.state = State::Starting(gating);
    }

    /// Replaces the start under way with `target`: the candidate is stopped first, and
    /// `target` starts once it is gone.
    pub(super) fn supersede(&mut self, now: Instant, target: Target, waiters: Waiters) {
        let failure = Failure::Superseded(target.version.to_string());
        if let Some((_, mut replaced)) = self.next_start.replace((target, waiters)) {
            replaced.finish(failure.outcome(), &mut self.effects);
        }
        let aborting = matches!(&self.state, State::Starting(gating) if gating.failed.is_some());
        if !aborting {
            self.abort(now, failure);
        }
    }

    pub(super) fn begin_handoff(
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

    pub(super) fn start_candidate(
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
            judging: None,
            blameless: None,
        }
    }

    pub(super) fn enter_running(&mut self, now: Instant, active: ChildId) {
        self.state = State::Running(active);
        if self.children.get(&active).is_some_and(|c| c.exit.is_some()) {
            // It died while the handoff around it ran; that is a crash like any.
            self.crashed(now, active);
            return;
        }
        self.settle_lease();
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

    /// Stopping with a gateway serving: it leaves rotation first (`/readyz` 503) and keeps
    /// serving for `AIHUMMER_SHUTDOWN_DELAY`, long enough for a proxy's health checks to
    /// notice, so requests are not sent to a node that is about to close its listener.
    pub(super) fn withdraw(&mut self, now: Instant, active: ChildId, signal: &str) {
        let delay = self.config.shutdown_delay;
        tracing::info!(
            signal,
            delay = %humantime::format_duration(delay),
            "stopping: out of rotation first, still serving, then draining"
        );
        self.status.phase = Phase::Stopping;
        self.notify(Notify::Stopping);
        self.effects.push(Effect::Withdraw(active));
        self.state = State::Withdrawn {
            active,
            until: after(now, delay),
        };
    }

    pub(super) fn enter_stopping(&mut self, now: Instant, handoff: Option<Drain>) {
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
        self.settle_lease();
    }

    /// Serving or backing off with no version soaking, nothing holds the rollout lease any
    /// more (the update it was taken for did not happen, or ended without a soak): it goes
    /// back, so the fleet is never stuck behind a lease this node forgot.
    fn settle_lease(&mut self) {
        if self.soak.is_none() {
            self.release_lease("no handoff or soak needs it any more");
        }
    }

    pub(super) fn finish_stop_if_done(&mut self) {
        if !matches!(self.state, State::Stopping { .. }) || self.live_children().next().is_some() {
            return;
        }
        self.status.active = None;
        self.status.candidate = None;
        self.status.draining = None;
        let stopping = || Outcome::failed(FailureKind::Stopping, "the supervisor is stopping");
        self.start_waiters.finish(stopping(), &mut self.effects);
        if let Some((_, mut waiters)) = self.next_start.take() {
            waiters.finish(stopping(), &mut self.effects);
        }
        self.update_waiters.finish(stopping(), &mut self.effects);
        self.update_running = false;
        self.state = State::Stopped;
        self.effects.push(Effect::Exit);
    }

    pub(super) fn drain_deadline(&self) -> Duration {
        self.config.drain_timeout.saturating_add(DRAIN_GRACE)
    }

    pub(super) fn live_children(&self) -> impl Iterator<Item = ChildId> + '_ {
        self.children
            .iter()
            .filter(|(_, c)| c.exit.is_none())
            .map(|(id, _)| *id)
    }

    pub(super) fn terminate(&mut self, child: ChildId) {
        if let Some(entry) = self.children.get_mut(&child)
            && entry.exit.is_none()
            && entry.pid.is_some()
            && !entry.terminated
        {
            entry.terminated = true;
            self.effects.push(Effect::Terminate(child));
        }
    }

    pub(super) fn kill(&mut self, child: ChildId) {
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

    pub(super) fn version(&self, child: ChildId) -> String {
        self.children
            .get(&child)
            .and_then(|c| c.version.clone())
            .unwrap_or_else(|| "?".into())
    }

    pub(super) fn view(&self, child: ChildId, role: Role) -> Option<status::Gateway> {
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
        tracing::error!(reason = %message, "gateway failure");
        self.notify(Notify::Status(message.clone()));
        self.status.last_error = Some((now, message));
    }

    pub(super) fn record_handoff(
        &mut self,
        now: Instant,
        ok: bool,
        requested: Instant,
        message: String,
    ) {
        self.status.last_handoff = Some(Handoff {
            at: now,
            ok,
            took: now.saturating_duration_since(requested),
            message,
        });
    }
}
