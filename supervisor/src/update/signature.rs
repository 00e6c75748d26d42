//! Verifying `latest.json` against its minisign signature (`latest.json.minisig`) under
//! the keys pinned in `AIHUMMER_UPDATE_PUBKEY`.
//!
//! A sha256 in the manifest only proves that the artifact is the one the manifest names;
//! the signature proves that the manifest comes from the holder of a secret key. So with
//! keys configured, a missing signature is a refusal, not a warning: otherwise anyone able
//! to serve files on the CDN path could simply leave the signature out. Without a key, a
//! signature that happens to be published is not looked at.
//!
//! Several keys may be trusted at once (comma-separated: key lines, or paths to `.pub`
//! files), any one of which may sign, so a signing key can be rotated without a flag day
//! (`docs/latest-json.md` shows the steps). The signature names the key that made it (its
//! key id), which picks the trusted key to verify with; a refusal names both sides' ids.

use std::fmt;
use std::io::Cursor;
use std::path::Path;

use minisign::{PublicKey, PublicKeyBox, SignatureBox};

/// Why a manifest's signature is not accepted, or a configured key is not usable.
#[derive(Debug, thiserror::Error)]
pub enum SignatureError {
    /// A configured key does not decode.
    #[error(
        "AIHUMMER_UPDATE_PUBKEY entry {entry:?} is not a minisign public key ({reason}); expected the base64 key line (RW...), the .pub file's two lines, or the path of a .pub file, comma-separated"
    )]
    BadKey {
        /// The entry as written.
        entry: String,
        /// Why it was refused.
        reason: String,
    },
    /// A configured `.pub` path cannot be read.
    #[error("AIHUMMER_UPDATE_PUBKEY names {path}, which cannot be read: {reason}")]
    KeyFile {
        /// The path as written.
        path: String,
        /// The OS error.
        reason: String,
    },
    /// A key is configured but no `latest.json.minisig` was published.
    #[error(
        "AIHUMMER_UPDATE_PUBKEY is set but the CDN has no latest.json.minisig; refusing an unsigned manifest"
    )]
    Missing,
    /// The `.minisig` file does not decode.
    #[error("latest.json.minisig is not a minisign signature: {0}")]
    Malformed(String),
    /// The signature was made by a key that is not trusted.
    #[error(
        "latest.json.minisig was made by another key than AIHUMMER_UPDATE_PUBKEY: the signature's key id is {signed_by}, the trusted key ids are {trusted}"
    )]
    OtherKey {
        /// The key id the signature names.
        signed_by: KeyId,
        /// The trusted key ids, comma-separated.
        trusted: String,
    },
    /// The signature does not match the manifest's bytes.
    #[error(
        "latest.json.minisig does not verify over latest.json under key {key} ({reason}); refusing the manifest"
    )]
    Invalid {
        /// The key id verified with.
        key: KeyId,
        /// minisign's reason.
        reason: String,
    },
}

/// A minisign key id, shown as minisign shows it (16 upper-case hex digits).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyId(u64);

impl KeyId {
    fn of(keynum: &[u8]) -> Self {
        let mut bytes = [0u8; 8];
        let n = keynum.len().min(8);
        bytes[..n].copy_from_slice(&keynum[..n]);
        KeyId(u64::from_le_bytes(bytes))
    }
}

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016X}", self.0)
    }
}

/// The pinned public keys: at least one; any of them may sign.
#[derive(Debug, Clone)]
pub struct TrustedKeys(Vec<PublicKey>);

/// What was established about a manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verified {
    /// The manifest verifies under a pinned key; its trusted comment is kept for logs.
    Signed {
        /// The key that made the signature.
        key: KeyId,
        /// The signature's trusted comment (e.g. `timestamp:... version:1.4.2`).
        trusted_comment: String,
    },
    /// No key is configured; integrity rests on sha256 alone.
    Unchecked,
}

impl TrustedKeys {
    /// Reads `AIHUMMER_UPDATE_PUBKEY`: comma-separated entries, each a base64 key line or
    /// the path of a `.pub` file; or the whole text of one `.pub` file (an `untrusted
    /// comment:` line followed by the key line), as earlier versions accepted.
    pub fn parse(value: &str) -> Result<Self, SignatureError> {
        let value = value.trim();
        let keys = if value.contains('\n') {
            vec![from_pub_text(value, value)?]
        } else {
            value
                .split(',')
                .map(str::trim)
                .filter(|entry| !entry.is_empty())
                .map(parse_entry)
                .collect::<Result<Vec<_>, _>>()?
        };
        if keys.is_empty() {
            return Err(SignatureError::BadKey {
                entry: value.to_string(),
                reason: "no key given".into(),
            });
        }
        Ok(TrustedKeys(keys))
    }

    /// The trusted key ids, comma-separated, for messages.
    pub fn ids(&self) -> String {
        self.0
            .iter()
            .map(|k| KeyId::of(k.keynum()).to_string())
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// One entry: a key line (base64 never contains `.`, so a path is never mistaken for
/// one) or a `.pub` file.
fn parse_entry(entry: &str) -> Result<PublicKey, SignatureError> {
    if let Ok(key) = PublicKey::from_base64(entry) {
        return Ok(key);
    }
    let path = Path::new(entry);
    if !entry.contains('/') && !entry.ends_with(".pub") {
        return Err(SignatureError::BadKey {
            entry: entry.to_string(),
            reason: "neither a base64 key line nor a path to a .pub file".into(),
        });
    }
    let text = std::fs::read_to_string(path).map_err(|err| SignatureError::KeyFile {
        path: entry.to_string(),
        reason: err.to_string(),
    })?;
    from_pub_text(entry, &text)
}

/// A `.pub` file's text: the comment line, then the key line.
fn from_pub_text(entry: &str, text: &str) -> Result<PublicKey, SignatureError> {
    PublicKeyBox::from_string(text.trim())
        .and_then(PublicKey::from_box)
        .map_err(|err| SignatureError::BadKey {
            entry: entry.to_string(),
            reason: err.to_string(),
        })
}

/// Checks `manifest` against `signature` (the `.minisig` file's bytes, if one was
/// published) under `keys` (if any are configured).
pub fn verify(
    keys: Option<&TrustedKeys>,
    manifest: &[u8],
    signature: Option<&[u8]>,
) -> Result<Verified, SignatureError> {
    let Some(keys) = keys else {
        return Ok(Verified::Unchecked);
    };
    let signature = signature.ok_or(SignatureError::Missing)?;
    let text = std::str::from_utf8(signature)
        .map_err(|_| SignatureError::Malformed("not UTF-8 text".into()))?;
    let signature = SignatureBox::from_string(text)
        .map_err(|err| SignatureError::Malformed(err.to_string()))?;
    let signed_by = KeyId::of(signature.keynum());
    let key = keys
        .0
        .iter()
        .find(|k| KeyId::of(k.keynum()) == signed_by)
        .ok_or_else(|| SignatureError::OtherKey {
            signed_by,
            trusted: keys.ids(),
        })?;
    // Legacy (non-prehashed) signatures are refused: every minisign since 0.9 prehashes,
    // and accepting both only widens what an attacker can try.
    minisign::verify(key, &signature, Cursor::new(manifest), true, false, false).map_err(
        |err| SignatureError::Invalid {
            key: signed_by,
            reason: err.to_string(),
        },
    )?;
    Ok(Verified::Signed {
        key: signed_by,
        trusted_comment: signature
            .trusted_comment()
            .map_err(|err| SignatureError::Malformed(err.to_string()))?,
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
        let key = TrustedKeys::parse(&keys.public_key).unwrap();
        let verified = verify(Some(&key), MANIFEST, Some(sig.as_bytes())).unwrap();
        assert!(
            matches!(verified, Verified::Signed { trusted_comment, .. } if trusted_comment == "version:1.0.0")
        );
        // The key line alone works as well as the whole .pub file.
        let line = keys.public_key.lines().nth(1).unwrap();
        let key = TrustedKeys::parse(line).unwrap();
        assert!(verify(Some(&key), MANIFEST, Some(sig.as_bytes())).is_ok());
    }

    #[test]
    fn changed_bytes_do_not_verify() {
        let keys = generate_keypair(None).unwrap();
        let sig = sign(&keys.secret_key, None, MANIFEST, "x").unwrap();
        let key = TrustedKeys::parse(&keys.public_key).unwrap();
        let err = verify(Some(&key), b"{\"schema\":1} \n", Some(sig.as_bytes())).unwrap_err();
        assert!(matches!(err, SignatureError::Invalid { .. }), "{err}");
    }

    #[test]
    fn another_key_is_refused_naming_the_signatures_key_id_and_the_trusted_ones() {
        let ours = generate_keypair(None).unwrap();
        let theirs = generate_keypair(None).unwrap();
        let sig = sign(&theirs.secret_key, None, MANIFEST, "x").unwrap();
        let key = TrustedKeys::parse(&ours.public_key).unwrap();
        let err = verify(Some(&key), MANIFEST, Some(sig.as_bytes()))
            .unwrap_err()
            .to_string();
        let id = |public: &str| {
            public
                .lines()
                .next()
                .unwrap()
                .rsplit(' ')
                .next()
                .unwrap()
                .to_string()
        };
        assert_eq!(
            err,
            format!(
                "latest.json.minisig was made by another key than AIHUMMER_UPDATE_PUBKEY: the signature's key id is {}, the trusted key ids are {}",
                id(&theirs.public_key),
                id(&ours.public_key)
            )
        );
    }

    #[test]
    fn two_trusted_keys_accept_a_signature_by_either() {
        let old = generate_keypair(None).unwrap();
        let new = generate_keypair(None).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let new_pub = dir.path().join("new.pub");
        std::fs::write(&new_pub, &new.public_key).unwrap();
        // A key line and a .pub file, as an operator mid-rotation writes them.
        let value = format!(
            "{}, {}",
            old.public_key.lines().nth(1).unwrap(),
            new_pub.display()
        );
        let keys = TrustedKeys::parse(&value).unwrap();
        for (pair, signer) in [(&old, "old"), (&new, "new")] {
            let sig = sign(&pair.secret_key, None, MANIFEST, signer).unwrap();
            let verified = verify(Some(&keys), MANIFEST, Some(sig.as_bytes())).unwrap();
            assert!(
                matches!(&verified, Verified::Signed { trusted_comment, .. } if trusted_comment == signer),
                "{verified:?}"
            );
        }
        // Either key alone refuses the other's signature.
        let only_old = TrustedKeys::parse(old.public_key.lines().nth(1).unwrap()).unwrap();
        let sig = sign(&new.secret_key, None, MANIFEST, "new").unwrap();
        assert!(matches!(
            verify(Some(&only_old), MANIFEST, Some(sig.as_bytes())),
            Err(SignatureError::OtherKey { .. })
        ));
    }

    #[test]
    fn a_missing_key_file_is_named() {
        let err = TrustedKeys::parse("/nonexistent/release.pub").unwrap_err();
        assert!(
            err.to_string().starts_with(
                "AIHUMMER_UPDATE_PUBKEY names /nonexistent/release.pub, which cannot be read"
            ),
            "{err}"
        );
        assert!(TrustedKeys::parse(" , ").is_err());
    }

    #[test]
    fn a_missing_signature_with_a_key_is_an_error() {
        let keys = generate_keypair(None).unwrap();
        let key = TrustedKeys::parse(&keys.public_key).unwrap();
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
        let err = TrustedKeys::parse("not a key").unwrap_err();
        assert!(
            err.to_string()
                .starts_with("AIHUMMER_UPDATE_PUBKEY entry \"not a key\" is not"),
            "{err}"
        );
    }
}
