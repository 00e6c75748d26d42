//! Everyone waiting on one operation (a start, a handoff, an update): a second request of
//! the same kind joins the one under way instead of starting another, and every waiter
//! gets the same steps and the same one outcome.

use super::events::{ClientId, Effect, Outcome, Reply, Stage, Step};

/// The clients waiting on one operation.
#[derive(Debug, Default)]
pub struct Waiters {
    waiting: Vec<ClientId>,
}

impl Waiters {
    /// Adds a client; later joiners are told they joined an operation already under way.
    pub fn join(&mut self, client: ClientId, effects: &mut Vec<Effect>) {
        if !self.waiting.is_empty() {
            let step = Step {
                stage: Stage::Joined,
                message: "a handoff is already under way; waiting for its result".into(),
                pid: None,
                bytes: None,
            };
            effects.push(Effect::Reply {
                client,
                reply: Reply::Step(step),
            });
        }
        self.waiting.push(client);
    }

    /// Whether anyone waits.
    pub fn is_empty(&self) -> bool {
        self.waiting.is_empty()
    }

    /// Tells every waiter about a step.
    pub fn step(&self, stage: Stage, pid: Option<u32>, message: String, effects: &mut Vec<Effect>) {
        self.send(
            Step {
                stage,
                message,
                pid,
                bytes: None,
            },
            effects,
        );
    }

    /// Tells every waiter about `step` as it is.
    pub fn send(&self, step: Step, effects: &mut Vec<Effect>) {
        for &client in &self.waiting {
            effects.push(Effect::Reply {
                client,
                reply: Reply::Step(step.clone()),
            });
        }
    }

    /// Tells everyone the outcome and forgets them.
    pub fn finish(&mut self, outcome: Outcome, effects: &mut Vec<Effect>) {
        for client in self.waiting.drain(..) {
            effects.push(Effect::Reply {
                client,
                reply: Reply::Done(outcome.clone()),
            });
        }
    }

    /// Moves every waiter of `other` here, keeping their order.
    pub fn absorb(&mut self, mut other: Waiters) {
        self.waiting.append(&mut other.waiting);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::supervise::events::FailureKind;

    #[test]
    fn joiners_are_told_and_every_waiter_gets_the_same_outcome_once() {
        let mut effects = Vec::new();
        let mut waiters = Waiters::default();
        waiters.join(ClientId(1), &mut effects);
        waiters.join(ClientId(2), &mut effects);
        waiters.step(
            Stage::CandidateStarted,
            Some(5),
            "started".into(),
            &mut effects,
        );
        waiters.finish(
            Outcome::failed(FailureKind::Stopping, "stopping"),
            &mut effects,
        );
        waiters.finish(
            Outcome::failed(FailureKind::Stopping, "again"),
            &mut effects,
        );
        let for_client = |id| {
            effects
                .iter()
                .filter_map(|e| match e {
                    Effect::Reply { client, reply } if *client == ClientId(id) => {
                        Some(reply.clone())
                    }
                    _ => None,
                })
                .collect::<Vec<_>>()
        };
        let first = for_client(1);
        assert!(
            matches!(&first[..], [Reply::Step(s), Reply::Done(_)] if s.stage == Stage::CandidateStarted)
        );
        let second = for_client(2);
        assert!(
            matches!(&second[..], [Reply::Step(j), Reply::Step(_), Reply::Done(_)] if j.stage == Stage::Joined)
        );
        assert!(waiters.is_empty());
    }
}
