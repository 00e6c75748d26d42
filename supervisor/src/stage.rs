//! Staging a gateway binary into the install dir: download (or copy) it into `staging/`,
//! prove it is the right file and a working binary of the right version, then rename it
//! into `versions/<version>/aihummer-gateway`.
//!
//! ```text
//! lock staging/.lock ─ clean stale files ─ check free disk ─ stream into staging/<tmp>
//!   ─ size and sha256 ─ fsync file, chmod 0755, close ─ fsync staging/
//!   ─ `<tmp> --version` must print `aihummer-gateway <version>` within the timeout
//!   ─ rename to versions/<version>/aihummer-gateway ─ fsync versions/<version>/ and versions/
//! ```
//!
//! The temporary file deletes itself on every error path and when the future is dropped,
//! so an interrupted or failed stage leaves no partial file; a killed process leaves one
//! that the next stage removes first. The lock keeps two stages (say a supervisor and an
//! operator's `aihummer update` without one) from cleaning each other's files.
//!
//! Pitfalls this order avoids: `staging/` sits beside `versions/` so the rename cannot
//! fail with EXDEV; the file is closed before it is executed, since exec of a file open
//! for writing fails with ETXTBSY (and a fork elsewhere in the process may briefly hold a
//! copy of that descriptor, hence a few retries); `persist` does not fsync, so both the
//! file and the directories are synced here.

use std::fs::{self, File};
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};
use semver::Version;
use sha2::{Digest, Sha256};
use tempfile::NamedTempFile;
use tokio::io::{AsyncWriteExt, BufWriter};
use tokio::process::Command;
use url::Url;

use crate::config::GATEWAY_FILE;
use crate::fetch::{FetchError, Fetcher};
use crate::install::{InstallError, Layout, sync_dir};
use crate::manifest::Artifact;

/// How long `<binary> --version` may take. A gateway answers in milliseconds; a binary
/// that takes seconds is broken or for another machine.
pub const SMOKE_TIMEOUT: Duration = Duration::from_secs(5);

/// Free space kept on top of the artifact's size, so a stage never fills the disk that
/// the state file and logs also live on.
pub const DISK_HEADROOM: u64 = 16 * 1024 * 1024;

/// Name of the lock file inside `staging/`; the one entry cleaning leaves alone.
const LOCK_FILE: &str = ".lock";

/// Why a binary was not staged. Whatever the reason, nothing was left in `staging/` or
/// `versions/`.
#[derive(Debug, thiserror::Error)]
pub enum StageError {
    /// The install dir could not be prepared.
    #[error(transparent)]
    Install(#[from] InstallError),
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
    /// The download failed (status, timeout, size).
    #[error("downloading {version}: {source}")]
    Fetch {
        /// The version being staged.
        version: Version,
        /// What went wrong.
        source: FetchError,
    },
    /// Another stage holds the lock.
    #[error("another update is staging into {} right now", dir.display())]
    Busy {
        /// The staging dir.
        dir: PathBuf,
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
    /// `<binary> --version` could not run or failed.
    #[error("{} --version failed: {reason}", binary.display())]
    SmokeFailed {
        /// The binary.
        binary: PathBuf,
        /// Spawn error, exit status or output.
        reason: String,
    },
    /// `<binary> --version` did not finish in time.
    #[error("{} --version did not answer within {after:?}", binary.display())]
    SmokeTimeout {
        /// The binary.
        binary: PathBuf,
        /// The timeout.
        after: Duration,
    },
    /// The binary reports another version than expected.
    #[error(
        "the binary for {expected} reports {reported:?}, not `aihummer-gateway {expected}` ({})",
        binary.display()
    )]
    WrongVersion {
        /// The binary.
        binary: PathBuf,
        /// The version it should be.
        expected: Version,
        /// What it printed.
        reported: String,
    },
}

fn io_err(action: &'static str, path: &Path) -> impl FnOnce(io::Error) -> StageError {
    let path = path.to_path_buf();
    move |source| StageError::Io {
        action,
        path,
        source,
    }
}

/// Downloads `artifact` (at `url`, already resolved and checked by
/// [`Fetcher::artifact_url`]) as `version` into the install dir and returns the path of
/// the installed binary, `versions/<version>/aihummer-gateway`. When that file already
/// exists with the right sha256 (a retried update, a version rolled away from), it is
/// only smoke tested again. `progress` sees the running byte count.
pub async fn stage(
    layout: &Layout,
    fetcher: &Fetcher,
    version: &Version,
    url: &Url,
    artifact: &Artifact,
    smoke_timeout: Duration,
    progress: impl FnMut(u64),
) -> Result<PathBuf, StageError> {
    let installed = layout.binary(version);
    if sha256_file(&installed).await.ok().as_ref() == Some(&artifact.sha256) {
        smoke_test(&installed, Some(version), smoke_timeout).await?;
        return Ok(installed);
    }
    let _lock = prepare(layout)?;
    let staging = layout.staging_dir();
    let available = available_space(&staging)?;
    if let Err(needed) = check_space(available, artifact.size) {
        return Err(StageError::NoSpace {
            dir: staging,
            version: version.clone(),
            needed,
            available,
        });
    }
    let tmp = temp_in(&staging)?;
    let file = tmp
        .as_file()
        .try_clone()
        .map_err(io_err("reopen", tmp.path()))?;
    // A large buffer turns the many small HTTP chunks into few blocking writes.
    let mut out = BufWriter::with_capacity(1024 * 1024, tokio::fs::File::from_std(file));
    let downloaded = fetcher
        .download(url, artifact.size, &mut out, progress)
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
    finish(layout, tmp, version, smoke_timeout).await
}

/// Installs the gateway binary this supervisor was started with as
/// `versions/<its version>/aihummer-gateway` (a copy, verified by its own `--version`), so
/// that a first update has a rollback target. Returns its version. Idempotent.
pub async fn install_bootstrap(
    layout: &Layout,
    binary: &Path,
    smoke_timeout: Duration,
) -> Result<Version, StageError> {
    let version = smoke_test(binary, None, smoke_timeout).await?;
    let installed = layout.binary(&version);
    let source_sha = sha256_file(binary).await.map_err(io_err("read", binary))?;
    if sha256_file(&installed).await.ok() == Some(source_sha) {
        return Ok(version);
    }
    let _lock = prepare(layout)?;
    let tmp = temp_in(&layout.staging_dir())?;
    let file = tmp
        .as_file()
        .try_clone()
        .map_err(io_err("reopen", tmp.path()))?;
    let mut out = tokio::fs::File::from_std(file);
    let mut src = tokio::fs::File::open(binary)
        .await
        .map_err(io_err("open", binary))?;
    tokio::io::copy(&mut src, &mut out)
        .await
        .map_err(io_err("copy", binary))?;
    out.flush().await.map_err(io_err("write", tmp.path()))?;
    drop(out);
    finish(layout, tmp, &version, smoke_timeout).await?;
    Ok(version)
}

/// Runs `<binary> --version` with an empty environment and returns the version it
/// prints; with `expected`, anything else is [`StageError::WrongVersion`].
pub async fn smoke_test(
    binary: &Path,
    expected: Option<&Version>,
    timeout: Duration,
) -> Result<Version, StageError> {
    let failed = |reason: String| StageError::SmokeFailed {
        binary: binary.to_path_buf(),
        reason,
    };
    let mut attempts = 0;
    let child = loop {
        // An empty environment: the smoke test must not see LISTEN_FDS, NOTIFY_SOCKET or
        // database URLs meant for a real run.
        let spawned = Command::new(binary)
            .arg("--version")
            .env_clear()
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn();
        match spawned {
            Ok(child) => break child,
            Err(err) if err.raw_os_error() == Some(Errno::ETXTBSY as i32) && attempts < 10 => {
                attempts += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(err) => return Err(failed(format!("cannot run it: {err}"))),
        }
    };
    let output = tokio::time::timeout(timeout, child.wait_with_output())
        .await
        .map_err(|_| StageError::SmokeTimeout {
            binary: binary.to_path_buf(),
            after: timeout,
        })?
        .map_err(|err| failed(err.to_string()))?;
    let stdout = String::from_utf8_lossy(&output.stdout).trim().to_string();
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        return Err(failed(format!("{}: {}", output.status, stderr.trim())));
    }
    let reported = stdout
        .strip_prefix("aihummer-gateway ")
        .and_then(|v| Version::parse(v.trim()).ok());
    match (reported, expected) {
        (Some(v), Some(e)) if v == *e => Ok(v),
        (Some(v), None) => Ok(v),
        (_, Some(e)) => Err(StageError::WrongVersion {
            binary: binary.to_path_buf(),
            expected: e.clone(),
            reported: stdout,
        }),
        (None, None) => Err(failed(format!(
            "printed {stdout:?}, not `aihummer-gateway <version>`"
        ))),
    }
}

/// Makes the dirs, takes the staging lock and removes what an interrupted stage left.
fn prepare(layout: &Layout) -> Result<Flock<File>, StageError> {
    layout.create()?;
    let staging = layout.staging_dir();
    let lock_path = staging.join(LOCK_FILE);
    let lock_file = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(io_err("open", &lock_path))?;
    let lock = Flock::lock(lock_file, FlockArg::LockExclusiveNonblock).map_err(|(_, errno)| {
        if errno == Errno::EWOULDBLOCK {
            StageError::Busy {
                dir: staging.clone(),
            }
        } else {
            io_err("lock", &lock_path)(errno.into())
        }
    })?;
    clean_staging(&staging)?;
    Ok(lock)
}

/// Removes everything in `staging/` but the lock file. Only called under the lock.
fn clean_staging(staging: &Path) -> Result<(), StageError> {
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

fn temp_in(staging: &Path) -> Result<NamedTempFile, StageError> {
    tempfile::Builder::new()
        .prefix("aihummer-gateway.")
        .suffix(".part")
        .tempfile_in(staging)
        .map_err(io_err("create a temporary file in", staging))
}

/// Free bytes for an unprivileged writer on the filesystem holding `dir`.
fn available_space(dir: &Path) -> Result<u64, StageError> {
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

/// fsync, chmod 0755, close, smoke test, rename into `versions/<version>/`, fsync dirs.
async fn finish(
    layout: &Layout,
    tmp: NamedTempFile,
    version: &Version,
    smoke_timeout: Duration,
) -> Result<PathBuf, StageError> {
    tmp.as_file()
        .sync_all()
        .map_err(io_err("fsync", tmp.path()))?;
    fs::set_permissions(tmp.path(), fs::Permissions::from_mode(0o755))
        .map_err(io_err("chmod", tmp.path()))?;
    // Closing the only writable descriptor now: exec of a file open for writing fails.
    let tmp = tmp.into_temp_path();
    let staging = layout.staging_dir();
    sync_dir(&staging)?;
    smoke_test(&tmp, Some(version), smoke_timeout).await?;
    let dir = layout.version_dir(version);
    fs::create_dir_all(&dir).map_err(io_err("create", &dir))?;
    let dest = dir.join(GATEWAY_FILE);
    // rename(2) over an existing file is fine even while that file runs: the running
    // process keeps the old inode.
    tmp.persist(&dest)
        .map_err(|err| io_err("rename into", &dest)(err.error))?;
    sync_dir(&dir)?;
    sync_dir(&layout.versions_dir())?;
    sync_dir(&staging)?;
    Ok(dest)
}

/// SHA-256 of a file, lowercase hex; on a blocking thread, as binaries are tens of MB.
async fn sha256_file(path: &Path) -> io::Result<String> {
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
    use std::os::unix::fs::PermissionsExt;

    /// A stand-in gateway: a shell script that prints what `--version` should.
    fn fake_gateway(dir: &Path, name: &str, body: &str) -> PathBuf {
        let path = dir.join(name);
        fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).unwrap();
        path
    }

    fn v(s: &str) -> Version {
        Version::parse(s).unwrap()
    }

    fn leftovers(layout: &Layout) -> Vec<String> {
        fs::read_dir(layout.staging_dir())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n != LOCK_FILE)
            .collect()
    }

    #[tokio::test]
    async fn the_smoke_test_reads_the_version_and_refuses_others() {
        let dir = tempfile::tempdir().unwrap();
        let good = fake_gateway(dir.path(), "good", "echo 'aihummer-gateway 1.2.3'");
        assert_eq!(
            smoke_test(&good, None, SMOKE_TIMEOUT).await.unwrap(),
            v("1.2.3")
        );
        let err = smoke_test(&good, Some(&v("1.2.4")), SMOKE_TIMEOUT)
            .await
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "the binary for 1.2.4 reports \"aihummer-gateway 1.2.3\", not `aihummer-gateway 1.2.4` ({})",
                good.display()
            )
        );
        let failing = fake_gateway(dir.path(), "failing", "echo boom >&2; exit 3");
        let err = smoke_test(&failing, None, SMOKE_TIMEOUT).await.unwrap_err();
        assert!(err.to_string().contains("boom"), "{err}");
        let hanging = fake_gateway(dir.path(), "hanging", "exec sleep 30");
        let err = smoke_test(&hanging, None, Duration::from_millis(200))
            .await
            .unwrap_err();
        assert!(matches!(err, StageError::SmokeTimeout { .. }), "{err}");
        let err = smoke_test(&dir.path().join("absent"), None, SMOKE_TIMEOUT)
            .await
            .unwrap_err();
        assert!(err.to_string().contains("cannot run it"), "{err}");
    }

    #[tokio::test]
    async fn bootstrap_copies_the_binary_under_its_own_version_and_is_idempotent() {
        let dir = tempfile::tempdir().unwrap();
        let bin = fake_gateway(dir.path(), "gw", "echo 'aihummer-gateway 1.0.0'");
        let layout = Layout::new(dir.path().join("state"));
        // A stale file from an interrupted stage is cleaned away.
        fs::create_dir_all(layout.staging_dir()).unwrap();
        fs::write(
            layout.staging_dir().join("aihummer-gateway.x.part"),
            b"half",
        )
        .unwrap();
        assert_eq!(
            install_bootstrap(&layout, &bin, SMOKE_TIMEOUT)
                .await
                .unwrap(),
            v("1.0.0")
        );
        let installed = layout.binary(&v("1.0.0"));
        assert_eq!(fs::read(&installed).unwrap(), fs::read(&bin).unwrap());
        assert_eq!(
            fs::metadata(&installed).unwrap().permissions().mode() & 0o777,
            0o755
        );
        assert!(leftovers(&layout).is_empty());
        assert_eq!(
            install_bootstrap(&layout, &bin, SMOKE_TIMEOUT)
                .await
                .unwrap(),
            v("1.0.0")
        );
        assert_eq!(layout.installed().unwrap(), vec![v("1.0.0")]);
    }

    #[tokio::test]
    async fn a_second_stage_while_one_holds_the_lock_is_told_so() {
        let dir = tempfile::tempdir().unwrap();
        let layout = Layout::new(dir.path());
        let _held = prepare(&layout).unwrap();
        assert!(matches!(prepare(&layout), Err(StageError::Busy { .. })));
    }

    #[test]
    fn free_space_must_cover_the_artifact_and_the_headroom() {
        assert_eq!(check_space(DISK_HEADROOM + 10, 10), Ok(()));
        assert_eq!(check_space(DISK_HEADROOM + 9, 10), Err(DISK_HEADROOM + 10));
        assert!(available_space(Path::new("/")).unwrap() > 0);
    }
}
