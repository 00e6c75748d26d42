//! Authenticity of a manifest: a minisign signature over the exact bytes of `latest.json`,
//! checked against the key pinned in `AIHUMMER_UPDATE_PUBKEY`.
//!
//! A sha256 in the manifest only proves that the artifact is the one the manifest names;
//! the signature proves that the manifest comes from the holder of the secret key. So with
//! a key configured, a missing signature is a refusal, not a warning: otherwise anyone able
//! to serve files on the CDN path could simply leave the signature out. Without a key, a
//! signature that happens to be published is not looked at.

use minisign_verify::{PublicKey, Signature};

/// Why a manifest's signature is not accepted.
#[derive(Debug, thiserror::Error)]
pub enum SignatureError {
    /// The configured key does not decode.
    #[error(
        "AIHUMMER_UPDATE_PUBKEY is not a minisign public key ({0}); expected the base64 key line (RW...) or the .pub file's two lines"
    )]
    BadKey(String),
    /// A key is configured but no `latest.json.minisig` was published.
    #[error(
        "AIHUMMER_UPDATE_PUBKEY is set but the CDN has no latest.json.minisig; refusing an unsigned manifest"
    )]
    Missing,
    /// The `.minisig` file does not decode.
    #[error("latest.json.minisig is not a minisign signature: {0}")]
    Malformed(String),
    /// The signature was made by another key.
    #[error("latest.json.minisig was made by another key than AIHUMMER_UPDATE_PUBKEY")]
    OtherKey,
    /// The signature does not match the manifest's bytes.
    #[error("latest.json.minisig does not verify over latest.json ({0}); refusing the manifest")]
    Invalid(String),
}

/// The pinned public key.
#[derive(Debug, Clone)]
pub struct TrustedKey(PublicKey);

/// What was established about a manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verified {
    /// The manifest verifies under the pinned key; its trusted comment is kept for logs.
    Signed {
        /// The signature's trusted comment (e.g. `timestamp:... version:1.4.2`).
        trusted_comment: String,
    },
    /// No key is configured; integrity rests on sha256 alone.
    Unchecked,
}

impl TrustedKey {
    /// Reads `AIHUMMER_UPDATE_PUBKEY`: the base64 key line alone, or the whole `.pub` file
    /// (an `untrusted comment:` line followed by the key line).
    pub fn parse(value: &str) -> Result<Self, SignatureError> {
        let value = value.trim();
        let key = if value.contains('\n') {
            PublicKey::decode(value)
        } else {
            PublicKey::from_base64(value)
        };
        key.map(TrustedKey)
            .map_err(|err| SignatureError::BadKey(err.to_string()))
    }
}

/// Checks `manifest` against `signature` (the `.minisig` file's bytes, if one was
/// published) under `key` (if one is configured).
pub fn verify(
    key: Option<&TrustedKey>,
    manifest: &[u8],
    signature: Option<&[u8]>,
) -> Result<Verified, SignatureError> {
    let Some(TrustedKey(key)) = key else {
        return Ok(Verified::Unchecked);
    };
    let signature = signature.ok_or(SignatureError::Missing)?;
    let text = std::str::from_utf8(signature)
        .map_err(|_| SignatureError::Malformed("not UTF-8 text".into()))?;
    let signature =
        Signature::decode(text).map_err(|err| SignatureError::Malformed(err.to_string()))?;
    // Legacy (non-prehashed) signatures are refused: every minisign since 0.9 prehashes,
    // and accepting both only widens what an attacker can try.
    key.verify(manifest, &signature, false)
        .map_err(|err| match err {
            minisign_verify::Error::UnexpectedKeyId => SignatureError::OtherKey,
            other => SignatureError::Invalid(other.to_string()),
        })?;
    Ok(Verified::Signed {
        trusted_comment: signature.trusted_comment().to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::publish::{generate_keypair, sign};

    const MANIFEST: &[u8] = b"{\"schema\":1}\n";

    #[test]
    fn a_signature_by_the_pinned_key_verifies() {
        let keys = generate_keypair(None).unwrap();
        let sig = sign(&keys.secret_key, None, MANIFEST, "version:1.0.0").unwrap();
        let key = TrustedKey::parse(&keys.public_key).unwrap();
        let verified = verify(Some(&key), MANIFEST, Some(sig.as_bytes())).unwrap();
        assert!(
            matches!(verified, Verified::Signed { trusted_comment } if trusted_comment == "version:1.0.0")
        );
        // The key line alone works as well as the whole .pub file.
        let line = keys.public_key.lines().nth(1).unwrap();
        let key = TrustedKey::parse(line).unwrap();
        assert!(verify(Some(&key), MANIFEST, Some(sig.as_bytes())).is_ok());
    }

    #[test]
    fn changed_bytes_do_not_verify() {
        let keys = generate_keypair(None).unwrap();
        let sig = sign(&keys.secret_key, None, MANIFEST, "x").unwrap();
        let key = TrustedKey::parse(&keys.public_key).unwrap();
        let err = verify(Some(&key), b"{\"schema\":1} \n", Some(sig.as_bytes())).unwrap_err();
        assert!(matches!(err, SignatureError::Invalid(_)), "{err}");
    }

    #[test]
    fn another_key_is_named_as_such() {
        let ours = generate_keypair(None).unwrap();
        let theirs = generate_keypair(None).unwrap();
        let sig = sign(&theirs.secret_key, None, MANIFEST, "x").unwrap();
        let key = TrustedKey::parse(&ours.public_key).unwrap();
        let err = verify(Some(&key), MANIFEST, Some(sig.as_bytes())).unwrap_err();
        assert!(matches!(err, SignatureError::OtherKey), "{err}");
    }

    #[test]
    fn a_missing_signature_with_a_key_is_an_error() {
        let keys = generate_keypair(None).unwrap();
        let key = TrustedKey::parse(&keys.public_key).unwrap();
        assert!(matches!(
            verify(Some(&key), MANIFEST, None),
            Err(SignatureError::Missing)
        ));
        assert!(matches!(
            verify(Some(&key), MANIFEST, Some(b"garbage")),
            Err(SignatureError::Malformed(_))
        ));
    }

    #[test]
    fn without_a_key_nothing_is_checked() {
        assert_eq!(verify(None, MANIFEST, None).unwrap(), Verified::Unchecked);
    }

    #[test]
    fn a_bad_key_is_refused_with_the_variable_named() {
        let err = TrustedKey::parse("not a key").unwrap_err();
        assert!(err.to_string().starts_with("AIHUMMER_UPDATE_PUBKEY is not"));
    }
}
