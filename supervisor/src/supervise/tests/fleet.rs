//! Automatic updates in a fleet, walked in simulated time: the permit before anything is
//! staged, the rollout lease held through the soak window and given back at its end (or
//! freed by the halt of a release that failed), waits that check again, halts that stop.

use std::time::Duration;

use super::sim::{Behaviour, MS, World, config, never_ready, v};
use crate::supervise::events::{Effect, Found, Input, Permit};

/// A node in `apply` mode in a fleet, with a 60 s soak window, serving 1.0.0.
fn fleet_node(behaviours: Vec<Behaviour>) -> World {
    let mut config = config();
    config.apply = true;
    config.soak_window = Duration::from_secs(60);
    let mut world = World::with(config, behaviours);
    world.fleet = true;
    world.advance(10 * MS);
    assert!(world.serving().is_some());
    world
}

fn released(world: &World) -> usize {
    world
        .effects
        .iter()
        .filter(|(_, e)| matches!(e, Effect::ReleaseLease))
        .count()
}

#[test]
fn the_lease_is_held_through_the_soak_window_and_given_back_at_its_end_unprompted() {
    let mut world = fleet_node(Vec::new());
    world.input(Input::CheckRequested);
    assert!(world.checks[0].automatic && world.checks[0].stage);
    world.finish_check(Found::Available(v("1.1.0")), Some(Ok(v("1.1.0"))));
    world.advance(Duration::from_millis(200));
    assert_eq!(world.current, v("1.1.0"));
    assert_eq!(
        world.lease,
        Some(v("1.1.0")),
        "held while the version soaks"
    );
    world.advance(Duration::from_secs(50));
    assert_eq!(world.lease, Some(v("1.1.0")));
    // Nothing else happens at the window's end: the machine's own timeout releases it.
    world.advance(Duration::from_secs(11));
    assert_eq!(world.lease, None);
    assert_eq!(released(&world), 1);
}

#[test]
fn a_wait_stages_nothing_says_why_and_checks_again_when_told() {
    let mut world = fleet_node(Vec::new());
    world.permits.push(Permit::Wait {
        reason: "node b holds the rollout lease, rolling out 1.1.0".into(),
        retry_in: Duration::from_secs(5),
    });
    world.input(Input::CheckRequested);
    world.finish_check(Found::Available(v("1.1.0")), Some(Ok(v("1.1.0"))));
    world.advance(Duration::from_secs(1));
    assert_eq!(world.current, v("1.0.0"), "no handoff without a permit");
    let line = world.machine.status().last_result.clone().unwrap();
    assert!(line.contains("node b holds the rollout lease"), "{line}");
    assert!(world.checks.is_empty());
    world.advance(Duration::from_secs(4));
    assert_eq!(world.checks.len(), 1, "checked again after the wait");
    world.finish_check(Found::Available(v("1.1.0")), Some(Ok(v("1.1.0"))));
    world.advance(Duration::from_millis(200));
    assert_eq!(world.current, v("1.1.0"));
}

#[test]
fn a_halted_version_is_never_installed_and_not_retried() {
    let mut world = fleet_node(Vec::new());
    world
        .permits
        .push(Permit::Halted("halted by node a: crash loop".into()));
    world.input(Input::CheckRequested);
    world.finish_check(Found::Available(v("1.1.0")), Some(Ok(v("1.1.0"))));
    world.advance(Duration::from_secs(120));
    assert_eq!(world.current, v("1.0.0"));
    assert!(world.checks.is_empty(), "a halt is not waited out");
    let line = world.machine.status().last_result.clone().unwrap();
    assert!(
        line.contains("halted fleet-wide") && line.contains("--version 1.1.0"),
        "{line}"
    );
}

#[test]
fn a_crash_loop_in_the_soak_window_halts_the_version_and_frees_the_lease_with_it() {
    let mut world = fleet_node(Vec::new());
    world.input(Input::CheckRequested);
    world.finish_check(Found::Available(v("1.1.0")), Some(Ok(v("1.1.0"))));
    world.advance(Duration::from_millis(200));
    for _ in 0..3 {
        let serving = world.serving().expect("1.1.0 serves between its deaths");
        world.crash(serving);
        world.advance(Duration::from_secs(1));
    }
    assert!(world.halted.contains("1.1.0"));
    assert_eq!(world.lease, None, "the halt frees the lease");
    assert_eq!(released(&world), 0, "no separate release after the halt");
    assert_eq!(world.current, v("1.0.0"));
    world.advance(Duration::from_secs(120));
    assert_eq!(released(&world), 0);
}

#[test]
fn a_release_failing_its_gate_is_halted_and_a_blameless_failure_only_gives_the_lease_back() {
    let mut world = fleet_node(vec![Behaviour::default(), never_ready()]);
    world.input(Input::CheckRequested);
    world.finish_check(Found::Available(v("1.2.0")), Some(Ok(v("1.2.0"))));
    world.advance(Duration::from_secs(3));
    assert!(world.halted.contains("1.2.0"));
    assert_eq!(world.lease, None);

    let mut world = fleet_node(vec![Behaviour::default(), never_ready()]);
    let old = world.serving().unwrap();
    world.live.get_mut(&old).unwrap().unready = true;
    world.input(Input::CheckRequested);
    world.finish_check(Found::Available(v("1.2.0")), Some(Ok(v("1.2.0"))));
    world.advance(Duration::from_secs(3));
    assert!(
        world.halted.is_empty(),
        "the database was down, not the release"
    );
    assert_eq!(world.lease, None);
    assert_eq!(released(&world), 1);
}

#[test]
fn a_stage_failing_on_this_host_gives_the_lease_back_and_a_bad_artifact_halts() {
    for blames in [false, true] {
        let mut world = fleet_node(Vec::new());
        world.input(Input::CheckRequested);
        world.finish_check(Found::Available(v("1.5.0")), Some(Err(blames)));
        assert_eq!(world.lease, None);
        assert_eq!(world.halted.contains("1.5.0"), blames);
        assert_eq!(released(&world), usize::from(!blames));
    }
}

#[test]
fn a_stop_during_the_soak_keeps_the_lease_for_the_driver_to_release() {
    let mut world = fleet_node(Vec::new());
    world.input(Input::CheckRequested);
    world.finish_check(Found::Available(v("1.1.0")), Some(Ok(v("1.1.0"))));
    world.advance(Duration::from_millis(200));
    world.input(Input::Stop("SIGTERM"));
    world.advance(Duration::from_secs(5));
    assert!(
        world.exited_at.is_some(),
        "the soak does not hold up a stop"
    );
}

#[test]
fn a_node_outside_the_rollout_stages_nothing_and_says_so() {
    let mut world = fleet_node(Vec::new());
    world.input(Input::CheckRequested);
    world.finish_check(
        Found::OutsideRollout {
            offered: v("1.1.0"),
            rollout: 50,
            cohort: 73,
        },
        None,
    );
    world.advance(Duration::from_secs(1));
    assert_eq!(world.current, v("1.0.0"));
    assert_eq!(world.lease, None);
    let line = world.machine.status().last_result.clone().unwrap();
    assert!(line.contains("50%") && line.contains("cohort 73"), "{line}");
}
