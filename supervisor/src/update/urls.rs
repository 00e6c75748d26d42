//! Every URL the updater resolves, and the rules they must follow: the base URL
//! (`AIHUMMER_DOWNLOAD_BASE_URL`), a channel's manifest and signature under it, and an
//! artifact's URL relative to the manifest's own (or absolute).
//!
//! Schemes: `https://` always; `http://` only to a loopback host (a test CDN, a local
//! mirror) unless the caller opts in explicitly, because a plain-HTTP manifest without a
//! signature key can be swapped by anyone on the path; `file://` for air-gapped mirrors,
//! and for an artifact only when its manifest came from one (a remote manifest must not
//! make the supervisor read local files). Redirects follow the same rules.
//!
//! A CDN URL may carry secrets (`https://user:token@cdn/...`, `...?X-Amz-Signature=...`),
//! so every URL that reaches a log line, an error or `status` goes through [`redact`].

use std::net::IpAddr;
use std::path::PathBuf;

use url::{Host, Url};

use crate::update::channel::Channel;

/// A URL that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum UrlError {
    /// `AIHUMMER_DOWNLOAD_BASE_URL` is not a usable URL.
    #[error("AIHUMMER_DOWNLOAD_BASE_URL={value} is not usable: {reason}")]
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
    /// A `url` that does not resolve against the manifest's URL.
    #[error("artifact url {url:?} does not resolve against {base}: {reason}")]
    Resolve {
        /// The `url` as written in the manifest.
        url: String,
        /// The manifest's own URL.
        base: String,
        /// Why it failed.
        reason: String,
    },
}

/// Parses `AIHUMMER_DOWNLOAD_BASE_URL` and applies the scheme rules.
pub fn parse_base_url(value: &str, allow_insecure_http: bool) -> Result<Url, UrlError> {
    let url = Url::parse(value.trim()).map_err(|err| UrlError::BaseUrl {
        // What does not parse cannot be redacted piecewise, so none of it is shown.
        value: "(not shown: it does not parse as a URL)".into(),
        reason: err.to_string(),
    })?;
    check_scheme(&url, allow_insecure_http, true).map_err(|err| UrlError::BaseUrl {
        value: redact(&url),
        reason: err.to_string(),
    })?;
    Ok(url)
}

/// `{base}/{channel}/latest.json`, whether or not `base` ends in a slash.
pub fn manifest_url(base: &Url, channel: Channel) -> Result<Url, UrlError> {
    let text = format!(
        "{}/{}/latest.json",
        base.as_str().trim_end_matches('/'),
        channel
    );
    Url::parse(&text).map_err(|err| UrlError::BaseUrl {
        value: redact(base),
        reason: err.to_string(),
    })
}

/// `latest.json.minisig` beside the manifest.
pub fn signature_url(manifest_url: &Url) -> Result<Url, UrlError> {
    resolve_url(manifest_url, "latest.json.minisig")
}

/// Resolves an artifact's `url` against the URL the manifest was fetched from: a relative
/// `url` is taken relative to the manifest's own location (so `1.4.2/x` next to
/// `{base}/stable/latest.json` is `{base}/stable/1.4.2/x`), an absolute one stands alone.
/// `file://` manifest URLs resolve like any other.
pub fn resolve_url(manifest_url: &Url, artifact_url: &str) -> Result<Url, UrlError> {
    manifest_url
        .join(artifact_url)
        .map_err(|err| UrlError::Resolve {
            url: artifact_url.to_string(),
            base: redact(manifest_url),
            reason: err.to_string(),
        })
}

/// An artifact's URL resolved against its manifest's, with the scheme rules applied:
/// `file://` only when the manifest itself came from a `file://` mirror.
pub fn artifact_url(
    manifest_url: &Url,
    artifact_url: &str,
    allow_insecure_http: bool,
) -> Result<Url, UrlError> {
    let url = resolve_url(manifest_url, artifact_url)?;
    check_scheme(&url, allow_insecure_http, manifest_url.scheme() == "file")?;
    Ok(url)
}

/// The scheme rules of the module doc; `allow_file` where a `file://` URL is acceptable.
pub fn check_scheme(
    url: &Url,
    allow_insecure_http: bool,
    allow_file: bool,
) -> Result<(), UrlError> {
    match url.scheme() {
        "https" => Ok(()),
        "http" if allow_insecure_http || is_loopback(url) => Ok(()),
        "http" => Err(UrlError::InsecureHttp { url: redact(url) }),
        "file" if allow_file => Ok(()),
        scheme => Err(UrlError::Scheme {
            url: redact(url),
            scheme: scheme.to_string(),
        }),
    }
}

/// The local path of a `file://` URL.
pub fn file_path(url: &Url) -> Result<PathBuf, UrlError> {
    url.to_file_path().map_err(|()| UrlError::Scheme {
        url: redact(url),
        scheme: "file (with a host or a relative path)".into(),
    })
}

/// `url` as logs and messages show it: credentials, query string and fragment masked (see
/// [`aihummer_common::redact`]), so signed-link tokens never reach a log.
pub fn redact(url: &Url) -> String {
    aihummer_common::redact::url(url.as_str())
}

fn is_loopback(url: &Url) -> bool {
    match url.host() {
        Some(Host::Domain(d)) => d == "localhost" || d.ends_with(".localhost"),
        Some(Host::Ipv4(ip)) => IpAddr::V4(ip).is_loopback(),
        Some(Host::Ipv6(ip)) => IpAddr::V6(ip).is_loopback(),
        None => false,
    }
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
    fn urls_resolve_relative_to_the_manifest() {
        let base = Url::parse("https://cdn.example.com/aihummer/stable/latest.json").unwrap();
        assert_eq!(
            resolve_url(&base, "1.4.2/gw").unwrap().as_str(),
            "https://cdn.example.com/aihummer/stable/1.4.2/gw"
        );
        assert_eq!(
            resolve_url(&base, "../1.4.2/gw").unwrap().as_str(),
            "https://cdn.example.com/aihummer/1.4.2/gw"
        );
        assert_eq!(
            resolve_url(&base, "https://mirror.example.org/gw")
                .unwrap()
                .as_str(),
            "https://mirror.example.org/gw"
        );
        let file = Url::parse("file:///srv/mirror/stable/latest.json").unwrap();
        assert_eq!(
            resolve_url(&file, "1.4.2/gw").unwrap().as_str(),
            "file:///srv/mirror/stable/1.4.2/gw"
        );
    }

    #[test]
    fn credentials_and_query_strings_are_redacted() {
        let url = Url::parse(
            "https://deploy:s3cret@cdn.example.com/stable/1.0.0/gw?X-Amz-Signature=abc&t=1#f",
        )
        .unwrap();
        assert_eq!(
            redact(&url),
            "https://redacted@cdn.example.com/stable/1.0.0/gw?redacted#redacted"
        );
        let token_only = Url::parse("https://tok@cdn.example.com/x").unwrap();
        assert_eq!(redact(&token_only), "https://redacted@cdn.example.com/x");
        let plain = Url::parse("https://cdn.example.com/stable/latest.json").unwrap();
        assert_eq!(redact(&plain), plain.as_str());
        let file = Url::parse("file:///srv/mirror/stable/latest.json").unwrap();
        assert_eq!(redact(&file), file.as_str());
    }

    #[test]
    fn a_remote_manifest_cannot_point_at_local_files() {
        let remote = Url::parse("https://cdn.example.com/stable/latest.json").unwrap();
        assert!(artifact_url(&remote, "file:///etc/passwd", false).is_err());
        assert!(artifact_url(&remote, "http://cdn.example.com/x", false).is_err());
        assert_eq!(
            artifact_url(&remote, "1.0.0/gw", false).unwrap().as_str(),
            "https://cdn.example.com/stable/1.0.0/gw"
        );
        let mirror = Url::parse("file:///srv/m/stable/latest.json").unwrap();
        assert!(artifact_url(&mirror, "1.0.0/gw", false).is_ok());
    }
}
