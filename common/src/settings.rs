//! Reading `AIHUMMER_*` variables: one [`Env`] reader both binaries use, and the value
//! parsers behind it. A refused value is a [`SettingError`] naming the variable and the
//! value, so the operator knows what to fix; each binary's own config error wraps it.
//!
//! Every duration has a ceiling: its own documented maximum
//! ([`Env::duration_at_most`]), or [`MAX_DURATION`]. A typo like `30000000000s` is then
//! a startup error naming the variable rather than a timer that never fires, or an
//! `Instant` overflow that panics the first time it is added to `now`.
//!
//! The reader takes a lookup function instead of the process environment, so every rule
//! is unit tested without touching global state.

use std::net::{SocketAddr, ToSocketAddrs};
use std::time::Duration;

/// The ceiling for a duration without a maximum of its own: ten years (of 365.25 days,
/// as `humantime` counts them, so it prints as `10years`). Far beyond any sensible
/// timeout or retention, and far below what overflows an `Instant`.
pub const MAX_DURATION: Duration = Duration::from_secs(315_576_000);

/// A setting that cannot be used, named so the operator knows what to fix.
#[derive(Debug, thiserror::Error)]
pub enum SettingError {
    /// A listen address that does not parse or resolve.
    #[error("{var}={value:?} is not a listen address ({reason}); expected HOST:PORT or :PORT")]
    Address {
        /// The variable's name.
        var: &'static str,
        /// What it was set to.
        value: String,
        /// Why it was refused.
        reason: String,
    },
    /// A duration that does not parse.
    #[error("{var}={value:?} is not a duration ({reason}); expected e.g. 30s, 500ms or 2m")]
    Duration {
        /// The variable's name.
        var: &'static str,
        /// What it was set to.
        value: String,
        /// Why it was refused.
        reason: String,
    },
    /// A duration above the variable's maximum.
    #[error("{var}={value:?} is more than the maximum of {max}")]
    TooLong {
        /// The variable's name.
        var: &'static str,
        /// What it was set to.
        value: String,
        /// The largest accepted value, humanly written.
        max: String,
    },
    /// A yes/no setting that is neither.
    #[error("{var}={value:?} is not true or false")]
    Flag {
        /// The variable's name.
        var: &'static str,
        /// What it was set to.
        value: String,
    },
    /// A value that is set but empty or blank, or that starts or ends with whitespace:
    /// most likely a quoting slip in an environment file, so it is refused rather than
    /// guessed at (as unset, or trimmed). The value is not echoed: it may be a secret.
    #[error(
        "{var} {problem}; remove the setting to use the default, or write the value without surrounding whitespace"
    )]
    Blank {
        /// The variable's name.
        var: String,
        /// What is wrong with the value.
        problem: &'static str,
    },
}

/// The environment as a binary reads it: a lookup with typed getters that fall back to a
/// default when a variable is unset. A variable that is set but empty, or padded with
/// whitespace, is a [`SettingError::Blank`], never read as unset or trimmed.
pub struct Env<F> {
    lookup: F,
}

impl Env<fn(&str) -> Option<String>> {
    /// The process environment.
    pub fn process() -> Self {
        Env {
            lookup: |name| std::env::var(name).ok(),
        }
    }
}

impl<F: Fn(&str) -> Option<String>> Env<F> {
    /// Reads variables through `lookup`.
    pub fn new(lookup: F) -> Self {
        Env { lookup }
    }

    /// The value of `var`, or `None` when it is unset; an empty value or one with
    /// surrounding whitespace is refused.
    pub fn get(&self, var: &str) -> Result<Option<String>, SettingError> {
        let Some(value) = (self.lookup)(var) else {
            return Ok(None);
        };
        let problem = if value.trim().is_empty() {
            "is set but empty"
        } else if value.trim_start() != value {
            "starts with whitespace"
        } else if value.trim_end() != value {
            "ends with whitespace"
        } else {
            return Ok(Some(value));
        };
        Err(SettingError::Blank {
            var: var.to_string(),
            problem,
        })
    }

    /// A duration, or `default` when unset; at most [`MAX_DURATION`].
    pub fn duration(&self, var: &'static str, default: Duration) -> Result<Duration, SettingError> {
        self.duration_at_most(var, default, MAX_DURATION)
    }

    /// A duration, or `default` when unset; a value above `max` is refused.
    pub fn duration_at_most(
        &self,
        var: &'static str,
        default: Duration,
        max: Duration,
    ) -> Result<Duration, SettingError> {
        let Some(value) = self.get(var)? else {
            return Ok(default);
        };
        match parse_duration(&value) {
            Ok(duration) if duration <= max => Ok(duration),
            Ok(_) => Err(SettingError::TooLong {
                var,
                value,
                max: humantime::format_duration(max).to_string(),
            }),
            Err(reason) => Err(SettingError::Duration { var, value, reason }),
        }
    }

    /// A yes/no setting (`true`/`false`, `yes`/`no`, `on`/`off`, `1`/`0`, any case), or
    /// `default` when unset.
    pub fn flag(&self, var: &'static str, default: bool) -> Result<bool, SettingError> {
        let Some(value) = self.get(var)? else {
            return Ok(default);
        };
        match value.to_ascii_lowercase().as_str() {
            "true" | "yes" | "on" | "1" => Ok(true),
            "false" | "no" | "off" | "0" => Ok(false),
            _ => Err(SettingError::Flag { var, value }),
        }
    }

    /// A listen address (`HOST:PORT` or `:PORT`), or `default` when unset.
    pub fn listen_addr(
        &self,
        var: &'static str,
        default: &str,
    ) -> Result<SocketAddr, SettingError> {
        let value = self.get(var)?.unwrap_or_else(|| default.to_string());
        parse_listen_addr(&value).map_err(|reason| SettingError::Address { var, value, reason })
    }

    /// A listen address for something off by default: `None` when unset.
    pub fn optional_listen_addr(
        &self,
        var: &'static str,
    ) -> Result<Option<SocketAddr>, SettingError> {
        self.get(var)?
            .map(|value| {
                parse_listen_addr(&value).map_err(|reason| SettingError::Address {
                    var,
                    value,
                    reason,
                })
            })
            .transpose()
    }
}

/// `:PORT` means every interface; `HOST:PORT` may name a host, which is resolved.
pub fn parse_listen_addr(value: &str) -> Result<SocketAddr, String> {
    let value = value.trim();
    let full = match value.strip_prefix(':') {
        Some(port) => format!("0.0.0.0:{port}"),
        None => value.to_string(),
    };
    if let Ok(addr) = full.parse() {
        return Ok(addr);
    }
    full.to_socket_addrs()
        .map_err(|err| err.to_string())?
        .next()
        .ok_or_else(|| "the host resolves to no address".to_string())
}

/// Accepts humantime forms (`30s`, `1m 30s`, `250ms`) and bare seconds (`30`).
pub fn parse_duration(value: &str) -> Result<Duration, String> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Ok(Duration::from_secs(secs));
    }
    humantime::parse_duration(value).map_err(|err| err.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_addresses_take_port_only_host_and_ipv6_forms() {
        assert_eq!(
            parse_listen_addr(":9000").unwrap(),
            "0.0.0.0:9000".parse().unwrap()
        );
        assert_eq!(parse_listen_addr("127.0.0.1:0").unwrap().port(), 0);
        assert_eq!(
            parse_listen_addr("[::1]:80").unwrap(),
            "[::1]:80".parse().unwrap()
        );
        assert!(
            parse_listen_addr("localhost:81")
                .unwrap()
                .ip()
                .is_loopback()
        );
        assert!(parse_listen_addr("nonsense").is_err());
        assert!(parse_listen_addr(":99999").is_err());
    }

    fn env(vars: &'static [(&'static str, &'static str)]) -> Env<impl Fn(&str) -> Option<String>> {
        Env::new(move |name: &str| {
            vars.iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| v.to_string())
        })
    }

    #[test]
    fn empty_blank_and_padded_values_are_refused_naming_the_variable() {
        let env = env(&[
            ("AIHUMMER_A", ""),
            ("AIHUMMER_B", "  "),
            ("AIHUMMER_C", " apply"),
            ("AIHUMMER_D", "30s\t"),
            ("AIHUMMER_E", "x"),
            ("AIHUMMER_SECRET", "hunter2 "),
        ]);
        for (var, problem) in [
            ("AIHUMMER_A", "AIHUMMER_A is set but empty"),
            ("AIHUMMER_B", "AIHUMMER_B is set but empty"),
            ("AIHUMMER_C", "AIHUMMER_C starts with whitespace"),
            ("AIHUMMER_SECRET", "AIHUMMER_SECRET ends with whitespace"),
        ] {
            let err = env.get(var).unwrap_err().to_string();
            assert!(err.starts_with(problem), "{err}");
            assert!(!err.contains("hunter2"), "a value may be a secret: {err}");
        }
        let err = env.duration("AIHUMMER_D", Duration::ZERO).unwrap_err();
        assert!(matches!(err, SettingError::Blank { .. }), "{err}");
        assert!(env.flag("AIHUMMER_A", true).is_err());
        assert!(env.listen_addr("AIHUMMER_B", ":1").is_err());
        assert!(env.optional_listen_addr("AIHUMMER_C").is_err());
        assert_eq!(env.get("AIHUMMER_E").unwrap().as_deref(), Some("x"));
        assert_eq!(env.get("AIHUMMER_UNSET").unwrap(), None);
    }

    #[test]
    fn a_refused_value_names_the_variable_and_the_value() {
        let env = env(&[("AIHUMMER_X", "soon"), ("AIHUMMER_ADDR", "port-eighty")]);
        let err = env.duration("AIHUMMER_X", Duration::ZERO).unwrap_err();
        assert!(err.to_string().contains("AIHUMMER_X=\"soon\""), "{err}");
        let err = env.listen_addr("AIHUMMER_ADDR", ":1").unwrap_err();
        assert!(
            err.to_string().contains("AIHUMMER_ADDR=\"port-eighty\""),
            "{err}"
        );
        assert_eq!(
            env.duration("AIHUMMER_UNSET", Duration::from_secs(3))
                .unwrap(),
            Duration::from_secs(3)
        );
        assert_eq!(env.listen_addr("AIHUMMER_UNSET", ":9").unwrap().port(), 9);
    }

    #[test]
    fn a_duration_above_its_maximum_is_refused_naming_variable_value_and_maximum() {
        let env = env(&[
            ("AIHUMMER_DRAIN_TIMEOUT", "1000000000000s"),
            ("AIHUMMER_LEASE", "2h"),
            ("AIHUMMER_OK", "1h"),
        ]);
        let err = env
            .duration("AIHUMMER_DRAIN_TIMEOUT", Duration::ZERO)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("AIHUMMER_DRAIN_TIMEOUT=\"1000000000000s\"")
                && err.contains("maximum of 10years"),
            "{err}"
        );
        let hour = Duration::from_secs(3600);
        let err = env
            .duration_at_most("AIHUMMER_LEASE", hour, hour)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("AIHUMMER_LEASE=\"2h\"") && err.contains("maximum of 1h"),
            "{err}"
        );
        assert_eq!(
            env.duration_at_most("AIHUMMER_OK", Duration::ZERO, hour)
                .unwrap(),
            hour
        );
        assert_eq!(
            env.duration_at_most("AIHUMMER_UNSET", hour, Duration::ZERO)
                .unwrap(),
            hour,
            "a default is not checked against the maximum"
        );
    }

    #[test]
    fn flags_take_the_usual_spellings_and_refuse_anything_else() {
        let env = env(&[("A", "TRUE"), ("B", "off"), ("C", "0"), ("D", "maybe")]);
        assert!(env.flag("A", false).unwrap());
        assert!(!env.flag("B", true).unwrap());
        assert!(!env.flag("C", true).unwrap());
        assert!(env.flag("UNSET", true).unwrap());
        let err = env.flag("D", false).unwrap_err().to_string();
        assert!(err.contains("D=\"maybe\""), "{err}");
    }

    #[test]
    fn an_optional_address_is_none_when_unset_and_refused_when_bad() {
        let env = env(&[("A", ":9100"), ("B", "nope")]);
        assert_eq!(env.optional_listen_addr("A").unwrap().unwrap().port(), 9100);
        assert!(env.optional_listen_addr("UNSET").unwrap().is_none());
        assert!(env.optional_listen_addr("B").is_err());
    }

    #[test]
    fn durations_take_humantime_and_bare_seconds() {
        assert_eq!(parse_duration("30"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("1m 30s"), Ok(Duration::from_secs(90)));
        assert!(parse_duration("soon").is_err());
    }
}
