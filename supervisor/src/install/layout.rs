//! The install dir (`AIHUMMER_STATE_DIR`): every path in it, the `current` and `previous`
//! links, switching between installed versions and pruning old ones.
//!
//! ```text
//! <state>/
//!   versions/1.0.0/aihummer-gateway
//!   versions/1.1.0/aihummer-gateway
//!   current  -> versions/1.1.0     (symlink, relative, swapped atomically)
//!   previous -> versions/1.0.0     (the rollback target)
//!   staging/                       (downloads in progress; see `staging`)
//!   state.json                     (written atomically; see `state`)
//! ```
//!
//! `state.json` is the truth for `current` and `previous`; the links are derived from it
//! for people and scripts, and repaired at start ([`Layout::repair`]). A switch first
//! saves the state (atomically: temporary file, fsync, rename, directory fsync), which is
//! its one commit point, then re-points the links (each under a temporary name renamed
//! over the old one). A crash anywhere in between leaves an install that starts the
//! version the state names, and links that the next start repairs.
//!
//! `previous` is never a quarantined version: a rollback must not reinstall a release
//! that failed, nor quarantine the good one in its turn.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use semver::Version;

use crate::durable::{io_err, sync_dir};
use crate::failpoint;
use crate::install::error::InstallError;
use crate::install::state::State;

/// The gateway's file name, in an install's version directory and beside `aihummer`.
pub const GATEWAY_FILE: &str = "aihummer-gateway";

/// How many installed versions `prune` keeps by default, besides `current` and `previous`.
pub const KEEP_VERSIONS: usize = 3;

/// The link to the version that runs.
const CURRENT: &str = "current";
/// The link to the rollback target.
const PREVIOUS: &str = "previous";

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

    /// The install dir itself.
    pub fn root(&self) -> &Path {
        &self.root
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

    /// The version a link (`current` or `previous`) points at, if it exists.
    fn link_version(&self, name: &str) -> Result<Option<Version>, InstallError> {
        let link = self.root.join(name);
        match fs::read_link(&link) {
            Ok(target) => Ok(target
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| Version::parse(n).ok())),
            Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(err) => Err(io_err("read link", &link)(err).into()),
        }
    }

    /// The version that runs, as `state.json` says.
    pub fn current(&self) -> Result<Option<Version>, InstallError> {
        Ok(self.load_state()?.current)
    }

    /// The rollback target, as `state.json` says.
    pub fn previous(&self) -> Result<Option<Version>, InstallError> {
        Ok(self.load_state()?.previous)
    }

    /// The gateway of the `current` version, by its absolute versioned path (so a later
    /// switch cannot change what a child started from it is); `None` when nothing is
    /// installed as `current`.
    pub fn current_binary(&self) -> Result<Option<PathBuf>, InstallError> {
        let Some(version) = self.current()? else {
            return Ok(None);
        };
        let binary = self.binary(&version);
        if !binary.is_file() {
            return Err(InstallError::NotInstalled(version));
        }
        let resolved = binary.canonicalize().map_err(io_err("resolve", &binary))?;
        Ok(Some(resolved))
    }

    /// Makes the install consistent after whatever happened to the last process: an
    /// older install whose state names no `current` adopts its links, and links that do
    /// not match the state (a crash in the middle of a switch) are re-pointed. Returns
    /// the state.
    pub fn repair(&self) -> Result<State, InstallError> {
        let mut state = self.load_state()?;
        if state.current.is_none() {
            let linked = (self.link_version(CURRENT)?, self.link_version(PREVIOUS)?);
            if let (Some(current), previous) = linked {
                state.current = Some(current);
                state.previous = previous;
                self.save_state(&state)?;
            }
        }
        self.sync_links(&state)?;
        Ok(state)
    }

    /// Points `current` at `version`; the old `current` becomes `previous` (or the old
    /// `previous` stays, when the old `current` is quarantined or the same version), never a
    /// quarantined version. Raises the highest trusted version. Used after a handoff's
    /// readiness gate passed, and by a rollback.
    pub fn switch(&self, state: &mut State, version: &Version) -> Result<(), InstallError> {
        if !self.binary(version).is_file() {
            return Err(InstallError::NotInstalled(version.clone()));
        }
        failpoint::hit("switch.start");
        let previous = [state.current.take(), state.previous.take()]
            .into_iter()
            .flatten()
            .find(|v| v != version && !state.is_quarantined(v));
        state.current = Some(version.clone());
        state.previous = previous;
        state.trust(version);
        self.save_state(state)?;
        failpoint::hit("switch.state-saved");
        self.sync_links(state)
    }

    /// Points (or removes) the `current` and `previous` links as `state` says.
    pub fn sync_links(&self, state: &State) -> Result<(), InstallError> {
        for (name, version) in [(CURRENT, &state.current), (PREVIOUS, &state.previous)] {
            let link = self.root.join(name);
            match version {
                Some(version) if self.link_version(name)?.as_ref() != Some(version) => {
                    self.point(name, version)?;
                }
                None if link.symlink_metadata().is_ok() => {
                    fs::remove_file(&link).map_err(io_err("remove link", &link))?;
                    sync_dir(&self.root)?;
                }
                _ => continue,
            }
            failpoint::hit(&format!("switch.{name}-linked"));
        }
        Ok(())
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
            return Err(io_err("rename link onto", &link)(err).into());
        }
        Ok(sync_dir(&self.root)?)
    }

    /// Installed versions (directories under `versions/` named by a SemVer version and
    /// holding a gateway), ascending.
    pub fn installed(&self) -> Result<Vec<Version>, InstallError> {
        let dir = self.versions_dir();
        let entries = match fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(err) => return Err(io_err("list", &dir)(err).into()),
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

/// After a candidate passed its gate: points `current` at `version` (the old one becomes
/// `previous`), raises the highest trusted version, saves the state and prunes old
/// versions. Returns the new state.
pub fn switch(layout: &Layout, version: &Version) -> Result<State, InstallError> {
    let mut state = layout.load_state()?;
    layout.switch(&mut state, version)?;
    if let Err(err) = layout.prune(KEEP_VERSIONS) {
        // Old versions left behind cost disk, not correctness.
        tracing::warn!(error = %err, "pruning old versions failed");
    }
    Ok(state)
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
    use crate::install::testing::v;

    fn install(layout: &Layout, version: &str) {
        let dir = layout.version_dir(&v(version));
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join(GATEWAY_FILE), b"#!/bin/sh\n").unwrap();
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
