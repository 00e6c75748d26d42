//! The install dir (`AIHUMMER_STATE_DIR`) and its state: which versions are installed,
//! which one is `current` and `previous`, and what the updater has learnt.
//!
//! ```text
//! <state>/
//!   versions/1.0.0/aihummer-gateway
//!   versions/1.1.0/aihummer-gateway
//!   current  -> versions/1.1.0     (symlink, relative, swapped atomically)
//!   previous -> versions/1.0.0     (the rollback target)
//!   staging/                       (downloads in progress; see `stage`)
//!   state.json                     (written atomically)
//! ```
//!
//! Every change is crash-safe: a symlink is created under a temporary name and renamed
//! over the old one, the state file is written to a temporary file, fsynced and renamed,
//! and the directory is fsynced after each rename so the change survives a power cut.
//! The symlinks say what runs; `state.json` mirrors them for `status` and holds what has
//! no other home (highest trusted version, quarantine, last check).

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use semver::Version;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::config::GATEWAY_FILE;
use crate::manifest::rfc3339;

/// Current format of `state.json`.
pub const STATE_SCHEMA: u32 = 1;

/// How many installed versions `prune` keeps by default, besides `current` and `previous`.
pub const KEEP_VERSIONS: usize = 3;

/// Why the install dir could not be read or changed.
#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    /// A filesystem operation failed.
    #[error("{action} {}: {source}", path.display())]
    Io {
        /// What was being done.
        action: &'static str,
        /// On what.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// `state.json` exists but is not a state file.
    #[error(
        "{} is corrupt ({reason}); fix or remove it (removing it forgets the quarantine and the highest trusted version)",
        path.display()
    )]
    CorruptState {
        /// The state file.
        path: PathBuf,
        /// The parser's complaint.
        reason: String,
    },
    /// A switch to a version that is not installed.
    #[error("version {0} is not installed (no versions/{0}/aihummer-gateway)")]
    NotInstalled(Version),
}

fn io_err(action: &'static str, path: &Path) -> impl FnOnce(io::Error) -> InstallError {
    let path = path.to_path_buf();
    move |source| InstallError::Io {
        action,
        path,
        source,
    }
}

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
        let at = OffsetDateTime::from(now);
        LastCheck {
            // Whole seconds: this is for people reading `status`.
            at: rfc3339(at.replace_nanosecond(0).unwrap_or(at)),
            outcome,
        }
    }
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

    /// Quarantines `version` with `reason`; the updater skips it unless asked for it.
    pub fn quarantine(&mut self, version: &Version, reason: impl Into<String>) {
        self.quarantined.insert(version.to_string(), reason.into());
    }
}

/// Paths inside an install dir.
#[derive(Debug, Clone)]
pub struct Layout {
    root: PathBuf,
}

impl Layout {
    /// An install dir at `root` (`AIHUMMER_STATE_DIR`); nothing is touched yet.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Layout { root: root.into() }
    }

    /// `versions/`.
    pub fn versions_dir(&self) -> PathBuf {
        self.root.join("versions")
    }

    /// `versions/<version>/`.
    pub fn version_dir(&self, version: &Version) -> PathBuf {
        self.versions_dir().join(version.to_string())
    }

    /// `versions/<version>/aihummer-gateway`: the absolute, versioned path a child is run
    /// from, so swapping `current` never changes what a running child is.
    pub fn binary(&self, version: &Version) -> PathBuf {
        self.version_dir(version).join(GATEWAY_FILE)
    }

    /// `staging/`, on the same filesystem as `versions/` so the final rename cannot fail
    /// with EXDEV.
    pub fn staging_dir(&self) -> PathBuf {
        self.root.join("staging")
    }

    /// `state.json`.
    pub fn state_file(&self) -> PathBuf {
        self.root.join("state.json")
    }

    /// Creates `versions/` and `staging/` if missing.
    pub fn create(&self) -> Result<(), InstallError> {
        for dir in [self.versions_dir(), self.staging_dir()] {
            fs::create_dir_all(&dir).map_err(io_err("create", &dir))?;
        }
        Ok(())
    }

    /// Reads `state.json`; a missing file is a fresh install (defaults), a corrupt one an
    /// error (guessing would forget quarantines and the downgrade floor).
    pub fn load_state(&self) -> Result<State, InstallError> {
        let path = self.state_file();
        let bytes = match fs::read(&path) {
            Ok(bytes) => bytes,
            Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(State::default()),
            Err(err) => return Err(io_err("read", &path)(err)),
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

    /// Writes `state.json` atomically: temporary file, fsync, rename, fsync of the dir.
    pub fn save_state(&self, state: &State) -> Result<(), InstallError> {
        let path = self.state_file();
        let mut bytes = serde_json::to_vec_pretty(state).map_err(|err| InstallError::Io {
            action: "serialise",
            path: path.clone(),
            source: io::Error::other(err),
        })?;
        bytes.push(b'\n');
        fs::create_dir_all(&self.root).map_err(io_err("create", &self.root))?;
        let mut tmp = tempfile::Builder::new()
            .prefix(".state.json.")
            .tempfile_in(&self.root)
            .map_err(io_err("create a temporary file in", &self.root))?;
        tmp.write_all(&bytes).map_err(io_err("write", tmp.path()))?;
        tmp.as_file()
            .sync_all()
            .map_err(io_err("fsync", tmp.path()))?;
        tmp.persist(&path)
            .map_err(|err| io_err("rename into", &path)(err.error))?;
        sync_dir(&self.root)
    }

    /// The version a link (`current` or `previous`) points at, if it exists.
    fn link_version(&self, name: &str) -> Result<Option<Version>, InstallError> {
        let link = self.root.join(name);
        match fs::read_link(&link) {
            Ok(target) => Ok(target
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| Version::parse(n).ok())),
            Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(err) => Err(io_err("read link", &link)(err)),
        }
    }

    /// The version `current` points at.
    pub fn current(&self) -> Result<Option<Version>, InstallError> {
        self.link_version("current")
    }

    /// The version `previous` points at.
    pub fn previous(&self) -> Result<Option<Version>, InstallError> {
        self.link_version("previous")
    }

    /// Points `current` at `version`, keeping the old `current` as `previous` (unless it
    /// is the same version), raises the highest trusted version and saves `state`. Used
    /// after a handoff's readiness gate passed, and by a rollback (which swaps the two).
    pub fn switch(&self, state: &mut State, version: &Version) -> Result<(), InstallError> {
        if !self.binary(version).is_file() {
            return Err(InstallError::NotInstalled(version.clone()));
        }
        let old = self.current()?;
        if let Some(old) = old.as_ref().filter(|old| *old != version) {
            self.point("previous", old)?;
            state.previous = Some(old.clone());
        }
        self.point("current", version)?;
        state.current = Some(version.clone());
        state.trust(version);
        self.save_state(state)
    }

    /// Atomically (re)points link `name` at `versions/<version>`.
    fn point(&self, name: &str, version: &Version) -> Result<(), InstallError> {
        let target = Path::new("versions").join(version.to_string());
        let link = self.root.join(name);
        // A unique temporary name, then rename(2) over the old link: readers see the old
        // or the new target, never a missing link.
        let tmp = self
            .root
            .join(format!(".{name}.{}.{}", std::process::id(), nanos()));
        std::os::unix::fs::symlink(&target, &tmp).map_err(io_err("create link", &tmp))?;
        if let Err(err) = fs::rename(&tmp, &link) {
            let _ = fs::remove_file(&tmp);
            return Err(io_err("rename link onto", &link)(err));
        }
        sync_dir(&self.root)
    }

    /// Installed versions (directories under `versions/` named by a SemVer version and
    /// holding a gateway), ascending.
    pub fn installed(&self) -> Result<Vec<Version>, InstallError> {
        let dir = self.versions_dir();
        let entries = match fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(err) => return Err(io_err("list", &dir)(err)),
        };
        let mut versions: Vec<Version> = entries
            .filter_map(|e| e.ok())
            .filter_map(|e| e.file_name().to_str().and_then(|n| Version::parse(n).ok()))
            .filter(|v| self.binary(v).is_file())
            .collect();
        versions.sort();
        Ok(versions)
    }

    /// Removes installed versions beyond the newest `keep`, never `current` or `previous`.
    /// Returns what was removed. Directories that are not versions are left alone.
    pub fn prune(&self, keep: usize) -> Result<Vec<Version>, InstallError> {
        let protected = [self.current()?, self.previous()?];
        let installed = self.installed()?;
        let mut removed = Vec::new();
        let excess = installed.len().saturating_sub(keep);
        for version in installed.into_iter().take(excess) {
            if protected.iter().flatten().any(|p| *p == version) {
                continue;
            }
            let dir = self.version_dir(&version);
            fs::remove_dir_all(&dir).map_err(io_err("remove", &dir))?;
            removed.push(version);
        }
        if !removed.is_empty() {
            sync_dir(&self.versions_dir())?;
        }
        Ok(removed)
    }
}

/// fsyncs a directory, so renames and removals inside it are durable.
pub fn sync_dir(dir: &Path) -> Result<(), InstallError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err("fsync directory", dir))
}

fn nanos() -> u128 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &str) -> Version {
        Version::parse(s).unwrap()
    }

    fn install(layout: &Layout, version: &str) {
        let dir = layout.version_dir(&v(version));
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join(GATEWAY_FILE), b"#!/bin/sh\n").unwrap();
    }

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
    fn trust_never_lowers_the_highest_trusted_version() {
        let mut state = State::default();
        state.trust(&v("1.2.0"));
        state.trust(&v("1.1.0"));
        assert_eq!(state.highest_trusted, Some(v("1.2.0")));
    }

    #[test]
    fn switching_keeps_the_old_current_as_previous() {
        let dir = tempfile::tempdir().unwrap();
        let layout = Layout::new(dir.path());
        install(&layout, "1.0.0");
        install(&layout, "1.1.0");
        let mut state = State::default();
        layout.switch(&mut state, &v("1.0.0")).unwrap();
        assert_eq!(layout.current().unwrap(), Some(v("1.0.0")));
        assert_eq!(layout.previous().unwrap(), None);
        layout.switch(&mut state, &v("1.1.0")).unwrap();
        assert_eq!(layout.current().unwrap(), Some(v("1.1.0")));
        assert_eq!(layout.previous().unwrap(), Some(v("1.0.0")));
        assert!(dir.path().join("current").join(GATEWAY_FILE).is_file());
        // A rollback swaps them, and does not lower the trusted floor.
        layout.switch(&mut state, &v("1.0.0")).unwrap();
        assert_eq!(layout.current().unwrap(), Some(v("1.0.0")));
        assert_eq!(layout.previous().unwrap(), Some(v("1.1.0")));
        assert_eq!(state.highest_trusted, Some(v("1.1.0")));
        assert_eq!(layout.load_state().unwrap(), state);
        // The links are relative, so the install dir can move.
        assert_eq!(
            fs::read_link(dir.path().join("current")).unwrap(),
            Path::new("versions/1.0.0")
        );
    }

    #[test]
    fn switching_to_a_version_not_installed_fails_and_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let layout = Layout::new(dir.path());
        let mut state = State::default();
        let err = layout.switch(&mut state, &v("9.0.0")).unwrap_err();
        assert!(matches!(err, InstallError::NotInstalled(_)));
        assert_eq!(layout.current().unwrap(), None);
        assert_eq!(state, State::default());
    }

    #[test]
    fn pruning_keeps_the_newest_and_never_current_or_previous() {
        let dir = tempfile::tempdir().unwrap();
        let layout = Layout::new(dir.path());
        for ver in ["0.9.0", "1.0.0", "1.1.0", "1.2.0", "1.3.0", "1.4.0"] {
            install(&layout, ver);
        }
        fs::create_dir_all(layout.versions_dir().join("not-a-version")).unwrap();
        let mut state = State::default();
        layout.switch(&mut state, &v("0.9.0")).unwrap();
        layout.switch(&mut state, &v("1.0.0")).unwrap();
        let removed = layout.prune(2).unwrap();
        assert_eq!(removed, vec![v("1.1.0"), v("1.2.0")]);
        assert_eq!(
            layout.installed().unwrap(),
            vec![v("0.9.0"), v("1.0.0"), v("1.3.0"), v("1.4.0")]
        );
        assert!(layout.versions_dir().join("not-a-version").is_dir());
    }
}
