//! One function per state: what a request (a signal, a client's command, a finished check)
//! means in that state. Children's events and timeouts are handled in `handoff` and
//! `machine`; entering a state is in `lifecycle`.

use std::time::Instant;

use super::clients::Waiters;
use super::events::{ChildId, FailureKind, Input, Outcome};
use super::gate::Failure;
use super::machine::{Drain, Gating, Machine, RollingBack, State, Target, gating_state, joined};

impl Machine {
    /// One gateway serves.
    pub(super) fn running(&mut self, now: Instant, active: ChildId, input: Input) {
        self.state = State::Running(active);
        match input {
            Input::Stop(signal) if !self.config.shutdown_delay.is_zero() => {
                self.withdraw(now, active, signal);
            }
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
    pub(super) fn gating(
        &mut self,
        now: Instant,
        old: Option<ChildId>,
        mut gating: Gating,
        input: Input,
    ) {
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
            // Nothing serves: an operator's rollback or update replaces a start that may
            // be failing (a crash loop) instead of waiting for it.
            other @ (Input::Rollback(_) | Input::Update { .. } | Input::Checked(_))
                if old.is_none() =>
            {
                self.state = State::Starting(gating);
                if let Some((target, waiters)) = self.no_gateway_serves(now, other) {
                    self.supersede(now, target, waiters);
                }
                return;
            }
            other => self.busy(now, other),
        }
        self.state = gating_state(old, gating);
    }

    /// The old gateway drains after a switch.
    pub(super) fn draining(&mut self, now: Instant, mut drain: Drain, input: Input) {
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
    pub(super) fn rolling_back(&mut self, now: Instant, rolling: RollingBack, input: Input) {
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
    pub(super) fn backing_off(&mut self, now: Instant, until: Instant, input: Input) {
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
            other => {
                if let Some((target, waiters)) = self.no_gateway_serves(now, other) {
                    self.start_target(now, waiters, target);
                }
            }
        }
    }

    /// A rollback, an update, or a finished check while no gateway serves: returns the
    /// version to start at once, with the clients waiting for it.
    fn no_gateway_serves(&mut self, now: Instant, input: Input) -> Option<(Target, Waiters)> {
        match input {
            Input::Rollback(client) => match self.rollback_target("asked by the operator") {
                Ok(target) => Some((target, joined(client))),
                Err(message) => {
                    self.reply(client, Outcome::failed(FailureKind::NoRollback, message));
                    None
                }
            },
            Input::Update { client, version } => {
                self.start_update(client, version);
                None
            }
            Input::Checked(report) => self.on_checked(now, report, true),
            other => {
                self.busy(now, other);
                None
            }
        }
    }

    /// Stopping, out of rotation before the drain: a second stop drains at once.
    pub(super) fn withdrawn(&mut self, now: Instant, input: Input) {
        match input {
            Input::Stop(signal) => {
                tracing::info!(signal, "stop repeated; draining now");
                self.enter_stopping(now, None);
            }
            other => self.stopping(now, other),
        }
    }

    /// Stopping, or stopped: nothing new starts, and clients are told so.
    pub(super) fn stopping(&mut self, now: Instant, input: Input) {
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
    pub(super) fn busy(&mut self, now: Instant, input: Input) {
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
}
