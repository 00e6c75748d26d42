//! The update pipeline's I/O, in order: fetch the channel's `latest.json` (and its
//! signature when a key is pinned), verify, parse, decide against the install state and
//! the running version; then stage the chosen artifact into `versions/<version>/`.
//!
//! No state machine lives here: the supervisor runs these verbs off its own loop and feeds
//! the results back as inputs, and `aihummer update --check` calls them directly without
//! a supervisor. What the bytes mean is [`crate::manifest`]'s, [`crate::signature`]'s and
//! [`crate::decide`]'s business; this module only strings them together.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use semver::Version;
use url::Url;

use crate::config::Settings;
use crate::decide::{self, Channel, Decision, Refusal};
use crate::fetch::{FetchError, FetchOptions, Fetched, Fetcher, ManifestFetch, manifest_url};
use crate::install::{CheckOutcome, InstallError, KEEP_VERSIONS, Layout, State};
use crate::manifest::{self, Manifest, ManifestError, TARGET};
use crate::signature::{self, SignatureError, TrustedKey};
use crate::stage::{self, StageError};

/// Why a check or a stage did not get through.
#[derive(Debug, thiserror::Error)]
pub enum UpdaterError {
    /// No `AIHUMMER_DOWNLOAD_BASE_URL`.
    #[error("no update source is configured (AIHUMMER_DOWNLOAD_BASE_URL is unset)")]
    NoSource,
    /// Staging needs an install dir.
    #[error("installing a version needs AIHUMMER_STATE_DIR (where versions are installed)")]
    NoStateDir,
    /// The CDN could not be reached or answered badly.
    #[error(transparent)]
    Fetch(#[from] FetchError),
    /// The manifest's signature is missing or wrong.
    #[error(transparent)]
    Signature(#[from] SignatureError),
    /// The manifest does not parse, or has nothing for this platform.
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    /// The install dir's state could not be read or written.
    #[error(transparent)]
    Install(#[from] InstallError),
    /// The artifact could not be staged.
    #[error(transparent)]
    Stage(#[from] StageError),
    /// The CDN said "not modified" but nothing was remembered to compare with.
    #[error("{url} answered 304 Not Modified to a request that sent no ETag")]
    UnexpectedNotModified {
        /// The manifest URL.
        url: String,
    },
}

impl UpdaterError {
    /// Whether a failed check may pass when tried again (network trouble, a 5xx), as
    /// opposed to a refusal that repeats until someone changes something.
    pub fn is_transient(&self) -> bool {
        match self {
            UpdaterError::Fetch(err) => err.is_transient(),
            _ => false,
        }
    }

    /// Whether the failure is the release's fault, so its version is quarantined: the
    /// bytes or the binary are wrong, not the network or this machine.
    pub fn blames_release(&self) -> bool {
        matches!(
            self,
            UpdaterError::Stage(
                StageError::Sha256 { .. }
                    | StageError::SmokeFailed { .. }
                    | StageError::SmokeTimeout { .. }
                    | StageError::WrongVersion { .. }
                    | StageError::Fetch {
                        source: FetchError::Oversized { .. },
                        ..
                    }
            )
        )
    }
}

/// A newer version the channel offers and the decision accepted.
#[derive(Debug, Clone)]
pub struct Offer {
    /// The version to install.
    pub version: Version,
    manifest: Manifest,
    manifest_url: Url,
}

/// What a check found.
#[derive(Debug, Clone)]
pub enum Checked {
    /// The channel offers the running version.
    UpToDate(Version),
    /// A newer version may be installed.
    Available(Offer),
    /// The manifest was fetched and verified, but is not acted upon.
    Refused(Refusal),
}

/// The update pipeline of one install: the CDN client, the channel, the pinned key, the
/// install dir, and the last verified manifest (for conditional GETs).
#[derive(Debug)]
pub struct Updater {
    fetcher: Fetcher,
    base: Url,
    channel: Channel,
    key: Option<TrustedKey>,
    layout: Option<Layout>,
    smoke_timeout: Duration,
    /// Only a manifest that verified is kept, so a 304 never revives rejected bytes.
    last: Mutex<Option<Fetched>>,
}

impl Updater {
    /// The pipeline `settings` describe; [`UpdaterError::NoSource`] without a CDN.
    pub fn from_settings(settings: &Settings) -> Result<Self, UpdaterError> {
        let base = settings
            .download_base_url
            .clone()
            .ok_or(UpdaterError::NoSource)?;
        Ok(Updater {
            fetcher: Fetcher::new(FetchOptions::default())?,
            base,
            channel: settings.update_channel,
            key: settings.update_pubkey.clone(),
            layout: settings.state_dir.clone().map(Layout::new),
            smoke_timeout: stage::SMOKE_TIMEOUT,
            last: Mutex::new(None),
        })
    }

    /// Where the manifest is fetched from, for messages.
    pub fn manifest_url(&self) -> String {
        manifest_url(&self.base, self.channel)
            .map_or_else(|_| self.base.to_string(), |u| u.to_string())
    }

    /// The install state the decision reads: the state file, or a fresh one when no
    /// install dir is configured.
    fn state(&self) -> Result<State, UpdaterError> {
        match &self.layout {
            Some(layout) => Ok(layout.load_state()?),
            None => Ok(State::default()),
        }
    }

    /// Fetches, verifies and parses the channel's manifest, then decides whether to move
    /// from `running`; `requested` is a version the operator asked for explicitly.
    pub async fn check(
        &self,
        running: &Version,
        requested: Option<&Version>,
    ) -> Result<Checked, UpdaterError> {
        let fetched = self.fetch().await?;
        let manifest = manifest::parse(&fetched.body)?;
        let state = self.state()?;
        let decision = decide::decide(decide::Inputs {
            running,
            manifest: &manifest,
            channel: self.channel,
            highest_trusted: state.highest_trusted.as_ref(),
            quarantined: &state.quarantined,
            requested,
            now: SystemTime::now(),
        });
        Ok(match decision {
            Decision::UpToDate => Checked::UpToDate(running.clone()),
            Decision::Refused(refusal) => Checked::Refused(refusal),
            Decision::Update(version) => {
                // A release without a build for this machine is refused at the check, not
                // halfway through an install.
                manifest.artifact_for(TARGET)?;
                Checked::Available(Offer {
                    version,
                    manifest,
                    manifest_url: fetched.url,
                })
            }
        })
    }

    /// The manifest's verified bytes: fetched anew, or the remembered ones on a 304.
    async fn fetch(&self) -> Result<Fetched, UpdaterError> {
        let etag = self
            .last
            .lock()
            .ok()
            .and_then(|last| last.as_ref().and_then(|f| f.etag.clone()));
        let answer = self
            .fetcher
            .fetch_manifest(
                &self.base,
                self.channel,
                etag.as_deref(),
                self.key.is_some(),
            )
            .await?;
        match answer {
            ManifestFetch::Fetched(fetched) => {
                signature::verify(
                    self.key.as_ref(),
                    &fetched.body,
                    fetched.signature.as_deref(),
                )?;
                if let Ok(mut last) = self.last.lock() {
                    *last = Some(fetched.clone());
                }
                Ok(fetched)
            }
            ManifestFetch::NotModified => self
                .last
                .lock()
                .ok()
                .and_then(|last| last.clone())
                .ok_or_else(|| UpdaterError::UnexpectedNotModified {
                    url: self.manifest_url(),
                }),
        }
    }

    /// Downloads, verifies and smoke tests `offer`'s artifact into
    /// `versions/<version>/aihummer-gateway` and returns that path. `progress` sees the
    /// bytes downloaded so far and the total.
    pub async fn stage(
        &self,
        offer: &Offer,
        mut progress: impl FnMut(u64, u64),
    ) -> Result<PathBuf, UpdaterError> {
        let layout = self.layout.as_ref().ok_or(UpdaterError::NoStateDir)?;
        let artifact = offer.manifest.artifact_for(TARGET)?;
        let url = self.fetcher.artifact_url(&offer.manifest_url, artifact)?;
        let total = artifact.size;
        Ok(stage::stage(
            layout,
            &self.fetcher,
            &offer.version,
            &url,
            artifact,
            self.smoke_timeout,
            |bytes| progress(bytes, total),
        )
        .await?)
    }
}

/// Waits between attempts of a check that failed for a reason that may pass (network
/// trouble, a 5xx): three attempts in all, then the failure is reported.
const RETRY_DELAYS: [Duration; 2] = [Duration::from_secs(2), Duration::from_secs(8)];

/// What one run of the pipeline did: the check, and the stage when one was asked for and
/// a version was available.
#[derive(Debug)]
pub struct Run {
    /// The check's outcome.
    pub checked: Result<Checked, UpdaterError>,
    /// The version staged and where it now lies, or why staging it failed.
    pub staged: Option<(Version, Result<PathBuf, UpdaterError>)>,
}

impl Updater {
    /// Checks (retrying transient failures with backoff) and, when `stage` and a version is
    /// available, stages it.
    pub async fn run(
        &self,
        running: &Version,
        requested: Option<&Version>,
        stage: bool,
        progress: impl FnMut(u64, u64),
    ) -> Run {
        let mut checked = self.check(running, requested).await;
        for delay in RETRY_DELAYS {
            match &checked {
                Err(err) if err.is_transient() => {
                    tracing::warn!(error = %err, retry_in = ?delay, "update check failed; retrying");
                    tokio::time::sleep(delay).await;
                    checked = self.check(running, requested).await;
                }
                _ => break,
            }
        }
        let staged = match &checked {
            Ok(Checked::Available(offer)) if stage => {
                Some((offer.version.clone(), self.stage(offer, progress).await))
            }
            _ => None,
        };
        Run { checked, staged }
    }
}

impl Checked {
    /// The outcome as the state file keeps it.
    pub fn outcome(&self) -> CheckOutcome {
        match self {
            Checked::UpToDate(version) => CheckOutcome::UpToDate {
                version: version.clone(),
            },
            Checked::Available(offer) => CheckOutcome::Available {
                version: offer.version.clone(),
            },
            Checked::Refused(refusal) => CheckOutcome::Refused {
                reason: refusal.to_string(),
            },
        }
    }
}

/// Installs the gateway a first start runs (`binary`) as `versions/<its version>/` and
/// points `current` at it, so the first update has a version to roll back to. Does
/// nothing when `current` already exists. Returns the version installed, if any.
pub async fn install_bootstrap(
    layout: &Layout,
    binary: &Path,
) -> Result<Option<Version>, UpdaterError> {
    if layout.current()?.is_some() {
        return Ok(None);
    }
    layout.create()?;
    let version = stage::install_bootstrap(layout, binary, stage::SMOKE_TIMEOUT).await?;
    let mut state = layout.load_state()?;
    layout.switch(&mut state, &version)?;
    Ok(Some(version))
}

/// Records the last check's outcome in the state file.
pub fn record_check(layout: &Layout, outcome: CheckOutcome) -> Result<(), InstallError> {
    let mut state = layout.load_state()?;
    state.last_check = Some(crate::install::LastCheck::new(SystemTime::now(), outcome));
    layout.save_state(&state)
}

/// Quarantines `version` with `reason` in the state file; returns the new state.
pub fn quarantine(layout: &Layout, version: &Version, reason: &str) -> Result<State, InstallError> {
    let mut state = layout.load_state()?;
    state.quarantine(version, reason);
    layout.save_state(&state)?;
    Ok(state)
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

/// The quarantine as `status` lists it: `version: reason`.
pub fn quarantine_list(state: &State) -> Vec<String> {
    state
        .quarantined
        .iter()
        .map(|(version, reason)| format!("{version}: {reason}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::StatusCode;

    #[test]
    fn only_a_release_at_fault_is_quarantined_and_only_network_trouble_is_retried() {
        let v = Version::new(1, 1, 0);
        let url = "http://127.0.0.1/x".to_string();
        let sha = UpdaterError::Stage(StageError::Sha256 {
            version: v.clone(),
            expected: "a".into(),
            actual: "b".into(),
        });
        assert!(sha.blames_release() && !sha.is_transient());
        let oversized = UpdaterError::Stage(StageError::Fetch {
            version: v.clone(),
            source: FetchError::Oversized {
                url: url.clone(),
                expected: 1,
            },
        });
        assert!(oversized.blames_release());
        let truncated = UpdaterError::Stage(StageError::Fetch {
            version: v,
            source: FetchError::Truncated {
                url: url.clone(),
                expected: 2,
                got: 1,
            },
        });
        assert!(
            !truncated.blames_release(),
            "a cut connection is not the release's fault"
        );
        let down = UpdaterError::Fetch(FetchError::Status {
            url,
            status: StatusCode::SERVICE_UNAVAILABLE,
        });
        assert!(down.is_transient() && !down.blames_release());
        assert!(!UpdaterError::NoSource.is_transient());
    }
}
