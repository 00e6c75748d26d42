//! The gateway's settings, read from `AIHUMMER_*` variables and validated once at start.
//!
//! Parsing takes a lookup function instead of reading the process environment, so every
//! rule is unit tested without touching global state.

use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;
use std::time::Duration;

use aihummer_common::redact;
use aihummer_common::settings::{Env, SettingError};
use reqwest::Url;
use sqlx::postgres::PgConnectOptions;
use uuid::Uuid;

use crate::serve::Limits;

/// Listen address when `AIHUMMER_GATEWAY_ADDR` is unset: port 8765 on all interfaces.
pub const DEFAULT_ADDR: &str = ":8765";
/// How long a drain may take before the remaining connections are dropped.
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a claimed outbox row stays reserved for the gateway delivering it.
pub const DEFAULT_OUTBOX_LEASE: Duration = Duration::from_secs(30);
/// Reply deliveries one gateway keeps in flight at once.
pub const DEFAULT_OUTBOX_CONCURRENCY: usize = 64;
/// The most reply deliveries one gateway may keep in flight (`AIHUMMER_OUTBOX_CONCURRENCY`).
pub const MAX_OUTBOX_CONCURRENCY: usize = 4096;
/// How often the leader runs outbox housekeeping.
pub const DEFAULT_HOUSEKEEPING_INTERVAL: Duration = Duration::from_secs(300);
/// How long delivered replies and answered inbound messages are kept.
pub const DEFAULT_RETENTION: Duration = Duration::from_secs(7 * 24 * 3600);
/// How far an inbound signature's timestamp may be from now.
pub const DEFAULT_INBOUND_TOLERANCE: Duration = Duration::from_secs(300);

/// The largest accepted value of each duration setting. Each is far above any sensible
/// value and low enough that a typo is a startup error, not a drain that never ends, a
/// replay window of days or a timer that overflows.
pub mod maximum {
    use std::time::Duration;

    const HOUR: u64 = 3600;

    /// `AIHUMMER_DRAIN_TIMEOUT`: 1h.
    pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(HOUR);
    /// `AIHUMMER_OUTBOX_LEASE`: 1h.
    pub const OUTBOX_LEASE: Duration = Duration::from_secs(HOUR);
    /// `AIHUMMER_HOUSEKEEPING_INTERVAL`: 1 day.
    pub const HOUSEKEEPING_INTERVAL: Duration = Duration::from_secs(24 * HOUR);
    /// `AIHUMMER_RETENTION`: 1 year (365.25 days, as `humantime` counts it).
    pub const RETENTION: Duration = Duration::from_secs(8766 * HOUR);
    /// `AIHUMMER_INBOUND_TOLERANCE`: 1h; a wider window is a wider replay window.
    pub const INBOUND_TOLERANCE: Duration = Duration::from_secs(HOUR);
}

/// Connections served at once on the public listener when `AIHUMMER_MAX_CONNECTIONS` is
/// unset (lowered at start if the descriptor limit is too low for it).
pub const DEFAULT_MAX_CONNECTIONS: usize = 10_000;
/// The largest `AIHUMMER_MAX_CONNECTIONS` accepted.
pub const MAX_CONNECTIONS_LIMIT: usize = 1_000_000;
/// How long a client may take to send its request headers, by default.
pub const DEFAULT_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// The largest `AIHUMMER_HEADER_READ_TIMEOUT` accepted.
pub const MAX_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(120);
/// How long a client may take to send a request body, by default.
pub const DEFAULT_BODY_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// The largest `AIHUMMER_BODY_READ_TIMEOUT` accepted.
pub const MAX_BODY_READ_TIMEOUT: Duration = Duration::from_secs(300);

/// A setting that cannot be used, named so the operator knows what to fix.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A value that does not parse.
    #[error(transparent)]
    Setting(#[from] SettingError),
    /// `AIHUMMER_DEFAULT_WORKSPACE_ID` is not a UUID.
    #[error("AIHUMMER_DEFAULT_WORKSPACE_ID={value:?} is not a UUID: {reason}")]
    Workspace {
        /// What it was set to.
        value: String,
        /// Why it was refused.
        reason: String,
    },
    /// `AIHUMMER_REPLY_WEBHOOK_URL` is not an http(s) URL.
    #[error("AIHUMMER_REPLY_WEBHOOK_URL={value:?} is not an http:// or https:// URL: {reason}")]
    Webhook {
        /// What it was set to, credentials and query string redacted.
        value: String,
        /// Why it was refused.
        reason: String,
    },
    /// `AIHUMMER_MAX_CONNECTIONS` is not a whole number in range.
    #[error(
        "AIHUMMER_MAX_CONNECTIONS={value:?} is not a connection count from 1 to {MAX_CONNECTIONS_LIMIT}"
    )]
    MaxConnections {
        /// What it was set to.
        value: String,
    },
    /// A read timeout that is zero or above its maximum.
    #[error("{var}={value:?} is out of range: expected more than 0s and at most {max:?}")]
    OutOfRange {
        /// The variable's name.
        var: &'static str,
        /// What it was set to.
        value: Duration,
        /// The most it may be.
        max: Duration,
    },
    /// `AIHUMMER_OUTBOX_CONCURRENCY` is not a count in range.
    #[error(
        "AIHUMMER_OUTBOX_CONCURRENCY={value:?} is not a whole number from 1 to {MAX_OUTBOX_CONCURRENCY}"
    )]
    Concurrency {
        /// What it was set to.
        value: String,
    },
    /// A database URL that does not parse. The value is not repeated: it may hold a password.
    #[error("{var} is not a valid PostgreSQL URL: {reason}")]
    DatabaseUrl {
        /// The variable's name.
        var: &'static str,
        /// Why it was refused.
        reason: String,
    },
}

/// Where a database lives. `Debug` and `Display` show host, port and database only, never
/// the password, so a target can be logged.
#[derive(Clone)]
pub struct DbTarget {
    /// The parsed connection options, credentials included.
    pub options: PgConnectOptions,
}

impl fmt::Display for DbTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let o = &self.options;
        write!(
            f,
            "postgres://{}@{}:{}/{}",
            o.get_username(),
            o.get_host(),
            o.get_port(),
            o.get_database().unwrap_or("")
        )
    }
}

impl fmt::Debug for DbTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// A secret value: `Debug` never shows it, so it cannot leak through a logged struct.
#[derive(Clone)]
pub struct Secret(pub String);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// Everything the gateway reads from its environment.
#[derive(Debug, Clone)]
pub struct Config {
    /// `AIHUMMER_DATABASE_URL`: the owner connection; `None` means health-only mode.
    pub database: Option<DbTarget>,
    /// `AIHUMMER_DB_APP_URL`: the restricted `aihummer_app` connection for serving.
    pub app_database: Option<DbTarget>,
    /// `AIHUMMER_GATEWAY_ADDR`: used only when no socket is inherited.
    pub addr: SocketAddr,
    /// `AIHUMMER_DRAIN_TIMEOUT`: the most a drain may take.
    pub drain_timeout: Duration,
    /// `AIHUMMER_INBOUND_SECRET`: HMAC key for `POST /v1/inbound/generic`.
    pub inbound_secret: Option<Secret>,
    /// `AIHUMMER_INBOUND_TOLERANCE`: how far a signature's timestamp may be from now.
    pub inbound_tolerance: Duration,
    /// `AIHUMMER_INBOUND_LEGACY_SIGNATURE`: whether the old body-only
    /// `X-AIHummer-Inbound-Secret` is still accepted.
    pub inbound_legacy_signature: bool,
    /// `AIHUMMER_DEFAULT_WORKSPACE_ID`: the workspace generic inbound messages belong to.
    pub default_workspace: Option<Uuid>,
    /// `AIHUMMER_REPLY_WEBHOOK_URL`: where replies are delivered.
    pub reply_webhook: Option<Url>,
    /// `AIHUMMER_OUTBOX_LEASE`: how long a claimed reply stays reserved for its deliverer.
    pub outbox_lease: Duration,
    /// `AIHUMMER_OUTBOX_CONCURRENCY`: reply deliveries this gateway keeps in flight.
    pub outbox_concurrency: usize,
    /// `AIHUMMER_HOUSEKEEPING_INTERVAL`: how often the leader runs outbox housekeeping.
    pub housekeeping_interval: Duration,
    /// `AIHUMMER_RETENTION`: how long delivered replies and inbound keys are kept.
    pub retention: Duration,
    /// `AIHUMMER_METRICS_ADDR`: the operator listener of a gateway running alone.
    pub metrics_addr: Option<SocketAddr>,
    /// `AIHUMMER_MAX_CONNECTIONS`, `AIHUMMER_HEADER_READ_TIMEOUT`,
    /// `AIHUMMER_BODY_READ_TIMEOUT`: what one connection may take, and how many at once.
    pub limits: Limits,
}

impl Config {
    /// Reads the process environment.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// Reads settings through `get`; a set but empty or space-padded value is refused.
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let env = Env::new(get);
        let get = |name: &str| env.get(name);
        let duration = |var, default, max| env.duration_at_most(var, default, max);
        Ok(Self {
            database: get("AIHUMMER_DATABASE_URL")?
                .map(|url| parse_database_url("AIHUMMER_DATABASE_URL", &url))
                .transpose()?,
            app_database: get("AIHUMMER_DB_APP_URL")?
                .map(|url| parse_database_url("AIHUMMER_DB_APP_URL", &url))
                .transpose()?,
            addr: env.listen_addr("AIHUMMER_GATEWAY_ADDR", DEFAULT_ADDR)?,
            drain_timeout: duration(
                "AIHUMMER_DRAIN_TIMEOUT",
                DEFAULT_DRAIN_TIMEOUT,
                maximum::DRAIN_TIMEOUT,
            )?,
            inbound_secret: get("AIHUMMER_INBOUND_SECRET")?.map(Secret),
            inbound_tolerance: duration(
                "AIHUMMER_INBOUND_TOLERANCE",
                DEFAULT_INBOUND_TOLERANCE,
                maximum::INBOUND_TOLERANCE,
            )?,
            inbound_legacy_signature: env.flag("AIHUMMER_INBOUND_LEGACY_SIGNATURE", false)?,
            default_workspace: get("AIHUMMER_DEFAULT_WORKSPACE_ID")?
                .map(|v| {
                    Uuid::parse_str(v.trim()).map_err(|err| ConfigError::Workspace {
                        value: v.clone(),
                        reason: err.to_string(),
                    })
                })
                .transpose()?,
            reply_webhook: get("AIHUMMER_REPLY_WEBHOOK_URL")?
                .map(|v| parse_webhook(&v))
                .transpose()?,
            outbox_lease: duration(
                "AIHUMMER_OUTBOX_LEASE",
                DEFAULT_OUTBOX_LEASE,
                maximum::OUTBOX_LEASE,
            )?,
            outbox_concurrency: get("AIHUMMER_OUTBOX_CONCURRENCY")?
                .map(|v| parse_concurrency(&v))
                .transpose()?
                .unwrap_or(DEFAULT_OUTBOX_CONCURRENCY),
            housekeeping_interval: duration(
                "AIHUMMER_HOUSEKEEPING_INTERVAL",
                DEFAULT_HOUSEKEEPING_INTERVAL,
                maximum::HOUSEKEEPING_INTERVAL,
            )?,
            retention: duration("AIHUMMER_RETENTION", DEFAULT_RETENTION, maximum::RETENTION)?,
            metrics_addr: env.optional_listen_addr("AIHUMMER_METRICS_ADDR")?,
            limits: Limits {
                max_connections: get("AIHUMMER_MAX_CONNECTIONS")?
                    .map(|v| parse_max_connections(&v))
                    .transpose()?
                    .unwrap_or(DEFAULT_MAX_CONNECTIONS),
                header_read_timeout: in_range(
                    "AIHUMMER_HEADER_READ_TIMEOUT",
                    env.duration("AIHUMMER_HEADER_READ_TIMEOUT", DEFAULT_HEADER_READ_TIMEOUT)?,
                    MAX_HEADER_READ_TIMEOUT,
                )?,
                body_read_timeout: in_range(
                    "AIHUMMER_BODY_READ_TIMEOUT",
                    env.duration("AIHUMMER_BODY_READ_TIMEOUT", DEFAULT_BODY_READ_TIMEOUT)?,
                    MAX_BODY_READ_TIMEOUT,
                )?,
            },
        })
    }
}

fn parse_max_connections(value: &str) -> Result<usize, ConfigError> {
    match value.trim().parse::<usize>() {
        Ok(n) if (1..=MAX_CONNECTIONS_LIMIT).contains(&n) => Ok(n),
        _ => Err(ConfigError::MaxConnections {
            value: value.to_string(),
        }),
    }
}

fn parse_concurrency(value: &str) -> Result<usize, ConfigError> {
    match value.trim().parse::<usize>() {
        Ok(n) if (1..=MAX_OUTBOX_CONCURRENCY).contains(&n) => Ok(n),
        _ => Err(ConfigError::Concurrency {
            value: value.to_string(),
        }),
    }
}

/// A zero read timeout would close every connection before its first byte.
fn in_range(var: &'static str, value: Duration, max: Duration) -> Result<Duration, ConfigError> {
    if value.is_zero() || value > max {
        return Err(ConfigError::OutOfRange { var, value, max });
    }
    Ok(value)
}

fn parse_webhook(value: &str) -> Result<Url, ConfigError> {
    let refuse = |reason: String| ConfigError::Webhook {
        value: redact::url(value),
        reason,
    };
    let url = Url::parse(value.trim()).map_err(|err| refuse(err.to_string()))?;
    match url.scheme() {
        "http" | "https" => Ok(url),
        other => Err(refuse(format!("scheme {other:?}"))),
    }
}

fn parse_database_url(var: &'static str, url: &str) -> Result<DbTarget, ConfigError> {
    let options = PgConnectOptions::from_str(url).map_err(|err| ConfigError::DatabaseUrl {
        var,
        reason: err.to_string(),
    })?;
    Ok(DbTarget {
        options: options.application_name("aihummer-gateway"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
        Config::from_lookup(|name| {
            vars.iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| v.to_string())
        })
    }

    #[test]
    fn defaults_mean_health_only_on_port_8765_of_every_interface() {
        let c = config(&[]).unwrap();
        assert!(c.database.is_none() && c.app_database.is_none());
        assert_eq!(c.addr, "0.0.0.0:8765".parse().unwrap());
        assert_eq!(c.drain_timeout, DEFAULT_DRAIN_TIMEOUT);
    }

    #[test]
    fn outbox_concurrency_defaults_to_64_and_refuses_zero_junk_and_huge_values() {
        assert_eq!(config(&[]).unwrap().outbox_concurrency, 64);
        let set = config(&[("AIHUMMER_OUTBOX_CONCURRENCY", "8")]).unwrap();
        assert_eq!(set.outbox_concurrency, 8);
        for bad in ["0", "-1", "many", "4097"] {
            let err = config(&[("AIHUMMER_OUTBOX_CONCURRENCY", bad)]).unwrap_err();
            assert!(
                err.to_string().contains("AIHUMMER_OUTBOX_CONCURRENCY")
                    && err.to_string().contains(bad),
                "{err}"
            );
        }
    }

    #[test]
    fn empty_or_padded_values_are_refused_by_name() {
        for (var, value) in [
            ("AIHUMMER_DATABASE_URL", " "),
            ("AIHUMMER_GATEWAY_ADDR", ""),
            ("AIHUMMER_INBOUND_SECRET", "s3cret "),
            ("AIHUMMER_RETENTION", " 7d"),
        ] {
            let err = config(&[(var, value)]).unwrap_err().to_string();
            assert!(err.starts_with(var), "{err}");
            assert!(!err.contains("s3cret"), "{err}");
        }
    }

    #[test]
    fn a_bad_address_names_the_variable_and_the_value() {
        let err = config(&[("AIHUMMER_GATEWAY_ADDR", "port-eighty")]).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("AIHUMMER_GATEWAY_ADDR") && msg.contains("port-eighty"),
            "{msg}"
        );
    }

    #[test]
    fn a_bad_database_url_is_refused_without_echoing_the_password() {
        let err = config(&[("AIHUMMER_DATABASE_URL", "postgres://u:hunter2@[bad/db")]).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("AIHUMMER_DATABASE_URL"), "{msg}");
        assert!(!msg.contains("hunter2"), "{msg}");
    }

    #[test]
    fn a_workspace_that_is_not_a_uuid_is_a_startup_error() {
        let err = config(&[("AIHUMMER_DEFAULT_WORKSPACE_ID", "default")]).unwrap_err();
        assert!(
            err.to_string().contains("AIHUMMER_DEFAULT_WORKSPACE_ID"),
            "{err}"
        );
        let id = "7f9c24e5-2f4b-4d47-9d1a-0c6f1f2f0a11";
        let c = config(&[("AIHUMMER_DEFAULT_WORKSPACE_ID", id)]).unwrap();
        assert_eq!(c.default_workspace.unwrap().to_string(), id);
    }

    #[test]
    fn the_reply_webhook_must_be_http_or_https() {
        assert!(config(&[("AIHUMMER_REPLY_WEBHOOK_URL", "ftp://x/")]).is_err());
        assert!(config(&[("AIHUMMER_REPLY_WEBHOOK_URL", "not a url")]).is_err());
        let c = config(&[("AIHUMMER_REPLY_WEBHOOK_URL", "http://127.0.0.1:9/hook")]).unwrap();
        assert_eq!(c.reply_webhook.unwrap().path(), "/hook");
    }

    #[test]
    fn a_refused_webhook_url_is_named_without_its_credentials_or_query() {
        let err = config(&[(
            "AIHUMMER_REPLY_WEBHOOK_URL",
            "ftp://bot:hunter2@hooks.example.com/r?token=s3cret",
        )])
        .unwrap_err()
        .to_string();
        assert!(err.contains("hooks.example.com/r"), "{err}");
        assert!(!err.contains("hunter2") && !err.contains("s3cret"), "{err}");
    }

    #[test]
    fn every_duration_setting_has_a_maximum_named_in_its_error() {
        for (var, max) in [
            ("AIHUMMER_DRAIN_TIMEOUT", "1h"),
            ("AIHUMMER_OUTBOX_LEASE", "1h"),
            ("AIHUMMER_HOUSEKEEPING_INTERVAL", "1day"),
            ("AIHUMMER_RETENTION", "1year"),
            ("AIHUMMER_INBOUND_TOLERANCE", "1h"),
        ] {
            let err = config(&[(var, "1000000000000s")]).unwrap_err().to_string();
            assert!(
                err.contains(var) && err.contains(&format!("maximum of {max}")),
                "{err}"
            );
            assert!(config(&[(var, max)]).is_ok(), "{var}={max} is allowed");
        }
    }

    #[test]
    fn inbound_signing_defaults_to_five_minutes_and_no_legacy_header() {
        let c = config(&[]).unwrap();
        assert_eq!(c.inbound_tolerance, Duration::from_secs(300));
        assert!(!c.inbound_legacy_signature);
        let c = config(&[
            ("AIHUMMER_INBOUND_TOLERANCE", "30s"),
            ("AIHUMMER_INBOUND_LEGACY_SIGNATURE", "true"),
        ])
        .unwrap();
        assert_eq!(c.inbound_tolerance, Duration::from_secs(30));
        assert!(c.inbound_legacy_signature);
        let err = config(&[("AIHUMMER_INBOUND_LEGACY_SIGNATURE", "sure")]).unwrap_err();
        assert!(
            err.to_string()
                .contains("AIHUMMER_INBOUND_LEGACY_SIGNATURE"),
            "{err}"
        );
    }

    #[test]
    fn the_metrics_listener_is_off_unless_an_address_is_set() {
        assert!(config(&[]).unwrap().metrics_addr.is_none());
        let c = config(&[("AIHUMMER_METRICS_ADDR", "127.0.0.1:9100")]).unwrap();
        assert_eq!(c.metrics_addr, Some("127.0.0.1:9100".parse().unwrap()));
        assert!(config(&[("AIHUMMER_METRICS_ADDR", "nowhere")]).is_err());
    }

    #[test]
    fn the_inbound_secret_never_shows_in_debug_output() {
        let c = config(&[("AIHUMMER_INBOUND_SECRET", "s3cret-value")]).unwrap();
        assert!(!format!("{c:?}").contains("s3cret-value"));
    }

    #[test]
    fn connection_limits_have_defaults_and_take_settings() {
        let c = config(&[]).unwrap();
        assert_eq!(
            c.limits,
            Limits {
                max_connections: DEFAULT_MAX_CONNECTIONS,
                header_read_timeout: DEFAULT_HEADER_READ_TIMEOUT,
                body_read_timeout: DEFAULT_BODY_READ_TIMEOUT,
            }
        );
        let c = config(&[
            ("AIHUMMER_MAX_CONNECTIONS", "16"),
            ("AIHUMMER_HEADER_READ_TIMEOUT", "2s"),
            ("AIHUMMER_BODY_READ_TIMEOUT", "1m"),
        ])
        .unwrap();
        assert_eq!(c.limits.max_connections, 16);
        assert_eq!(c.limits.header_read_timeout, Duration::from_secs(2));
        assert_eq!(c.limits.body_read_timeout, Duration::from_secs(60));
    }

    #[test]
    fn a_connection_cap_that_is_not_a_count_in_range_is_refused() {
        for bad in ["0", "-1", "lots", "1000001"] {
            let err = config(&[("AIHUMMER_MAX_CONNECTIONS", bad)]).unwrap_err();
            let msg = err.to_string();
            assert!(
                msg.contains("AIHUMMER_MAX_CONNECTIONS") && msg.contains(bad),
                "{msg}"
            );
        }
    }

    #[test]
    fn read_timeouts_that_are_zero_or_above_their_maximum_are_refused() {
        for (var, bad) in [
            ("AIHUMMER_HEADER_READ_TIMEOUT", "0s"),
            ("AIHUMMER_HEADER_READ_TIMEOUT", "3m"),
            ("AIHUMMER_BODY_READ_TIMEOUT", "0"),
            ("AIHUMMER_BODY_READ_TIMEOUT", "1h"),
        ] {
            let err = config(&[(var, bad)]).unwrap_err();
            let msg = err.to_string();
            assert!(msg.contains(var) && msg.contains("at most"), "{msg}");
        }
    }

    #[test]
    fn a_database_target_displays_without_its_password() {
        let c = config(&[(
            "AIHUMMER_DATABASE_URL",
            "postgres://owner:hunter2@db.local:5433/app",
        )])
        .unwrap();
        let shown = format!("{} {:?}", c.database.as_ref().unwrap(), c);
        assert!(shown.contains("owner@db.local:5433/app"), "{shown}");
        assert!(!shown.contains("hunter2"), "{shown}");
    }
}
