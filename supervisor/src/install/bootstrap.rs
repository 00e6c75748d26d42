//! The bootstrap install: the gateway a first start runs becomes the install dir's first
//! version, so the first update has a version to roll back to.

use std::path::Path;
use std::time::Duration;

use semver::Version;
use tokio::io::AsyncWriteExt;

use crate::durable::io_err;
use crate::install::error::InstallError;
use crate::install::layout::Layout;
use crate::install::smoke::smoke_test;
use crate::install::staging::sha256_file;

/// Installs `binary` as `versions/<its version>/aihummer-gateway` (a copy, verified by
/// its own `--version`) and, when nothing is `current` yet, points `current` at it.
/// Returns its version. Idempotent: an identical installed copy is left as it is.
pub async fn install_bootstrap(
    layout: &Layout,
    binary: &Path,
    smoke_timeout: Duration,
) -> Result<Version, InstallError> {
    let version = smoke_test(binary, None, smoke_timeout).await?;
    let installed = layout.binary(&version);
    let source_sha = sha256_file(binary).await.map_err(io_err("read", binary))?;
    if sha256_file(&installed).await.ok() != Some(source_sha) {
        let staging = layout.lock_staging()?;
        let tmp = staging.temp_file()?;
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
        staging.commit(layout, tmp, &version, smoke_timeout).await?;
    }
    if layout.current()?.is_none() {
        let mut state = layout.load_state()?;
        layout.switch(&mut state, &version)?;
    }
    Ok(version)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::install::smoke::SMOKE_TIMEOUT;
    use crate::install::staging::LOCK_FILE;
    use crate::install::testing::{fake_gateway, v};
    use std::fs;
    use std::os::unix::fs::PermissionsExt;

    fn leftovers(layout: &Layout) -> Vec<String> {
        fs::read_dir(layout.staging_dir())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n != LOCK_FILE)
            .collect()
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
        assert_eq!(layout.current().unwrap(), Some(v("1.0.0")));
        assert_eq!(
            install_bootstrap(&layout, &bin, SMOKE_TIMEOUT)
                .await
                .unwrap(),
            v("1.0.0")
        );
        assert_eq!(layout.installed().unwrap(), vec![v("1.0.0")]);
    }

    #[tokio::test]
    async fn bootstrap_leaves_an_existing_current_alone() {
        let dir = tempfile::tempdir().unwrap();
        let layout = Layout::new(dir.path());
        let old = fake_gateway(dir.path(), "old", "echo 'aihummer-gateway 0.9.0'");
        let new = fake_gateway(dir.path(), "new", "echo 'aihummer-gateway 1.0.0'");
        install_bootstrap(&layout, &old, SMOKE_TIMEOUT)
            .await
            .unwrap();
        install_bootstrap(&layout, &new, SMOKE_TIMEOUT)
            .await
            .unwrap();
        assert_eq!(layout.current().unwrap(), Some(v("0.9.0")));
        assert_eq!(layout.installed().unwrap(), vec![v("0.9.0"), v("1.0.0")]);
    }
}
