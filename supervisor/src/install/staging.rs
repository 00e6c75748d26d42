//! The install dir's `staging/`: where a gateway binary is written and proven before it
//! is renamed into `versions/<version>/aihummer-gateway`.
//!
//! ```text
//! lock staging/.lock ─ clean stale files ─ write into staging/<tmp>
//!   ─ fsync file, chmod 0755, close ─ fsync staging/
//!   ─ `<tmp> --version` must print `aihummer-gateway <version>` within the timeout
//!   ─ rename to versions/<version>/aihummer-gateway ─ fsync versions/<version>/ and versions/
//! ```
//!
//! The temporary file deletes itself on every error path and when its owner is dropped,
//! so an interrupted or failed stage leaves no partial file; a killed process leaves one
//! that the next stage removes first. The lock keeps two stages (say a supervisor and an
//! operator's `aihummer update` without one) from cleaning each other's files.
//!
//! Pitfalls this order avoids: `staging/` sits beside `versions/` so the rename cannot
//! fail with EXDEV; the file is closed before it is executed, since exec of a file open
//! for writing fails with ETXTBSY; `persist` does not fsync, so both the file and the
//! directories are synced here.

use std::fs::{self, File};
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};
use semver::Version;
use sha2::{Digest, Sha256};
use tempfile::NamedTempFile;

use crate::durable::{io_err, sync_dir};
use crate::install::error::InstallError;
use crate::install::layout::Layout;
use crate::install::smoke::smoke_test;

/// Name of the lock file inside `staging/`; the one entry cleaning leaves alone.
pub const LOCK_FILE: &str = ".lock";

/// `staging/`, locked for one stage and cleaned of what an interrupted one left. The
/// lock is released when this is dropped.
#[derive(Debug)]
pub struct Staging {
    _lock: Flock<File>,
    dir: PathBuf,
}

impl Layout {
    /// Makes the install dir's directories, takes the staging lock and removes what an
    /// interrupted stage left; [`InstallError::Busy`] while another stage holds it.
    pub fn lock_staging(&self) -> Result<Staging, InstallError> {
        self.create()?;
        let dir = self.staging_dir();
        let lock_path = dir.join(LOCK_FILE);
        let lock_file = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(io_err("open", &lock_path))?;
        let lock =
            Flock::lock(lock_file, FlockArg::LockExclusiveNonblock).map_err(|(_, errno)| {
                if errno == Errno::EWOULDBLOCK {
                    InstallError::Busy { dir: dir.clone() }
                } else {
                    io_err("lock", &lock_path)(errno.into()).into()
                }
            })?;
        clean(&dir)?;
        Ok(Staging { _lock: lock, dir })
    }
}

impl Staging {
    /// The locked `staging/` directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// A fresh temporary file in `staging/`, deleted when dropped unless committed.
    pub fn temp_file(&self) -> Result<NamedTempFile, InstallError> {
        Ok(tempfile::Builder::new()
            .prefix("aihummer-gateway.")
            .suffix(".part")
            .tempfile_in(&self.dir)
            .map_err(io_err("create a temporary file in", &self.dir))?)
    }

    /// Installs the written file `tmp` as `version`: fsync, chmod 0755, close, smoke test,
    /// rename into `versions/<version>/`, fsync the directories. Returns the installed path.
    pub async fn commit(
        &self,
        layout: &Layout,
        tmp: NamedTempFile,
        version: &Version,
        smoke_timeout: Duration,
    ) -> Result<PathBuf, InstallError> {
        tmp.as_file()
            .sync_all()
            .map_err(io_err("fsync", tmp.path()))?;
        fs::set_permissions(tmp.path(), fs::Permissions::from_mode(0o755))
            .map_err(io_err("chmod", tmp.path()))?;
        // Closing the only writable descriptor now: exec of a file open for writing fails.
        let tmp = tmp.into_temp_path();
        sync_dir(&self.dir)?;
        smoke_test(&tmp, Some(version), smoke_timeout).await?;
        let dest = layout.binary(version);
        let dir = layout.version_dir(version);
        fs::create_dir_all(&dir).map_err(io_err("create", &dir))?;
        // rename(2) over an existing file is fine even while that file runs: the running
        // process keeps the old inode.
        tmp.persist(&dest)
            .map_err(|err| io_err("rename into", &dest)(err.error))?;
        sync_dir(&dir)?;
        sync_dir(&layout.versions_dir())?;
        sync_dir(&self.dir)?;
        Ok(dest)
    }
}

/// Removes everything in `staging/` but the lock file. Only called under the lock.
fn clean(staging: &Path) -> Result<(), InstallError> {
    for entry in fs::read_dir(staging).map_err(io_err("list", staging))? {
        let entry = entry.map_err(io_err("list", staging))?;
        if entry.file_name() == LOCK_FILE {
            continue;
        }
        let path = entry.path();
        let removed = if entry.file_type().is_ok_and(|t| t.is_dir()) {
            fs::remove_dir_all(&path)
        } else {
            fs::remove_file(&path)
        };
        removed.map_err(io_err("remove stale", &path))?;
    }
    Ok(())
}

/// SHA-256 of a file, lowercase hex; on a blocking thread, as binaries are tens of MB.
pub async fn sha256_file(path: &Path) -> io::Result<String> {
    let path = path.to_path_buf();
    tokio::task::spawn_blocking(move || {
        let mut hasher = Sha256::new();
        io::copy(&mut File::open(path)?, &mut hasher)?;
        Ok(hex::encode(hasher.finalize()))
    })
    .await
    .map_err(io::Error::other)?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_second_stage_while_one_holds_the_lock_is_told_so() {
        let dir = tempfile::tempdir().unwrap();
        let layout = Layout::new(dir.path());
        let _held = layout.lock_staging().unwrap();
        assert!(matches!(
            layout.lock_staging(),
            Err(InstallError::Busy { .. })
        ));
    }
}
