//! Checking an inbound request's signature, as Stripe and Slack sign webhooks: the HMAC
//! covers a timestamp and the `Idempotency-Key` with the body, so a captured request can
//! neither be replayed later nor replayed now under a new key.
//!
//! ```text
//! X-AIHummer-Signature: t=<unix seconds>,v1=<hex>
//! v1 = lowercase hex HMAC-SHA256(AIHUMMER_INBOUND_SECRET, "<t>.<Idempotency-Key or empty>.<raw body>")
//! ```
//!
//! `t` is signed exactly as sent; unknown `k=v` parts are ignored and several `v1` may be
//! sent (any one matching is enough), so a sender can move to a new scheme or secret
//! without a flag day. The old body-only `X-AIHummer-Inbound-Secret` is accepted only
//! when the operator opts in. Pure: the clock is an argument.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::http::HeaderMap;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::config::Secret;

/// The signature header.
pub const HEADER: &str = "x-aihummer-signature";
/// The old body-only signature header, accepted only with
/// `AIHUMMER_INBOUND_LEGACY_SIGNATURE=true`.
pub const LEGACY_HEADER: &str = "x-aihummer-inbound-secret";
/// The header whose value is signed between the timestamp and the body.
pub const IDEMPOTENCY_HEADER: &str = "idempotency-key";

/// Why a request's signature is refused; the text is what the client is told.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    /// No signature header at all.
    #[error("the X-AIHummer-Signature header is missing")]
    Missing,
    /// The header is not `t=<unix seconds>,v1=<hex>`.
    #[error("X-AIHummer-Signature must be t=<unix seconds>,v1=<hex>: {0}")]
    Malformed(&'static str),
    /// No `v1` is the HMAC of the signed bytes.
    #[error(
        "X-AIHummer-Signature is not the HMAC-SHA256 of `<t>.<Idempotency-Key>.<body>` under the inbound secret"
    )]
    Mismatch,
    /// Signed correctly, but too long ago (or too far ahead): a replay, or a skewed clock.
    #[error(
        "X-AIHummer-Signature's t={t} is {skew}s from the gateway's clock; at most {tolerance}s is accepted"
    )]
    Stale {
        /// The timestamp as sent.
        t: i64,
        /// How far it is from now, in seconds.
        skew: u64,
        /// The accepted distance, in seconds.
        tolerance: u64,
    },
    /// Only the old body-only header, which the operator has not allowed.
    #[error(
        "X-AIHummer-Inbound-Secret (a body-only signature, replayable) is refused; sign with X-AIHummer-Signature"
    )]
    LegacyRefused,
    /// The old header, allowed, but not the body's HMAC.
    #[error("X-AIHummer-Inbound-Secret is not the HMAC-SHA256 of the body")]
    LegacyMismatch,
}

impl SignatureError {
    /// The stable error code the client can branch on.
    pub fn code(&self) -> &'static str {
        match self {
            SignatureError::Missing => "missing_signature",
            SignatureError::Malformed(_) => "malformed_signature",
            SignatureError::Mismatch | SignatureError::LegacyMismatch => "bad_signature",
            SignatureError::Stale { .. } => "stale_timestamp",
            SignatureError::LegacyRefused => "legacy_signature_refused",
        }
    }
}

/// Checks signatures under one secret, tolerance and legacy policy.
#[derive(Debug, Clone)]
pub struct Verifier {
    secret: Secret,
    tolerance: Duration,
    legacy: bool,
}

impl Verifier {
    /// A verifier for `secret` accepting timestamps within `tolerance` of now, and the
    /// body-only header too when `legacy`.
    pub fn new(secret: Secret, tolerance: Duration, legacy: bool) -> Self {
        Self {
            secret,
            tolerance,
            legacy,
        }
    }

    /// Whether `headers` sign `body` at `now`.
    pub fn check(
        &self,
        headers: &HeaderMap,
        body: &[u8],
        now: SystemTime,
    ) -> Result<(), SignatureError> {
        if let Some(value) = headers.get(HEADER) {
            let value = value
                .to_str()
                .map_err(|_| SignatureError::Malformed("not visible ASCII"))?;
            let key = headers
                .get(IDEMPOTENCY_HEADER)
                .map(|key| key.as_bytes())
                .unwrap_or_default();
            return self.check_current(value, key, body, now);
        }
        match headers.get(LEGACY_HEADER) {
            None => Err(SignatureError::Missing),
            Some(_) if !self.legacy => Err(SignatureError::LegacyRefused),
            Some(value) => {
                let mac = self.mac([body]);
                match hex::decode(value.as_bytes().trim_ascii()) {
                    Ok(sent) if mac.verify_slice(&sent).is_ok() => Ok(()),
                    _ => Err(SignatureError::LegacyMismatch),
                }
            }
        }
    }

    fn check_current(
        &self,
        header: &str,
        key: &[u8],
        body: &[u8],
        now: SystemTime,
    ) -> Result<(), SignatureError> {
        let mut t = None;
        let mut candidates = Vec::new();
        for part in header.split(',') {
            match part.trim().split_once('=') {
                Some(("t", value)) => t = Some(value),
                Some(("v1", value)) => candidates.push(value),
                _ => {}
            }
        }
        let t_text = t.ok_or(SignatureError::Malformed("no t="))?;
        let t: i64 = t_text
            .parse()
            .map_err(|_| SignatureError::Malformed("t is not a whole number of seconds"))?;
        if candidates.is_empty() {
            return Err(SignatureError::Malformed("no v1="));
        }
        let mac = self.mac([t_text.as_bytes(), b".", key, b".", body]);
        // Each comparison is constant-time; only the count of candidates shows.
        let matched = candidates.iter().any(|candidate| {
            hex::decode(candidate).is_ok_and(|sent| mac.clone().verify_slice(&sent).is_ok())
        });
        if !matched {
            return Err(SignatureError::Mismatch);
        }
        // Checked after the HMAC, so "stale" is only ever said of an authentic request:
        // it then means a replay or a skewed clock, never a wrong secret.
        let now = now.duration_since(UNIX_EPOCH).map_or(0, |since| {
            i64::try_from(since.as_secs()).unwrap_or(i64::MAX)
        });
        let skew = now.abs_diff(t);
        let tolerance = self.tolerance.as_secs();
        if skew > tolerance {
            return Err(SignatureError::Stale { t, skew, tolerance });
        }
        Ok(())
    }

    /// The HMAC state after feeding `parts` in order.
    fn mac<const N: usize>(&self, parts: [&[u8]; N]) -> Hmac<Sha256> {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(self.secret.0.as_bytes())
            .unwrap_or_else(|_| unreachable!("HMAC accepts keys of any length"));
        for part in parts {
            mac.update(part);
        }
        mac
    }
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    const SECRET: &str = "s3cret";
    const NOW: u64 = 1_700_000_000;

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    fn hmac_hex(data: &[u8]) -> String {
        let mut mac = Hmac::<Sha256>::new_from_slice(SECRET.as_bytes()).unwrap();
        mac.update(data);
        hex::encode(mac.finalize().into_bytes())
    }

    fn verifier(legacy: bool) -> Verifier {
        Verifier::new(Secret(SECRET.into()), Duration::from_secs(300), legacy)
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for (name, value) in pairs {
            headers.insert(*name, HeaderValue::from_str(value).unwrap());
        }
        headers
    }

    fn signed(t: u64, key: &str, body: &[u8]) -> String {
        let mut data = format!("{t}.{key}.").into_bytes();
        data.extend_from_slice(body);
        format!("t={t},v1={}", hmac_hex(&data))
    }

    const BODY: &[u8] = br#"{"channel":"sms","external_id":"1","text":"hi"}"#;

    #[test]
    fn a_request_signed_now_with_its_key_is_accepted_with_or_without_a_key() {
        let v = verifier(false);
        let with_key = headers(&[
            (HEADER, &signed(NOW, "k-1", BODY)),
            (IDEMPOTENCY_HEADER, "k-1"),
        ]);
        assert_eq!(v.check(&with_key, BODY, at(NOW)), Ok(()));
        let without = headers(&[(HEADER, &signed(NOW, "", BODY))]);
        assert_eq!(v.check(&without, BODY, at(NOW + 10)), Ok(()));
    }

    #[test]
    fn a_captured_signature_replayed_under_a_new_key_or_body_does_not_match() {
        let v = verifier(false);
        let captured = signed(NOW, "k-1", BODY);
        let new_key = headers(&[(HEADER, &captured), (IDEMPOTENCY_HEADER, "k-2")]);
        assert_eq!(
            v.check(&new_key, BODY, at(NOW)),
            Err(SignatureError::Mismatch)
        );
        let no_key = headers(&[(HEADER, &captured)]);
        assert_eq!(
            v.check(&no_key, BODY, at(NOW)),
            Err(SignatureError::Mismatch)
        );
        let same_key = headers(&[(HEADER, &captured), (IDEMPOTENCY_HEADER, "k-1")]);
        assert_eq!(
            v.check(&same_key, b"{}", at(NOW)),
            Err(SignatureError::Mismatch)
        );
    }

    #[test]
    fn a_timestamp_outside_the_tolerance_either_way_is_stale() {
        let v = verifier(false);
        for (t, now) in [(NOW - 301, NOW), (NOW + 301, NOW)] {
            let old = headers(&[(HEADER, &signed(t, "", BODY))]);
            let err = v.check(&old, BODY, at(now)).unwrap_err();
            assert_eq!(err.code(), "stale_timestamp", "{err}");
            assert!(err.to_string().contains("301s"), "{err}");
        }
        for t in [NOW - 300, NOW + 300] {
            let edge = headers(&[(HEADER, &signed(t, "", BODY))]);
            assert_eq!(v.check(&edge, BODY, at(NOW)), Ok(()));
        }
    }

    #[test]
    fn the_timestamp_is_signed_exactly_as_sent() {
        let v = verifier(false);
        let mut data = format!("0{NOW}..").into_bytes();
        data.extend_from_slice(BODY);
        let padded = format!("t=0{NOW},v1={}", hmac_hex(&data));
        assert_eq!(
            v.check(&headers(&[(HEADER, &padded)]), BODY, at(NOW)),
            Ok(())
        );
        let resigned = padded.replacen(&format!("t=0{NOW}"), &format!("t={NOW}"), 1);
        assert_eq!(
            v.check(&headers(&[(HEADER, &resigned)]), BODY, at(NOW)),
            Err(SignatureError::Mismatch)
        );
    }

    #[test]
    fn any_matching_v1_among_several_is_enough_and_unknown_parts_are_ignored() {
        let v = verifier(false);
        let good = signed(NOW, "", BODY);
        let v1 = good.split_once(",v1=").unwrap().1;
        let header = format!("t={NOW}, v0=abc, v1={}, v1={v1}", "00".repeat(32));
        assert_eq!(
            v.check(&headers(&[(HEADER, &header)]), BODY, at(NOW)),
            Ok(())
        );
    }

    #[test]
    fn malformed_headers_say_what_is_wrong() {
        let v = verifier(false);
        for (header, why) in [
            ("v1=00", "no t="),
            (&format!("t={NOW}") as &str, "no v1="),
            ("t=yesterday,v1=00", "whole number"),
            ("", "no t="),
        ] {
            let err = v
                .check(&headers(&[(HEADER, header)]), BODY, at(NOW))
                .unwrap_err();
            assert_eq!(err.code(), "malformed_signature");
            assert!(err.to_string().contains(why), "{err}");
        }
        let not_hex = format!("t={NOW},v1=zz");
        assert_eq!(
            v.check(&headers(&[(HEADER, &not_hex)]), BODY, at(NOW)),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            v.check(&HeaderMap::new(), BODY, at(NOW)),
            Err(SignatureError::Missing)
        );
    }

    #[test]
    fn the_body_only_header_is_refused_unless_the_legacy_setting_allows_it() {
        let legacy = headers(&[(LEGACY_HEADER, &hmac_hex(BODY))]);
        assert_eq!(
            verifier(false).check(&legacy, BODY, at(NOW)),
            Err(SignatureError::LegacyRefused)
        );
        assert_eq!(verifier(true).check(&legacy, BODY, at(NOW)), Ok(()));
        assert_eq!(
            verifier(true).check(&legacy, b"{}", at(NOW)),
            Err(SignatureError::LegacyMismatch)
        );
        // With both headers, the timestamped one decides.
        let both = headers(&[
            (LEGACY_HEADER, &hmac_hex(BODY)),
            (HEADER, &signed(NOW - 1000, "", BODY)),
        ]);
        assert_eq!(
            verifier(true)
                .check(&both, BODY, at(NOW))
                .unwrap_err()
                .code(),
            "stale_timestamp"
        );
    }
}
