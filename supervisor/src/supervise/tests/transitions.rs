//! Starting, serving, crashing, restarting and stopping, walked in simulated time.

use std::time::Duration;

use super::sim::{Behaviour, MS, World, config, failed, never_ready};
use crate::supervise::events::{Effect, FailureKind, Input, Notify, Outcome, Reply, Stage};
use crate::supervise::status::Phase;

#[test]
fn the_first_gateway_is_probed_until_ready_then_systemd_hears_ready_once() {
    let mut world = World::with(
        config(),
        vec![Behaviour {
            ready_after: Some(3),
            ..Behaviour::default()
        }],
    );
    assert_eq!(world.machine.status().phase, Phase::Starting);
    world.advance(Duration::from_secs(1));
    assert_eq!(world.machine.status().phase, Phase::Running);
    assert_eq!(world.count(|e| matches!(e, Effect::Probe(_))), 4);
    assert_eq!(
        world.count(|e| matches!(e, Effect::Notify(Notify::Ready(_)))),
        1
    );
    let active = world.machine.status().active.clone().unwrap();
    assert_eq!(active.version.as_deref(), Some("1.0.0"));
}

#[test]
fn a_start_that_fails_backs_off_and_tries_again() {
    let failing = Behaviour {
        spawn_fails: true,
        ..Behaviour::default()
    };
    let mut world = World::with(config(), vec![failing.clone(), failing]);
    assert_eq!(world.machine.status().phase, Phase::BackingOff);
    let error = world.machine.status().last_error.clone().unwrap().1;
    assert!(
        error.contains("could not be started") && error.contains("100ms"),
        "{error}"
    );
    world.advance(Duration::from_millis(100));
    assert_eq!(world.started.len(), 0, "the second start fails too");
    world.advance(Duration::from_millis(210));
    assert!(
        world.serving().is_some(),
        "the third start serves after 100ms + 200ms"
    );
}

#[test]
fn a_first_gateway_never_ready_is_stopped_at_the_ready_timeout_and_started_again() {
    let mut world = World::with(config(), vec![never_ready()]);
    world.advance(Duration::from_millis(1990));
    assert!(world.count(|e| matches!(e, Effect::Terminate(_))) == 0);
    world.advance(Duration::from_millis(20));
    assert_eq!(world.count(|e| matches!(e, Effect::Terminate(_))), 1);
    world.advance(Duration::from_millis(60));
    let error = world.machine.status().last_error.clone().unwrap().1;
    assert!(
        error.contains("was not ready within 2s: migrations running"),
        "{error}"
    );
    world.advance(Duration::from_millis(200));
    assert!(world.serving().is_some());
}

#[test]
fn a_crash_while_serving_is_restarted_after_the_backoff_and_counted() {
    let mut world = World::serving_one(config());
    let first = world.serving().unwrap();
    world.crash(first);
    assert_eq!(world.machine.status().phase, Phase::BackingOff);
    assert_eq!(world.machine.status().crash_restarts, 1);
    world.advance(Duration::from_millis(99));
    assert_eq!(world.started.len(), 1);
    world.advance(Duration::from_millis(10));
    assert!(world.serving().is_some_and(|c| c != first));
}

#[test]
fn a_restart_drains_the_old_gateway_only_after_the_new_one_is_ready() {
    let mut world = World::with(
        config(),
        vec![
            Behaviour::default(),
            Behaviour {
                ready_after: Some(5),
                ..Behaviour::default()
            },
        ],
    );
    world.advance(10 * MS);
    let old = world.serving().unwrap();
    let client = world.client();
    world.input(Input::Restart(client));
    let joiner = world.client();
    world.input(Input::Restart(joiner));
    world.advance(Duration::from_millis(300));
    assert_eq!(world.machine.status().phase, Phase::HandingOff);
    assert!(
        world.count(|e| *e == Effect::Terminate(old)) == 0,
        "old drains only later"
    );
    world.advance(Duration::from_millis(400));
    assert_eq!(world.count(|e| *e == Effect::Terminate(old)), 1);
    assert_eq!(world.machine.status().phase, Phase::Running);
    let new = world.serving().unwrap();
    assert_ne!(new, old);
    for c in [client, joiner] {
        assert!(matches!(
            &world.outcomes(c)[..],
            [Outcome::HandedOff {
                old_pid: Some(_),
                ..
            }]
        ));
    }
    let stages: Vec<Stage> = world.replies[&joiner]
        .iter()
        .filter_map(|r| match r {
            Reply::Step(s) => Some(s.stage),
            Reply::Done(_) => None,
        })
        .collect();
    assert_eq!(stages.first(), Some(&Stage::Joined));
    assert!(stages.ends_with(&[Stage::Switched, Stage::Draining, Stage::Drained]));
    assert!(world.machine.status().last_handoff.as_ref().unwrap().ok);
}

#[test]
fn a_candidate_that_exits_leaves_the_old_gateway_serving_untouched() {
    let mut world = World::with(config(), vec![Behaviour::default(), never_ready()]);
    world.advance(10 * MS);
    let old = world.serving().unwrap();
    let client = world.client();
    world.input(Input::Restart(client));
    let candidate = *world.started.last().unwrap();
    world.crash(candidate);
    assert_eq!(world.serving(), Some(old));
    assert_eq!(world.count(|e| *e == Effect::Terminate(old)), 0);
    let (kind, message) = failed(&world.outcomes(client)).unwrap();
    assert_eq!(kind, FailureKind::HandoffFailed);
    assert!(
        message.contains("exited with exit code 1") && message.contains("keeps serving"),
        "{message}"
    );
    assert!(!world.machine.status().last_handoff.as_ref().unwrap().ok);
}

#[test]
fn requests_arriving_while_a_failed_candidate_stops_are_handled_once_it_is_gone() {
    let stubborn = Behaviour {
        ready_after: None,
        drains_for: Some(Duration::from_millis(500)),
        ..Behaviour::default()
    };
    let mut world = World::with(config(), vec![Behaviour::default(), stubborn]);
    world.advance(10 * MS);
    let first = world.client();
    world.input(Input::Restart(first));
    world.advance(Duration::from_millis(2100));
    assert_eq!(
        world.live.len(),
        2,
        "the failed candidate is still draining"
    );
    let second = world.client();
    world.input(Input::Restart(second));
    assert_eq!(world.started.len(), 2, "no third gateway while two run");
    world.advance(Duration::from_millis(500));
    assert!(failed(&world.outcomes(first)).is_some());
    assert_eq!(
        world.started.len(),
        3,
        "the deferred restart runs once the candidate is gone"
    );
    world.advance(Duration::from_millis(300));
    assert!(matches!(
        &world.outcomes(second)[..],
        [Outcome::HandedOff { .. }]
    ));
}

#[test]
fn a_restart_during_the_backoff_starts_at_once() {
    let mut world = World::serving_one(config());
    let serving = world.serving().unwrap();
    world.crash(serving);
    world.crash(serving);
    let client = world.client();
    world.input(Input::Restart(client));
    assert_eq!(world.machine.status().phase, Phase::Starting);
    world.advance(10 * MS);
    assert!(matches!(
        &world.outcomes(client)[..],
        [Outcome::HandedOff { old_pid: None, .. }]
    ));
}

#[test]
fn a_stop_during_a_start_ends_within_the_drain_deadline_even_when_sigterm_is_ignored() {
    let stubborn = Behaviour {
        ready_after: None,
        drains_for: None,
        ..Behaviour::default()
    };
    let mut world = World::with(config(), vec![stubborn]);
    world.advance(Duration::from_millis(500));
    world.input(Input::Stop("SIGTERM"));
    world.advance(Duration::from_millis(2999));
    assert!(world.exited_at.is_none());
    world.advance(Duration::from_millis(1));
    assert_eq!(
        world.exited_at,
        Some(world.stop_at.unwrap() + Duration::from_secs(3))
    );
    assert!(world.live.is_empty());
}

#[test]
fn a_stop_during_a_drain_shares_its_deadline_and_the_handoff_still_reports_success() {
    let slow_drain = Behaviour {
        drains_for: Some(Duration::from_millis(2500)),
        ..Behaviour::default()
    };
    let mut world = World::with(config(), vec![slow_drain, Behaviour::default()]);
    world.advance(10 * MS);
    let client = world.client();
    world.input(Input::Restart(client));
    world.advance(Duration::from_millis(100));
    assert!(world.machine.status().draining.is_some());
    world.input(Input::Stop("SIGTERM"));
    let late = world.client();
    world.input(Input::Restart(late));
    assert_eq!(
        failed(&world.outcomes(late)).unwrap().0,
        FailureKind::Stopping
    );
    world.advance(Duration::from_secs(3));
    assert!(
        world
            .exited_at
            .is_some_and(|at| at <= world.stop_at.unwrap() + Duration::from_secs(3))
    );
    assert!(matches!(
        &world.outcomes(client)[..],
        [Outcome::HandedOff { .. }]
    ));
}

#[test]
fn a_stop_with_a_shutdown_delay_withdraws_the_gateway_first_and_drains_after_the_delay() {
    let mut config = config();
    config.shutdown_delay = Duration::from_secs(5);
    let mut world = World::serving_one(config);
    let serving = world.serving().unwrap();
    world.input(Input::Stop("SIGTERM"));
    assert_eq!(world.count(|e| *e == Effect::Withdraw(serving)), 1);
    assert_eq!(world.count(|e| *e == Effect::Terminate(serving)), 0);
    let late = world.client();
    world.input(Input::Restart(late));
    assert_eq!(
        failed(&world.outcomes(late)).unwrap().0,
        FailureKind::Stopping
    );
    world.advance(Duration::from_millis(4990));
    assert_eq!(
        world.count(|e| *e == Effect::Terminate(serving)),
        0,
        "still serving"
    );
    world.advance(Duration::from_millis(20));
    assert_eq!(world.count(|e| *e == Effect::Terminate(serving)), 1);
    world.advance(Duration::from_millis(100));
    assert!(world.exited_at.is_some());
}

#[test]
fn a_second_stop_during_the_shutdown_delay_drains_at_once() {
    let mut config = config();
    config.shutdown_delay = Duration::from_secs(5);
    let mut world = World::serving_one(config);
    let serving = world.serving().unwrap();
    world.input(Input::Stop("SIGTERM"));
    world.advance(Duration::from_secs(1));
    world.input(Input::Stop("SIGINT"));
    assert_eq!(world.count(|e| *e == Effect::Terminate(serving)), 1);
}
