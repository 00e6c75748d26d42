//! The supervisor's settings, read from `AIHUMMER_*` variables and validated once at start.
//!
//! Parsing takes a lookup function (and the uid) instead of reading the process, so every
//! rule is unit tested without touching global state. Variables not read here pass through
//! to the gateway unchanged; those only the supervisor may see are [`SUPERVISOR_ONLY`].

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use aihummer_common::settings::{Env, SettingError};
use url::Url;

use crate::fleet::UpdateWindow;
use crate::fleet::window::WindowError;
use crate::install::{GATEWAY_FILE, Layout};
use crate::process::child::Launch;
use crate::supervise::soak;
use crate::update::{
    Channel, UnknownChannel, UpdateSettingError, UpdateSettings, UpdaterOptions, UrlError,
    parse_base_url,
};

/// Listen address when `AIHUMMER_GATEWAY_ADDR` is unset: port 8765 on all interfaces.
pub const DEFAULT_ADDR: &str = ":8765";
/// Control socket of a supervisor running as root.
pub const ROOT_SOCKET: &str = "/run/aihummer/supervisor.sock";
/// How long a new gateway may take to become ready. Generous: a first start may apply
/// migrations on a large database.
pub const DEFAULT_READY_TIMEOUT: Duration = Duration::from_secs(120);
/// How long a gateway may drain; the gateway's own default is the same.
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a stopping supervisor keeps serving out of rotation before it drains: off by
/// default, since without a proxy in front nobody needs the warning.
pub const DEFAULT_SHUTDOWN_DELAY: Duration = Duration::ZERO;
/// How often a supervisor asks the CDN for a newer version (plus jitter).
pub const DEFAULT_UPDATE_INTERVAL: Duration = Duration::from_secs(6 * 3600);
/// The user a root supervisor runs the gateway as when `AIHUMMER_GATEWAY_USER` is unset;
/// also the service user the CLI trusts to serve the control socket.
pub const DEFAULT_GATEWAY_USER: &str = "aihummer";
/// The group allowed on the control socket when `AIHUMMER_ADMIN_GROUP` is unset.
pub const DEFAULT_ADMIN_GROUP: &str = "aihummer-admin";

/// Settings only the supervisor may see: they are removed from every gateway's
/// environment, so the internet-facing process learns neither where the control socket
/// is nor how updates are fetched, verified and installed. Every `AIHUMMER_UPDATE_*`
/// variable is supervisor-only too ([`SUPERVISOR_ONLY_PREFIX`]). The gateway reads none
/// of them; everything else (`AIHUMMER_DRAIN_TIMEOUT`, the database, inbound, webhook and
/// log settings) passes through.
pub const SUPERVISOR_ONLY: &[&str] = &[
    "AIHUMMER_SUPERVISOR_SOCKET",
    "AIHUMMER_DOWNLOAD_BASE_URL",
    "AIHUMMER_AUTO_UPDATE",
    "AIHUMMER_STATE_DIR",
    "AIHUMMER_GATEWAY_BIN",
    "AIHUMMER_GATEWAY_USER",
    "AIHUMMER_ADMIN_GROUP",
    "AIHUMMER_READY_TIMEOUT",
    "AIHUMMER_SHUTDOWN_DELAY",
    "AIHUMMER_SOAK_WINDOW",
    "AIHUMMER_FAILPOINT",
];
/// Every variable with this prefix is supervisor-only: the update key, channel, interval
/// and the rest of the update settings.
pub const SUPERVISOR_ONLY_PREFIX: &str = "AIHUMMER_UPDATE_";

/// Whether the variable `name` is kept from the gateway's environment.
pub fn supervisor_only(name: &str) -> bool {
    SUPERVISOR_ONLY.contains(&name) || name.starts_with(SUPERVISOR_ONLY_PREFIX)
}

/// The largest accepted value of each duration setting: far above any sensible value, low
/// enough that a typo is a startup error rather than a handoff that never gives up or a
/// deadline that overflows.
pub mod maximum {
    use std::time::Duration;

    const HOUR: u64 = 3600;

    /// `AIHUMMER_READY_TIMEOUT`: 1 day (a first start may migrate a large database).
    pub const READY_TIMEOUT: Duration = Duration::from_secs(24 * HOUR);
    /// `AIHUMMER_DRAIN_TIMEOUT`: 1h, as the gateway's own maximum.
    pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(HOUR);
    /// `AIHUMMER_UPDATE_INTERVAL`: 30 days.
    pub const UPDATE_INTERVAL: Duration = Duration::from_secs(30 * 24 * HOUR);
    /// `AIHUMMER_SHUTDOWN_DELAY`: 10 minutes (a proxy notices within seconds).
    pub const SHUTDOWN_DELAY: Duration = Duration::from_secs(600);
    /// `AIHUMMER_SOAK_WINDOW`: 1 day (a fleet rolls one node per window).
    pub const SOAK_WINDOW: Duration = Duration::from_secs(24 * HOUR);
}

/// A setting that cannot be used, named so the operator knows what to fix.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A value that does not parse.
    #[error(transparent)]
    Setting(#[from] SettingError),
    /// `AIHUMMER_AUTO_UPDATE` is not one of the three modes.
    #[error("AIHUMMER_AUTO_UPDATE={0:?} is not an update mode; expected off, check or apply")]
    UpdateMode(String),
    /// `AIHUMMER_UPDATE_WINDOW` is not a window.
    #[error(transparent)]
    Window(#[from] WindowError),
    /// `AIHUMMER_UPDATE_CHANNEL` is not a channel.
    #[error(transparent)]
    Channel(#[from] UnknownChannel),
    /// `AIHUMMER_DOWNLOAD_BASE_URL` is not usable.
    #[error(transparent)]
    BaseUrl(#[from] UrlError),
    /// An `AIHUMMER_UPDATE_*` setting (keys, limits) is not usable.
    #[error(transparent)]
    Update(#[from] UpdateSettingError),
    /// `apply` would execute whatever the CDN serves, unverified.
    #[error(
        "AIHUMMER_AUTO_UPDATE=apply without AIHUMMER_UPDATE_PUBKEY would install whatever the CDN serves; pin the release key in AIHUMMER_UPDATE_PUBKEY, or set AIHUMMER_UPDATE_ALLOW_UNSIGNED=true to accept unsigned releases explicitly"
    )]
    UnsignedApply,
    /// An update mode was asked for explicitly, but there is nowhere to update from.
    #[error(
        "AIHUMMER_AUTO_UPDATE={0} needs AIHUMMER_DOWNLOAD_BASE_URL (the release CDN); set it, or set AIHUMMER_AUTO_UPDATE=off"
    )]
    NoSource(UpdateMode),
    /// `apply` installs into the install dir, so it needs one.
    #[error("AIHUMMER_AUTO_UPDATE=apply needs AIHUMMER_STATE_DIR (where versions are installed)")]
    NoStateDir,
    /// No gateway binary could be found to run.
    #[error("no gateway binary to run: {0}")]
    NoGateway(String),
}

/// Everything `aihummer run` reads from its environment.
#[derive(Debug, Clone)]
pub struct Settings {
    /// `AIHUMMER_GATEWAY_ADDR`: the public listener, unless systemd passed one.
    pub addr: SocketAddr,
    /// `AIHUMMER_SUPERVISOR_SOCKET`: the control socket.
    pub socket: PathBuf,
    /// `AIHUMMER_STATE_DIR`: the install dir, whose `current/aihummer-gateway` runs first.
    pub state_dir: Option<PathBuf>,
    /// `AIHUMMER_GATEWAY_BIN`: the gateway to run when nothing is installed.
    pub gateway_bin: Option<PathBuf>,
    /// The directory of the running `aihummer` executable: the last place to look.
    pub exe_dir: Option<PathBuf>,
    /// `AIHUMMER_READY_TIMEOUT`: how long a new gateway may take to become ready.
    pub ready_timeout: Duration,
    /// `AIHUMMER_DRAIN_TIMEOUT`: how long an old gateway may take to drain.
    pub drain_timeout: Duration,
    /// `AIHUMMER_SHUTDOWN_DELAY`: how long a stopping supervisor keeps its gateway serving
    /// with `/readyz` 503 before it drains.
    pub shutdown_delay: Duration,
    /// `AIHUMMER_AUTO_UPDATE`, effective: [`UpdateMode::Off`] when it was left unset and
    /// no CDN is configured.
    pub update_mode: UpdateMode,
    /// `AIHUMMER_UPDATE_CHANNEL`.
    pub update_channel: Channel,
    /// `AIHUMMER_DOWNLOAD_BASE_URL`: the release CDN; unset, nothing is checked.
    pub download_base_url: Option<Url>,
    /// `AIHUMMER_UPDATE_INTERVAL`: time between periodic checks (jitter is added).
    pub update_interval: Duration,
    /// `AIHUMMER_UPDATE_PUBKEY`, `AIHUMMER_UPDATE_ALLOW_UNSIGNED` and the download limits.
    pub update: UpdateSettings,
    /// `AIHUMMER_GATEWAY_USER`: the user a root supervisor runs the gateway as.
    pub gateway_user: String,
    /// `AIHUMMER_ADMIN_GROUP`: the group whose members may use the control socket.
    pub admin_group: String,
    /// How gateways are started. Parsing leaves it at this process's own user;
    /// `app::run` fills in the gateway user it resolved from the user database.
    pub launch: Launch,
    /// `AIHUMMER_METRICS_ADDR`: where `/metrics` is served for the whole node; unset, off.
    pub metrics_addr: Option<SocketAddr>,
    /// `AIHUMMER_SOAK_WINDOW`: how long an updated version is watched for a crash loop,
    /// and in a fleet holds the rollout lease.
    pub soak_window: Duration,
    /// `AIHUMMER_UPDATE_WINDOW`: when `apply` may start a handoff; unset, any time.
    pub update_window: Option<UpdateWindow>,
    /// `AIHUMMER_DATABASE_URL` (the gateway's owner URL): where the fleet's tables live;
    /// unset, the node coordinates with no one.
    pub database_url: Option<String>,
}

/// `AIHUMMER_AUTO_UPDATE`: what the supervisor does about newer versions on its own.
/// `aihummer update` works in every mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpdateMode {
    /// No periodic checks; SIGHUP checks only.
    Off,
    /// Periodic checks; a newer version is logged and shown in `status` (the default).
    Check,
    /// Periodic checks; a newer version is installed through a handoff.
    Apply,
}

impl UpdateMode {
    /// The name used in the variable and in `status`.
    pub fn as_str(self) -> &'static str {
        match self {
            UpdateMode::Off => "off",
            UpdateMode::Check => "check",
            UpdateMode::Apply => "apply",
        }
    }
}

impl FromStr for UpdateMode {
    type Err = ConfigError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim() {
            "off" => Ok(UpdateMode::Off),
            "check" => Ok(UpdateMode::Check),
            "apply" => Ok(UpdateMode::Apply),
            other => Err(ConfigError::UpdateMode(other.to_string())),
        }
    }
}

impl std::fmt::Display for UpdateMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Settings {
    /// Reads the process environment.
    pub fn from_env() -> Result<Self, ConfigError> {
        let exe_dir = std::env::current_exe()
            .ok()
            .and_then(|exe| exe.parent().map(Path::to_path_buf));
        Self::from_lookup(|name| std::env::var(name).ok(), current_uid(), exe_dir)
    }

    /// Reads settings through `get`; a set but empty or space-padded value is refused.
    pub fn from_lookup(
        get: impl Fn(&str) -> Option<String>,
        uid: u32,
        exe_dir: Option<PathBuf>,
    ) -> Result<Self, ConfigError> {
        let env = Env::new(get);
        let get = |name: &str| env.get(name);
        let duration = |var, default, max| env.duration_at_most(var, default, max);
        let download_base_url = get("AIHUMMER_DOWNLOAD_BASE_URL")?
            .map(|v| parse_base_url(&v, false))
            .transpose()?;
        let state_dir = get("AIHUMMER_STATE_DIR")?.map(PathBuf::from);
        let update = UpdateSettings::read(&env)?;
        // The product advises notify-only checks, so that is the default; but a default
        // must not stop a supervisor that was never told where releases live: with no CDN
        // it quietly means off. A mode asked for explicitly without a CDN is an error.
        let update_mode = match get("AIHUMMER_AUTO_UPDATE")? {
            None if download_base_url.is_none() => UpdateMode::Off,
            None => UpdateMode::Check,
            Some(value) => match value.parse()? {
                UpdateMode::Off => UpdateMode::Off,
                mode if download_base_url.is_none() => return Err(ConfigError::NoSource(mode)),
                UpdateMode::Apply if state_dir.is_none() => return Err(ConfigError::NoStateDir),
                UpdateMode::Apply if update.keys.is_none() && !update.allow_unsigned => {
                    return Err(ConfigError::UnsignedApply);
                }
                mode => mode,
            },
        };
        Ok(Self {
            addr: env.listen_addr("AIHUMMER_GATEWAY_ADDR", DEFAULT_ADDR)?,
            socket: {
                // Checked here so a blank value is refused; clients resolve it leniently.
                get("AIHUMMER_SUPERVISOR_SOCKET")?;
                socket_path(|name| get(name).ok().flatten(), uid)
            },
            state_dir,
            gateway_bin: get("AIHUMMER_GATEWAY_BIN")?.map(PathBuf::from),
            exe_dir,
            ready_timeout: duration(
                "AIHUMMER_READY_TIMEOUT",
                DEFAULT_READY_TIMEOUT,
                maximum::READY_TIMEOUT,
            )?,
            drain_timeout: duration(
                "AIHUMMER_DRAIN_TIMEOUT",
                DEFAULT_DRAIN_TIMEOUT,
                maximum::DRAIN_TIMEOUT,
            )?,
            shutdown_delay: duration(
                "AIHUMMER_SHUTDOWN_DELAY",
                DEFAULT_SHUTDOWN_DELAY,
                maximum::SHUTDOWN_DELAY,
            )?,
            update_mode,
            update_channel: get("AIHUMMER_UPDATE_CHANNEL")?
                .map(|v| v.parse())
                .transpose()?
                .unwrap_or(Channel::Stable),
            download_base_url,
            update_interval: duration(
                "AIHUMMER_UPDATE_INTERVAL",
                DEFAULT_UPDATE_INTERVAL,
                maximum::UPDATE_INTERVAL,
            )?,
            update,
            gateway_user: {
                get("AIHUMMER_GATEWAY_USER")?;
                gateway_user(|name| get(name).ok().flatten())
            },
            admin_group: get("AIHUMMER_ADMIN_GROUP")?
                .unwrap_or_else(|| DEFAULT_ADMIN_GROUP.to_string()),
            launch: Launch::default(),
            metrics_addr: env.optional_listen_addr("AIHUMMER_METRICS_ADDR")?,
            soak_window: duration("AIHUMMER_SOAK_WINDOW", soak::WINDOW, maximum::SOAK_WINDOW)?,
            update_window: get("AIHUMMER_UPDATE_WINDOW")?
                .map(|v| v.parse())
                .transpose()?,
            database_url: get("AIHUMMER_DATABASE_URL")?,
        })
    }

    /// The gateway binary to start now, as an absolute path: the installed `current`
    /// version (resolved to its versioned path, so a later swap of `current` cannot change
    /// what a running child is), else `AIHUMMER_GATEWAY_BIN`, else the one beside
    /// `aihummer`. Looked up at every start, so a restart picks up a newly installed binary.
    pub fn gateway_binary(&self) -> Result<PathBuf, ConfigError> {
        if let Some(state) = &self.state_dir
            && let Some(current) = Layout::new(state)
                .current_binary()
                .map_err(|err| ConfigError::NoGateway(format!("cannot {err}")))?
        {
            return Ok(current);
        }
        if let Some(bin) = &self.gateway_bin {
            return std::path::absolute(bin).map_err(|err| {
                ConfigError::NoGateway(format!("AIHUMMER_GATEWAY_BIN={}: {err}", bin.display()))
            });
        }
        match &self.exe_dir {
            Some(dir) if dir.join(GATEWAY_FILE).exists() => Ok(dir.join(GATEWAY_FILE)),
            Some(dir) => Err(ConfigError::NoGateway(format!(
                "nothing installed under AIHUMMER_STATE_DIR, AIHUMMER_GATEWAY_BIN unset, and no {GATEWAY_FILE} in {}",
                dir.display()
            ))),
            None => Err(ConfigError::NoGateway(
                "AIHUMMER_GATEWAY_BIN is unset and this executable's directory is unknown".into(),
            )),
        }
    }

    /// What the update pipeline is built from; `None` when no CDN is configured
    /// (`AIHUMMER_DOWNLOAD_BASE_URL` unset).
    pub fn update_options(&self) -> Option<UpdaterOptions> {
        let base = self.download_base_url.clone()?;
        Some(UpdaterOptions {
            key: self.update.keys.clone(),
            layout: self.state_dir.clone().map(Layout::new),
            fetch: self.update.fetch_options(),
            ..UpdaterOptions::new(base, self.update_channel)
        })
    }
}

/// The effective uid of this process.
pub fn current_uid() -> u32 {
    nix::unistd::geteuid().as_raw()
}

/// `AIHUMMER_GATEWAY_USER` through `get`, or [`DEFAULT_GATEWAY_USER`].
pub fn gateway_user(get: impl Fn(&str) -> Option<String>) -> String {
    get("AIHUMMER_GATEWAY_USER")
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| DEFAULT_GATEWAY_USER.to_string())
}

/// The control socket a supervisor binds: `AIHUMMER_SUPERVISOR_SOCKET`, else
/// [`ROOT_SOCKET`] for root, else a per-user path (`$XDG_RUNTIME_DIR/aihummer/supervisor.sock`,
/// falling back to `/tmp/aihummer-<uid>/supervisor.sock`).
pub fn socket_path(get: impl Fn(&str) -> Option<String>, uid: u32) -> PathBuf {
    let get = |name: &str| get(name).filter(|v| !v.trim().is_empty());
    if let Some(path) = get("AIHUMMER_SUPERVISOR_SOCKET") {
        return PathBuf::from(path);
    }
    if uid == 0 {
        return PathBuf::from(ROOT_SOCKET);
    }
    match get("XDG_RUNTIME_DIR") {
        Some(dir) => Path::new(&dir).join("aihummer").join("supervisor.sock"),
        None => PathBuf::from(format!("/tmp/aihummer-{uid}/supervisor.sock")),
    }
}

/// The control socket a client talks to: like [`socket_path`], except that the unit's
/// [`ROOT_SOCKET`] is chosen for any user when `usable` says this user may connect to it
/// (an admin running `aihummer status` finds the service, not a per-user socket).
pub fn client_socket_path(
    get: impl Fn(&str) -> Option<String>,
    uid: u32,
    usable: impl Fn(&Path) -> bool,
) -> PathBuf {
    let set = get("AIHUMMER_SUPERVISOR_SOCKET").is_some_and(|v| !v.trim().is_empty());
    if !set && usable(Path::new(ROOT_SOCKET)) {
        return PathBuf::from(ROOT_SOCKET);
    }
    socket_path(get, uid)
}

/// The control socket path for a client, from the process environment. The unit's socket
/// is usable when it exists and this user may write to it (connecting needs write access).
pub fn socket_path_from_env() -> PathBuf {
    use nix::unistd::{AccessFlags, access};
    client_socket_path(
        |name| std::env::var(name).ok(),
        current_uid(),
        |path| access(path, AccessFlags::W_OK).is_ok(),
    )
}

#[cfg(test)]
mod tests;
