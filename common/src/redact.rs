//! Showing a URL in a log line or an error without the secrets it may carry.
//!
//! Webhook and CDN URLs often hold a token: as `user:password@`, or in the query string
//! (`?token=...`, presigned URLs). [`url`] keeps what an operator needs to recognise the
//! endpoint (scheme, host, port, path) and replaces the rest.

/// What a redacted part of a URL is replaced with.
pub const MASK: &str = "redacted";

/// `raw` with its userinfo, query string and fragment replaced by [`MASK`]. A value that
/// does not parse as a URL is cut the same way by hand: everything between `://` and
/// the last `@` of the authority, and everything from the first `?` or `#`.
pub fn url(raw: &str) -> String {
    let raw = raw.trim();
    let Ok(mut url) = url::Url::parse(raw) else {
        return unparsed(raw);
    };
    if !url.username().is_empty() || url.password().is_some() {
        // Neither call can fail on a URL that already has userinfo (it has a host).
        let _ = url.set_password(None);
        let _ = url.set_username(MASK);
    }
    if url.query().is_some() {
        url.set_query(Some(MASK));
    }
    if url.fragment().is_some() {
        url.set_fragment(Some(MASK));
    }
    url.to_string()
}

/// The hand-made cut for a value the URL parser refused.
fn unparsed(raw: &str) -> String {
    let (before, cut) = match raw.find(['?', '#']) {
        Some(at) => (&raw[..at], format!("{}{MASK}", &raw[at..=at])),
        None => (raw, String::new()),
    };
    let (scheme, rest) = match before.split_once("://") {
        Some((scheme, rest)) => (format!("{scheme}://"), rest),
        None => (String::new(), before),
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let rest = match rest[..authority_end].rfind('@') {
        Some(at) => format!("{MASK}{}", &rest[at..]),
        None => rest.to_string(),
    };
    format!("{scheme}{rest}{cut}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_query_and_fragment_are_replaced_and_the_endpoint_kept() {
        assert_eq!(
            url("https://bot:hunter2@hooks.example.com:8443/replies/x?token=s3cret&a=1#frag"),
            "https://redacted@hooks.example.com:8443/replies/x?redacted#redacted"
        );
        assert_eq!(
            url("https://token-only@cdn.example.com/a"),
            "https://redacted@cdn.example.com/a"
        );
    }

    #[test]
    fn a_url_without_secrets_is_shown_as_it_is() {
        assert_eq!(
            url("http://127.0.0.1:9000/hook"),
            "http://127.0.0.1:9000/hook"
        );
        assert_eq!(url("file:///srv/mirror/"), "file:///srv/mirror/");
    }

    #[test]
    fn a_value_that_does_not_parse_is_cut_by_hand() {
        let shown = url("https://user:hunter2@[bad/path?key=s3cret");
        assert_eq!(shown, "https://redacted@[bad/path?redacted");
        assert_eq!(url("not a url #s3cret"), "not a url #redacted");
        assert_eq!(url("nothing secret"), "nothing secret");
    }
}
