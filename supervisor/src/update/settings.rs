//! The updater's own settings, read from `AIHUMMER_UPDATE_*` variables through the
//! caller's [`Env`] (never the process environment directly, so every rule is unit
//! tested): the pinned keys, the unsigned-apply opt-in, and the download limits.
//!
//! Each limit has a floor and a ceiling, so no value can make a download deadline
//! overflow the clock or turn a limit off by accident.

use std::time::Duration;

use aihummer_common::settings::{Env, SettingError};

use crate::update::fetch::{ARTIFACT_CAP, FetchOptions, MIN_RATE};
use crate::update::signature::{SignatureError, TrustedKeys};

/// Default read timeout of the CDN client (`AIHUMMER_UPDATE_READ_TIMEOUT`).
pub const READ_TIMEOUT: Duration = Duration::from_secs(30);
/// The longest read timeout accepted: beyond an hour a hung CDN is indistinguishable
/// from a dead one.
pub const MAX_READ_TIMEOUT: Duration = Duration::from_secs(3600);
/// The largest artifact cap accepted (64 GiB): larger is a typo.
pub const MAX_ARTIFACT_CAP: u64 = 64 << 30;

/// An update setting that cannot be used, named so the operator knows what to fix.
#[derive(Debug, thiserror::Error)]
pub enum UpdateSettingError {
    /// A duration that does not parse.
    #[error(transparent)]
    Setting(#[from] SettingError),
    /// `AIHUMMER_UPDATE_PUBKEY` is not a list of minisign public keys.
    #[error(transparent)]
    PublicKey(#[from] SignatureError),
    /// A yes/no setting that is neither.
    #[error("{var}={value:?} is not a boolean; expected true or false")]
    Bool {
        /// The variable's name.
        var: &'static str,
        /// What it was set to.
        value: String,
    },
    /// A size or rate that does not parse or is out of range.
    #[error("{var}={value:?} is not usable: {reason}")]
    Size {
        /// The variable's name.
        var: &'static str,
        /// What it was set to.
        value: String,
        /// Why it was refused.
        reason: String,
    },
    /// A duration out of range.
    #[error("{var}={value:?} is out of range: {reason}")]
    Range {
        /// The variable's name.
        var: &'static str,
        /// What it was set to, as read.
        value: String,
        /// Why it was refused.
        reason: String,
    },
}

/// What the updater reads from the environment.
#[derive(Debug, Clone)]
pub struct UpdateSettings {
    /// `AIHUMMER_UPDATE_PUBKEY`: manifests must be signed by one of these keys.
    pub keys: Option<TrustedKeys>,
    /// `AIHUMMER_UPDATE_ALLOW_UNSIGNED`: lets `apply` run without keys.
    pub allow_unsigned: bool,
    /// `AIHUMMER_UPDATE_MAX_SIZE`: the largest artifact a manifest may announce.
    pub max_size: u64,
    /// `AIHUMMER_UPDATE_MIN_RATE`: bytes per second a download must keep up.
    pub min_rate: u64,
    /// `AIHUMMER_UPDATE_READ_TIMEOUT`: the longest the CDN may stay silent.
    pub read_timeout: Duration,
}

impl UpdateSettings {
    /// Reads the settings through `env`.
    pub fn read<F: Fn(&str) -> Option<String>>(env: &Env<F>) -> Result<Self, UpdateSettingError> {
        let read_timeout = env.duration("AIHUMMER_UPDATE_READ_TIMEOUT", READ_TIMEOUT)?;
        if read_timeout.is_zero() || read_timeout > MAX_READ_TIMEOUT {
            return Err(UpdateSettingError::Range {
                var: "AIHUMMER_UPDATE_READ_TIMEOUT",
                value: format!("{read_timeout:?}"),
                reason: format!("expected more than 0 and at most {MAX_READ_TIMEOUT:?}"),
            });
        }
        Ok(UpdateSettings {
            keys: env
                .get("AIHUMMER_UPDATE_PUBKEY")?
                .map(|v| TrustedKeys::parse(&v))
                .transpose()?,
            allow_unsigned: boolean(env, "AIHUMMER_UPDATE_ALLOW_UNSIGNED")?,
            max_size: size(
                env,
                "AIHUMMER_UPDATE_MAX_SIZE",
                ARTIFACT_CAP,
                MAX_ARTIFACT_CAP,
            )?,
            min_rate: size(env, "AIHUMMER_UPDATE_MIN_RATE", MIN_RATE, MAX_ARTIFACT_CAP)?,
            read_timeout,
        })
    }

    /// The CDN client's options under these settings.
    pub fn fetch_options(&self) -> FetchOptions {
        FetchOptions {
            read_timeout: self.read_timeout,
            artifact_cap: self.max_size,
            min_rate: self.min_rate,
            ..FetchOptions::default()
        }
    }
}

fn boolean<F: Fn(&str) -> Option<String>>(
    env: &Env<F>,
    var: &'static str,
) -> Result<bool, UpdateSettingError> {
    match env.get(var)?.map(|v| v.to_ascii_lowercase()) {
        None => Ok(false),
        Some(v) if v == "true" => Ok(true),
        Some(v) if v == "false" => Ok(false),
        Some(value) => Err(UpdateSettingError::Bool { var, value }),
    }
}

/// A byte count: a number with an optional binary suffix (`K`/`KiB`, `M`/`MiB`,
/// `G`/`GiB`), from 1 to `max`; `default` when unset.
fn size<F: Fn(&str) -> Option<String>>(
    env: &Env<F>,
    var: &'static str,
    default: u64,
    max: u64,
) -> Result<u64, UpdateSettingError> {
    let Some(value) = env.get(var)? else {
        return Ok(default);
    };
    let refused = |reason: String| UpdateSettingError::Size {
        var,
        value: value.trim().to_string(),
        reason,
    };
    let bytes = parse_size(&value).map_err(refused)?;
    if bytes == 0 || bytes > max {
        return Err(refused(format!("expected 1 to {max} bytes")));
    }
    Ok(bytes)
}

/// `512`, `64K`, `512MiB`, `1 GiB`: bytes, binary multiples.
fn parse_size(value: &str) -> Result<u64, String> {
    let value = value.trim();
    let split = value
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(value.len());
    let (digits, unit) = value.split_at(split);
    let number: u64 = digits
        .parse()
        .map_err(|_| "expected a number of bytes, e.g. 1GiB or 65536".to_string())?;
    let shift = match unit.trim() {
        "" | "B" => 0,
        "K" | "KiB" => 10,
        "M" | "MiB" => 20,
        "G" | "GiB" => 30,
        other => {
            return Err(format!(
                "unknown unit {other:?}; use K, M or G (KiB, MiB, GiB)"
            ));
        }
    };
    number
        .checked_mul(1 << shift)
        .ok_or_else(|| "too large".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(
        vars: &'static [(&'static str, &'static str)],
    ) -> Result<UpdateSettings, UpdateSettingError> {
        UpdateSettings::read(&Env::new(move |name: &str| {
            vars.iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| v.to_string())
        }))
    }

    #[test]
    fn defaults_cap_artifacts_at_1_gib_with_a_minimum_rate() {
        let s = read(&[]).unwrap();
        assert_eq!(s.max_size, 1 << 30);
        assert_eq!(s.min_rate, MIN_RATE);
        assert_eq!(s.read_timeout, READ_TIMEOUT);
        assert!(!s.allow_unsigned && s.keys.is_none());
        let o = s.fetch_options();
        assert_eq!((o.artifact_cap, o.min_rate), (1 << 30, MIN_RATE));
    }

    #[test]
    fn sizes_take_binary_units_and_limits_are_bounded() {
        let s = read(&[
            ("AIHUMMER_UPDATE_MAX_SIZE", "512MiB"),
            ("AIHUMMER_UPDATE_MIN_RATE", "64K"),
            ("AIHUMMER_UPDATE_READ_TIMEOUT", "2s"),
            ("AIHUMMER_UPDATE_ALLOW_UNSIGNED", "true"),
        ])
        .unwrap();
        assert_eq!((s.max_size, s.min_rate), (512 << 20, 64 << 10));
        assert_eq!(s.read_timeout, Duration::from_secs(2));
        assert!(s.allow_unsigned);
        let cases: &[(&[(&str, &str)], &str)] = &[
            (
                &[("AIHUMMER_UPDATE_MAX_SIZE", "lots")],
                "AIHUMMER_UPDATE_MAX_SIZE",
            ),
            (
                &[("AIHUMMER_UPDATE_MAX_SIZE", "0")],
                "AIHUMMER_UPDATE_MAX_SIZE",
            ),
            (
                &[("AIHUMMER_UPDATE_MAX_SIZE", "99999999999G")],
                "AIHUMMER_UPDATE_MAX_SIZE",
            ),
            (
                &[("AIHUMMER_UPDATE_MIN_RATE", "5 TB")],
                "AIHUMMER_UPDATE_MIN_RATE",
            ),
            (
                &[("AIHUMMER_UPDATE_READ_TIMEOUT", "100000000000000s")],
                "AIHUMMER_UPDATE_READ_TIMEOUT",
            ),
            (
                &[("AIHUMMER_UPDATE_READ_TIMEOUT", "0s")],
                "AIHUMMER_UPDATE_READ_TIMEOUT",
            ),
            (
                &[("AIHUMMER_UPDATE_ALLOW_UNSIGNED", "maybe")],
                "AIHUMMER_UPDATE_ALLOW_UNSIGNED",
            ),
        ];
        for (vars, name) in cases {
            let vars: &'static [(&str, &str)] = Box::leak(vars.to_vec().into_boxed_slice());
            let err = read(vars).unwrap_err().to_string();
            assert!(err.contains(name), "{vars:?}: {err}");
        }
    }
}
