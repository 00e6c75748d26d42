//! Why the install dir could not be read or changed.

use std::path::PathBuf;

use semver::Version;

use crate::durable::FileError;
use crate::install::smoke::SmokeError;

/// Why the install dir could not be read or changed.
#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    /// A filesystem operation failed.
    #[error(transparent)]
    File(#[from] FileError),
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
    /// Another stage holds the staging lock.
    #[error("another update is staging into {} right now", dir.display())]
    Busy {
        /// The staging dir.
        dir: PathBuf,
    },
    /// A binary about to be installed is not a working gateway of the expected version.
    #[error(transparent)]
    Smoke(#[from] SmokeError),
}
