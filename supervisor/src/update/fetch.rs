//! Talking to the release CDN: the HTTP client and the channel's `latest.json` (and its
//! signature); the artifact download is in [`crate::update::download`]. I/O only: which
//! URLs are allowed is [`crate::update::urls`]'s business, what the bytes mean
//! `manifest`'s and `signature`'s.
//!
//! - Redirects are followed (at most five) under the scheme rules of `urls`.
//! - Every request has a connect timeout and a read timeout (a CDN that accepts and then
//!   hangs fails after the read timeout); the manifest request also has an overall one.
//!   An artifact download must also keep a minimum rate and finish within a deadline
//!   scaled by its size (see [`crate::update::download`]), so a CDN trickling a byte just
//!   inside the read timeout cannot hold the update for ever.
//! - The manifest is capped ([`FetchOptions::manifest_cap`]); a body beyond the cap is
//!   refused rather than buffered.
//! - Conditional GET: the previous answer's `ETag` goes out as `If-None-Match`, and a 304
//!   is [`ManifestFetch::NotModified`].

use std::path::{Path, PathBuf};
use std::time::Duration;

use reqwest::StatusCode;
use reqwest::header::{CONTENT_LENGTH, ETAG, IF_NONE_MATCH};
use tokio::io::AsyncReadExt;
use url::Url;

use crate::update::channel::Channel;
use crate::update::manifest::Artifact;
use crate::update::urls::{
    self, UrlError, check_scheme, file_path, manifest_url, redact, signature_url,
};

/// Default cap on the size of `latest.json` (and of its signature).
pub const MANIFEST_CAP: u64 = 1024 * 1024;
/// Default cap on an artifact's size (`AIHUMMER_UPDATE_MAX_SIZE`): 1 GiB.
pub const ARTIFACT_CAP: u64 = 1 << 30;
/// Default minimum download rate (`AIHUMMER_UPDATE_MIN_RATE`), bytes per second.
pub const MIN_RATE: u64 = 16 * 1024;
/// Default window over which the minimum rate is measured.
pub const RATE_WINDOW: Duration = Duration::from_secs(60);

/// Why something could not be fetched.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// A URL that is not allowed or does not resolve.
    #[error(transparent)]
    Url(#[from] UrlError),
    /// The HTTP client could not be built.
    #[error("cannot build the HTTP client: {0}")]
    Client(String),
    /// Connection or protocol failure before an answer.
    #[error(
        "GET {url} failed: {reason}; check AIHUMMER_DOWNLOAD_BASE_URL and that the release CDN is reachable"
    )]
    Request {
        /// The URL.
        url: String,
        /// The client's error chain.
        reason: String,
    },
    /// No answer (or no next bytes) in time.
    #[error(
        "GET {url} timed out (connect timeout {connect:?}, read timeout {read:?}): {reason}; check AIHUMMER_DOWNLOAD_BASE_URL and that the release CDN is reachable"
    )]
    Timeout {
        /// The URL.
        url: String,
        /// The connect timeout in force.
        connect: Duration,
        /// The read timeout in force.
        read: Duration,
        /// The client's error chain.
        reason: String,
    },
    /// The server answered with an error status.
    #[error("GET {url} answered {status}")]
    Status {
        /// The URL.
        url: String,
        /// The status.
        status: StatusCode,
    },
    /// The download kept below the minimum rate for a whole window.
    #[error(
        "download of {url} too slow: {got} bytes in the last {window:?}, below the minimum rate of {min_rate} bytes/s (AIHUMMER_UPDATE_MIN_RATE); abandoned after {total} bytes"
    )]
    TooSlow {
        /// The URL.
        url: String,
        /// Bytes that arrived in the window.
        got: u64,
        /// The window.
        window: Duration,
        /// The minimum rate in force.
        min_rate: u64,
        /// Bytes downloaded in all.
        total: u64,
    },
    /// The download did not finish within its deadline.
    #[error(
        "download of {url} did not finish within {deadline:?} (the deadline for {size} bytes at the minimum rate of {min_rate} bytes/s); abandoned after {got} bytes"
    )]
    Deadline {
        /// The URL.
        url: String,
        /// The deadline.
        deadline: Duration,
        /// The artifact's size.
        size: u64,
        /// The minimum rate in force.
        min_rate: u64,
        /// Bytes downloaded.
        got: u64,
    },
    /// A manifest or signature larger than the cap.
    #[error("{url} is larger than the {cap}-byte cap; refusing it")]
    TooLarge {
        /// The URL.
        url: String,
        /// The cap.
        cap: u64,
    },
    /// More bytes than the manifest's `size`.
    #[error("{url} sent more than the {expected} bytes the manifest announces; download aborted")]
    Oversized {
        /// The URL.
        url: String,
        /// The manifest's `size`.
        expected: u64,
    },
    /// Fewer bytes than the manifest's `size`.
    #[error("{url} ended after {got} of the {expected} bytes the manifest announces")]
    Truncated {
        /// The URL.
        url: String,
        /// The manifest's `size`.
        expected: u64,
        /// What arrived.
        got: u64,
    },
    /// The body broke off with an error.
    #[error("download of {url} broke off after {got} bytes: {reason}")]
    Broken {
        /// The URL.
        url: String,
        /// What arrived before.
        got: u64,
        /// The client's error chain.
        reason: String,
    },
    /// A `file://` path could not be read.
    #[error("cannot read {}: {source}", path.display())]
    File {
        /// The path.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The destination could not be written.
    #[error("cannot write the download of {url}: {source}")]
    Write {
        /// The URL.
        url: String,
        /// The OS error.
        source: std::io::Error,
    },
}

impl FetchError {
    /// Whether trying again later may succeed (network trouble, timeouts, 5xx, 429, a body
    /// cut short), as opposed to a refusal that repeats until someone changes something
    /// (a bad URL, a 404, an oversized body). The update timer retries the former with
    /// backoff and reports the latter at once.
    pub fn is_transient(&self) -> bool {
        match self {
            FetchError::Request { .. }
            | FetchError::Timeout { .. }
            | FetchError::TooSlow { .. }
            | FetchError::Deadline { .. }
            | FetchError::Broken { .. }
            | FetchError::Truncated { .. } => true,
            FetchError::Status { status, .. } => {
                status.is_server_error() || *status == StatusCode::TOO_MANY_REQUESTS
            }
            _ => false,
        }
    }
}

/// Timeouts, caps and the insecure-HTTP opt-in.
#[derive(Debug, Clone)]
pub struct FetchOptions {
    /// Time allowed to establish a connection (TCP and TLS).
    pub connect_timeout: Duration,
    /// Time allowed between two reads, headers included: a hanging CDN fails after this.
    pub read_timeout: Duration,
    /// Time allowed for the whole manifest request.
    pub manifest_timeout: Duration,
    /// Largest accepted `latest.json` (and `.minisig`).
    pub manifest_cap: u64,
    /// Largest artifact a manifest may announce; a bigger one is refused before any
    /// download.
    pub artifact_cap: u64,
    /// Bytes per second an artifact download must keep up, measured over `rate_window`.
    /// At least 1.
    pub min_rate: u64,
    /// The window over which `min_rate` is measured.
    pub rate_window: Duration,
    /// Accept `http://` to hosts that are not loopback. Off unless the operator opts in.
    pub allow_insecure_http: bool,
}

impl Default for FetchOptions {
    fn default() -> Self {
        FetchOptions {
            connect_timeout: Duration::from_secs(10),
            read_timeout: Duration::from_secs(30),
            manifest_timeout: Duration::from_secs(60),
            manifest_cap: MANIFEST_CAP,
            artifact_cap: ARTIFACT_CAP,
            min_rate: MIN_RATE,
            rate_window: RATE_WINDOW,
            allow_insecure_http: false,
        }
    }
}

/// A freshly fetched manifest.
#[derive(Debug, Clone)]
pub struct Fetched {
    /// Where it came from; artifact URLs resolve against it.
    pub url: Url,
    /// Its exact bytes: what the signature covers and the parser reads.
    pub body: Vec<u8>,
    /// `latest.json.minisig`, when asked for and published.
    pub signature: Option<Vec<u8>>,
    /// The `ETag` to send next time.
    pub etag: Option<String>,
}

/// The answer to a manifest request.
#[derive(Debug, Clone)]
pub enum ManifestFetch {
    /// 304: nothing changed since the `ETag` sent.
    NotModified,
    /// A manifest (and maybe its signature).
    Fetched(Fetched),
}

/// The error's whole source chain on one line: reqwest's own message alone rarely says
/// whether it was DNS, TLS or a reset.
pub(super) fn chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut out = err.to_string();
    let mut source = err.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

/// The HTTP client and its options; cheap to clone, meant to live as long as the
/// supervisor so connections are reused.
#[derive(Debug, Clone)]
pub struct Fetcher {
    pub(super) client: reqwest::Client,
    pub(super) options: FetchOptions,
}

impl Fetcher {
    /// Builds the client (rustls, timeouts, redirect rules).
    pub fn new(options: FetchOptions) -> Result<Self, FetchError> {
        let allow_http = options.allow_insecure_http;
        let redirects = reqwest::redirect::Policy::custom(move |attempt| {
            if attempt.previous().len() >= 5 {
                attempt.error("more than 5 redirects")
            } else if let Err(err) = check_scheme(attempt.url(), allow_http, false) {
                attempt.error(err)
            } else {
                attempt.follow()
            }
        });
        let client = reqwest::Client::builder()
            .user_agent(concat!("aihummer/", env!("AIHUMMER_VERSION")))
            .connect_timeout(options.connect_timeout)
            .read_timeout(options.read_timeout)
            .redirect(redirects)
            .build()
            .map_err(|err| FetchError::Client(chain(&err)))?;
        Ok(Fetcher { client, options })
    }

    pub(super) fn request_error(&self, url: &Url, err: reqwest::Error) -> FetchError {
        if err.is_timeout() {
            FetchError::Timeout {
                url: redact(url),
                connect: self.options.connect_timeout,
                read: self.options.read_timeout,
                reason: chain(&err.without_url()),
            }
        } else {
            FetchError::Request {
                url: redact(url),
                reason: chain(&err.without_url()),
            }
        }
    }

    /// Fetches `{base}/{channel}/latest.json` and, when `with_signature`, its
    /// `latest.json.minisig` (absent is `None`; whether that is acceptable is the
    /// signature check's call). `etag` is the previous answer's, for a conditional GET.
    pub async fn fetch_manifest(
        &self,
        base: &Url,
        channel: Channel,
        etag: Option<&str>,
        with_signature: bool,
    ) -> Result<ManifestFetch, FetchError> {
        let url = manifest_url(base, channel)?;
        check_scheme(&url, self.options.allow_insecure_http, true)?;
        let sig_url = signature_url(&url)?;
        if url.scheme() == "file" {
            let body = self
                .read_small_file(&url)
                .await?
                .ok_or_else(|| FetchError::File {
                    path: url.to_file_path().unwrap_or_default(),
                    source: std::io::ErrorKind::NotFound.into(),
                })?;
            let signature = match with_signature {
                true => self.read_small_file(&sig_url).await?,
                false => None,
            };
            return Ok(ManifestFetch::Fetched(Fetched {
                url,
                body,
                signature,
                etag: None,
            }));
        }
        let Some((body, new_etag)) = self.get_small(&url, etag).await? else {
            return Ok(ManifestFetch::NotModified);
        };
        let signature = match with_signature {
            true => self.get_signature(&sig_url).await?,
            false => None,
        };
        Ok(ManifestFetch::Fetched(Fetched {
            url,
            body,
            signature,
            etag: new_etag,
        }))
    }

    /// GET with the cap; `None` on 304.
    async fn get_small(
        &self,
        url: &Url,
        etag: Option<&str>,
    ) -> Result<Option<(Vec<u8>, Option<String>)>, FetchError> {
        let mut request = self
            .client
            .get(url.clone())
            .timeout(self.options.manifest_timeout);
        if let Some(etag) = etag {
            request = request.header(IF_NONE_MATCH, etag);
        }
        let response = request
            .send()
            .await
            .map_err(|err| self.request_error(url, err))?;
        if response.status() == StatusCode::NOT_MODIFIED {
            return Ok(None);
        }
        if !response.status().is_success() {
            return Err(FetchError::Status {
                url: redact(url),
                status: response.status(),
            });
        }
        let etag = response
            .headers()
            .get(ETAG)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let body = self.read_capped(url, response).await?;
        Ok(Some((body, etag)))
    }

    async fn get_signature(&self, url: &Url) -> Result<Option<Vec<u8>>, FetchError> {
        let response = self
            .client
            .get(url.clone())
            .timeout(self.options.manifest_timeout)
            .send()
            .await
            .map_err(|err| self.request_error(url, err))?;
        match response.status() {
            StatusCode::NOT_FOUND => Ok(None),
            s if s.is_success() => Ok(Some(self.read_capped(url, response).await?)),
            status => Err(FetchError::Status {
                url: redact(url),
                status,
            }),
        }
    }

    async fn read_capped(
        &self,
        url: &Url,
        mut response: reqwest::Response,
    ) -> Result<Vec<u8>, FetchError> {
        let cap = self.options.manifest_cap;
        let too_large = || FetchError::TooLarge {
            url: redact(url),
            cap,
        };
        if content_length(&response).is_some_and(|len| len > cap) {
            return Err(too_large());
        }
        let mut body = Vec::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|err| self.request_error(url, err))?
        {
            if body.len() as u64 + chunk.len() as u64 > cap {
                return Err(too_large());
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body)
    }

    /// Reads a small `file://` URL under the cap; a missing file is `None`.
    async fn read_small_file(&self, url: &Url) -> Result<Option<Vec<u8>>, FetchError> {
        let path = file_path(url)?;
        let cap = self.options.manifest_cap;
        let file = match tokio::fs::File::open(&path).await {
            Ok(file) => file,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(file_err(&path)(source)),
        };
        let mut body = Vec::new();
        file.take(cap + 1)
            .read_to_end(&mut body)
            .await
            .map_err(file_err(&path))?;
        if body.len() as u64 > cap {
            return Err(FetchError::TooLarge {
                url: redact(url),
                cap,
            });
        }
        Ok(Some(body))
    }

    /// An artifact's URL resolved against its manifest's, under this client's scheme
    /// rules (see [`urls::artifact_url`]).
    pub fn artifact_url(&self, manifest_url: &Url, artifact: &Artifact) -> Result<Url, FetchError> {
        Ok(urls::artifact_url(
            manifest_url,
            &artifact.url,
            self.options.allow_insecure_http,
        )?)
    }
}
pub(super) fn content_length(response: &reqwest::Response) -> Option<u64> {
    response
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
}

/// [`FetchError::File`] for `path`; for `map_err`.
pub(super) fn file_err(path: &Path) -> impl Fn(std::io::Error) -> FetchError {
    let path = path.to_path_buf();
    move |source| FetchError::File {
        path: path.clone(),
        source,
    }
}

#[cfg(test)]
mod tests;
