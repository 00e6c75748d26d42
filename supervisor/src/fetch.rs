//! Talking to the release CDN: the channel's `latest.json` (and its signature) and the
//! streaming download of an artifact. I/O only; what the bytes mean is `manifest`'s and
//! `signature`'s business.
//!
//! - Schemes: `https://` always; `http://` only to a loopback host (a test CDN, a local
//!   mirror) unless the caller opts in explicitly, because a plain-HTTP manifest without a
//!   signature key can be swapped by anyone on the path; `file://` for air-gapped mirrors.
//!   Redirects are followed (at most five) under the same rule.
//! - Every request has a connect timeout and a read timeout (a CDN that accepts and then
//!   hangs fails after the read timeout); the manifest request also has an overall one.
//! - The manifest is capped ([`FetchOptions::manifest_cap`]); a body beyond the cap is
//!   refused rather than buffered.
//! - Conditional GET: the previous answer's `ETag` goes out as `If-None-Match`, and a 304
//!   is [`ManifestFetch::NotModified`].
//! - An artifact is streamed to a writer and hashed on the way; more bytes than the
//!   manifest's `size` abort the download at once, fewer are reported as truncated.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use reqwest::StatusCode;
use reqwest::header::{CONTENT_LENGTH, ETAG, IF_NONE_MATCH};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWrite, AsyncWriteExt};
use url::{Host, Url};

use crate::decide::Channel;
use crate::manifest::{Artifact, resolve_url};

/// Default cap on the size of `latest.json` (and of its signature).
pub const MANIFEST_CAP: u64 = 1024 * 1024;

/// Why something could not be fetched.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// `AIHUMMER_DOWNLOAD_BASE_URL` is not a usable URL.
    #[error("AIHUMMER_DOWNLOAD_BASE_URL={value:?} is not usable: {reason}")]
    BaseUrl {
        /// What it was set to.
        value: String,
        /// Why it was refused.
        reason: String,
    },
    /// Plain HTTP to a host that is not loopback.
    #[error(
        "{url} uses plain http:// to a host that is not loopback; use https://, or allow insecure HTTP explicitly"
    )]
    InsecureHttp {
        /// The refused URL.
        url: String,
    },
    /// A scheme the updater does not speak, or `file://` named by a remote manifest.
    #[error(
        "{url}: scheme {scheme:?} is not allowed here (https://, loopback http://, or file:// for a file:// mirror)"
    )]
    Scheme {
        /// The refused URL.
        url: String,
        /// Its scheme.
        scheme: String,
    },
    /// The HTTP client could not be built.
    #[error("cannot build the HTTP client: {0}")]
    Client(String),
    /// Connection or protocol failure before an answer.
    #[error("GET {url} failed: {reason}")]
    Request {
        /// The URL.
        url: String,
        /// The client's error chain.
        reason: String,
    },
    /// No answer (or no next bytes) in time.
    #[error("GET {url} timed out (connect timeout {connect:?}, read timeout {read:?}): {reason}")]
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

/// What a finished artifact download delivered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Downloaded {
    /// Bytes written.
    pub size: u64,
    /// SHA-256 of those bytes, lowercase hex.
    pub sha256: String,
}

/// Parses `AIHUMMER_DOWNLOAD_BASE_URL` and applies the scheme rules.
pub fn parse_base_url(value: &str, allow_insecure_http: bool) -> Result<Url, FetchError> {
    let url = Url::parse(value.trim()).map_err(|err| FetchError::BaseUrl {
        value: value.to_string(),
        reason: err.to_string(),
    })?;
    check_scheme(&url, allow_insecure_http, true).map_err(|err| FetchError::BaseUrl {
        value: value.to_string(),
        reason: err.to_string(),
    })?;
    Ok(url)
}

/// `{base}/{channel}/latest.json`, whether or not `base` ends in a slash.
pub fn manifest_url(base: &Url, channel: Channel) -> Result<Url, FetchError> {
    let text = format!(
        "{}/{}/latest.json",
        base.as_str().trim_end_matches('/'),
        channel
    );
    Url::parse(&text).map_err(|err| FetchError::BaseUrl {
        value: base.to_string(),
        reason: err.to_string(),
    })
}

fn is_loopback(url: &Url) -> bool {
    match url.host() {
        Some(Host::Domain(d)) => d == "localhost" || d.ends_with(".localhost"),
        Some(Host::Ipv4(ip)) => IpAddr::V4(ip).is_loopback(),
        Some(Host::Ipv6(ip)) => IpAddr::V6(ip).is_loopback(),
        None => false,
    }
}

fn check_scheme(url: &Url, allow_insecure_http: bool, allow_file: bool) -> Result<(), FetchError> {
    match url.scheme() {
        "https" => Ok(()),
        "http" if allow_insecure_http || is_loopback(url) => Ok(()),
        "http" => Err(FetchError::InsecureHttp {
            url: url.to_string(),
        }),
        "file" if allow_file => Ok(()),
        scheme => Err(FetchError::Scheme {
            url: url.to_string(),
            scheme: scheme.to_string(),
        }),
    }
}

/// The error's whole source chain on one line: reqwest's own message alone rarely says
/// whether it was DNS, TLS or a reset.
fn chain(err: &(dyn std::error::Error + 'static)) -> String {
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
    client: reqwest::Client,
    options: FetchOptions,
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

    fn request_error(&self, url: &Url, err: reqwest::Error) -> FetchError {
        if err.is_timeout() {
            FetchError::Timeout {
                url: url.to_string(),
                connect: self.options.connect_timeout,
                read: self.options.read_timeout,
                reason: chain(&err),
            }
        } else {
            FetchError::Request {
                url: url.to_string(),
                reason: chain(&err),
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
        let sig_url =
            resolve_url(&url, "latest.json.minisig").map_err(|err| FetchError::BaseUrl {
                value: base.to_string(),
                reason: err.to_string(),
            })?;
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
                url: url.to_string(),
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
                url: url.to_string(),
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
            url: url.to_string(),
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
            Err(source) => return Err(FetchError::File { path, source }),
        };
        let mut body = Vec::new();
        file.take(cap + 1)
            .read_to_end(&mut body)
            .await
            .map_err(|source| FetchError::File {
                path: path.clone(),
                source,
            })?;
        if body.len() as u64 > cap {
            return Err(FetchError::TooLarge {
                url: url.to_string(),
                cap,
            });
        }
        Ok(Some(body))
    }

    /// Resolves an artifact's URL against the manifest's and applies the scheme rules:
    /// `file://` only when the manifest itself came from a `file://` mirror (a remote
    /// manifest must not make the supervisor read local files).
    pub fn artifact_url(&self, manifest_url: &Url, artifact: &Artifact) -> Result<Url, FetchError> {
        let url = resolve_url(manifest_url, &artifact.url).map_err(|err| FetchError::BaseUrl {
            value: manifest_url.to_string(),
            reason: err.to_string(),
        })?;
        check_scheme(
            &url,
            self.options.allow_insecure_http,
            manifest_url.scheme() == "file",
        )?;
        Ok(url)
    }

    /// Streams `url` into `out`, hashing on the way. `size` is the manifest's: a body that
    /// announces or delivers more is aborted at once, one that ends early is truncated.
    /// `progress` is told the running byte count after every chunk. `out` is flushed but
    /// not synced; durability is the caller's.
    pub async fn download<W: AsyncWrite + Unpin>(
        &self,
        url: &Url,
        size: u64,
        out: &mut W,
        mut progress: impl FnMut(u64),
    ) -> Result<Downloaded, FetchError> {
        let mut hasher = Sha256::new();
        let mut got: u64 = 0;
        let write_err = |source| FetchError::Write {
            url: url.to_string(),
            source,
        };
        let oversized = || FetchError::Oversized {
            url: url.to_string(),
            expected: size,
        };
        if url.scheme() == "file" {
            let path = file_path(url)?;
            let file = tokio::fs::File::open(&path)
                .await
                .map_err(|source| FetchError::File {
                    path: path.clone(),
                    source,
                })?;
            // Never read more than one byte past `size`: that byte is enough to know the
            // file is too big.
            let mut file = file.take(size + 1);
            let mut buf = vec![0u8; 256 * 1024];
            loop {
                let n = file
                    .read(&mut buf)
                    .await
                    .map_err(|source| FetchError::File {
                        path: path.clone(),
                        source,
                    })?;
                if n == 0 {
                    break;
                }
                if got + n as u64 > size {
                    return Err(oversized());
                }
                hasher.update(&buf[..n]);
                out.write_all(&buf[..n]).await.map_err(write_err)?;
                got += n as u64;
                progress(got);
            }
        } else {
            let mut response = self
                .client
                .get(url.clone())
                .send()
                .await
                .map_err(|err| self.request_error(url, err))?;
            if !response.status().is_success() {
                return Err(FetchError::Status {
                    url: url.to_string(),
                    status: response.status(),
                });
            }
            if content_length(&response).is_some_and(|len| len > size) {
                return Err(oversized());
            }
            loop {
                let chunk = match response.chunk().await {
                    Ok(Some(chunk)) => chunk,
                    Ok(None) => break,
                    Err(err) if err.is_timeout() => return Err(self.request_error(url, err)),
                    Err(err) => {
                        return Err(FetchError::Broken {
                            url: url.to_string(),
                            got,
                            reason: chain(&err),
                        });
                    }
                };
                if got + chunk.len() as u64 > size {
                    return Err(oversized());
                }
                hasher.update(&chunk);
                out.write_all(&chunk).await.map_err(write_err)?;
                got += chunk.len() as u64;
                progress(got);
            }
        }
        out.flush().await.map_err(write_err)?;
        if got < size {
            return Err(FetchError::Truncated {
                url: url.to_string(),
                expected: size,
                got,
            });
        }
        Ok(Downloaded {
            size: got,
            sha256: hex::encode(hasher.finalize()),
        })
    }
}

fn content_length(response: &reqwest::Response) -> Option<u64> {
    response
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
}

fn file_path(url: &Url) -> Result<PathBuf, FetchError> {
    url.to_file_path().map_err(|()| FetchError::Scheme {
        url: url.to_string(),
        scheme: "file (with a host or a relative path)".into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn https_is_always_allowed_and_http_only_to_loopback() {
        assert!(parse_base_url("https://cdn.example.com/aihummer", false).is_ok());
        assert!(parse_base_url("http://127.0.0.1:8080/", false).is_ok());
        assert!(parse_base_url("http://[::1]:8080/", false).is_ok());
        assert!(parse_base_url("http://localhost:8080/", false).is_ok());
        let err = parse_base_url("http://cdn.example.com/", false).unwrap_err();
        assert!(
            err.to_string()
                .contains("plain http:// to a host that is not loopback"),
            "{err}"
        );
        assert!(parse_base_url("http://cdn.example.com/", true).is_ok());
        assert!(parse_base_url("file:///srv/mirror", false).is_ok());
        assert!(parse_base_url("ftp://cdn.example.com/", true).is_err());
        assert!(parse_base_url("not a url", false).is_err());
    }

    #[test]
    fn server_errors_and_timeouts_are_transient_and_refusals_are_not() {
        let status = |code| FetchError::Status {
            url: "https://cdn.example.com/x".into(),
            status: StatusCode::from_u16(code).unwrap(),
        };
        assert!(status(500).is_transient());
        assert!(status(429).is_transient());
        assert!(!status(404).is_transient());
        assert!(
            !FetchError::Oversized {
                url: String::new(),
                expected: 1
            }
            .is_transient()
        );
        assert!(
            FetchError::Truncated {
                url: String::new(),
                expected: 2,
                got: 1
            }
            .is_transient()
        );
    }

    #[test]
    fn the_manifest_url_is_under_the_channel_with_or_without_a_trailing_slash() {
        for base in ["https://cdn.example.com/a", "https://cdn.example.com/a/"] {
            let base = Url::parse(base).unwrap();
            assert_eq!(
                manifest_url(&base, Channel::Beta).unwrap().as_str(),
                "https://cdn.example.com/a/beta/latest.json"
            );
        }
    }

    #[test]
    fn a_remote_manifest_cannot_point_at_local_files() {
        let fetcher = Fetcher::new(FetchOptions::default()).unwrap();
        let artifact = |url: &str| Artifact {
            url: url.into(),
            sha256: String::new(),
            size: 1,
        };
        let remote = Url::parse("https://cdn.example.com/stable/latest.json").unwrap();
        assert!(
            fetcher
                .artifact_url(&remote, &artifact("file:///etc/passwd"))
                .is_err()
        );
        assert!(
            fetcher
                .artifact_url(&remote, &artifact("http://cdn.example.com/x"))
                .is_err()
        );
        assert_eq!(
            fetcher
                .artifact_url(&remote, &artifact("1.0.0/gw"))
                .unwrap()
                .as_str(),
            "https://cdn.example.com/stable/1.0.0/gw"
        );
        let mirror = Url::parse("file:///srv/m/stable/latest.json").unwrap();
        assert!(fetcher.artifact_url(&mirror, &artifact("1.0.0/gw")).is_ok());
    }

    #[tokio::test]
    async fn file_mirrors_are_read_from_disk_with_the_same_caps() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("stable")).unwrap();
        std::fs::write(dir.path().join("stable/latest.json"), b"{}").unwrap();
        std::fs::write(dir.path().join("stable/blob"), b"hello").unwrap();
        let base = Url::from_directory_path(dir.path()).unwrap();
        let fetcher = Fetcher::new(FetchOptions::default()).unwrap();
        let ManifestFetch::Fetched(f) = fetcher
            .fetch_manifest(&base, Channel::Stable, None, true)
            .await
            .unwrap()
        else {
            panic!("a file mirror has no 304");
        };
        assert_eq!(f.body, b"{}");
        assert_eq!(f.signature, None);
        let blob = resolve_url(&f.url, "blob").unwrap();
        let mut out = Vec::new();
        let mut seen = 0;
        let done = fetcher
            .download(&blob, 5, &mut out, |n| seen = n)
            .await
            .unwrap();
        assert_eq!(out, b"hello");
        assert_eq!(seen, 5);
        assert_eq!(
            done.sha256,
            "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"
        );
        let err = fetcher
            .download(&blob, 4, &mut Vec::new(), |_| {})
            .await
            .unwrap_err();
        assert!(matches!(err, FetchError::Oversized { .. }), "{err}");
        let err = fetcher
            .download(&blob, 6, &mut Vec::new(), |_| {})
            .await
            .unwrap_err();
        assert!(matches!(err, FetchError::Truncated { got: 5, .. }), "{err}");
        let small = Fetcher::new(FetchOptions {
            manifest_cap: 1,
            ..FetchOptions::default()
        })
        .unwrap();
        let err = small
            .fetch_manifest(&base, Channel::Stable, None, false)
            .await
            .unwrap_err();
        assert!(matches!(err, FetchError::TooLarge { .. }), "{err}");
    }
}
