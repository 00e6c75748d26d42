//! `aihummer update --check` through the machine: a check with the supervisor's settings
//! that installs nothing, answers its clients, and is recorded in status like any check.

use super::sim::{World, config, v};
use crate::supervise::events::{FailureKind, Found, Input, Outcome};

#[test]
fn a_check_only_request_answers_with_what_the_channel_offers_and_shows_it_in_status() {
    let mut world = World::serving_one(config());
    let (first, second) = (world.client(), world.client());
    world.input(Input::CheckOnly(first));
    world.input(Input::CheckOnly(second));
    assert_eq!(world.checks.len(), 1, "the second request joined the first");
    let request = &world.checks[0];
    assert!(request.check_only && !request.stage && !request.explicit);
    assert_eq!(request.running, v("1.0.0"));
    let started = world.started.len();
    world.finish_check(Found::Available(v("1.4.5")), None);
    let answer = Outcome::Checked {
        running: v("1.0.0"),
        offered: v("1.4.5"),
        available: true,
    };
    for client in [first, second] {
        assert_eq!(world.outcomes(client), std::slice::from_ref(&answer));
    }
    let status = world.machine.status();
    assert_eq!(status.available.as_deref(), Some("1.4.5"));
    assert_eq!(
        status.last_result.as_deref(),
        Some("update available: 1.4.5")
    );
    assert!(status.last_check.is_some());
    assert_eq!(world.started.len(), started, "a check installs nothing");
}

#[test]
fn a_failed_check_only_request_is_the_clients_failure_and_recorded() {
    let mut world = World::serving_one(config());
    let client = world.client();
    world.input(Input::CheckOnly(client));
    world.finish_check(Found::Failed("GET x failed".into()), None);
    assert!(matches!(
        &world.outcomes(client)[..],
        [Outcome::Failed { kind: FailureKind::UpdateFailed, message }] if message == "GET x failed"
    ));
    assert_eq!(
        world.machine.status().last_result.as_deref(),
        Some("check failed: GET x failed")
    );
}

#[test]
fn without_an_update_source_a_check_only_request_is_refused_with_the_reason() {
    let mut world = World::serving_one(crate::supervise::machine::Config {
        update_source: Err("no update source is configured".into()),
        ..config()
    });
    let client = world.client();
    world.input(Input::CheckOnly(client));
    assert!(world.checks.is_empty());
    assert!(matches!(
        &world.outcomes(client)[..],
        [Outcome::Failed { message, .. }] if message.contains("no update source")
    ));
}
