//! A channel's `latest.json`: its typed form [`Manifest`], parsed from the exact bytes the
//! CDN served and serialized by the publisher, and picking the artifact built for this
//! platform.
//!
//! Pure: bytes in, values out. Deserialization goes through `serde_path_to_error`, so a
//! missing or mistyped field is reported by its full path
//! (`artifacts.x86_64-unknown-linux-gnu.sha256`), which is what an operator staring at a
//! broken release needs. Unknown fields are ignored so that a newer publisher can add some
//! without breaking older supervisors; a different `schema` is refused before anything
//! else is read, since another schema may shape everything else differently.

use std::collections::BTreeMap;

use semver::Version;
use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{Map, Value};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

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
    #[error("latest.json: field `{field}`: {reason}")]
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
}

/// One downloadable gateway binary.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Artifact {
    /// Relative to the manifest's URL, or absolute.
    pub url: String,
    /// SHA-256 of the file, 64 lowercase hex digits.
    #[serde(deserialize_with = "sha256_hex")]
    pub sha256: String,
    /// Exact size in bytes.
    pub size: u64,
}

/// A parsed `latest.json`; serialized in the same shape by the publisher.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// Always [`SCHEMA`] once parsed.
    pub schema: u64,
    /// The channel the publisher meant this manifest for.
    pub channel: String,
    /// The version it offers.
    #[serde(with = "text")]
    pub version: Version,
    /// When it was published.
    #[serde(with = "text")]
    pub published_at: OffsetDateTime,
    /// After this instant the manifest must not be acted upon.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "text::option"
    )]
    pub expires: Option<OffsetDateTime>,
    /// The oldest running version allowed to jump straight to this one.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "text::option"
    )]
    pub min_version: Option<Version>,
    /// Release notes, shown to operators.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notes_url: Option<String>,
    /// The percentage of nodes (by their stable cohort) that install this version on
    /// their own, 0 to 100; absent means 100.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "percentage"
    )]
    pub rollout: Option<u8>,
    /// Target triple to artifact.
    pub artifacts: BTreeMap<String, Artifact>,
}

/// The one field read before the rest.
#[derive(Deserialize)]
struct SchemaOnly {
    schema: u64,
}

/// Parses the exact bytes of a `latest.json`.
pub fn parse(bytes: &[u8]) -> Result<Manifest, ManifestError> {
    // Through a JSON map first: syntax errors are told apart from field errors, and
    // field errors carry no line and column, only the path.
    let root: Map<String, Value> =
        serde_json::from_slice(bytes).map_err(|err| match err.classify() {
            serde_json::error::Category::Data => ManifestError::Invalid {
                field: "(top level)".into(),
                reason: "must be a JSON object".into(),
            },
            _ => ManifestError::Json(err.to_string()),
        })?;
    let root = Value::Object(root);
    let SchemaOnly { schema } = typed(&root)?;
    if schema != SCHEMA {
        return Err(ManifestError::Schema(schema));
    }
    typed(&root)
}

/// Deserializes `root` as `T`, naming the field at fault by its full path.
fn typed<'de, T: Deserialize<'de>>(root: &'de Value) -> Result<T, ManifestError> {
    serde_path_to_error::deserialize(root).map_err(|err| {
        let path: Vec<String> = err.path().iter().map(|s| s.to_string()).collect();
        let message = err.into_inner().to_string();
        // serde reports a missing field from the struct that lacks it, so its name is in
        // the message, not the path; a required field set to null counts as missing.
        if let Some(name) = message
            .strip_prefix("missing field `")
            .and_then(|rest| rest.strip_suffix('`'))
        {
            ManifestError::Missing(
                path.iter()
                    .map(String::as_str)
                    .chain([name])
                    .collect::<Vec<_>>()
                    .join("."),
            )
        } else if message.starts_with("invalid type: null,") {
            ManifestError::Missing(path.join("."))
        } else {
            ManifestError::Invalid {
                field: path.join("."),
                reason: message,
            }
        }
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

    /// The manifest as the publisher writes it: pretty JSON with a trailing newline. Fails
    /// only for a time that RFC 3339 cannot write (a year beyond 9999).
    pub fn to_json(&self) -> Result<Vec<u8>, serde_json::Error> {
        let mut out = serde_json::to_vec_pretty(self)?;
        out.push(b'\n');
        Ok(out)
    }
}

/// RFC 3339 text of an instant; the formatter fails only for years beyond 9999.
pub fn rfc3339(at: OffsetDateTime) -> String {
    at.format(&Rfc3339).unwrap_or_else(|_| at.to_string())
}

fn sha256_hex<'de, D: Deserializer<'de>>(deserializer: D) -> Result<String, D::Error> {
    let hex = String::deserialize(deserializer)?;
    if hex.len() == 64 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        Ok(hex)
    } else {
        Err(D::Error::custom("must be 64 lowercase hex digits"))
    }
}

/// `rollout`: an integer from 0 to 100 (JSON `null` counts as absent).
fn percentage<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<u8>, D::Error> {
    let Some(value) = Option::<serde_json::Number>::deserialize(deserializer)? else {
        return Ok(None);
    };
    match value.as_u64() {
        Some(n) if n <= 100 => Ok(Some(n as u8)),
        _ => Err(D::Error::custom(format!(
            "must be an integer from 0 to 100 (a percentage of nodes), not {value}"
        ))),
    }
}

/// Values that travel as strings in a manifest: SemVer versions and RFC 3339 times.
trait Text: Sized {
    fn parse(text: &str) -> Result<Self, String>;
    fn text(&self) -> Result<String, String>;
}

impl Text for Version {
    fn parse(text: &str) -> Result<Self, String> {
        Version::parse(text).map_err(|err| format!("not SemVer: {err}"))
    }

    fn text(&self) -> Result<String, String> {
        Ok(self.to_string())
    }
}

impl Text for OffsetDateTime {
    fn parse(text: &str) -> Result<Self, String> {
        OffsetDateTime::parse(text, &Rfc3339)
            .map_err(|err| format!("not an RFC 3339 timestamp: {err}"))
    }

    fn text(&self) -> Result<String, String> {
        self.format(&Rfc3339).map_err(|err| err.to_string())
    }
}

/// `#[serde(with = "text")]` for [`Text`] fields, and `text::option` for optional ones.
mod text {
    use serde::de::Error as _;
    use serde::ser::Error as _;
    use serde::{Deserialize, Deserializer, Serializer};

    use super::Text;

    pub fn serialize<T: Text, S: Serializer>(value: &T, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&value.text().map_err(S::Error::custom)?)
    }

    pub fn deserialize<'de, T: Text, D: Deserializer<'de>>(deserializer: D) -> Result<T, D::Error> {
        T::parse(&String::deserialize(deserializer)?).map_err(D::Error::custom)
    }

    pub mod option {
        use super::*;

        pub fn serialize<T: Text, S: Serializer>(
            value: &Option<T>,
            serializer: S,
        ) -> Result<S::Ok, S::Error> {
            match value {
                Some(value) => super::serialize(value, serializer),
                None => serializer.serialize_none(),
            }
        }

        pub fn deserialize<'de, T: Text, D: Deserializer<'de>>(
            deserializer: D,
        ) -> Result<Option<T>, D::Error> {
            Option::<String>::deserialize(deserializer)?
                .map(|text| T::parse(&text).map_err(D::Error::custom))
                .transpose()
        }
    }
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
        assert_eq!(m.rollout, None, "absent means every node");
    }

    #[test]
    fn rollout_is_a_percentage() {
        let mut v = sample();
        v["rollout"] = 10.into();
        assert_eq!(parse_value(&v).unwrap().rollout, Some(10));
        v["rollout"] = serde_json::Value::Null;
        assert_eq!(parse_value(&v).unwrap().rollout, None);
        for bad in [
            serde_json::json!(101),
            serde_json::json!(-1),
            serde_json::json!(5.5),
            serde_json::json!("50"),
        ] {
            v["rollout"] = bad.clone();
            let err = parse_value(&v).expect_err("refused").to_string();
            assert!(err.contains("rollout"), "{bad}: {err}");
        }
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
    fn to_json_round_trips_the_design_example() {
        let m = parse_value(&sample()).unwrap();
        assert_eq!(parse(&m.to_json().unwrap()).unwrap(), m);
    }

    fn arb_version() -> impl Strategy<Value = Version> {
        crate::update::testing::arb_version(20, "[a-z]{1,5}(\\.[1-9][0-9]?)?")
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
            proptest::option::of(0u8..=100),
        )
            .prop_map(
                |(
                    channel,
                    version,
                    published_at,
                    expires,
                    min_version,
                    notes_url,
                    artifacts,
                    rollout,
                )| {
                    Manifest {
                        schema: SCHEMA,
                        channel,
                        version,
                        published_at,
                        expires,
                        min_version,
                        notes_url,
                        rollout,
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
            prop_assert_eq!(parse(&m.to_json().unwrap()).unwrap(), m);
        }
    }
}
