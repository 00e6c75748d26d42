//! The publisher side: turns a built gateway binary into the CDN layout that the updater
//! reads, so that any static file server can be the release CDN.
//!
//! ```text
//! <out>/<channel>/latest.json                                   the manifest
//! <out>/<channel>/latest.json.minisig                           its signature (given a key)
//! <out>/<channel>/<version>/aihummer-gateway-<target>           the artifact
//! <out>/<channel>/<version>/aihummer-gateway-<target>.sha256    `<hex>  <file name>`
//! ```
//!
//! The manifest names the artifact relative to itself (`<version>/aihummer-gateway-<target>`),
//! which resolves against `{base}/<channel>/latest.json` to the file above, on an HTTPS CDN
//! and a `file://` mirror alike, and lets the whole tree be moved to another host.
//! Publishing another target of the same version adds it to the existing manifest's
//! artifacts; publishing a new version replaces the manifest.
//!
//! Every file is written to a temporary name and renamed into place, the artifact first
//! and the manifest last, so a client never sees a manifest naming a missing artifact. The
//! signature is renamed just before the manifest; a client reading in between sees a
//! signature that does not match and refuses that check, and the next check succeeds.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use semver::Version;
use sha2::{Digest, Sha256};
use time::OffsetDateTime;

use crate::durable::{FileError, io_err, write_atomic};
use crate::install::{SMOKE_TIMEOUT, SmokeError, smoke_test};
use crate::update::Channel;
use crate::update::manifest::{self, Artifact, Manifest, SCHEMA};

/// Why a release could not be published.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// A filesystem operation failed.
    #[error(transparent)]
    File(#[from] FileError),
    /// The binary does not report the version being published.
    #[error("the binary is not a gateway of version {version}: {source}")]
    Binary {
        /// The version being published.
        version: Version,
        /// What the smoke test found.
        source: Box<SmokeError>,
    },
    /// The manifest cannot be written as JSON.
    #[error("cannot write latest.json: {0}")]
    Manifest(#[from] serde_json::Error),
    /// The existing manifest in the output dir cannot be read.
    #[error("the existing {} cannot be extended: {reason}", path.display())]
    Existing {
        /// The manifest.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The secret key cannot be used.
    #[error("minisign secret key {}: {reason}", path.display())]
    Key {
        /// The key file.
        path: PathBuf,
        /// Why (a wrong password, an encrypted key without one, ...).
        reason: String,
    },
    /// minisign itself failed.
    #[error("minisign: {0}")]
    Minisign(String),
    /// `published_at` plus the lifetime is beyond what a manifest can say.
    #[error(
        "--expires-in {}: the manifest would expire beyond the year 9999; choose a shorter lifetime (or --no-expiry)",
        humantime::format_duration(*lifetime)
    )]
    Expiry {
        /// The lifetime asked for.
        lifetime: Duration,
    },
}

/// How long a manifest stays valid unless told otherwise: a node refuses it afterwards,
/// so a publisher must re-publish (or re-sign) at least this often.
pub const DEFAULT_EXPIRES_IN: Duration = Duration::from_secs(14 * 24 * 3600);

/// A minisign secret key and its password.
#[derive(Debug, Clone)]
pub struct SigningKey {
    /// The `.key` file (as written by `minisign -G` or [`generate_keypair`]).
    pub path: PathBuf,
    /// Its password; `None` for an unencrypted key. Never prompted for.
    pub password: Option<String>,
}

/// One release to publish.
#[derive(Debug, Clone)]
pub struct Release {
    /// The built `aihummer-gateway`.
    pub binary: PathBuf,
    /// The version it was built as.
    pub version: Version,
    /// The channel to publish it on.
    pub channel: Channel,
    /// The target triple it was built for.
    pub target: String,
    /// The CDN tree's root.
    pub out: PathBuf,
    /// `published_at`.
    pub published_at: SystemTime,
    /// `expires`, as a lifetime from `published_at`; `None` writes no `expires`.
    pub expires_in: Option<Duration>,
    /// `min_version`.
    pub min_version: Option<Version>,
    /// `notes_url`.
    pub notes_url: Option<String>,
    /// `rollout`: the percentage of nodes that install it on their own; `None` writes no
    /// `rollout` (every node).
    pub rollout: Option<u8>,
    /// Sign `latest.json` with this key.
    pub key: Option<SigningKey>,
    /// Check that `<binary> --version` reports `version` (and run it, so it must be built
    /// for this machine). Off only to publish for another platform, or in the updater's
    /// own tests of a mislabelled binary.
    pub verify_binary: bool,
}

/// The files written.
#[derive(Debug, Clone)]
pub struct Published {
    /// `<out>/<channel>/latest.json`.
    pub manifest: PathBuf,
    /// The artifact.
    pub artifact: PathBuf,
    /// The signature, when signed.
    pub signature: Option<PathBuf>,
    /// The manifest as written.
    pub contents: Manifest,
}

/// The artifact's file name for a target.
pub fn artifact_name(target: &str) -> String {
    format!("aihummer-gateway-{target}")
}

/// Writes the release into the CDN tree. See the module doc for the layout.
pub async fn publish(release: &Release) -> Result<Published, PublishError> {
    if release.verify_binary {
        smoke_test(&release.binary, Some(&release.version), SMOKE_TIMEOUT)
            .await
            .map_err(|source| PublishError::Binary {
                version: release.version.clone(),
                source: Box::new(source),
            })?;
    }
    // Whole seconds: nanoseconds in a manifest only make it harder to read.
    let published_at = OffsetDateTime::from(release.published_at)
        .replace_nanosecond(0)
        .unwrap_or_else(|_| OffsetDateTime::from(release.published_at));
    // Before anything is written: a lifetime that cannot be written changes nothing.
    let expires = release
        .expires_in
        .map(|d| expiry(published_at, d))
        .transpose()?;
    let channel_dir = release.out.join(release.channel.as_str());
    let version_dir = channel_dir.join(release.version.to_string());
    fs::create_dir_all(&version_dir).map_err(io_err("create", &version_dir))?;

    let bytes = fs::read(&release.binary).map_err(io_err("read", &release.binary))?;
    let sha256 = hex::encode(Sha256::digest(&bytes));
    let name = artifact_name(&release.target);
    let artifact_path = version_dir.join(&name);
    write_atomic(&artifact_path, &bytes, 0o755)?;
    write_atomic(
        &version_dir.join(format!("{name}.sha256")),
        format!("{sha256}  {name}\n").as_bytes(),
        0o644,
    )?;

    let manifest_path = channel_dir.join("latest.json");
    let mut artifacts = existing_artifacts(&manifest_path, &release.version)?;
    artifacts.insert(
        release.target.clone(),
        Artifact {
            url: format!("{}/{name}", release.version),
            sha256,
            size: bytes.len() as u64,
        },
    );
    let contents = Manifest {
        schema: SCHEMA,
        channel: release.channel.as_str().to_string(),
        version: release.version.clone(),
        published_at,
        expires,
        min_version: release.min_version.clone(),
        notes_url: release.notes_url.clone(),
        rollout: release.rollout,
        artifacts,
    };
    let json = contents.to_json()?;

    let signature = match &release.key {
        Some(key) => {
            let secret = fs::read_to_string(&key.path).map_err(io_err("read", &key.path))?;
            let comment = format!(
                "channel:{} version:{} published_at:{}",
                release.channel,
                release.version,
                manifest::rfc3339(published_at)
            );
            let sig =
                sign(&secret, key.password.clone(), &json, &comment).map_err(|err| match err {
                    PublishError::Minisign(reason) => PublishError::Key {
                        path: key.path.clone(),
                        reason,
                    },
                    other => other,
                })?;
            let path = channel_dir.join("latest.json.minisig");
            write_atomic(&path, sig.as_bytes(), 0o644)?;
            Some(path)
        }
        None => {
            // An old signature beside a new manifest would only fail every check.
            let stale = channel_dir.join("latest.json.minisig");
            match fs::remove_file(&stale) {
                Err(err) if err.kind() != io::ErrorKind::NotFound => {
                    return Err(io_err("remove", &stale)(err).into());
                }
                _ => None,
            }
        }
    };
    write_atomic(&manifest_path, &json, 0o644)?;
    Ok(Published {
        manifest: manifest_path,
        artifact: artifact_path,
        signature,
        contents,
    })
}

/// `published_at + lifetime`, as long as a manifest can write it (RFC 3339 ends at the
/// year 9999).
fn expiry(
    published_at: OffsetDateTime,
    lifetime: Duration,
) -> Result<OffsetDateTime, PublishError> {
    time::Duration::try_from(lifetime)
        .ok()
        .and_then(|d| published_at.checked_add(d))
        .filter(|at| at.year() <= 9999)
        .ok_or(PublishError::Expiry { lifetime })
}

/// The other targets' artifacts of an existing manifest for the same version.
fn existing_artifacts(
    path: &Path,
    version: &Version,
) -> Result<std::collections::BTreeMap<String, Artifact>, PublishError> {
    match fs::read(path) {
        Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(Default::default()),
        Err(err) => Err(io_err("read", path)(err).into()),
        Ok(bytes) => match manifest::parse(&bytes) {
            Ok(m) if m.version == *version => Ok(m.artifacts),
            Ok(_) => Ok(Default::default()),
            Err(err) => Err(PublishError::Existing {
                path: path.to_path_buf(),
                reason: err.to_string(),
            }),
        },
    }
}

/// Signs `data` with a minisign secret key (the `.key` file's text) and returns the
/// `.minisig` file's text. `password` decrypts an encrypted key; without one the key must
/// be unencrypted (nothing is ever prompted for).
pub fn sign(
    secret_key: &str,
    password: Option<String>,
    data: &[u8],
    trusted_comment: &str,
) -> Result<String, PublishError> {
    let sk_box = minisign::SecretKeyBox::from_string(secret_key)
        .map_err(|err| PublishError::Minisign(err.to_string()))?;
    let sk = match password {
        Some(password) => sk_box.into_secret_key(Some(password)),
        None => sk_box.into_unencrypted_secret_key(),
    }
    .map_err(|err| {
        PublishError::Minisign(format!(
            "{err} (an encrypted key needs AIHUMMER_PUBLISH_KEY_PASSWORD)"
        ))
    })?;
    let sig = minisign::sign(
        None,
        &sk,
        io::Cursor::new(data),
        Some(trusted_comment),
        Some("signature of latest.json by aihummer-publish"),
    )
    .map_err(|err| PublishError::Minisign(err.to_string()))?;
    Ok(sig.into_string())
}

/// A fresh minisign key pair, as the text of its `.pub` and `.key` files.
#[derive(Debug, Clone)]
pub struct KeyPair {
    /// The `.pub` file: what `AIHUMMER_UPDATE_PUBKEY` is set to (either line works).
    pub public_key: String,
    /// The `.key` file: kept by the publisher only.
    pub secret_key: String,
}

/// Generates a key pair; with a password the secret key is encrypted with it.
pub fn generate_keypair(password: Option<String>) -> Result<KeyPair, PublishError> {
    let minisign_err = |err: minisign::PError| PublishError::Minisign(err.to_string());
    let pair = match password {
        Some(p) => minisign::KeyPair::generate_encrypted_keypair(Some(p)),
        None => minisign::KeyPair::generate_unencrypted_keypair(),
    }
    .map_err(minisign_err)?;
    Ok(KeyPair {
        public_key: pair.pk.to_box().map_err(minisign_err)?.into_string(),
        secret_key: pair
            .sk
            .to_box(Some("aihummer release signing key"))
            .map_err(minisign_err)?
            .into_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::install::testing::fake_gateway;
    use crate::update::signature::{TrustedKeys, Verified, verify};
    use crate::update::urls::resolve_url;

    fn release(dir: &Path, version: &str) -> Release {
        Release {
            binary: fake_gateway(
                dir,
                &format!("gw-{version}"),
                &format!("echo 'aihummer-gateway {version}'"),
            ),
            version: Version::parse(version).unwrap(),
            channel: Channel::Stable,
            target: "x86_64-unknown-linux-gnu".into(),
            out: dir.join("cdn"),
            published_at: SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000),
            expires_in: Some(Duration::from_secs(3600)),
            min_version: None,
            notes_url: None,
            rollout: None,
            key: None,
            verify_binary: true,
        }
    }

    #[tokio::test]
    async fn the_layout_resolves_from_the_manifest_url() {
        let dir = tempfile::tempdir().unwrap();
        let r = release(dir.path(), "1.4.2");
        let published = publish(&r).await.unwrap();
        let cdn = dir.path().join("cdn");
        assert_eq!(published.manifest, cdn.join("stable/latest.json"));
        let m = manifest::parse(&fs::read(&published.manifest).unwrap()).unwrap();
        assert_eq!(m, published.contents);
        assert_eq!(m.expires.unwrap().unix_timestamp(), 1_800_003_600);
        let a = m.artifact_for("x86_64-unknown-linux-gnu").unwrap();
        assert_eq!(a.url, "1.4.2/aihummer-gateway-x86_64-unknown-linux-gnu");
        let base = url::Url::from_file_path(&published.manifest).unwrap();
        let resolved = resolve_url(&base, &a.url).unwrap();
        assert_eq!(resolved.to_file_path().unwrap(), published.artifact);
        let sum = fs::read_to_string(published.artifact.with_extension("sha256")).unwrap();
        assert!(sum.starts_with(&a.sha256), "{sum}");
        assert_eq!(fs::metadata(&published.artifact).unwrap().len(), a.size);
        assert!(published.signature.is_none());
    }

    #[tokio::test]
    async fn a_lifetime_beyond_what_a_manifest_can_say_is_an_error_not_a_panic() {
        let dir = tempfile::tempdir().unwrap();
        for lifetime in [Duration::MAX, Duration::from_secs(9000 * 365 * 24 * 3600)] {
            let mut r = release(dir.path(), "1.4.2");
            r.expires_in = Some(lifetime);
            let err = publish(&r).await.unwrap_err().to_string();
            assert!(err.contains("beyond the year 9999"), "{err}");
        }
        assert!(!dir.path().join("cdn").exists(), "nothing was written");
    }

    #[tokio::test]
    async fn a_second_target_of_the_same_version_joins_the_manifest() {
        let dir = tempfile::tempdir().unwrap();
        publish(&release(dir.path(), "1.4.2")).await.unwrap();
        let mut other = release(dir.path(), "1.4.2");
        other.target = "aarch64-unknown-linux-gnu".into();
        other.verify_binary = false;
        let published = publish(&other).await.unwrap();
        assert_eq!(published.contents.artifacts.len(), 2);
        // A new version starts a fresh artifact list.
        let published = publish(&release(dir.path(), "1.5.0")).await.unwrap();
        assert_eq!(published.contents.artifacts.len(), 1);
    }

    #[tokio::test]
    async fn a_mislabelled_binary_is_not_published() {
        let dir = tempfile::tempdir().unwrap();
        let mut r = release(dir.path(), "1.4.2");
        r.version = Version::new(1, 5, 0);
        let err = publish(&r).await.unwrap_err();
        assert!(
            err.to_string().contains("not a gateway of version 1.5.0"),
            "{err}"
        );
        assert!(!dir.path().join("cdn/stable/latest.json").exists());
    }

    /// An encrypted key (password `pw`), made once with `aihummer-publish keygen`: making
    /// or opening one runs scrypt, seconds in a debug build, so the tests only check that
    /// it is refused without a password and sign with unencrypted keys.
    const ENCRYPTED_KEY: &str = "untrusted comment: aihummer release signing key
RWRTY0IyuRT3rd64SQ9YQsnCYXn95NPAeU4noDFoSXC3fWft7AgAABAAAAAAAAAAAAIAAAAA161WcwCFw8dqJw3d99aF154irSp+E9Lsc7Xntd4NdvJ67kI5/B4/cY4PJ+owuoXYz7xo7nrjOLWnldMwPQ4FkVX5EwV7X4J8a71D02PwmQ9iOh7XsX747FZ/5CebDvV48thiSqg1ZfM=
";

    #[tokio::test]
    async fn an_encrypted_key_without_its_password_is_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let key_path = dir.path().join("release.key");
        fs::write(&key_path, ENCRYPTED_KEY).unwrap();
        let mut r = release(dir.path(), "1.4.2");
        r.key = Some(SigningKey {
            path: key_path.clone(),
            password: None,
        });
        let err = publish(&r).await.unwrap_err();
        assert!(
            err.to_string().contains("AIHUMMER_PUBLISH_KEY_PASSWORD"),
            "{err}"
        );
        assert!(!dir.path().join("cdn/stable/latest.json").exists());
    }

    #[tokio::test]
    async fn a_signed_release_verifies_under_its_public_key() {
        let dir = tempfile::tempdir().unwrap();
        let keys = generate_keypair(None).unwrap();
        let key_path = dir.path().join("release.key");
        fs::write(&key_path, &keys.secret_key).unwrap();
        let mut r = release(dir.path(), "1.4.2");
        r.key = Some(SigningKey {
            path: key_path,
            password: None,
        });
        let published = publish(&r).await.unwrap();
        let sig = fs::read(published.signature.unwrap()).unwrap();
        let json = fs::read(&published.manifest).unwrap();
        let key = TrustedKeys::parse(&keys.public_key).unwrap();
        let Verified::Signed {
            trusted_comment, ..
        } = verify(Some(&key), &json, Some(&sig)).unwrap()
        else {
            panic!("not signed")
        };
        assert!(
            trusted_comment.contains("version:1.4.2"),
            "{trusted_comment}"
        );
        // Publishing unsigned afterwards removes the stale signature.
        let unsigned = release(dir.path(), "1.4.3");
        assert!(publish(&unsigned).await.unwrap().signature.is_none());
        assert!(!dir.path().join("cdn/stable/latest.json.minisig").exists());
    }
}
