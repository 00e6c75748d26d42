//! Updates, rollbacks and quarantine in every state, walked in simulated time.

use std::time::Duration;

use super::sim::{Behaviour, MS, World, config, crash_looping, failed, never_ready, v};
use crate::supervise::events::{Binary, Effect, FailureKind, Found, Input, InstallView, Outcome};
use crate::supervise::status::Phase;

#[test]
fn an_update_stages_hands_off_switches_and_a_crash_looping_release_is_rolled_back() {
    let mut world = World::serving_one(config());
    let client = world.client();
    world.input(Input::Update {
        client,
        version: None,
    });
    assert_eq!(world.checks.len(), 1);
    assert!(world.checks[0].stage && world.checks[0].explicit);
    world.finish_check(Found::Available(v("1.1.0")), Some(Ok(v("1.1.0"))));
    world.advance(Duration::from_millis(200));
    assert!(
        matches!(&world.outcomes(client)[..], [Outcome::HandedOff { version: Some(v), .. }] if v == "1.1.0")
    );
    assert_eq!(world.current, v("1.1.0"));
    assert_eq!(world.previous, Some(v("1.0.0")));
    for _ in 0..3 {
        let serving = world.serving().expect("1.1.0 serves between its deaths");
        world.crash(serving);
        world.advance(Duration::from_secs(1));
    }
    assert!(world.quarantined.contains("1.1.0"));
    assert_eq!(world.current, v("1.0.0"), "current points back at previous");
    let serving = world.serving().unwrap();
    assert_eq!(world.live[&serving].version, v("1.0.0"));
    let error = world.machine.status().last_error.clone().unwrap().1;
    assert!(
        error.contains("automatic rollback from 1.1.0 to 1.0.0"),
        "{error}"
    );
}

#[test]
fn a_release_that_fails_its_gate_is_quarantined_and_the_old_version_serves() {
    let mut config = config();
    config.apply = true;
    let mut world = World::with(
        config,
        vec![
            Behaviour::default(),
            Behaviour {
                wrong_version: true,
                ..Behaviour::default()
            },
        ],
    );
    world.advance(10 * MS);
    let old = world.serving().unwrap();
    world.input(Input::CheckRequested);
    world.finish_check(Found::Available(v("1.2.0")), Some(Ok(v("1.2.0"))));
    world.advance(Duration::from_millis(200));
    assert!(world.quarantined.contains("1.2.0"));
    assert_eq!(world.serving(), Some(old));
    assert_eq!(world.current, v("1.0.0"));
}

#[test]
fn a_stage_the_release_is_to_blame_for_quarantines_it_and_a_network_one_does_not() {
    let mut world = World::serving_one(config());
    for blames in [false, true] {
        let client = world.client();
        world.input(Input::Update {
            client,
            version: None,
        });
        world.finish_check(Found::Available(v("1.5.0")), Some(Err(blames)));
        let (kind, message) = failed(&world.outcomes(client)).unwrap();
        assert_eq!(kind, FailureKind::UpdateFailed);
        assert!(message.contains("staging 1.5.0 failed"), "{message}");
        assert_eq!(world.quarantined.contains("1.5.0"), blames);
    }
}

#[test]
fn a_rollback_hands_back_to_previous_and_quarantines_the_version_left() {
    let mut world = World::serving_one(config());
    let client = world.client();
    world.input(Input::Rollback(client));
    assert!(world.count(|e| matches!(e, Effect::Spawn { binary: Binary::Installed(v), .. } if *v == super::sim::v("0.9.0"))) == 1);
    world.advance(Duration::from_millis(200));
    assert!(
        matches!(&world.outcomes(client)[..], [Outcome::HandedOff { version: Some(v), .. }] if v == "0.9.0")
    );
    assert!(world.quarantined.contains("1.0.0"));
    assert!(!world.quarantined.contains("0.9.0"));
}

#[test]
fn without_an_install_dir_or_a_previous_version_a_rollback_is_refused() {
    for install in [None, Some(InstallView::default())] {
        let mut config = config();
        config.install = install;
        let mut world = World::serving_one(config);
        let client = world.client();
        world.input(Input::Rollback(client));
        assert_eq!(
            failed(&world.outcomes(client)).unwrap().0,
            FailureKind::NoRollback
        );
        assert_eq!(world.started.len(), 1);
    }
}

#[test]
fn updates_and_rollbacks_during_a_handoff_are_told_busy_and_a_second_update_joins_the_first() {
    let mut world = World::with(
        config(),
        vec![
            Behaviour::default(),
            Behaviour {
                ready_after: Some(10),
                ..Behaviour::default()
            },
        ],
    );
    world.advance(10 * MS);
    let restart = world.client();
    world.input(Input::Restart(restart));
    let (update, rollback) = (world.client(), world.client());
    world.input(Input::Update {
        client: update,
        version: None,
    });
    world.input(Input::Rollback(rollback));
    for c in [update, rollback] {
        assert_eq!(failed(&world.outcomes(c)).unwrap().0, FailureKind::Busy);
    }
    world.advance(Duration::from_secs(2));
    let (first, second) = (world.client(), world.client());
    for client in [first, second] {
        world.input(Input::Update {
            client,
            version: None,
        });
    }
    assert_eq!(world.checks.len(), 1, "the second update joined the first");
    world.finish_check(Found::UpToDate(v("1.0.0")), None);
    for c in [first, second] {
        assert_eq!(world.outcomes(c), [Outcome::UpToDate(v("1.0.0"))]);
    }
}

#[test]
fn checks_asked_for_during_a_handoff_merge_into_one_that_runs_after_it() {
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
    let client = world.client();
    world.input(Input::Restart(client));
    for _ in 0..3 {
        world.input(Input::CheckRequested);
    }
    assert!(world.checks.is_empty());
    world.advance(Duration::from_secs(1));
    assert_eq!(world.checks.len(), 1);
    assert!(!world.checks[0].explicit && !world.checks[0].stage);
    world.finish_check(Found::Available(v("1.3.0")), None);
    assert_eq!(world.machine.status().available.as_deref(), Some("1.3.0"));
    assert_eq!(world.started.len(), 2, "check mode installs nothing");
}

#[test]
fn the_version_serving_is_never_quarantined() {
    let mut config = config();
    config.apply = true;
    let mut world = World::with(config, vec![Behaviour::default(), never_ready()]);
    world.advance(10 * MS);
    world.input(Input::CheckRequested);
    // A broken pipeline offering the running version as an update.
    world.finish_check(Found::Available(v("1.0.0")), Some(Ok(v("1.0.0"))));
    world.advance(Duration::from_secs(3));
    assert!(world.quarantined.is_empty(), "{:?}", world.quarantined);
    assert!(world.serving().is_some());
}

#[test]
fn a_rollback_during_a_crash_loop_starts_previous_at_once_and_a_second_one_is_refused() {
    let mut world = World::with(
        config(),
        vec![Behaviour {
            spawn_fails: true,
            ..Behaviour::default()
        }],
    );
    assert_eq!(world.machine.status().phase, Phase::BackingOff);
    let client = world.client();
    world.input(Input::Rollback(client));
    assert_eq!(
        world.machine.status().phase,
        Phase::Starting,
        "no wait for the backoff"
    );
    world.advance(10 * MS);
    assert!(
        matches!(&world.outcomes(client)[..], [Outcome::HandedOff { old_pid: None, version: Some(v), .. }] if v == "0.9.0")
    );
    assert_eq!(world.current, v("0.9.0"));
    assert!(world.quarantined.contains("1.0.0"));
    assert_eq!(
        world.previous, None,
        "the crash-looping version is no rollback target"
    );
    let again = world.client();
    world.input(Input::Rollback(again));
    assert_eq!(
        failed(&world.outcomes(again)).unwrap().0,
        FailureKind::NoRollback
    );
    assert_eq!(world.live.len(), 1);
}

#[test]
fn a_rollback_while_a_start_is_failing_replaces_that_start() {
    let mut world = World::with(config(), vec![crash_looping()]);
    world.advance(Duration::from_millis(500));
    let failing = world.started[0];
    let client = world.client();
    world.input(Input::Rollback(client));
    assert!(world.count(|e| *e == Effect::Terminate(failing)) == 1);
    world.advance(Duration::from_millis(100));
    assert!(!world.live.contains_key(&failing));
    let serving = world.serving().expect("the previous version serves");
    assert_eq!(world.live[&serving].version, v("0.9.0"));
    assert!(matches!(
        &world.outcomes(client)[..],
        [Outcome::HandedOff { .. }]
    ));
}

#[test]
fn an_update_during_a_crash_loop_checks_against_the_installed_version_and_starts_the_fix() {
    let failing = Behaviour {
        spawn_fails: true,
        ..Behaviour::default()
    };
    let mut world = World::with(config(), vec![failing]);
    let client = world.client();
    world.input(Input::Update {
        client,
        version: Some("1.0.1".into()),
    });
    assert_eq!(world.checks.len(), 1);
    assert_eq!(world.checks[0].running, v("1.0.0"));
    world.finish_check(Found::Available(v("1.0.1")), Some(Ok(v("1.0.1"))));
    world.advance(10 * MS);
    assert!(
        matches!(&world.outcomes(client)[..], [Outcome::HandedOff { version: Some(v), .. }] if v == "1.0.1")
    );
    assert_eq!(world.current, v("1.0.1"));
    assert_eq!(world.previous, Some(v("1.0.0")));
}

#[test]
fn an_update_not_ready_while_the_serving_gateway_is_not_ready_either_is_retried_not_blamed() {
    let mut config = config();
    config.apply = true;
    let mut world = World::with(config, vec![Behaviour::default(), never_ready()]);
    world.advance(10 * MS);
    let old = world.serving().unwrap();
    world.live.get_mut(&old).unwrap().unready = true;
    world.input(Input::CheckRequested);
    world.finish_check(Found::Available(v("1.2.0")), Some(Ok(v("1.2.0"))));
    world.advance(Duration::from_secs(3));
    assert!(world.quarantined.is_empty(), "{:?}", world.quarantined);
    assert_eq!(world.serving(), Some(old));
    let error = world.machine.status().last_error.clone().unwrap().1;
    assert!(
        error.contains("not blamed") && error.contains("tried again in 10s"),
        "{error}"
    );
    // The database is back; the retry installs the release.
    world.live.get_mut(&old).unwrap().unready = false;
    world.advance(Duration::from_secs(10));
    assert_eq!(world.checks.len(), 1, "the update is tried again");
    world.finish_check(Found::Available(v("1.2.0")), Some(Ok(v("1.2.0"))));
    world.advance(Duration::from_secs(1));
    assert_eq!(world.current, v("1.2.0"));
}

#[test]
fn an_update_not_ready_while_the_serving_gateway_is_ready_is_quarantined() {
    let mut config = config();
    config.apply = true;
    let mut world = World::with(config, vec![Behaviour::default(), never_ready()]);
    world.advance(10 * MS);
    world.input(Input::CheckRequested);
    world.finish_check(Found::Available(v("1.2.0")), Some(Ok(v("1.2.0"))));
    world.advance(Duration::from_secs(3));
    assert!(world.quarantined.contains("1.2.0"));
    world.advance(Duration::from_secs(60));
    assert!(
        world.checks.is_empty(),
        "nothing retries a release at fault"
    );
}
