//! The machine's children: a candidate spawned, probed and gated; the serving gateway
//! crashing; a failed candidate stopped before anything else starts; the switch to a
//! ready candidate and the drain of the old one.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use semver::Version;

use super::events::{ChildId, Effect, FailureKind, Outcome, Stage};
use super::gate::{Decision, Failure, Gate};
use super::machine::{
    Death, Drain, Gating, Kind, Machine, PROBE_INTERVAL, State, Target, after, gating_state,
};
use super::soak::Soak;
use super::status::{self, Role};
use crate::process::probe::Verdict;

impl Machine {
    pub(super) fn on_spawned(&mut self, now: Instant, child: ChildId, pid: u32, binary: PathBuf) {
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

    pub(super) fn on_spawn_failed(&mut self, now: Instant, child: ChildId, reason: String) {
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

    pub(super) fn on_probed(&mut self, now: Instant, child: ChildId, verdict: Verdict) {
        if let State::HandingOff { old, gating } = &mut self.state
            && *old == child
            && let Some(failure) = gating.judging.take()
        {
            if let Verdict::NotReady(reason) = verdict {
                gating.blameless = Some(reason);
            }
            self.abort(now, failure);
            return;
        }
        let (State::Starting(gating) | State::HandingOff { gating, .. }) = &mut self.state else {
            return;
        };
        if gating.candidate != child || gating.failed.is_some() || gating.judging.is_some() {
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
            Decision::Fail(failure) => self.fail_gate(now, failure),
        }
    }

    /// The gate failed. An update that was not ready in time is only the release's fault
    /// if the gateway serving beside it is ready: when that one is not ready either (the
    /// database is down, migrations wait on a lock), the release is not blamed. So ask
    /// the serving gateway first, and give up on the candidate once it answers.
    fn fail_gate(&mut self, now: Instant, failure: Failure) {
        if let State::HandingOff { old, gating } = &mut self.state
            && let Failure::NotReady { .. } = failure
            && let Some(Target {
                kind: Kind::Update, ..
            }) = &gating.target
            && self.children.get(old).is_some_and(|c| c.exit.is_none())
        {
            gating.judging = Some(failure);
            gating.next_probe = None;
            self.effects.push(Effect::Probe(*old));
            return;
        }
        self.abort(now, failure);
    }

    pub(super) fn gating_timeout(
        &mut self,
        now: Instant,
        old: Option<ChildId>,
        mut gating: Gating,
    ) {
        if let Some((_, kill_at)) = &gating.failed {
            if now >= *kill_at {
                self.kill(gating.candidate);
            }
        } else if let Some(gate) = gating.gate.as_ref().filter(|_| gating.judging.is_none()) {
            if let Decision::Fail(failure) = gate.on_tick(now) {
                self.state = gating_state(old, gating);
                self.fail_gate(now, failure);
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

    pub(super) fn on_exited(&mut self, now: Instant, child: ChildId, status: String) {
        let Some(entry) = self.children.get_mut(&child) else {
            return;
        };
        entry.exit = Some(status.clone());
        match std::mem::replace(&mut self.state, State::Stopped) {
            State::Running(active) if active == child => self.crashed(now, active),
            State::Withdrawn { active, .. } if active == child => {
                // Nothing left to keep serving: the stop goes on at once.
                self.status.active = None;
                self.enter_stopping(now, None);
            }
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
    pub(super) fn crashed(&mut self, now: Instant, active: ChildId) {
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

    pub(super) fn candidate_exited(
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
    pub(super) fn abort(&mut self, now: Instant, failure: Failure) {
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
    pub(super) fn gate_failed(
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
            if let Some((target, waiters)) = self.next_start.take() {
                self.start_target(now, waiters, target);
                return;
            }
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
        let old_pid = self.pid(old);
        let message = match (&gating.target, gating.blameless) {
            (
                Some(Target {
                    version,
                    kind: Kind::Update,
                    ..
                }),
                Some(reason),
            ) => {
                let retry = self.retry_update(now);
                self.release_lease("the handoff failed through no fault of the release");
                format!(
                    "{failure}; the serving gateway is not ready either ({reason}), so {version} is not blamed{retry}; the old gateway pid {old_pid} keeps serving"
                )
            }
            (
                Some(Target {
                    version,
                    kind: Kind::Update,
                    ..
                }),
                None,
            ) => {
                self.quarantine(version, &failure.to_string());
                format!("{failure}; the old gateway pid {old_pid} keeps serving")
            }
            _ => format!("{failure}; the old gateway pid {old_pid} keeps serving"),
        };
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
    pub(super) fn gate_passed(&mut self, now: Instant, version: String, health_only: bool) {
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
        // The version handed away from: the old gateway's, or with none serving (a rollback
        // out of a crash loop) the installed one.
        let from = match old {
            Some(old) => self.children.get(&old).and_then(|c| c.version.clone()),
            None => self
                .config
                .install
                .as_ref()
                .and_then(|install| install.current.as_ref().map(ToString::to_string)),
        };
        if old.is_some() {
            self.status.active = self.view(new, Role::Ready);
            self.status.candidate = None;
        }
        if let Some(target) = &gating.target {
            self.effects.push(Effect::Switch(target.version.clone()));
            self.soak = match target.kind {
                Kind::Update => Some(Soak::new(
                    target.version.clone(),
                    now,
                    self.config.soak_window,
                )),
                Kind::Rollback { .. } => None,
            };
            if let Kind::Update = target.kind {
                self.update_backoff.reset();
                self.update_retry = None;
            }
            if let (Kind::Rollback { reason }, Some(Ok(from))) =
                (&target.kind, from.as_deref().map(Version::parse))
                && from != target.version
            {
                self.quarantine(
                    &from,
                    &format!("rolled back to {}: {reason}", target.version),
                );
            }
        }
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
        self.status.draining = self.view(old, Role::Draining);
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
    pub(super) fn complete_drain(&mut self, now: Instant, drain: Drain) {
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
}
