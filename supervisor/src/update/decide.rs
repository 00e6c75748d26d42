//! The update decision: given what runs, what the CDN offers and what this install has
//! learnt, is there a version to install? Pure; the clock is an argument.
//!
//! # Rules, in the order they are checked
//!
//! 1. The manifest's `channel` must be the channel this supervisor tracks (a mirror that
//!    serves `beta`'s manifest under `stable/` is refused, not obeyed).
//! 2. A manifest published before the newest one already accepted from this channel
//!    (`published_at` going backwards) is refused: someone replays an old, validly signed
//!    manifest to freeze the node on an old version. The same `published_at` is the same
//!    manifest fetched again, and fine.
//! 3. A manifest whose `expires` is past is refused, and the channel reported stale: its
//!    publisher stopped re-signing it, or it is a replayed old one.
//! 4. An explicit request (`aihummer update --version X`) must name the version offered.
//! 5. Same version as the running one (by SemVer precedence, build metadata ignored):
//!    up to date. A version below the running one is up to date too ([`Decision::Ahead`]):
//!    the node runs ahead of its channel (after `update --version`, or a channel switch),
//!    and the updater never downgrades by itself (`aihummer rollback` is the way back).
//! 6. A version below the highest version this install has ever trusted is refused, so a
//!    CDN (or an attacker replaying an old, validly signed manifest) cannot walk an install
//!    back down after a rollback either.
//! 7. Prereleases: `stable` carries none, so a prerelease offered on `stable` is refused;
//!    `beta`, `alfa` and `dev` carry prereleases and releases alike.
//! 8. A running version below the manifest's `min_version` is refused: it must step
//!    through an intermediate release first.
//! 9. A quarantined version (one that failed its handoff or crash-looped) is refused,
//!    unless the operator asked for exactly that version.
//!
//! 10. A version rolled out to part of the fleet (`rollout` below 100) waits on a node
//!     whose cohort is outside it ([`Decision::OutsideRollout`]), when the check is an
//!     automatic one; an operator's `aihummer update` is not held back by it.
//!
//! Otherwise the offered version is the update.

use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::time::SystemTime;

use semver::Version;
use time::OffsetDateTime;

use crate::update::channel::Channel;
use crate::update::manifest::{Manifest, rfc3339};

/// Everything the decision looks at.
#[derive(Debug, Clone, Copy)]
pub struct Inputs<'a> {
    /// The version of the gateway serving now.
    pub running: &'a Version,
    /// The verified, parsed manifest.
    pub manifest: &'a Manifest,
    /// The channel this supervisor tracks.
    pub channel: Channel,
    /// The highest version this install has trusted (persisted in the state file).
    pub highest_trusted: Option<&'a Version>,
    /// The newest `published_at` already accepted from this channel.
    pub last_published_at: Option<OffsetDateTime>,
    /// Quarantined versions (as written, e.g. `1.1.0`) and why.
    pub quarantined: &'a BTreeMap<String, String>,
    /// A version the operator asked for explicitly.
    pub requested: Option<&'a Version>,
    /// This node's rollout cohort (0 to 99) when the check is automatic; `None` when an
    /// operator asked, which the rollout percentage does not hold back.
    pub cohort: Option<u8>,
    /// The current time.
    pub now: SystemTime,
}

/// The outcome of a check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// The offered version is the running one.
    UpToDate,
    /// The offered version is older than the running one: nothing to do.
    Ahead {
        /// What the manifest offers.
        offered: Version,
    },
    /// Install this version.
    Update(Version),
    /// A newer version is rolled out to a share of the fleet this node is not in yet.
    OutsideRollout {
        /// What the manifest offers.
        offered: Version,
        /// The manifest's `rollout` percentage.
        rollout: u8,
        /// This node's cohort.
        cohort: u8,
    },
    /// The manifest cannot be acted upon; the reason says why.
    Refused(Refusal),
}

/// Why an offered version is not installed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The manifest was published for another channel.
    #[error("the manifest is for channel {found:?}, but this supervisor tracks {expected}")]
    WrongChannel {
        /// The tracked channel.
        expected: Channel,
        /// The manifest's `channel`.
        found: String,
    },
    /// The manifest was published before the newest one already accepted.
    #[error(
        "the manifest for {version} was published at {published_at}, before {last}, the newest already accepted from channel {channel}; refusing a replayed old manifest"
    )]
    Replayed {
        /// The tracked channel.
        channel: Channel,
        /// The offered version.
        version: Version,
        /// Its `published_at`, RFC 3339.
        published_at: String,
        /// The newest accepted `published_at`, RFC 3339.
        last: String,
    },
    /// `expires` is in the past: the channel is stale.
    #[error(
        "channel {channel} is stale: its latest.json expired at {expires} (it offers {version})"
    )]
    Expired {
        /// The tracked channel.
        channel: Channel,
        /// The offered version.
        version: Version,
        /// Its `expires`, RFC 3339.
        expires: String,
    },
    /// The operator asked for a version the channel does not offer.
    #[error("version {requested} was requested, but the channel offers {offered}")]
    NotOffered {
        /// What was asked for.
        requested: Version,
        /// What the manifest offers.
        offered: Version,
    },
    /// The offered version is below one this install already trusted.
    #[error(
        "the channel offers {offered}, below {highest}, the highest version already trusted; not downgrading"
    )]
    BelowHighestTrusted {
        /// What the manifest offers.
        offered: Version,
        /// The persisted highest trusted version.
        highest: Version,
    },
    /// A prerelease on a channel that carries none.
    #[error("{version} is a prerelease, and channel {channel} carries no prereleases")]
    Prerelease {
        /// What the manifest offers.
        version: Version,
        /// The tracked channel.
        channel: Channel,
    },
    /// The running version is too old to jump straight to the offered one.
    #[error("{offered} requires at least {min_version} to be running first; {running} runs")]
    BelowMinVersion {
        /// What the manifest offers.
        offered: Version,
        /// The manifest's `min_version`.
        min_version: Version,
        /// What runs.
        running: Version,
    },
    /// The version failed before and was quarantined.
    #[error("{version} is quarantined ({reason}); ask for it explicitly to try it again")]
    Quarantined {
        /// What the manifest offers.
        version: Version,
        /// Why it was quarantined.
        reason: String,
    },
}

/// Decides what to do with a manifest. See the module doc for the rules.
pub fn decide(inputs: Inputs<'_>) -> Decision {
    match check(inputs) {
        Ok(Some(version)) => match (inputs.cohort, inputs.manifest.rollout) {
            (Some(cohort), Some(rollout)) if !in_rollout(cohort, rollout) => {
                Decision::OutsideRollout {
                    offered: version,
                    rollout,
                    cohort,
                }
            }
            _ => Decision::Update(version),
        },
        Ok(None) if runs_ahead(&inputs) => Decision::Ahead {
            offered: inputs.manifest.version.clone(),
        },
        Ok(None) => Decision::UpToDate,
        Err(refusal) => Decision::Refused(refusal),
    }
}

/// Whether a node in `cohort` installs a release rolled out to `rollout` percent: the
/// cohorts below it do, so widening a rollout only ever adds nodes.
pub fn in_rollout(cohort: u8, rollout: u8) -> bool {
    cohort < rollout
}

/// Whether the offer is below the running version (checked only once nothing refused it).
fn runs_ahead(i: &Inputs<'_>) -> bool {
    i.manifest.version.cmp_precedence(i.running) == Ordering::Less
}

fn check(i: Inputs<'_>) -> Result<Option<Version>, Refusal> {
    let m = i.manifest;
    let offered = &m.version;
    if m.channel != i.channel.as_str() {
        return Err(Refusal::WrongChannel {
            expected: i.channel,
            found: m.channel.clone(),
        });
    }
    if let Some(last) = i.last_published_at
        && m.published_at < last
    {
        return Err(Refusal::Replayed {
            channel: i.channel,
            version: offered.clone(),
            published_at: rfc3339(m.published_at),
            last: rfc3339(last),
        });
    }
    if let Some(expires) = m.expires
        && expires <= OffsetDateTime::from(i.now)
    {
        return Err(Refusal::Expired {
            channel: i.channel,
            version: offered.clone(),
            expires: rfc3339(expires),
        });
    }
    if let Some(requested) = i.requested
        && requested.cmp_precedence(offered) != Ordering::Equal
    {
        return Err(Refusal::NotOffered {
            requested: requested.clone(),
            offered: offered.clone(),
        });
    }
    if offered.cmp_precedence(i.running) != Ordering::Greater {
        return Ok(None);
    }
    if let Some(highest) = i.highest_trusted
        && offered.cmp_precedence(highest) == Ordering::Less
    {
        return Err(Refusal::BelowHighestTrusted {
            offered: offered.clone(),
            highest: highest.clone(),
        });
    }
    if !offered.pre.is_empty() && !i.channel.carries_prereleases() {
        return Err(Refusal::Prerelease {
            version: offered.clone(),
            channel: i.channel,
        });
    }
    if let Some(min) = &m.min_version
        && i.running.cmp_precedence(min) == Ordering::Less
    {
        return Err(Refusal::BelowMinVersion {
            offered: offered.clone(),
            min_version: min.clone(),
            running: i.running.clone(),
        });
    }
    if i.requested.is_none()
        && let Some(reason) = i.quarantined.get(&offered.to_string())
    {
        return Err(Refusal::Quarantined {
            version: offered.clone(),
            reason: reason.clone(),
        });
    }
    Ok(Some(offered.clone()))
}

#[cfg(test)]
mod tests;
