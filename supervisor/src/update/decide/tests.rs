//! Unit tests of `decide`.

use super::*;
use proptest::prelude::*;
use std::time::Duration;

fn v(s: &str) -> Version {
    Version::parse(s).unwrap()
}

fn manifest(version: &str) -> Manifest {
    Manifest {
        schema: 1,
        channel: "stable".into(),
        version: v(version),
        published_at: OffsetDateTime::from_unix_timestamp(1_700_000_000).unwrap(),
        expires: None,
        min_version: None,
        notes_url: None,
        rollout: None,
        artifacts: BTreeMap::new(),
    }
}

fn now() -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000)
}

struct Case {
    running: Version,
    manifest: Manifest,
    channel: Channel,
    highest: Option<Version>,
    quarantined: BTreeMap<String, String>,
    requested: Option<Version>,
    last_published_at: Option<OffsetDateTime>,
    cohort: Option<u8>,
}

impl Case {
    fn new(running: &str, offered: &str) -> Self {
        Case {
            running: v(running),
            manifest: manifest(offered),
            channel: Channel::Stable,
            highest: None,
            quarantined: BTreeMap::new(),
            requested: None,
            last_published_at: None,
            cohort: None,
        }
    }

    fn decide(&self) -> Decision {
        decide(Inputs {
            running: &self.running,
            manifest: &self.manifest,
            channel: self.channel,
            highest_trusted: self.highest.as_ref(),
            last_published_at: self.last_published_at,
            quarantined: &self.quarantined,
            requested: self.requested.as_ref(),
            cohort: self.cohort,
            now: now(),
        })
    }
}

#[test]
fn a_partial_rollout_holds_back_automatic_checks_outside_it_only() {
    let mut case = Case::new("1.0.0", "1.1.0");
    case.manifest.rollout = Some(50);
    case.cohort = Some(49);
    assert_eq!(case.decide(), Decision::Update(v("1.1.0")), "inside");
    case.cohort = Some(50);
    assert_eq!(
        case.decide(),
        Decision::OutsideRollout {
            offered: v("1.1.0"),
            rollout: 50,
            cohort: 50
        }
    );
    case.cohort = None;
    assert_eq!(
        case.decide(),
        Decision::Update(v("1.1.0")),
        "an operator asked"
    );
    case.cohort = Some(99);
    case.manifest.rollout = None;
    assert_eq!(
        case.decide(),
        Decision::Update(v("1.1.0")),
        "absent means 100"
    );
    case.manifest.rollout = Some(0);
    case.cohort = Some(0);
    assert!(
        matches!(case.decide(), Decision::OutsideRollout { .. }),
        "0 means none"
    );
}

#[test]
fn a_wider_rollout_only_adds_nodes() {
    for cohort in 0..100 {
        for rollout in 0..100 {
            if in_rollout(cohort, rollout) {
                assert!(in_rollout(cohort, rollout + 1));
            }
        }
        assert!(!in_rollout(cohort, 0));
        assert!(in_rollout(cohort, 100));
    }
}

#[test]
fn a_newer_version_is_an_update() {
    assert_eq!(
        Case::new("1.0.0", "1.1.0").decide(),
        Decision::Update(v("1.1.0"))
    );
}

#[test]
fn the_same_version_is_up_to_date_even_with_other_build_metadata() {
    assert_eq!(Case::new("1.0.0", "1.0.0").decide(), Decision::UpToDate);
    assert_eq!(Case::new("1.0.0", "1.0.0+b7").decide(), Decision::UpToDate);
}

#[test]
fn a_channel_behind_the_node_is_up_to_date_not_a_refusal() {
    assert_eq!(
        Case::new("1.5.0", "1.4.0").decide(),
        Decision::Ahead {
            offered: v("1.4.0")
        }
    );
}

#[test]
fn a_replayed_old_manifest_is_refused_and_the_same_one_again_is_not() {
    let mut c = Case::new("1.0.0", "1.1.0");
    let published = c.manifest.published_at;
    c.last_published_at = Some(published + time::Duration::seconds(1));
    let Decision::Refused(r) = c.decide() else {
        panic!()
    };
    assert_eq!(
        r.to_string(),
        "the manifest for 1.1.0 was published at 2023-11-14T22:13:20Z, before 2023-11-14T22:13:21Z, the newest already accepted from channel stable; refusing a replayed old manifest"
    );
    c.last_published_at = Some(published);
    assert_eq!(c.decide(), Decision::Update(v("1.1.0")));
    // Replayed and behind the node: still a replay, not "up to date".
    c.running = v("1.2.0");
    c.last_published_at = Some(published + time::Duration::seconds(1));
    assert!(matches!(
        c.decide(),
        Decision::Refused(Refusal::Replayed { .. })
    ));
}

#[test]
fn a_version_below_the_highest_trusted_is_refused() {
    let mut c = Case::new("1.0.0", "1.1.0");
    c.highest = Some(v("1.2.0"));
    let Decision::Refused(r) = c.decide() else {
        panic!()
    };
    assert_eq!(
        r.to_string(),
        "the channel offers 1.1.0, below 1.2.0, the highest version already trusted; not downgrading"
    );
}

#[test]
fn stable_refuses_prereleases_and_other_channels_take_them() {
    let mut c = Case::new("1.0.0", "1.1.0-rc.1");
    assert!(matches!(
        c.decide(),
        Decision::Refused(Refusal::Prerelease { .. })
    ));
    for channel in [Channel::Beta, Channel::Alfa, Channel::Dev] {
        c.channel = channel;
        c.manifest.channel = channel.as_str().into();
        assert_eq!(c.decide(), Decision::Update(v("1.1.0-rc.1")));
    }
}

#[test]
fn a_manifest_for_another_channel_is_refused() {
    let mut c = Case::new("1.0.0", "1.1.0");
    c.manifest.channel = "beta".into();
    assert!(matches!(
        c.decide(),
        Decision::Refused(Refusal::WrongChannel { .. })
    ));
}

#[test]
fn an_expired_manifest_is_refused() {
    let mut c = Case::new("1.0.0", "1.1.0");
    c.manifest.expires = Some(OffsetDateTime::from(now() - Duration::from_secs(1)));
    let Decision::Refused(r) = c.decide() else {
        panic!()
    };
    assert!(
        r.to_string()
            .starts_with("channel stable is stale: its latest.json expired at 2027-01-15T"),
        "{r}"
    );
    c.manifest.expires = Some(OffsetDateTime::from(now() + Duration::from_secs(60)));
    assert_eq!(c.decide(), Decision::Update(v("1.1.0")));
}

#[test]
fn a_running_version_below_min_version_is_refused() {
    let mut c = Case::new("1.0.0", "2.0.0");
    c.manifest.min_version = Some(v("1.5.0"));
    assert!(matches!(
        c.decide(),
        Decision::Refused(Refusal::BelowMinVersion { .. })
    ));
    c.running = v("1.5.0");
    assert_eq!(c.decide(), Decision::Update(v("2.0.0")));
}

#[test]
fn a_quarantined_version_is_refused_unless_asked_for() {
    let mut c = Case::new("1.0.0", "1.1.0");
    c.quarantined
        .insert("1.1.0".into(), "never became ready".into());
    let Decision::Refused(r) = c.decide() else {
        panic!()
    };
    assert_eq!(
        r.to_string(),
        "1.1.0 is quarantined (never became ready); ask for it explicitly to try it again"
    );
    c.requested = Some(v("1.1.0"));
    assert_eq!(c.decide(), Decision::Update(v("1.1.0")));
}

#[test]
fn a_request_for_a_version_not_offered_is_refused() {
    let mut c = Case::new("1.0.0", "1.1.0");
    c.requested = Some(v("1.2.0"));
    assert!(matches!(
        c.decide(),
        Decision::Refused(Refusal::NotOffered { .. })
    ));
}

fn arb_version() -> impl Strategy<Value = Version> {
    crate::update::testing::arb_version(4, "(rc|beta)\\.[0-3]")
}

fn arb_channel() -> impl Strategy<Value = Channel> {
    prop_oneof![
        Just(Channel::Stable),
        Just(Channel::Beta),
        Just(Channel::Alfa),
        Just(Channel::Dev)
    ]
}

proptest! {
    #[test]
    fn never_picks_a_version_not_above_running_or_below_highest_trusted_or_quarantined_unasked_or_replayed(
        running in arb_version(),
        offered in arb_version(),
        min_version in proptest::option::of(arb_version()),
        highest in proptest::option::of(arb_version()),
        channel in arb_channel(),
        manifest_channel in arb_channel(),
        quarantine_it in any::<bool>(),
        request in proptest::option::of(arb_version()),
        expires_in in proptest::option::of(-100i64..100),
        accepted_ago in proptest::option::of(-100i64..100),
    ) {
        let mut m = manifest(&offered.to_string());
        m.channel = manifest_channel.as_str().into();
        m.min_version = min_version;
        m.expires = expires_in.map(|s| OffsetDateTime::from(now()) + time::Duration::seconds(s));
        let mut quarantined = BTreeMap::new();
        if quarantine_it {
            quarantined.insert(offered.to_string(), "failed".to_string());
        }
        let last_published_at = accepted_ago.map(|s| m.published_at + time::Duration::seconds(s));
        let decision = decide(Inputs {
            running: &running,
            manifest: &m,
            channel,
            highest_trusted: highest.as_ref(),
            last_published_at,
            quarantined: &quarantined,
            requested: request.as_ref(),
            cohort: None,
            now: now(),
        });
        if let Decision::Update(picked) = decision {
            prop_assert_eq!(&picked, &offered);
            prop_assert_eq!(picked.cmp_precedence(&running), Ordering::Greater);
            if let Some(h) = &highest {
                prop_assert_ne!(picked.cmp_precedence(h), Ordering::Less);
            }
            prop_assert!(!quarantine_it || request.is_some());
            prop_assert!(picked.pre.is_empty() || channel.carries_prereleases());
            prop_assert_eq!(manifest_channel, channel);
            prop_assert!(expires_in.is_none_or(|s| s > 0));
            prop_assert!(last_published_at.is_none_or(|last| m.published_at >= last));
        }
    }
}
