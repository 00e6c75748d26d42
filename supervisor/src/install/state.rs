//! `state.json`: what the install dir knows that has no other home (the highest trusted
//! version, the quarantine with its reasons, counts and times, the newest `published_at`
//! accepted per channel, the last check), and the verbs that change it.
//!
//! The file is written atomically (temporary file, fsync, rename, fsync of the dir). The
//! `current` and `previous` links say what runs; the file mirrors them for `status`.

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::time::SystemTime;

use semver::Version;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::durable::{io_err, write_atomic};
use crate::install::error::InstallError;
use crate::install::layout::Layout;

/// Current format of `state.json`.
pub const STATE_SCHEMA: u32 = 1;

/// The result of the last update check, as `status` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum CheckOutcome {
    /// The channel offers the running version.
    UpToDate {
        /// The running version.
        version: Version,
    },
    /// A newer version is offered (and, in `apply` mode, about to be installed).
    Available {
        /// The offered version.
        version: Version,
    },
    /// The manifest was refused (signature, expiry, downgrade, quarantine, ...).
    Refused {
        /// Why, as printed to the operator.
        reason: String,
    },
    /// The check itself failed (network, HTTP status, timeout, parse error).
    Failed {
        /// Why, as printed to the operator.
        reason: String,
    },
}

/// When the last check ran and what it found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LastCheck {
    /// RFC 3339, UTC.
    pub at: String,
    /// What it found.
    pub outcome: CheckOutcome,
}

impl LastCheck {
    /// A check that ran at `now`.
    pub fn new(now: SystemTime, outcome: CheckOutcome) -> Self {
        LastCheck {
            at: seconds_rfc3339(now),
            outcome,
        }
    }
}

/// One quarantined version's history, as `status` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QuarantineRecord {
    /// The latest reason.
    pub reason: String,
    /// How many times the version was quarantined.
    pub count: u32,
    /// When it was first quarantined, RFC 3339, UTC.
    pub first_at: String,
    /// When it was last quarantined, RFC 3339, UTC.
    pub last_at: String,
}

/// The contents of `state.json`. Fields missing from the file take their defaults, so a
/// file written by an older supervisor still loads; unknown fields are ignored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct State {
    /// Format version of this file.
    pub schema: u32,
    /// The version `current` points at.
    pub current: Option<Version>,
    /// The version `previous` points at: the rollback target.
    pub previous: Option<Version>,
    /// The highest version this install ever switched to; nothing below is installed by
    /// the updater on its own.
    pub highest_trusted: Option<Version>,
    /// Versions that failed a handoff or crash-looped, with the reason.
    pub quarantined: BTreeMap<String, String>,
    /// The same versions with how often and when they were quarantined. Kept beside
    /// `quarantined` (not in it) so that older supervisors still read the file.
    pub quarantine_history: BTreeMap<String, QuarantineRecord>,
    /// Per channel, the newest `published_at` (RFC 3339) of a manifest accepted from it:
    /// an older one is a replay and is refused.
    pub published_at: BTreeMap<String, String>,
    /// The last update check.
    pub last_check: Option<LastCheck>,
}

impl Default for State {
    fn default() -> Self {
        State {
            schema: STATE_SCHEMA,
            current: None,
            previous: None,
            highest_trusted: None,
            quarantined: BTreeMap::new(),
            quarantine_history: BTreeMap::new(),
            published_at: BTreeMap::new(),
            last_check: None,
        }
    }
}

impl State {
    /// Raises `highest_trusted` to `version` if it is higher (never lowers it).
    pub fn trust(&mut self, version: &Version) {
        if self
            .highest_trusted
            .as_ref()
            .is_none_or(|h| version.cmp_precedence(h).is_gt())
        {
            self.highest_trusted = Some(version.clone());
        }
    }

    /// Quarantines `version` with `reason` now; the updater skips it unless asked for it,
    /// and it is no longer a rollback target.
    pub fn quarantine(&mut self, version: &Version, reason: impl Into<String>) {
        self.quarantine_at(version, reason, SystemTime::now());
    }

    /// Whether `version` is quarantined.
    pub fn is_quarantined(&self, version: &Version) -> bool {
        self.quarantined.contains_key(&version.to_string())
    }

    /// Quarantines `version` with `reason` at `now`, counting repeats.
    pub fn quarantine_at(&mut self, version: &Version, reason: impl Into<String>, now: SystemTime) {
        let reason = reason.into();
        let at = seconds_rfc3339(now);
        self.quarantined.insert(version.to_string(), reason.clone());
        if self.previous.as_ref() == Some(version) {
            self.previous = None;
        }
        self.quarantine_history
            .entry(version.to_string())
            .and_modify(|r| {
                r.reason = reason.clone();
                r.count = r.count.saturating_add(1);
                r.last_at = at.clone();
            })
            .or_insert_with(|| QuarantineRecord {
                reason,
                count: 1,
                first_at: at.clone(),
                last_at: at,
            });
    }

    /// The newest `published_at` accepted from `channel`; an unreadable entry counts as
    /// none (it was written by this code, so only a hand edit makes one).
    pub fn published_at(&self, channel: &str) -> Option<OffsetDateTime> {
        self.published_at
            .get(channel)
            .and_then(|at| OffsetDateTime::parse(at, &Rfc3339).ok())
    }

    /// Records `at` as the newest `published_at` accepted from `channel` if it is newer
    /// (never goes back); returns whether it changed.
    pub fn accept_published_at(&mut self, channel: &str, at: OffsetDateTime) -> bool {
        if self.published_at(channel).is_some_and(|last| last >= at) {
            return false;
        }
        match at.format(&Rfc3339) {
            Ok(text) => {
                self.published_at.insert(channel.to_string(), text);
                true
            }
            Err(_) => false,
        }
    }
}

/// RFC 3339 in whole seconds: this is for people reading `status`.
fn seconds_rfc3339(now: SystemTime) -> String {
    let at = OffsetDateTime::from(now);
    at.replace_nanosecond(0)
        .unwrap_or(at)
        .format(&Rfc3339)
        .unwrap_or_else(|_| at.to_string())
}

impl Layout {
    /// Reads `state.json`; a missing file is a fresh install (defaults), a corrupt one an
    /// error (guessing would forget quarantines and the downgrade floor).
    pub fn load_state(&self) -> Result<State, InstallError> {
        let path = self.state_file();
        let bytes = match fs::read(&path) {
            Ok(bytes) => bytes,
            Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(State::default()),
            Err(err) => return Err(io_err("read", &path)(err).into()),
        };
        let state: State =
            serde_json::from_slice(&bytes).map_err(|err| InstallError::CorruptState {
                path: path.clone(),
                reason: err.to_string(),
            })?;
        if state.schema != STATE_SCHEMA {
            return Err(InstallError::CorruptState {
                path,
                reason: format!("schema {} is not {STATE_SCHEMA}", state.schema),
            });
        }
        Ok(state)
    }

    /// Writes `state.json` atomically, readable by its owner only.
    pub fn save_state(&self, state: &State) -> Result<(), InstallError> {
        let path = self.state_file();
        let mut bytes = serde_json::to_vec_pretty(state)
            .map_err(|err| io_err("serialise", &path)(io::Error::other(err)))?;
        bytes.push(b'\n');
        fs::create_dir_all(self.root()).map_err(io_err("create", self.root()))?;
        Ok(write_atomic(&path, &bytes, 0o600)?)
    }
}

/// Records the last check's outcome in the state file.
pub fn record_check(layout: &Layout, outcome: CheckOutcome) -> Result<(), InstallError> {
    let mut state = layout.load_state()?;
    state.last_check = Some(LastCheck::new(SystemTime::now(), outcome));
    layout.save_state(&state)
}

/// Quarantines `version` with `reason` in the state file (a quarantined `previous` stops
/// being the rollback target, and its link goes); returns the new state.
pub fn quarantine(layout: &Layout, version: &Version, reason: &str) -> Result<State, InstallError> {
    let mut state = layout.load_state()?;
    state.quarantine(version, reason);
    layout.save_state(&state)?;
    layout.sync_links(&state)?;
    Ok(state)
}

/// The quarantine as `status` lists it: `version: reason`, followed by how often and
/// when when that is known (`(quarantined 2 times, first at ..., last at ...)`).
pub fn quarantine_list(state: &State) -> Vec<String> {
    state
        .quarantined
        .iter()
        .map(
            |(version, reason)| match state.quarantine_history.get(version) {
                Some(r) if r.count > 1 => format!(
                    "{version}: {reason} (quarantined {} times, first at {}, last at {})",
                    r.count, r.first_at, r.last_at
                ),
                Some(r) => format!("{version}: {reason} (quarantined at {})", r.last_at),
                None => format!("{version}: {reason}"),
            },
        )
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::install::testing::v;

    #[test]
    fn a_missing_state_file_gives_defaults_and_a_saved_one_reads_back() {
        let dir = tempfile::tempdir().unwrap();
        let layout = Layout::new(dir.path());
        assert_eq!(layout.load_state().unwrap(), State::default());
        let mut state = State::default();
        state.quarantine(&v("1.1.0"), "never became ready");
        state.trust(&v("1.0.0"));
        state.last_check = Some(LastCheck::new(
            SystemTime::UNIX_EPOCH,
            CheckOutcome::Available {
                version: v("1.1.0"),
            },
        ));
        layout.save_state(&state).unwrap();
        assert_eq!(layout.load_state().unwrap(), state);
        let text = fs::read_to_string(layout.state_file()).unwrap();
        assert!(text.contains("\"1.1.0\": \"never became ready\""), "{text}");
        assert!(text.contains("\"at\": \"1970-01-01T00:00:00Z\""), "{text}");
        assert!(text.contains("\"result\": \"available\""), "{text}");
        // Nothing temporary is left beside it.
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("state.json")]);
    }

    #[test]
    fn a_sparse_state_file_loads_with_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let layout = Layout::new(dir.path());
        fs::write(
            layout.state_file(),
            b"{\"current\": \"1.0.0\", \"later\": true}",
        )
        .unwrap();
        let state = layout.load_state().unwrap();
        assert_eq!(state.current, Some(v("1.0.0")));
        assert!(state.quarantined.is_empty());
        let check = LastCheck::new(
            SystemTime::UNIX_EPOCH + std::time::Duration::from_millis(1500),
            CheckOutcome::Failed { reason: "x".into() },
        );
        assert_eq!(check.at, "1970-01-01T00:00:01Z");
    }

    #[test]
    fn a_corrupt_state_file_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let layout = Layout::new(dir.path());
        fs::write(layout.state_file(), b"{\"schema\": 1, \"current\": ").unwrap();
        let err = layout.load_state().unwrap_err().to_string();
        assert!(err.contains("state.json is corrupt"), "{err}");
    }

    #[test]
    fn a_quarantine_counts_repeats_and_keeps_first_and_last_time_and_status_lists_them() {
        let dir = tempfile::tempdir().unwrap();
        let layout = Layout::new(dir.path());
        let at = |s| SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(s);
        let mut state = State::default();
        state.quarantine_at(&v("1.1.0"), "sha256 mismatch", at(60));
        state.quarantine_at(&v("1.2.0"), "never became ready", at(61));
        state.quarantine_at(&v("1.1.0"), "rolled back to 1.0.0", at(120));
        layout.save_state(&state).unwrap();
        let state = layout.load_state().unwrap();
        assert_eq!(
            quarantine_list(&state),
            vec![
                "1.1.0: rolled back to 1.0.0 (quarantined 2 times, first at 1970-01-01T00:01:00Z, last at 1970-01-01T00:02:00Z)",
                "1.2.0: never became ready (quarantined at 1970-01-01T00:01:01Z)",
            ]
        );
        // A file written before the history existed still lists its quarantine.
        fs::write(
            layout.state_file(),
            b"{\"schema\": 1, \"quarantined\": {\"1.3.0\": \"bad\"}}",
        )
        .unwrap();
        assert_eq!(
            quarantine_list(&layout.load_state().unwrap()),
            vec!["1.3.0: bad"]
        );
    }

    #[test]
    fn the_newest_published_at_per_channel_never_goes_back() {
        let t = |s| OffsetDateTime::from_unix_timestamp(s).unwrap();
        let mut state = State::default();
        assert!(state.accept_published_at("stable", t(100)));
        assert!(!state.accept_published_at("stable", t(100)));
        assert!(!state.accept_published_at("stable", t(50)));
        assert!(state.accept_published_at("beta", t(10)));
        assert_eq!(state.published_at("stable"), Some(t(100)));
        assert_eq!(state.published_at("beta"), Some(t(10)));
        assert_eq!(state.published_at("dev"), None);
    }

    #[test]
    fn trust_never_lowers_the_highest_trusted_version() {
        let mut state = State::default();
        state.trust(&v("1.2.0"));
        state.trust(&v("1.1.0"));
        assert_eq!(state.highest_trusted, Some(v("1.2.0")));
    }
}
