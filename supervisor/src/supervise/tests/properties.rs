//! Random input sequences through the machine, with the invariants that make the
//! product safe checked after every step:
//!
//! - the serving gateway is never told to stop before a candidate is ready, except when
//!   the supervisor itself stops;
//! - at most two gateways exist at once;
//! - no signal or probe goes to a gateway that has exited;
//! - every control request gets exactly one final reply;
//! - a stop always ends in exit within the drain deadline (plus the shutdown delay);
//! - the version serving is never quarantined;
//! - in a fleet, the rollout lease is never forgotten: whenever the database would say
//!   this node holds it, the machine knows it does, and holds it only while a handoff to
//!   that version runs or the version soaks (a leaked lease, renewed by every heartbeat,
//!   would stop the whole fleet's rollouts). A check finished while a failed candidate
//!   is being stopped waits in the machine's queue, and its lease with it.

use std::collections::BTreeSet;
use std::time::Duration;

use proptest::prelude::*;

use super::sim::{Behaviour, World, config, v};
use crate::supervise::events::{ChildId, Effect, Found, Input, Permit, Reply};
use crate::supervise::machine::State;

#[derive(Debug, Clone)]
enum Op {
    Advance(u16),
    Restart,
    Update(Option<u8>),
    Rollback,
    Hup,
    Stop,
    Crash(u8),
    FinishCheck(u8, u8),
    /// The next automatic permit: wait (0) or halted (1).
    Permit(u8),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0u16..2500).prop_map(Op::Advance),
        2 => Just(Op::Restart),
        1 => proptest::option::of(1u8..4).prop_map(Op::Update),
        1 => Just(Op::Rollback),
        1 => Just(Op::Hup),
        1 => Just(Op::Stop),
        1 => any::<u8>().prop_map(Op::Crash),
        2 => (0u8..6, 0u8..4).prop_map(|(flavour, minor)| Op::FinishCheck(flavour, minor)),
        1 => (0u8..2).prop_map(Op::Permit),
    ]
}

fn behaviour() -> impl Strategy<Value = Behaviour> {
    (
        prop::bool::weighted(0.1),
        proptest::option::weighted(0.85, 0u32..25),
        prop::bool::weighted(0.1),
        proptest::option::weighted(0.8, 0u64..4000),
    )
        .prop_map(
            |(spawn_fails, ready_after, wrong_version, drains_for)| Behaviour {
                spawn_fails,
                ready_after,
                wrong_version,
                drains_for: drains_for.map(Duration::from_millis),
            },
        )
}

/// What the checks look at: the effects since the last look, against the world's state.
struct Checker {
    seen: usize,
    max_live: usize,
    stop_at: Option<std::time::Instant>,
    gone: BTreeSet<ChildId>,
    /// The drain deadline, plus the shutdown delay when one is set.
    deadline: Duration,
}

impl Checker {
    fn check(&mut self, world: &World) -> Result<(), TestCaseError> {
        let drain_deadline = self.deadline;
        prop_assert!(
            world.live.len() <= 2,
            "{} gateways at once",
            world.live.len()
        );
        self.max_live = self.max_live.max(world.live.len());
        let serving = world.serving();
        for (at, effect) in &world.effects[self.seen..] {
            match effect {
                Effect::Terminate(child) | Effect::Kill(child) | Effect::Probe(child) => {
                    prop_assert!(
                        !self.gone.contains(child),
                        "{effect:?} to a gateway that exited"
                    );
                    let told_to_stop = !matches!(effect, Effect::Probe(_));
                    prop_assert!(
                        !(told_to_stop && Some(*child) == serving && world.stop_at.is_none()),
                        "the serving gateway was told to stop at {at:?} with no newer one ready"
                    );
                }
                Effect::Quarantine { version, .. } => {
                    let serving_version = serving.map(|c| world.live[&c].version.clone());
                    prop_assert!(
                        serving_version.as_ref() != Some(version),
                        "quarantined {version}, which serves"
                    );
                }
                _ => {}
            }
        }
        self.seen = world.effects.len();
        for started in &world.started {
            if !world.live.contains_key(started) {
                self.gone.insert(*started);
            }
        }
        for (client, replies) in &world.replies {
            let done = replies
                .iter()
                .filter(|r| matches!(r, Reply::Done(_)))
                .count();
            prop_assert!(done <= 1, "client {client:?} got {done} final replies");
        }
        let machine = &world.machine;
        // While a failed candidate is stopped, a finished check waits in the machine's
        // queue: the lease it took is the machine's once it is handled.
        if let Some(held) = world.lease.as_ref().filter(|_| !machine.is_aborting()) {
            prop_assert_eq!(
                machine.lease.as_ref(),
                Some(held),
                "the database says this node holds the lease for {}, the machine forgot it",
                held
            );
        }
        if machine.lease.is_some() && world.stop_at.is_none() {
            let handing_off = matches!(
                machine.state,
                State::HandingOff { .. } | State::Draining(_) | State::Starting(_)
            );
            prop_assert!(
                handing_off || machine.soak.is_some(),
                "the lease is held with no handoff and no soak under way"
            );
        }
        if let Some(stop) = world.stop_at {
            self.stop_at = Some(stop);
            if world.now >= stop + drain_deadline {
                let exited = world.exited_at;
                prop_assert!(
                    exited.is_some_and(|at| at <= stop + drain_deadline),
                    "stopped at {stop:?}, exit at {exited:?}"
                );
            }
        }
        Ok(())
    }
}

fn apply(world: &mut World, op: Op) {
    match op {
        Op::Advance(ms) => world.advance(Duration::from_millis(ms.into())),
        Op::Restart => {
            let client = world.client();
            world.input(Input::Restart(client));
        }
        Op::Update(minor) => {
            let client = world.client();
            let version = minor.map(|m| format!("1.{m}.0"));
            world.input(Input::Update { client, version });
        }
        Op::Rollback => {
            let client = world.client();
            world.input(Input::Rollback(client));
        }
        Op::Hup => world.input(Input::CheckRequested),
        Op::Stop => world.input(Input::Stop("SIGTERM")),
        Op::Crash(n) => {
            let live: Vec<ChildId> = world.live.keys().copied().collect();
            if !live.is_empty() {
                world.crash(live[usize::from(n) % live.len()]);
            }
        }
        Op::FinishCheck(flavour, minor) => {
            let offered = v(&format!("1.{minor}.0"));
            let (found, staged) = match flavour {
                0 => (Found::UpToDate(v("1.0.0")), None),
                1 => (Found::Refused("expired".into()), None),
                2 => (Found::Failed("connection refused".into()), None),
                3 => (Found::Available(offered.clone()), Some(Err(minor % 2 == 0))),
                _ => (Found::Available(offered.clone()), Some(Ok(offered))),
            };
            world.finish_check(found, staged);
        }
        Op::Permit(0) => world.permits.push(Permit::Wait {
            reason: "node b holds the rollout lease".into(),
            retry_in: Duration::from_secs(5),
        }),
        Op::Permit(_) => world
            .permits
            .push(Permit::Halted("halted by node b".into())),
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1000, ..ProptestConfig::default() })]

    #[test]
    fn random_inputs_never_break_the_safety_invariants(
        apply_mode in any::<bool>(),
        fleet in any::<bool>(),
        shutdown_delay in prop_oneof![Just(0u64), 1u64..2000],
        behaviours in prop::collection::vec(behaviour(), 0..12),
        ops in prop::collection::vec(op(), 1..60),
    ) {
        let mut config = config();
        config.apply = apply_mode;
        config.shutdown_delay = Duration::from_millis(shutdown_delay);
        config.soak_window = Duration::from_secs(20);
        let mut world = World::with(config, behaviours);
        world.fleet = fleet;
        let deadline = Duration::from_secs(3) + Duration::from_millis(shutdown_delay);
        let mut checker = Checker { seen: 0, max_live: 0, stop_at: None, gone: BTreeSet::new(), deadline };
        checker.check(&world)?;
        for op in ops {
            apply(&mut world, op);
            checker.check(&world)?;
        }
        // However it got here, a stop ends it: every client answered, every gateway gone.
        world.input(Input::Stop("SIGTERM"));
        checker.check(&world)?;
        world.advance(Duration::from_secs(6));
        checker.check(&world)?;
        prop_assert!(world.exited_at.is_some(), "no exit after the stop");
        prop_assert!(world.live.is_empty(), "gateways left: {:?}", world.live);
        for (client, replies) in &world.replies {
            let done = replies.iter().filter(|r| matches!(r, Reply::Done(_))).count();
            prop_assert_eq!(done, 1, "client {:?} got {} final replies: {:?}", client, done, replies);
        }
    }
}
