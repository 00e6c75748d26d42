//! Asking a gateway binary what it is: `<binary> --version` in an empty environment,
//! within a timeout. Every binary passes it before it is installed or published, and
//! `aihummer update --check` uses it to learn the version of a gateway that does not run.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use nix::errno::Errno;
use semver::Version;
use tokio::process::Command;

/// How long `<binary> --version` may take. A gateway answers in milliseconds; a binary
/// that takes seconds is broken or for another machine.
pub const SMOKE_TIMEOUT: Duration = Duration::from_secs(5);

/// Why a binary is not a working gateway of the expected version.
#[derive(Debug, thiserror::Error)]
pub enum SmokeError {
    /// `<binary> --version` could not run or failed.
    #[error("{} --version failed: {reason}", binary.display())]
    Failed {
        /// The binary.
        binary: PathBuf,
        /// Spawn error, exit status or output.
        reason: String,
    },
    /// `<binary> --version` did not finish in time.
    #[error("{} --version did not answer within {after:?}", binary.display())]
    Timeout {
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

/// Runs `<binary> --version` with an empty environment and returns the version it
/// prints; with `expected`, anything else is [`SmokeError::WrongVersion`].
pub async fn smoke_test(
    binary: &Path,
    expected: Option<&Version>,
    timeout: Duration,
) -> Result<Version, SmokeError> {
    let failed = |reason: String| SmokeError::Failed {
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
            // A file just closed after writing may still be open in a child forked
            // elsewhere in the process for a moment; exec of it fails with ETXTBSY.
            Err(err) if err.raw_os_error() == Some(Errno::ETXTBSY as i32) && attempts < 10 => {
                attempts += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(err) => return Err(failed(format!("cannot run it: {err}"))),
        }
    };
    let output = tokio::time::timeout(timeout, child.wait_with_output())
        .await
        .map_err(|_| SmokeError::Timeout {
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
        (_, Some(e)) => Err(SmokeError::WrongVersion {
            binary: binary.to_path_buf(),
            expected: e.clone(),
            reported: stdout,
        }),
        (None, None) => Err(failed(format!(
            "printed {stdout:?}, not `aihummer-gateway <version>`"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::install::testing::{fake_gateway, v};

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
        assert!(matches!(err, SmokeError::Timeout { .. }), "{err}");
        let err = smoke_test(&dir.path().join("absent"), None, SMOKE_TIMEOUT)
            .await
            .unwrap_err();
        assert!(err.to_string().contains("cannot run it"), "{err}");
    }
}
