//! Staging a downloaded gateway into the install dir: check free disk, stream the
//! artifact into the locked `staging/`, compare size and sha256 with the manifest, then
//! hand the file to the install dir, which smoke tests it and renames it into
//! `versions/<version>/aihummer-gateway` (see [`crate::install::staging`]).
//!
//! Whatever the reason a stage fails, nothing is left in `staging/` or `versions/`.
//! Whether a failure is worth one more [`Attempt`] (a fresh download after a mismatch, a
//! longer smoke test after a timeout) is the pipeline's call; this module says which
//! failure it was.

use std::path::{Path, PathBuf};
use std::time::Duration;

use semver::Version;
use tokio::io::BufWriter;
use url::Url;

use crate::durable::{FileError, io_err};
use crate::install::staging::sha256_file;
use crate::install::{InstallError, Layout, SmokeError, smoke_test};
use crate::update::fetch::{FetchError, Fetcher};
use crate::update::manifest::Artifact;

/// Free space kept on top of the artifact's size, so a stage never fills the disk that
/// the state file and logs also live on.
pub const DISK_HEADROOM: u64 = 16 * 1024 * 1024;

/// Why a binary was not staged. Whatever the reason, nothing was left in `staging/` or
/// `versions/`.
#[derive(Debug, thiserror::Error)]
pub enum StageError {
    /// The install dir could not be prepared, or the binary failed its smoke test there.
    #[error(transparent)]
    Install(#[from] InstallError),
    /// A filesystem operation failed.
    #[error(transparent)]
    File(#[from] FileError),
    /// The download failed (status, timeout, size).
    #[error("downloading {version}: {source}")]
    Fetch {
        /// The version being staged.
        version: Version,
        /// What went wrong.
        source: FetchError,
    },
    /// Not enough free disk for the artifact.
    #[error(
        "not enough free disk in {}: {version} needs {needed} bytes, {available} are available",
        dir.display()
    )]
    NoSpace {
        /// The staging dir.
        dir: PathBuf,
        /// The version being staged.
        version: Version,
        /// Size plus headroom.
        needed: u64,
        /// Free bytes for this user.
        available: u64,
    },
    /// The bytes are not the ones the manifest names.
    #[error(
        "sha256 mismatch for {version}: the manifest says {expected}, the download is {actual}"
    )]
    Sha256 {
        /// The version being staged.
        version: Version,
        /// From the manifest.
        expected: String,
        /// Of what arrived.
        actual: String,
    },
}

/// How one stage attempt runs.
#[derive(Debug, Clone, Copy)]
pub struct Attempt {
    /// How long the staged binary's `--version` may take.
    pub smoke_timeout: Duration,
    /// Bypass caches on the download (the retry after a mismatch).
    pub fresh: bool,
}

impl StageError {
    /// The bytes that arrived are not the manifest's (sha256, or more bytes than its
    /// size): a corrupt cache or CDN node as likely as a bad release, so worth one fresh
    /// download before the release is blamed.
    pub fn is_mismatch(&self) -> bool {
        matches!(
            self,
            StageError::Sha256 { .. }
                | StageError::Fetch {
                    source: FetchError::Oversized { .. },
                    ..
                }
        )
    }

    /// `<binary> --version` did not answer in time: a loaded host as likely as a bad
    /// binary, so never the release's fault on its own.
    pub fn is_smoke_timeout(&self) -> bool {
        matches!(
            self,
            StageError::Install(InstallError::Smoke(SmokeError::Timeout { .. }))
        )
    }
}

/// Downloads `artifact` (at `url`, already resolved and checked by
/// [`Fetcher::artifact_url`]) as `version` into the install dir and returns the path of
/// the installed binary, `versions/<version>/aihummer-gateway`. When that file already
/// exists with the right sha256 (a retried update, a version rolled away from), it is
/// only smoke tested again. `progress` sees the running byte count (at once the whole
/// size, when nothing needs downloading).
pub async fn stage(
    layout: &Layout,
    fetcher: &Fetcher,
    (version, url, artifact): (&Version, &Url, &Artifact),
    attempt: Attempt,
    mut progress: impl FnMut(u64),
) -> Result<PathBuf, StageError> {
    let smoke_timeout = attempt.smoke_timeout;
    let installed = layout.binary(version);
    if sha256_file(&installed).await.ok().as_ref() == Some(&artifact.sha256) {
        // Nothing to download: the whole artifact is already here, and a watching
        // operator sees that instead of no progress at all.
        progress(artifact.size);
        smoke_test(&installed, Some(version), smoke_timeout)
            .await
            .map_err(InstallError::from)?;
        return Ok(installed);
    }
    let staging = layout.lock_staging()?;
    let available = available_space(staging.dir())?;
    if let Err(needed) = check_space(available, artifact.size) {
        return Err(StageError::NoSpace {
            dir: staging.dir().to_path_buf(),
            version: version.clone(),
            needed,
            available,
        });
    }
    let tmp = staging.temp_file()?;
    let file = tmp
        .as_file()
        .try_clone()
        .map_err(io_err("reopen", tmp.path()))?;
    // A large buffer turns the many small HTTP chunks into few blocking writes.
    let mut out = BufWriter::with_capacity(1024 * 1024, tokio::fs::File::from_std(file));
    let downloaded = fetcher
        .download(url, artifact.size, attempt.fresh, &mut out, progress)
        .await
        .map_err(|source| StageError::Fetch {
            version: version.clone(),
            source,
        })?;
    drop(out);
    if downloaded.sha256 != artifact.sha256 {
        return Err(StageError::Sha256 {
            version: version.clone(),
            expected: artifact.sha256.clone(),
            actual: downloaded.sha256,
        });
    }
    Ok(staging.commit(layout, tmp, version, smoke_timeout).await?)
}

/// Free bytes for an unprivileged writer on the filesystem holding `dir`.
fn available_space(dir: &Path) -> Result<u64, FileError> {
    let stat =
        nix::sys::statvfs::statvfs(dir).map_err(|errno| io_err("statvfs", dir)(errno.into()))?;
    // fsblkcnt_t and c_ulong are 32 bits on some targets; the conversions are no-ops here.
    #[allow(clippy::useless_conversion)]
    let (blocks, size) = (
        u64::from(stat.blocks_available()),
        u64::from(stat.fragment_size()),
    );
    Ok(blocks.saturating_mul(size))
}

/// `Err(needed)` when `available` cannot hold `size` plus the headroom.
fn check_space(available: u64, size: u64) -> Result<(), u64> {
    let needed = size.saturating_add(DISK_HEADROOM);
    if available < needed {
        Err(needed)
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_space_must_cover_the_artifact_and_the_headroom() {
        assert_eq!(check_space(DISK_HEADROOM + 10, 10), Ok(()));
        assert_eq!(check_space(DISK_HEADROOM + 9, 10), Err(DISK_HEADROOM + 10));
        assert!(available_space(Path::new("/")).unwrap() > 0);
    }
}
