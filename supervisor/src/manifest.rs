//! A channel's `latest.json`: parsing its exact bytes into a typed [`Manifest`], resolving
//! artifact URLs and picking the artifact built for this platform.
//!
//! Pure: bytes in, values out. The parser walks the JSON by hand instead of deriving
//! `Deserialize`, so that a missing or mistyped field is reported by its full path
//! (`artifacts.x86_64-unknown-linux-gnu.sha256`), which is what an operator staring at a
//! broken release needs. Unknown fields are ignored so that a newer publisher can add some
//! without breaking older supervisors; a different `schema` is refused.

use std::collections::BTreeMap;

use semver::Version;
use serde_json::{Map, Value};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use url::Url;

/// The only `schema` this parser understands.
pub const SCHEMA: u64 = 1;

/// The target triple this binary was compiled for: the key of its artifact.
pub const TARGET: &str = env!("AIHUMMER_TARGET");

/// Why a manifest cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ManifestError {
    /// The bytes are not JSON at all.
    #[error("latest.json is not valid JSON: {0}")]
    Json(String),
    /// A required field is absent.
    #[error("latest.json: missing field `{0}`")]
    Missing(String),
    /// A field is present but has the wrong type or an unusable value.
    #[error("latest.json: field `{field}` {reason}")]
    Invalid {
        /// The field's full path, e.g. `artifacts.x86_64-unknown-linux-gnu.size`.
        field: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A manifest written for another schema.
    #[error("latest.json has schema {0}; this supervisor understands only schema {SCHEMA}")]
    Schema(u64),
    /// Nothing was published for this platform.
    #[error("no artifact for this platform {target} in version {version} (only: {available})")]
    NoArtifact {
        /// This binary's target triple.
        target: String,
        /// The manifest's version.
        version: Version,
        /// The targets the manifest does offer, comma separated.
        available: String,
    },
    /// An artifact `url` that does not resolve against the manifest's URL.
    #[error("artifact url {url:?} does not resolve against {base}: {reason}")]
    Url {
        /// The `url` as written in the manifest.
        url: String,
        /// The manifest's own URL.
        base: String,
        /// Why it failed.
        reason: String,
    },
}

/// One downloadable gateway binary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Artifact {
    /// Relative to the manifest's URL, or absolute.
    pub url: String,
    /// SHA-256 of the file, 64 lowercase hex digits.
    pub sha256: String,
    /// Exact size in bytes.
    pub size: u64,
}

/// A parsed `latest.json`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manifest {
    /// Always [`SCHEMA`] once parsed.
    pub schema: u64,
    /// The channel the publisher meant this manifest for.
    pub channel: String,
    /// The version it offers.
    pub version: Version,
    /// When it was published.
    pub published_at: OffsetDateTime,
    /// After this instant the manifest must not be acted upon.
    pub expires: Option<OffsetDateTime>,
    /// The oldest running version allowed to jump straight to this one.
    pub min_version: Option<Version>,
    /// Release notes, shown to operators.
    pub notes_url: Option<String>,
    /// Target triple to artifact.
    pub artifacts: BTreeMap<String, Artifact>,
}

/// Parses the exact bytes of a `latest.json`.
pub fn parse(bytes: &[u8]) -> Result<Manifest, ManifestError> {
    let value: Value =
        serde_json::from_slice(bytes).map_err(|err| ManifestError::Json(err.to_string()))?;
    let root = value.as_object().ok_or_else(|| ManifestError::Invalid {
        field: "(top level)".into(),
        reason: "must be a JSON object".into(),
    })?;
    let schema = u64_field(root, "", "schema")?;
    if schema != SCHEMA {
        return Err(ManifestError::Schema(schema));
    }
    let artifacts_value = required(root, "", "artifacts")?;
    let artifacts_map = artifacts_value.as_object().ok_or_else(|| {
        invalid(
            "artifacts",
            "must be an object of target triple to artifact",
        )
    })?;
    let mut artifacts = BTreeMap::new();
    for (target, entry) in artifacts_map {
        let prefix = format!("artifacts.{target}.");
        let entry = entry
            .as_object()
            .ok_or_else(|| invalid(&format!("artifacts.{target}"), "must be an object"))?;
        let sha256 = str_field(entry, &prefix, "sha256")?;
        if sha256.len() != 64
            || !sha256
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            return Err(invalid(
                &format!("{prefix}sha256"),
                "must be 64 lowercase hex digits",
            ));
        }
        artifacts.insert(
            target.clone(),
            Artifact {
                url: str_field(entry, &prefix, "url")?.to_string(),
                sha256: sha256.to_string(),
                size: u64_field(entry, &prefix, "size")?,
            },
        );
    }
    Ok(Manifest {
        schema,
        channel: str_field(root, "", "channel")?.to_string(),
        version: version_field(root, "version")?
            .ok_or_else(|| ManifestError::Missing("version".into()))?,
        published_at: time_field(root, "published_at")?
            .ok_or_else(|| ManifestError::Missing("published_at".into()))?,
        expires: time_field(root, "expires")?,
        min_version: version_field(root, "min_version")?,
        notes_url: optional_str(root, "notes_url")?,
        artifacts,
    })
}

impl Manifest {
    /// The artifact for `target` (normally [`TARGET`]).
    pub fn artifact_for(&self, target: &str) -> Result<&Artifact, ManifestError> {
        self.artifacts
            .get(target)
            .ok_or_else(|| ManifestError::NoArtifact {
                target: target.to_string(),
                version: self.version.clone(),
                available: if self.artifacts.is_empty() {
                    "none".into()
                } else {
                    self.artifacts
                        .keys()
                        .cloned()
                        .collect::<Vec<_>>()
                        .join(", ")
                },
            })
    }

    /// The manifest as the publisher writes it: pretty JSON with a trailing newline.
    pub fn to_json(&self) -> Vec<u8> {
        let mut root = Map::new();
        root.insert("schema".into(), self.schema.into());
        root.insert("channel".into(), self.channel.clone().into());
        root.insert("version".into(), self.version.to_string().into());
        root.insert("published_at".into(), rfc3339(self.published_at).into());
        if let Some(expires) = self.expires {
            root.insert("expires".into(), rfc3339(expires).into());
        }
        if let Some(min) = &self.min_version {
            root.insert("min_version".into(), min.to_string().into());
        }
        if let Some(notes) = &self.notes_url {
            root.insert("notes_url".into(), notes.clone().into());
        }
        let artifacts: Map<String, Value> = self
            .artifacts
            .iter()
            .map(|(target, a)| {
                let entry = serde_json::json!({"url": a.url, "sha256": a.sha256, "size": a.size});
                (target.clone(), entry)
            })
            .collect();
        root.insert("artifacts".into(), artifacts.into());
        // Serialising a map of strings and numbers cannot fail; fall back to compact
        // output rather than panic if it ever did.
        let mut out = serde_json::to_vec_pretty(&Value::Object(root.clone()))
            .unwrap_or_else(|_| Value::Object(root).to_string().into_bytes());
        out.push(b'\n');
        out
    }
}

/// Resolves an artifact's `url` against the URL the manifest was fetched from: a relative
/// `url` is taken relative to the manifest's own location (so `1.4.2/x` next to
/// `{base}/stable/latest.json` is `{base}/stable/1.4.2/x`), an absolute one stands alone.
/// `file://` manifest URLs resolve like any other.
pub fn resolve_url(manifest_url: &Url, artifact_url: &str) -> Result<Url, ManifestError> {
    manifest_url
        .join(artifact_url)
        .map_err(|err| ManifestError::Url {
            url: artifact_url.to_string(),
            base: manifest_url.to_string(),
            reason: err.to_string(),
        })
}

/// RFC 3339 text of an instant; the formatter fails only for years beyond 9999.
pub fn rfc3339(at: OffsetDateTime) -> String {
    at.format(&Rfc3339).unwrap_or_else(|_| at.to_string())
}

fn invalid(field: &str, reason: &str) -> ManifestError {
    ManifestError::Invalid {
        field: field.to_string(),
        reason: reason.to_string(),
    }
}

fn required<'a>(
    obj: &'a Map<String, Value>,
    prefix: &str,
    name: &str,
) -> Result<&'a Value, ManifestError> {
    match obj.get(name) {
        Some(Value::Null) | None => Err(ManifestError::Missing(format!("{prefix}{name}"))),
        Some(value) => Ok(value),
    }
}

fn str_field<'a>(
    obj: &'a Map<String, Value>,
    prefix: &str,
    name: &str,
) -> Result<&'a str, ManifestError> {
    required(obj, prefix, name)?
        .as_str()
        .ok_or_else(|| invalid(&format!("{prefix}{name}"), "must be a string"))
}

fn u64_field(obj: &Map<String, Value>, prefix: &str, name: &str) -> Result<u64, ManifestError> {
    required(obj, prefix, name)?
        .as_u64()
        .ok_or_else(|| invalid(&format!("{prefix}{name}"), "must be a non-negative integer"))
}

fn optional_str(obj: &Map<String, Value>, name: &str) -> Result<Option<String>, ManifestError> {
    match obj.get(name) {
        Some(Value::Null) | None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(invalid(name, "must be a string")),
    }
}

/// An optional SemVer field; required ones turn `None` into [`ManifestError::Missing`].
fn version_field(obj: &Map<String, Value>, name: &str) -> Result<Option<Version>, ManifestError> {
    optional_str(obj, name)?
        .map(|s| Version::parse(&s).map_err(|err| invalid(name, &format!("is not SemVer: {err}"))))
        .transpose()
}

/// An optional RFC 3339 timestamp field.
fn time_field(
    obj: &Map<String, Value>,
    name: &str,
) -> Result<Option<OffsetDateTime>, ManifestError> {
    optional_str(obj, name)?
        .map(|s| {
            OffsetDateTime::parse(&s, &Rfc3339)
                .map_err(|err| invalid(name, &format!("is not an RFC 3339 timestamp: {err}")))
        })
        .transpose()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const SHA: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    fn sample() -> Value {
        serde_json::json!({
            "schema": 1,
            "channel": "stable",
            "version": "1.4.2",
            "published_at": "2026-06-26T10:00:00Z",
            "artifacts": {
                "x86_64-unknown-linux-gnu": {
                    "url": "1.4.2/aihummer-gateway-x86_64-unknown-linux-gnu",
                    "sha256": SHA,
                    "size": 12345678
                }
            }
        })
    }

    fn parse_value(v: &Value) -> Result<Manifest, ManifestError> {
        parse(v.to_string().as_bytes())
    }

    #[test]
    fn the_design_example_parses() {
        let m = parse_value(&sample()).unwrap();
        assert_eq!(m.version, Version::new(1, 4, 2));
        assert_eq!(m.channel, "stable");
        let a = m.artifact_for("x86_64-unknown-linux-gnu").unwrap();
        assert_eq!(a.size, 12345678);
        assert_eq!(a.sha256, SHA);
        assert!(m.expires.is_none() && m.min_version.is_none() && m.notes_url.is_none());
    }

    #[test]
    fn optional_fields_and_offsets_are_read() {
        let mut v = sample();
        v["expires"] = "2026-07-01T12:00:00+02:00".into();
        v["min_version"] = "1.2.0".into();
        v["notes_url"] = "https://example.com/notes".into();
        let m = parse_value(&v).unwrap();
        assert_eq!(m.min_version, Some(Version::new(1, 2, 0)));
        assert_eq!(m.expires.unwrap().unix_timestamp(), 1_782_900_000);
        assert_eq!(m.notes_url.as_deref(), Some("https://example.com/notes"));
    }

    #[test]
    fn unknown_fields_are_ignored() {
        let mut v = sample();
        v["future"] = serde_json::json!({"anything": [1, 2]});
        v["artifacts"]["x86_64-unknown-linux-gnu"]["signature"] = "x".into();
        assert!(parse_value(&v).is_ok());
    }

    #[test]
    fn a_missing_field_is_named() {
        for field in ["schema", "channel", "version", "published_at", "artifacts"] {
            let mut v = sample();
            v.as_object_mut().unwrap().remove(field);
            assert_eq!(
                parse_value(&v).unwrap_err(),
                ManifestError::Missing(field.into())
            );
        }
        let mut v = sample();
        v["artifacts"]["x86_64-unknown-linux-gnu"]
            .as_object_mut()
            .unwrap()
            .remove("sha256");
        let err = parse_value(&v).unwrap_err();
        assert_eq!(
            err.to_string(),
            "latest.json: missing field `artifacts.x86_64-unknown-linux-gnu.sha256`"
        );
    }

    #[test]
    fn a_mistyped_field_is_named() {
        let cases: [(&str, Value, &str); 6] = [
            ("version", "1.4".into(), "version"),
            ("published_at", "yesterday".into(), "published_at"),
            ("channel", 3.into(), "channel"),
            ("expires", 5.into(), "expires"),
            ("min_version", "one".into(), "min_version"),
            ("artifacts", "none".into(), "artifacts"),
        ];
        for (field, value, named) in cases {
            let mut v = sample();
            v[field] = value;
            match parse_value(&v).unwrap_err() {
                ManifestError::Invalid { field, .. } => assert_eq!(field, named),
                other => panic!("{field}: {other}"),
            }
        }
        let mut v = sample();
        v["artifacts"]["x86_64-unknown-linux-gnu"]["size"] = (-1).into();
        let err = parse_value(&v).unwrap_err().to_string();
        assert!(
            err.contains("artifacts.x86_64-unknown-linux-gnu.size"),
            "{err}"
        );
        let mut v = sample();
        v["artifacts"]["x86_64-unknown-linux-gnu"]["sha256"] = SHA.to_uppercase().into();
        let err = parse_value(&v).unwrap_err().to_string();
        assert!(
            err.contains("artifacts.x86_64-unknown-linux-gnu.sha256"),
            "{err}"
        );
    }

    #[test]
    fn another_schema_and_non_objects_are_refused() {
        let mut v = sample();
        v["schema"] = 2.into();
        assert_eq!(parse_value(&v).unwrap_err(), ManifestError::Schema(2));
        assert!(matches!(
            parse(b"[1,2]").unwrap_err(),
            ManifestError::Invalid { .. }
        ));
        assert!(matches!(
            parse(b"{\"schema\":").unwrap_err(),
            ManifestError::Json(_)
        ));
    }

    #[test]
    fn no_artifact_for_this_platform_lists_what_there_is() {
        let m = parse_value(&sample()).unwrap();
        let err = m.artifact_for("riscv64gc-unknown-linux-gnu").unwrap_err();
        assert_eq!(
            err.to_string(),
            "no artifact for this platform riscv64gc-unknown-linux-gnu in version 1.4.2 (only: x86_64-unknown-linux-gnu)"
        );
    }

    #[test]
    fn the_compile_time_target_is_known() {
        assert!(TARGET.contains('-'), "{TARGET}");
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
    fn to_json_round_trips_the_design_example() {
        let m = parse_value(&sample()).unwrap();
        assert_eq!(parse(&m.to_json()).unwrap(), m);
    }

    fn arb_version() -> impl Strategy<Value = Version> {
        (
            0u64..20,
            0u64..20,
            0u64..20,
            proptest::option::of("[a-z]{1,5}(\\.[1-9][0-9]?)?"),
        )
            .prop_map(|(a, b, c, pre)| {
                let mut v = Version::new(a, b, c);
                if let Some(pre) = pre {
                    v.pre = semver::Prerelease::new(&pre).unwrap();
                }
                v
            })
    }

    fn arb_time() -> impl Strategy<Value = OffsetDateTime> {
        (0i64..4_000_000_000).prop_map(|s| OffsetDateTime::from_unix_timestamp(s).unwrap())
    }

    fn arb_manifest() -> impl Strategy<Value = Manifest> {
        let artifact = ("[a-z0-9./_-]{1,40}", "[0-9a-f]{64}", any::<u64>())
            .prop_map(|(url, sha256, size)| Artifact { url, sha256, size });
        (
            "[a-z]{1,8}",
            arb_version(),
            arb_time(),
            proptest::option::of(arb_time()),
            proptest::option::of(arb_version()),
            proptest::option::of("https://[a-z]{1,10}\\.example/[a-z]{0,10}"),
            proptest::collection::btree_map("[a-z0-9_-]{1,30}", artifact, 0..4),
        )
            .prop_map(
                |(channel, version, published_at, expires, min_version, notes_url, artifacts)| {
                    Manifest {
                        schema: SCHEMA,
                        channel,
                        version,
                        published_at,
                        expires,
                        min_version,
                        notes_url,
                        artifacts,
                    }
                },
            )
    }

    proptest! {
        #[test]
        fn parse_never_panics_on_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = parse(&bytes);
        }

        #[test]
        fn parse_never_panics_on_json_shaped_noise(
            text in "\\{(\"(schema|channel|version|published_at|expires|min_version|artifacts|url|sha256|size|x)\":(1|-1|\"1.0.0\"|\"x\"|null|\\[\\]|\\{|\\}|,|2026-01-01T00:00:00Z)){0,12}\\}?"
        ) {
            let _ = parse(text.as_bytes());
        }

        #[test]
        fn generated_manifests_round_trip(m in arb_manifest()) {
            prop_assert_eq!(parse(&m.to_json()).unwrap(), m);
        }
    }
}
