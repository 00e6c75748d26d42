//! The control protocol's wire types: typed, versioned, and nothing but data.
//!
//! Newline-delimited JSON, one request per connection. The client sends one [`Request`]
//! line (`{"v":1,"cmd":"status"}`); the server answers with zero or more
//! [`Body::Progress`] lines, then exactly one final line, then closes:
//!
//! ```text
//! → {"v":1,"cmd":"restart"}
//! ← {"v":1,"type":"progress","stage":"candidate_started","message":"...","pid":4242}
//! ← {"v":1,"type":"restarted","old_pid":4100,"new_pid":4242,"version":"0.1.0","duration_ms":1180}
//! ```
//!
//! `update` (optionally `"version":"1.4.2"`) streams checking and download progress
//! (`done`/`total` bytes) before the handoff's; it ends in `restarted` (the new version
//! serves), `up_to_date`, or an error. `rollback` hands back to the `previous` version and
//! ends like a restart. `check` asks the channel with the supervisor's own settings and
//! installs nothing: it ends in `checked` (also recorded in `status`) or an error. A
//! supervisor older than `check` answers it `bad_request`, which tells a client to check
//! by itself.
//!
//! Every message carries the protocol version `v`; unknown fields are ignored so either
//! side can grow. The limits a peer must keep to are here too: a request line is capped at
//! [`MAX_REQUEST_BYTES`] and must arrive within [`READ_TIMEOUT`], replies are written
//! under [`WRITE_TIMEOUT`], and at most [`MAX_CONNECTIONS`] are served at once.
//!
//! The file runs a little over the usual size: the wire types are one contract, kept
//! together (with their round-trip tests) so that a change to it is one reviewable diff.

use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use crate::fleet::FleetReport;

/// The protocol version this build speaks.
pub const PROTOCOL_VERSION: u32 = 1;
/// The longest request line accepted; real requests are a few dozen bytes.
pub const MAX_REQUEST_BYTES: usize = 64 * 1024;
/// How long a client may take to send its request line.
pub const READ_TIMEOUT: Duration = Duration::from_secs(5);
/// How long writing one reply line may take before the client is given up on.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(5);
/// Connections served at once.
pub const MAX_CONNECTIONS: usize = 64;
/// The longest reply line a client accepts (a status report is a few KiB).
pub const MAX_REPLY_BYTES: usize = 1024 * 1024;

/// A request: the protocol version and a command.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    /// Protocol version, [`PROTOCOL_VERSION`].
    pub v: u32,
    /// What to do.
    #[serde(flatten)]
    pub command: Command,
}

impl Request {
    /// `command` at [`PROTOCOL_VERSION`].
    pub fn new(command: Command) -> Self {
        Request {
            v: PROTOCOL_VERSION,
            command,
        }
    }
}

/// The commands a client can send.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case")]
pub enum Command {
    /// The supervisor's state.
    Status,
    /// The supervisor's and the active gateway's version and pid.
    Version,
    /// A zero-downtime restart of the installed gateway (a handoff).
    Restart,
    /// Check, download, stage and hand off to the channel's newer version.
    Update {
        /// Install exactly this version (also one quarantined before); it must be the
        /// version the channel offers.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        version: Option<String>,
    },
    /// Hand back to the `previous` installed version.
    Rollback,
    /// Check the channel for a newer version, installing nothing.
    Check,
    /// Every node of the fleet, the rollout lease and the halted versions.
    Fleet,
    /// Lift the fleet-wide halt on a version, so nodes install it on their own again.
    FleetResume {
        /// The halted version.
        version: String,
    },
}

/// One reply line: the protocol version and a body.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Message {
    /// Protocol version, [`PROTOCOL_VERSION`].
    pub v: u32,
    /// The content.
    #[serde(flatten)]
    pub body: Body,
}

impl Message {
    /// `body` at [`PROTOCOL_VERSION`].
    pub fn new(body: Body) -> Self {
        Message {
            v: PROTOCOL_VERSION,
            body,
        }
    }
}

/// What a reply line says. Everything but [`Body::Progress`] is final.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Body {
    /// A step of a long operation.
    Progress(Progress),
    /// The answer to [`Command::Status`].
    Status(Box<StatusReport>),
    /// The answer to [`Command::Version`].
    Version(VersionReport),
    /// A successful [`Command::Restart`], [`Command::Update`] or [`Command::Rollback`]:
    /// the handoff to the version named is done.
    Restarted(RestartReport),
    /// [`Command::Update`] found nothing newer: the running version is the channel's.
    UpToDate(UpToDateReport),
    /// What [`Command::Check`] found.
    Checked(CheckReport),
    /// The answer to [`Command::Fleet`].
    Fleet(Box<FleetReport>),
    /// The answer to [`Command::FleetResume`].
    FleetResumed(ResumeReport),
    /// The request failed or was refused.
    Error(ErrorReply),
}

impl Body {
    /// Whether this ends the exchange.
    pub fn is_final(&self) -> bool {
        !matches!(self, Body::Progress(_))
    }

    /// An [`Body::Error`] with `code` and `message`.
    pub fn error(code: ErrorCode, message: impl Into<String>) -> Body {
        Body::Error(ErrorReply {
            code,
            message: message.into(),
        })
    }
}

/// A lifted halt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResumeReport {
    /// The version.
    pub version: String,
    /// Whether it was halted (lifting a halt that is not there changes nothing).
    pub was_halted: bool,
}

/// A progress event of a handoff.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Progress {
    /// Which step.
    pub stage: Stage,
    /// For people.
    pub message: String,
    /// The gateway the step concerns.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    /// Bytes downloaded so far ([`Stage::Downloading`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub done: Option<u64>,
    /// Bytes to download in all ([`Stage::Downloading`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total: Option<u64>,
}

/// The answer to an update that found nothing newer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpToDateReport {
    /// The version that serves, the channel's newest.
    pub version: String,
}

/// The answer to [`Command::Check`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckReport {
    /// The version serving, which the check compared against.
    pub running: String,
    /// The channel's newest version.
    pub offered: String,
    /// Whether `offered` is newer than `running` and may be installed.
    pub available: bool,
}

/// The steps of a handoff.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    /// This request joined a handoff already under way.
    Joined,
    /// Asking the CDN for the channel's manifest.
    Checking,
    /// Downloading the new version's artifact.
    Downloading,
    /// The new version is verified and installed beside the running one.
    Staged,
    /// The candidate process runs.
    CandidateStarted,
    /// The candidate is ready; traffic is now its.
    Switched,
    /// The old gateway was told to drain.
    Draining,
    /// The old gateway is gone.
    Drained,
    /// The failed candidate is being stopped.
    Aborting,
}

/// A refusal or failure.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorReply {
    /// Machine-readable kind.
    pub code: ErrorCode,
    /// One line for people.
    pub message: String,
}

/// Kinds of [`ErrorReply`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The request is not valid JSON or not a known command.
    BadRequest,
    /// The request line exceeds [`MAX_REQUEST_BYTES`].
    TooLarge,
    /// The request line did not arrive within [`READ_TIMEOUT`].
    Timeout,
    /// The request's protocol version is not spoken here.
    UnsupportedVersion,
    /// The peer's uid may not use this socket.
    Refused,
    /// Too many connections at once.
    Busy,
    /// The candidate did not take over; the old gateway still serves.
    HandoffFailed,
    /// No gateway serves right now.
    NotServing,
    /// The update was refused or could not be checked, downloaded or staged.
    UpdateFailed,
    /// There is no version to roll back to.
    NoRollback,
    /// The supervisor is stopping.
    Stopping,
    /// The fleet database is not configured (`AIHUMMER_DATABASE_URL`) or cannot be reached.
    FleetUnavailable,
    /// An error code this build does not know (from a newer peer).
    #[serde(other)]
    Unknown,
}

/// The supervisor's state, for `aihummer status`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatusReport {
    /// The supervisor process.
    pub supervisor: ProcessInfo,
    /// Its state.
    pub state: SupervisorState,
    /// The gateway serving traffic.
    pub active: Option<GatewayInfo>,
    /// A gateway starting to take over.
    pub candidate: Option<GatewayInfo>,
    /// An old gateway still draining after a handoff.
    pub draining: Option<GatewayInfo>,
    /// Update settings and the last check.
    pub update: UpdateInfo,
    /// Versions refused for good, with reasons.
    pub quarantined: Vec<String>,
    /// The most recent failure.
    pub last_error: Option<Event>,
    /// The most recent handoff.
    pub last_handoff: Option<HandoffRecord>,
    /// Starts after a gateway died on its own.
    pub crash_restarts: u64,
    /// This node in the fleet.
    #[serde(default)]
    pub node: Option<NodeIdentity>,
}

/// A node's identity in the fleet.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeIdentity {
    /// Its id (`AIHUMMER_STATE_DIR/node-id`).
    pub id: String,
    /// Its rollout cohort, 0 to 99: it installs a release rolled out to N% when below N.
    pub cohort: u8,
}

/// A process's identity.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessInfo {
    /// Its version.
    pub version: String,
    /// Its pid.
    pub pid: u32,
    /// When it started (RFC 3339).
    pub started_at: String,
}

/// The supervisor's states.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SupervisorState {
    /// Starting a gateway (first start, or after a crash).
    Starting,
    /// A gateway serves.
    Running,
    /// A candidate starts beside the active gateway.
    HandingOff,
    /// Waiting before starting a gateway again after a crash.
    BackingOff,
    /// Draining the gateways before exiting.
    Stopping,
}

/// One gateway child.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GatewayInfo {
    /// Its pid.
    pub pid: u32,
    /// The version it reported, once it answered a probe.
    pub version: Option<String>,
    /// Its state.
    pub state: GatewayState,
    /// Whether it runs without a database.
    pub health_only: bool,
    /// The binary it runs.
    pub binary: String,
    /// When it was started (RFC 3339).
    pub started_at: String,
}

/// A gateway's state as the supervisor sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GatewayState {
    /// Started, not yet ready.
    Starting,
    /// Ready and serving.
    Ready,
    /// Told to drain.
    Draining,
}

/// Update settings and the last check.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpdateInfo {
    /// `AIHUMMER_AUTO_UPDATE`.
    pub mode: String,
    /// `AIHUMMER_UPDATE_CHANNEL`.
    pub channel: String,
    /// When the last check ran (RFC 3339).
    pub last_check: Option<String>,
    /// What it found.
    pub last_result: Option<String>,
    /// A newer version the last check found and that is not installed yet.
    #[serde(default)]
    pub available: Option<String>,
}

/// Something that happened, and when.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// When (RFC 3339).
    pub at: String,
    /// What, for people.
    pub message: String,
}

/// The outcome of a handoff.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HandoffRecord {
    /// When it ended (RFC 3339).
    pub at: String,
    /// Whether the candidate took over.
    pub ok: bool,
    /// From the request to the old gateway gone (or the candidate given up).
    pub duration_ms: u64,
    /// What happened.
    pub message: String,
}

/// The answer to [`Command::Version`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionReport {
    /// The supervisor's version.
    pub version: String,
    /// The supervisor's pid.
    pub pid: u32,
    /// The active gateway, if one serves.
    pub gateway: Option<GatewayVersion>,
}

/// The active gateway's identity.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GatewayVersion {
    /// The version it reported.
    pub version: Option<String>,
    /// Its pid.
    pub pid: u32,
}

/// A successful restart.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestartReport {
    /// The gateway that served before; none when the restart replaced a crashed one.
    pub old_pid: Option<u32>,
    /// The gateway serving now.
    pub new_pid: u32,
    /// Its version.
    pub version: Option<String>,
    /// From the request to the old gateway gone.
    pub duration_ms: u64,
}

/// A unit enum's wire name (`handing_off`), for output that matches the JSON.
pub fn wire_name(value: &impl Serialize) -> String {
    match serde_json::to_value(value) {
        Ok(serde_json::Value::String(name)) => name,
        _ => "unknown".into(),
    }
}

/// Parses one request line. Errors are the reply to send.
pub fn parse_request(line: &str) -> Result<Request, ErrorReply> {
    let bad = |message: String| ErrorReply {
        code: ErrorCode::BadRequest,
        message,
    };
    let value: serde_json::Value =
        serde_json::from_str(line).map_err(|err| bad(format!("the request is not JSON: {err}")))?;
    // The version is checked before the command, so a newer client learns what is wrong.
    match value.get("v").map(serde_json::Value::as_u64) {
        None => return Err(bad("the request has no protocol version field \"v\"".into())),
        Some(Some(v)) if v == u64::from(PROTOCOL_VERSION) => {}
        Some(v) => {
            return Err(ErrorReply {
                code: ErrorCode::UnsupportedVersion,
                message: format!(
                    "protocol version {} is not supported; this supervisor speaks {PROTOCOL_VERSION}",
                    v.map_or_else(|| "(not a number)".to_string(), |v| v.to_string())
                ),
            });
        }
    }
    serde_json::from_value(value).map_err(|err| bad(format!("not a valid request: {err}")))
}

#[cfg(test)]
mod tests;
