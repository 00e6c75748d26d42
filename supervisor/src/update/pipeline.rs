//! The update pipeline's I/O, in order: fetch the channel's `latest.json` (and its
//! signature when a key is pinned), verify, parse, decide against the install state and
//! the running version; then stage the chosen artifact into `versions/<version>/`.
//!
//! No state machine lives here: the supervisor runs these verbs off its own loop and feeds
//! the results back as inputs, and `aihummer update --check` calls them directly without
//! a supervisor. What the bytes mean is [`crate::update::manifest`]'s,
//! [`crate::update::signature`]'s and [`crate::update::decide`]'s business; this module
//! only strings them together. It is built from [`UpdaterOptions`], plain values the
//! caller reads from wherever it likes (every timeout among them, so tests run short).
//!
//! What it keeps between checks: the last verified manifest (for conditional GETs) and
//! the newest `published_at` accepted from the channel, which is saved in `state.json`
//! when there is an install dir (else kept for the life of the process), so a replayed
//! older manifest is refused.
//!
//! A stage that fails on a sha256 or size mismatch is tried once more with a fresh
//! download past every cache, and one whose smoke test timed out once more with a longer
//! timeout, before the failure is reported; only what is then still wrong with the bytes
//! or the binary is the release's fault ([`UpdaterError::blames_release`]).

use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use aihummer_common::backoff::Backoff;
use semver::Version;
use time::OffsetDateTime;
use url::Url;

use crate::install::{CheckOutcome, InstallError, Layout, SMOKE_TIMEOUT, SmokeError, State};
use crate::update::channel::Channel;
use crate::update::decide::{self, Decision, Refusal};
use crate::update::fetch::{FetchError, FetchOptions, Fetched, Fetcher, ManifestFetch};
use crate::update::manifest::{self, Manifest, ManifestError, TARGET};
use crate::update::signature::{self, SignatureError, TrustedKeys};
use crate::update::stage::{self, Attempt, StageError};
use crate::update::urls::{manifest_url, redact};

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
    /// The manifest announces an artifact larger than the cap.
    #[error(
        "{version}'s artifact is {size} bytes, more than the {cap}-byte cap (AIHUMMER_UPDATE_MAX_SIZE); refusing it before any download"
    )]
    ArtifactTooLarge {
        /// The offered version.
        version: Version,
        /// The size the manifest announces.
        size: u64,
        /// The cap in force.
        cap: u64,
    },
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
    /// bytes are wrong even when fetched past every cache, or the binary reports no or
    /// the wrong version. Not the network, a cache or a slow machine: a smoke test that
    /// timed out (twice) is this host's trouble as likely as the release's.
    pub fn blames_release(&self) -> bool {
        match self {
            UpdaterError::Stage(err) => {
                err.is_mismatch()
                    || matches!(
                        err,
                        StageError::Install(InstallError::Smoke(
                            SmokeError::WrongVersion { .. } | SmokeError::Failed { .. }
                        ))
                    )
            }
            _ => false,
        }
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
    /// The channel offers an older version than the running one: nothing to do.
    Ahead {
        /// What runs.
        running: Version,
        /// What the channel offers.
        offered: Version,
    },
    /// A newer version may be installed.
    Available(Offer),
    /// A newer version is rolled out to a share of the fleet this node is not in yet.
    OutsideRollout {
        /// What the channel offers.
        offered: Version,
        /// The manifest's `rollout` percentage.
        rollout: u8,
        /// This node's cohort.
        cohort: u8,
    },
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
    key: Option<TrustedKeys>,
    layout: Option<Layout>,
    smoke_timeout: Duration,
    smoke_retry_timeout: Duration,
    check_retry: (Duration, Duration),
    /// Only a manifest that verified is kept, so a 304 never revives rejected bytes.
    last: Mutex<Option<Fetched>>,
    /// The newest `published_at` accepted by this process (the state file keeps it
    /// across restarts when there is an install dir).
    published_at: Mutex<Option<OffsetDateTime>>,
}

/// What an [`Updater`] is built from.
#[derive(Debug, Clone)]
pub struct UpdaterOptions {
    /// The release CDN's base URL, already checked by [`crate::update::parse_base_url`].
    pub base: Url,
    /// The channel tracked.
    pub channel: Channel,
    /// When set, manifests must be signed by one of these keys.
    pub key: Option<TrustedKeys>,
    /// The install dir; without one, checks work but nothing can be staged.
    pub layout: Option<Layout>,
    /// The CDN client's timeouts and caps.
    pub fetch: FetchOptions,
    /// How long a staged binary's `--version` may take.
    pub smoke_timeout: Duration,
    /// How long it may take when tried again after a timeout.
    pub smoke_retry_timeout: Duration,
    /// The wait before the first retry of a check that failed for a reason that may pass,
    /// and the longest wait between two attempts.
    pub check_retry: (Duration, Duration),
}

impl UpdaterOptions {
    /// Options for `base` and `channel` with no key, no install dir and the default
    /// timeouts.
    pub fn new(base: Url, channel: Channel) -> Self {
        UpdaterOptions {
            base,
            channel,
            key: None,
            layout: None,
            fetch: FetchOptions::default(),
            smoke_timeout: SMOKE_TIMEOUT,
            smoke_retry_timeout: SMOKE_TIMEOUT * 4,
            check_retry: (FIRST_RETRY, MAX_RETRY),
        }
    }
}

impl Updater {
    /// The pipeline `options` describe.
    pub fn new(options: UpdaterOptions) -> Result<Self, UpdaterError> {
        Ok(Updater {
            fetcher: Fetcher::new(options.fetch)?,
            base: options.base,
            channel: options.channel,
            key: options.key,
            layout: options.layout,
            smoke_timeout: options.smoke_timeout,
            smoke_retry_timeout: options.smoke_retry_timeout,
            check_retry: options.check_retry,
            last: Mutex::new(None),
            published_at: Mutex::new(None),
        })
    }

    /// Where the manifest is fetched from, for messages (credentials and query redacted).
    pub fn manifest_url(&self) -> String {
        manifest_url(&self.base, self.channel).map_or_else(|_| redact(&self.base), |u| redact(&u))
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
        self.check_as(running, requested, None).await
    }

    /// [`Updater::check`] for a node in `cohort` (0 to 99), which a manifest's `rollout`
    /// percentage may hold back; `None` when an operator asked.
    pub async fn check_as(
        &self,
        running: &Version,
        requested: Option<&Version>,
        cohort: Option<u8>,
    ) -> Result<Checked, UpdaterError> {
        let fetched = self.fetch().await?;
        let manifest = manifest::parse(&fetched.body)?;
        let state = self.state()?;
        let remembered = self.published_at.lock().ok().and_then(|at| *at);
        let last_published_at = state.published_at(self.channel.as_str()).max(remembered);
        let decision = decide::decide(decide::Inputs {
            running,
            manifest: &manifest,
            channel: self.channel,
            highest_trusted: state.highest_trusted.as_ref(),
            last_published_at,
            quarantined: &state.quarantined,
            requested,
            cohort,
            now: SystemTime::now(),
        });
        if !matches!(
            decision,
            Decision::Refused(Refusal::WrongChannel { .. } | Refusal::Replayed { .. })
        ) {
            self.accept_published_at(manifest.published_at);
        }
        Ok(match decision {
            Decision::UpToDate => Checked::UpToDate(running.clone()),
            Decision::OutsideRollout {
                offered,
                rollout,
                cohort,
            } => Checked::OutsideRollout {
                offered,
                rollout,
                cohort,
            },
            Decision::Ahead { offered } => Checked::Ahead {
                running: running.clone(),
                offered,
            },
            Decision::Refused(refusal) => {
                if matches!(refusal, Refusal::Expired { .. }) {
                    // Service goes on; someone must re-publish (or re-sign) the channel.
                    tracing::warn!(url = %self.manifest_url(), "{refusal}");
                }
                Checked::Refused(refusal)
            }
            Decision::Update(version) => {
                // A release without a build for this machine, or too big a one, is
                // refused at the check, not halfway through an install.
                let artifact = manifest.artifact_for(TARGET)?;
                let cap = self.fetcher.options.artifact_cap;
                if artifact.size > cap {
                    return Err(UpdaterError::ArtifactTooLarge {
                        version,
                        size: artifact.size,
                        cap,
                    });
                }
                Checked::Available(Offer {
                    version,
                    manifest,
                    manifest_url: fetched.url,
                })
            }
        })
    }

    /// Remembers `at` as the newest `published_at` accepted from the channel, in the
    /// state file when there is one. A state file that cannot be written (an operator's
    /// `update --check` without write access) costs only the memory across restarts.
    fn accept_published_at(&self, at: OffsetDateTime) {
        if let Ok(mut remembered) = self.published_at.lock()
            && remembered.is_none_or(|r| r < at)
        {
            *remembered = Some(at);
        }
        let Some(layout) = &self.layout else {
            return;
        };
        let saved = layout.load_state().and_then(|mut state| {
            match state.accept_published_at(self.channel.as_str(), at) {
                true => layout.save_state(&state),
                false => Ok(()),
            }
        });
        if let Err(err) = saved {
            tracing::warn!(error = %err, "cannot save the channel's newest published_at");
        }
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
        let mut attempt = Attempt {
            smoke_timeout: self.smoke_timeout,
            fresh: false,
        };
        let mut smoke_retried = false;
        loop {
            let result = stage::stage(
                layout,
                &self.fetcher,
                (&offer.version, &url, artifact),
                attempt,
                |bytes| progress(bytes, total),
            )
            .await;
            match result {
                Err(err) if err.is_mismatch() && !attempt.fresh => {
                    tracing::warn!(version = %offer.version, error = %err, "download does not match the manifest; fetching it once more past every cache");
                    attempt.fresh = true;
                }
                Err(err) if err.is_smoke_timeout() && !smoke_retried => {
                    tracing::warn!(version = %offer.version, error = %err, retry_timeout = ?self.smoke_retry_timeout, "smoke test timed out; trying once more with a longer timeout");
                    smoke_retried = true;
                    attempt.smoke_timeout = self.smoke_retry_timeout;
                }
                result => return Ok(result?),
            }
        }
    }
}

/// Attempts of a check that fails for a reason that may pass (network trouble, a 5xx),
/// before the failure is reported.
const CHECK_ATTEMPTS: u32 = 3;
/// The wait before the first retry of such a check; it doubles after each.
const FIRST_RETRY: Duration = Duration::from_secs(2);
/// The longest wait between two attempts.
const MAX_RETRY: Duration = Duration::from_secs(8);

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
    /// available, stages it. `on_retry` hears of each failed attempt before its retry, with
    /// the wait, so an operator watching sees the retries as they happen.
    pub async fn run(
        &self,
        running: &Version,
        requested: Option<&Version>,
        stage: bool,
        progress: impl FnMut(u64, u64),
        on_retry: impl FnMut(&UpdaterError, Duration),
    ) -> Run {
        let checked = self
            .check_retrying(running, requested, None, on_retry)
            .await;
        let staged = match &checked {
            Ok(Checked::Available(offer)) if stage => {
                Some((offer.version.clone(), self.stage(offer, progress).await))
            }
            _ => None,
        };
        Run { checked, staged }
    }

    /// [`Updater::check_as`], retrying transient failures with backoff; `on_retry` hears
    /// of each failed attempt before its retry, with the wait.
    pub async fn check_retrying(
        &self,
        running: &Version,
        requested: Option<&Version>,
        cohort: Option<u8>,
        mut on_retry: impl FnMut(&UpdaterError, Duration),
    ) -> Result<Checked, UpdaterError> {
        let mut checked = self.check_as(running, requested, cohort).await;
        let mut backoff = Backoff::new(self.check_retry.0, self.check_retry.1);
        for _ in 1..CHECK_ATTEMPTS {
            match &checked {
                Err(err) if err.is_transient() => {
                    let delay = backoff.next_delay();
                    tracing::warn!(error = %err, retry_in = %humantime::format_duration(delay), "update check failed; retrying");
                    on_retry(err, delay);
                    tokio::time::sleep(delay).await;
                    checked = self.check_as(running, requested, cohort).await;
                }
                _ => break,
            }
        }
        checked
    }
}

impl Checked {
    /// The outcome as the state file keeps it.
    pub fn outcome(&self) -> CheckOutcome {
        match self {
            Checked::UpToDate(version)
            | Checked::Ahead {
                running: version, ..
            } => CheckOutcome::UpToDate {
                version: version.clone(),
            },
            Checked::Available(offer) => CheckOutcome::Available {
                version: offer.version.clone(),
            },
            Checked::OutsideRollout { offered, .. } => CheckOutcome::Available {
                version: offered.clone(),
            },
            Checked::Refused(refusal) => CheckOutcome::Refused {
                reason: refusal.to_string(),
            },
        }
    }
}

#[cfg(test)]
mod tests;
