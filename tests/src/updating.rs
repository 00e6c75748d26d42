//! Helpers for the supervisor's self-update suites: a loopback CDN offering a published
//! gateway, and the `aihummer` CLI run with exactly the environment a test gives it.

use std::path::Path;
use std::process::{Output, Stdio};
use std::time::{Duration, SystemTime};

use aihummer::publish::{self, Release};
use aihummer::update::Channel;
use aihummer::update::manifest::TARGET;
use semver::Version;
use tempfile::TempDir;

use crate::binary;
use crate::update::Cdn;

/// A loopback CDN serving a tree written by the publisher; both go away when dropped.
pub struct Offering {
    /// The CDN tree (`<channel>/latest.json`, artifacts).
    pub dir: TempDir,
    /// The server.
    pub cdn: Cdn,
}

impl Offering {
    /// A CDN offering `binary` as `version` on `stable`.
    pub async fn start(binary: &Path, version: &str) -> Offering {
        let dir = tempfile::tempdir().expect("tempdir");
        publish_into(dir.path(), binary, version).await;
        let cdn = Cdn::start(dir.path()).await;
        Offering { dir, cdn }
    }

    /// Publishes another release into the same tree (replacing `latest.json`).
    pub async fn publish(&self, binary: &Path, version: &str) {
        publish_into(self.dir.path(), binary, version).await;
    }

    /// Publishes a release for `rollout` percent of the nodes.
    pub async fn publish_rollout(&self, binary: &Path, version: &str, rollout: u8) {
        publish_release(self.dir.path(), binary, version, Some(rollout)).await;
    }

    /// `AIHUMMER_DOWNLOAD_BASE_URL` for this CDN.
    pub fn base_url(&self) -> String {
        self.cdn.base_url()
    }

    /// The URL path of `version`'s artifact, for fault injection.
    pub fn artifact_path(version: &str) -> String {
        format!("/stable/{version}/aihummer-gateway-{TARGET}")
    }
}

/// Publishes `binary` as `version` on `stable` under `out` with `aihummer-publish`'s library.
pub async fn publish_into(out: &Path, binary: &Path, version: &str) {
    publish_release(out, binary, version, None).await;
}

async fn publish_release(out: &Path, binary: &Path, version: &str, rollout: Option<u8>) {
    let release = Release {
        binary: binary.to_path_buf(),
        version: Version::parse(version).expect("version"),
        channel: Channel::Stable,
        target: TARGET.to_string(),
        out: out.to_path_buf(),
        published_at: SystemTime::now(),
        expires_in: Some(Duration::from_secs(3600)),
        min_version: None,
        notes_url: None,
        rollout,
        key: None,
        verify_binary: true,
    };
    publish::publish(&release).await.expect("publish");
}

/// Runs `aihummer <args>` with a clean environment plus `env` (no supervisor unless `env`
/// names the socket of one).
pub async fn aihummer(env: &[(&str, &str)], args: &[&str]) -> Output {
    tokio::process::Command::new(binary("aihummer"))
        .args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .envs(env.iter().map(|(k, v)| (*k, *v)))
        .stdin(Stdio::null())
        .output()
        .await
        .expect("run the aihummer CLI")
}

/// A fake gateway release: a shell script that answers `--version` as `version` (so it
/// passes staging's smoke test) and otherwise runs `body` (e.g. `exit 3`, `exec sleep 600`).
pub fn fake_gateway(dir: &Path, version: &str, body: &str) -> std::path::PathBuf {
    let path = dir.join(format!("fake-gateway-{version}"));
    crate::supervisor::install_script(
        &path,
        &format!(
            "if [ \"$1\" = --version ]; then echo 'aihummer-gateway {version}'; exit 0; fi\n{body}"
        ),
    );
    path
}

/// The `version` a gateway's `/healthz` reports at `url`, if it answers.
pub async fn healthz_version(url: &str) -> Option<String> {
    let (_, body) = crate::get_json(&crate::http(), url).await?;
    body["version"].as_str().map(str::to_string)
}

/// The version a symlink in the install dir (`current`, `previous`) points at.
pub fn link_version(state: &Path, name: &str) -> Option<String> {
    std::fs::read_link(state.join(name))
        .ok()?
        .file_name()?
        .to_str()
        .map(str::to_string)
}
