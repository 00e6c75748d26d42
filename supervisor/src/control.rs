//! The control socket: a typed, versioned protocol and its server.
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
//! ends like a restart.
//!
//! Every message carries the protocol version `v`; unknown fields are ignored so either
//! side can grow. A client never hurts the supervisor or other clients: peers are checked
//! with SO_PEERCRED (root or the supervisor's own uid), a request line is capped at
//! [`MAX_REQUEST_BYTES`] and must arrive within [`READ_TIMEOUT`], replies are written
//! under [`WRITE_TIMEOUT`], each connection runs in its own task, and at most
//! [`MAX_CONNECTIONS`] are served at once (the rest are told the supervisor is busy).

use std::future::Future;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{
    AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt,
    BufReader as AsyncBufReader,
};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{Semaphore, mpsc};

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

/// What the server asks of the supervisor.
pub trait Service: Send + Sync + 'static {
    /// The current state.
    fn status(&self) -> StatusReport;
    /// Versions and pids.
    fn version(&self) -> VersionReport;
    /// Starts (or joins) a handoff: progress bodies, then one final body. A channel closed
    /// without a final body means the supervisor went away.
    fn restart(&self) -> mpsc::UnboundedReceiver<Body>;
    /// Starts (or joins) an update, to `version` if given; reported like a restart.
    fn update(&self, version: Option<String>) -> mpsc::UnboundedReceiver<Body>;
    /// Starts a rollback to the previous version; reported like a restart.
    fn rollback(&self) -> mpsc::UnboundedReceiver<Body>;
}

/// Who may use the socket: root and the supervisor's own uid.
#[derive(Debug, Clone, Copy)]
pub struct Access {
    /// The supervisor's uid.
    pub uid: u32,
}

impl Access {
    /// Whether a peer with `uid` may send requests.
    pub fn allows(&self, uid: u32) -> bool {
        uid == 0 || uid == self.uid
    }
}

/// Parses one request line. Errors are the reply to send.
pub fn parse_request(line: &[u8]) -> Result<Request, ErrorReply> {
    let bad = |message: String| ErrorReply {
        code: ErrorCode::BadRequest,
        message,
    };
    let value: serde_json::Value = serde_json::from_slice(line)
        .map_err(|err| bad(format!("the request is not JSON: {err}")))?;
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

/// Reads one request line under the size cap and the read timeout.
pub async fn read_request(reader: impl AsyncRead + Unpin) -> Result<Request, ErrorReply> {
    let mut line = Vec::new();
    let mut limited = AsyncBufReader::new(reader).take(MAX_REQUEST_BYTES as u64 + 1);
    let read = tokio::time::timeout(READ_TIMEOUT, limited.read_until(b'\n', &mut line)).await;
    let error = |code, message: String| Err(ErrorReply { code, message });
    match read {
        Err(_) => error(
            ErrorCode::Timeout,
            format!(
                "no complete request line within {}",
                humantime::format_duration(READ_TIMEOUT)
            ),
        ),
        Ok(Err(err)) => error(
            ErrorCode::BadRequest,
            format!("cannot read the request: {err}"),
        ),
        Ok(Ok(_)) if line.last() != Some(&b'\n') && line.len() > MAX_REQUEST_BYTES => error(
            ErrorCode::TooLarge,
            format!("the request line exceeds {MAX_REQUEST_BYTES} bytes"),
        ),
        Ok(Ok(_)) if line.last() != Some(&b'\n') => error(
            ErrorCode::BadRequest,
            "the connection ended before the request line did (requests end with a newline)".into(),
        ),
        Ok(Ok(_)) => parse_request(&line),
    }
}

/// Writes one message line under the write timeout.
pub async fn write_message(
    writer: &mut (impl AsyncWrite + Unpin),
    body: Body,
) -> std::io::Result<()> {
    let mut line = serde_json::to_vec(&Message {
        v: PROTOCOL_VERSION,
        body,
    })?;
    line.push(b'\n');
    tokio::time::timeout(WRITE_TIMEOUT, async {
        writer.write_all(&line).await?;
        writer.flush().await
    })
    .await
    .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "the client does not read"))?
}

/// Serves one connection from a peer with `peer_uid` (`None`: unknown, refused).
pub async fn serve_connection<S: Service + ?Sized>(
    stream: impl AsyncRead + AsyncWrite + Unpin,
    peer_uid: Option<u32>,
    access: Access,
    service: &S,
) {
    let (reader, mut writer) = tokio::io::split(stream);
    if !peer_uid.is_some_and(|uid| access.allows(uid)) {
        let who =
            peer_uid.map_or_else(|| "an unknown user".to_string(), |uid| format!("uid {uid}"));
        tracing::warn!(peer = %who, "refused a control connection");
        let message = format!(
            "permission denied: {who} may not control this supervisor (only root and uid {} may)",
            access.uid
        );
        let _ = write_message(&mut writer, Body::error(ErrorCode::Refused, message)).await;
        return;
    }
    let request = match read_request(reader).await {
        Ok(request) => request,
        Err(reply) => {
            tracing::debug!(code = ?reply.code, message = %reply.message, "bad control request");
            let _ = write_message(&mut writer, Body::Error(reply)).await;
            return;
        }
    };
    match request.command {
        Command::Status => {
            let _ = write_message(&mut writer, Body::Status(Box::new(service.status()))).await;
        }
        Command::Version => {
            let _ = write_message(&mut writer, Body::Version(service.version())).await;
        }
        Command::Restart => stream_events(&mut writer, service.restart(), "restart").await,
        Command::Update { version } => {
            stream_events(&mut writer, service.update(version), "update").await
        }
        Command::Rollback => stream_events(&mut writer, service.rollback(), "rollback").await,
    }
}

/// Forwards a long operation's progress, then its final body, to the client.
async fn stream_events(
    writer: &mut (impl AsyncWrite + Unpin),
    mut events: mpsc::UnboundedReceiver<Body>,
    what: &str,
) {
    loop {
        let body = events.recv().await.unwrap_or_else(|| {
            Body::error(
                ErrorCode::Stopping,
                format!("the supervisor stopped before the {what} ended"),
            )
        });
        let is_final = body.is_final();
        // A client that stops reading loses its progress; the operation goes on.
        if write_message(writer, body).await.is_err() || is_final {
            break;
        }
    }
}

/// Accepts control connections until `shutdown` resolves, each in its own task.
pub async fn serve<S: Service>(
    listener: UnixListener,
    service: Arc<S>,
    access: Access,
    shutdown: impl Future<Output = ()>,
) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            _ = &mut shutdown => return,
            accepted = listener.accept() => accepted,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(err) => {
                // EMFILE and the like: pause instead of spinning while no descriptor is free.
                tracing::warn!(error = %err, "control socket accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let peer_uid = stream.peer_cred().ok().map(|cred| cred.uid());
        let service = service.clone();
        match slots.clone().try_acquire_owned() {
            Ok(slot) => {
                tokio::spawn(async move {
                    serve_connection(stream, peer_uid, access, &*service).await;
                    drop(slot);
                });
            }
            Err(_) => {
                tokio::spawn(async move {
                    let (_, mut writer) = tokio::io::split(stream);
                    let busy =
                        Body::error(ErrorCode::Busy, "too many control connections; try again");
                    let _ = write_message(&mut writer, busy).await;
                });
            }
        }
    }
}

/// Why the control socket could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum BindError {
    /// Another supervisor answers on the socket.
    #[error("another supervisor (pid {pid}) is already running at {path}")]
    AnotherSupervisor {
        /// The socket.
        path: PathBuf,
        /// Its pid.
        pid: u32,
    },
    /// Something that is not a supervisor listens on the socket.
    #[error("{0} is in use by a process that does not answer as a supervisor")]
    InUse(PathBuf),
    /// Something other than a socket exists at the path.
    #[error("{0} exists and is not a socket; refusing to replace it")]
    NotASocket(PathBuf),
    /// The per-user socket directory belongs to someone else.
    #[error(
        "{path} belongs to uid {owner}, not to this user; refusing to put the control socket there"
    )]
    ForeignDirectory {
        /// The directory.
        path: PathBuf,
        /// Its owner.
        owner: u32,
    },
    /// A filesystem or socket call failed.
    #[error("control socket {path}: {source}")]
    Io {
        /// The socket.
        path: PathBuf,
        /// What failed.
        source: std::io::Error,
    },
}

/// Binds the control socket at `path`: creates its directory, removes a stale socket file
/// left by a dead supervisor, refuses when a live one answers, and sets mode 0660.
/// Blocking: call before the runtime starts serving.
pub fn bind(path: &Path, uid: u32) -> Result<std::os::unix::net::UnixListener, BindError> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
    let io = |source| BindError::Io {
        path: path.to_path_buf(),
        source,
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o750)
            .create(dir)
            .map_err(io)?;
        // A directory under a shared /tmp could be pre-created by another user to catch
        // our socket; only trust one we (or root) own.
        let owner = std::fs::metadata(dir).map_err(io)?.uid();
        if owner != uid && owner != 0 {
            return Err(BindError::ForeignDirectory {
                path: dir.to_path_buf(),
                owner,
            });
        }
    }
    match std::os::unix::net::UnixStream::connect(path) {
        Ok(stream) => return Err(identify(stream, path)),
        Err(err) if err.kind() == std::io::ErrorKind::ConnectionRefused => {
            // A misconfigured path must never cost the operator a regular file.
            use std::os::unix::fs::FileTypeExt;
            if !std::fs::symlink_metadata(path)
                .map_err(io)?
                .file_type()
                .is_socket()
            {
                return Err(BindError::NotASocket(path.to_path_buf()));
            }
            tracing::info!(path = %path.display(), "removing a stale control socket");
            std::fs::remove_file(path).map_err(io)?;
        }
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
        Err(err) => return Err(io(err)),
    }
    let listener = std::os::unix::net::UnixListener::bind(path).map_err(io)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660)).map_err(io)?;
    listener.set_nonblocking(true).map_err(io)?;
    Ok(listener)
}

/// Asks whatever listens on an existing socket who it is.
fn identify(mut stream: std::os::unix::net::UnixStream, path: &Path) -> BindError {
    let in_use = BindError::InUse(path.to_path_buf());
    let timeout = Some(Duration::from_secs(2));
    if stream.set_read_timeout(timeout).is_err() || stream.set_write_timeout(timeout).is_err() {
        return in_use;
    }
    let request = Request {
        v: PROTOCOL_VERSION,
        command: Command::Version,
    };
    let Ok(mut line) = serde_json::to_vec(&request) else {
        return in_use;
    };
    line.push(b'\n');
    if stream.write_all(&line).is_err() {
        return in_use;
    }
    let mut reply = String::new();
    let mut reader = std::io::Read::take(BufReader::new(stream), MAX_REPLY_BYTES as u64);
    if reader.read_line(&mut reply).is_err() {
        return in_use;
    }
    match serde_json::from_str::<Message>(&reply) {
        Ok(Message {
            body: Body::Version(report),
            ..
        }) => BindError::AnotherSupervisor {
            path: path.to_path_buf(),
            pid: report.pid,
        },
        _ => in_use,
    }
}

/// Why a client exchange failed.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// Reading or writing the socket failed.
    #[error("the supervisor connection failed: {0}")]
    Io(#[from] std::io::Error),
    /// The supervisor closed the connection before its final answer.
    #[error("the supervisor closed the connection without an answer")]
    Closed,
    /// A reply line that does not parse.
    #[error("the supervisor sent an unreadable reply: {0}")]
    Garbled(String),
}

/// Sends `command` on `stream` and reads replies until the final one, handing each
/// progress event to `on_progress`.
pub async fn call(
    stream: impl AsyncRead + AsyncWrite + Unpin,
    command: Command,
    mut on_progress: impl FnMut(&Progress),
) -> Result<Body, CallError> {
    let (reader, mut writer) = tokio::io::split(stream);
    let mut line = serde_json::to_vec(&Request {
        v: PROTOCOL_VERSION,
        command,
    })
    .map_err(|err| CallError::Garbled(err.to_string()))?;
    line.push(b'\n');
    // A refusing supervisor may close before reading; its reply is still there to read.
    let _ = writer.write_all(&line).await;
    let mut reader = AsyncBufReader::new(reader);
    loop {
        let mut reply = Vec::new();
        let read = (&mut reader)
            .take(MAX_REPLY_BYTES as u64)
            .read_until(b'\n', &mut reply)
            .await?;
        if read == 0 {
            return Err(CallError::Closed);
        }
        let message: Message =
            serde_json::from_slice(&reply).map_err(|err| CallError::Garbled(err.to_string()))?;
        match message.body {
            Body::Progress(progress) => on_progress(&progress),
            body => return Ok(body),
        }
    }
}

/// Connects to the control socket at `path`.
pub async fn connect(path: &Path) -> std::io::Result<UnixStream> {
    UnixStream::connect(path).await
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Fake;

    impl Service for Fake {
        fn status(&self) -> StatusReport {
            StatusReport {
                supervisor: ProcessInfo {
                    version: "1.0.0".into(),
                    pid: 1,
                    started_at: "2026-01-01T00:00:00Z".into(),
                },
                state: SupervisorState::Running,
                active: Some(GatewayInfo {
                    pid: 2,
                    version: Some("1.0.0".into()),
                    state: GatewayState::Ready,
                    health_only: false,
                    binary: "/bin/gw".into(),
                    started_at: "2026-01-01T00:00:00Z".into(),
                }),
                candidate: None,
                draining: None,
                update: UpdateInfo {
                    mode: "off".into(),
                    channel: "stable".into(),
                    last_check: None,
                    last_result: None,
                    available: None,
                },
                quarantined: vec![],
                last_error: None,
                last_handoff: None,
                crash_restarts: 0,
            }
        }

        fn version(&self) -> VersionReport {
            VersionReport {
                version: "1.0.0".into(),
                pid: 1,
                gateway: None,
            }
        }

        fn restart(&self) -> mpsc::UnboundedReceiver<Body> {
            let (tx, rx) = mpsc::unbounded_channel();
            for stage in [Stage::CandidateStarted, Stage::Switched] {
                let _ = tx.send(Body::Progress(Progress {
                    stage,
                    message: format!("{stage:?}"),
                    pid: Some(3),
                    done: None,
                    total: None,
                }));
            }
            let _ = tx.send(Body::Restarted(RestartReport {
                old_pid: Some(2),
                new_pid: 3,
                version: Some("1.0.0".into()),
                duration_ms: 12,
            }));
            rx
        }

        fn update(&self, version: Option<String>) -> mpsc::UnboundedReceiver<Body> {
            let (tx, rx) = mpsc::unbounded_channel();
            let _ = tx.send(Body::Progress(Progress {
                stage: Stage::Downloading,
                message: "downloading".into(),
                pid: None,
                done: Some(5),
                total: Some(10),
            }));
            let _ = tx.send(match version {
                Some(v) => Body::error(ErrorCode::UpdateFailed, format!("{v} is not offered")),
                None => Body::UpToDate(UpToDateReport {
                    version: "1.0.0".into(),
                }),
            });
            rx
        }

        fn rollback(&self) -> mpsc::UnboundedReceiver<Body> {
            let (tx, rx) = mpsc::unbounded_channel();
            let _ = tx.send(Body::error(
                ErrorCode::NoRollback,
                "nothing to roll back to",
            ));
            rx
        }
    }

    #[tokio::test]
    async fn an_update_streams_download_progress_and_ends_up_to_date_or_with_its_reason() {
        let (client, server) = UnixStream::pair().unwrap();
        tokio::spawn(async move { serve_connection(server, Some(1000), ME, &Fake).await });
        let mut bytes = Vec::new();
        let body = call(client, Command::Update { version: None }, |p| {
            bytes.push((p.stage, p.done, p.total))
        })
        .await
        .unwrap();
        assert_eq!(bytes, [(Stage::Downloading, Some(5), Some(10))]);
        assert!(matches!(body, Body::UpToDate(r) if r.version == "1.0.0"));

        let (client, server) = UnixStream::pair().unwrap();
        tokio::spawn(async move { serve_connection(server, Some(1000), ME, &Fake).await });
        let update = Command::Update {
            version: Some("9.9.9".into()),
        };
        let body = call(client, update, |_| {}).await.unwrap();
        assert!(
            matches!(body, Body::Error(e) if e.code == ErrorCode::UpdateFailed && e.message.contains("9.9.9"))
        );
    }

    #[test]
    fn update_and_rollback_requests_are_typed_on_the_wire() {
        let update = parse_request(br#"{"v":1,"cmd":"update","version":"1.4.2"}"#).unwrap();
        assert_eq!(
            update.command,
            Command::Update {
                version: Some("1.4.2".into())
            }
        );
        let bare = parse_request(br#"{"v":1,"cmd":"update"}"#).unwrap();
        assert_eq!(bare.command, Command::Update { version: None });
        let rollback = parse_request(br#"{"v":1,"cmd":"rollback"}"#).unwrap();
        assert_eq!(rollback.command, Command::Rollback);
        let line = serde_json::to_string(&Request {
            v: PROTOCOL_VERSION,
            command: Command::Update { version: None },
        })
        .unwrap();
        assert_eq!(line, r#"{"v":1,"cmd":"update"}"#);
    }

    const ME: Access = Access { uid: 1000 };

    /// Sends `raw` (then ends the request side) and reads the one reply line. Lines are
    /// read one by one as real clients do: a server that closes with input unread makes
    /// the socket report a reset after its reply.
    async fn exchange(raw: &[u8], peer: Option<u32>) -> Message {
        let (client, server) = UnixStream::pair().unwrap();
        let serving = tokio::spawn(async move { serve_connection(server, peer, ME, &Fake).await });
        let (reader, mut writer) = tokio::io::split(client);
        let _ = writer.write_all(raw).await;
        let _ = writer.shutdown().await;
        let line = read_line(reader).await;
        serving.await.unwrap();
        serde_json::from_str(&line).unwrap()
    }

    async fn read_line(reader: impl AsyncRead + Unpin) -> String {
        let mut line = String::new();
        AsyncBufReader::new(reader)
            .read_line(&mut line)
            .await
            .unwrap();
        line
    }

    fn error_code(message: Message) -> ErrorCode {
        match message.body {
            Body::Error(e) => e.code,
            other => panic!("expected an error, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn a_status_request_gets_the_status_report() {
        let (client, server) = UnixStream::pair().unwrap();
        tokio::spawn(async move { serve_connection(server, Some(1000), ME, &Fake).await });
        let body = call(client, Command::Status, |_| {}).await.unwrap();
        assert_eq!(body, Body::Status(Box::new(Fake.status())));
    }

    #[tokio::test]
    async fn a_restart_streams_progress_then_the_result() {
        let (client, server) = UnixStream::pair().unwrap();
        tokio::spawn(async move { serve_connection(server, Some(0), ME, &Fake).await });
        let mut stages = Vec::new();
        let body = call(client, Command::Restart, |p| stages.push(p.stage))
            .await
            .unwrap();
        assert_eq!(stages, [Stage::CandidateStarted, Stage::Switched]);
        assert!(matches!(body, Body::Restarted(r) if r.new_pid == 3));
    }

    #[tokio::test]
    async fn the_wire_format_is_tagged_and_versioned() {
        let message = exchange(
            b"{\"v\":1,\"cmd\":\"version\",\"extra\":true}\n",
            Some(1000),
        )
        .await;
        let json = serde_json::to_value(&message).unwrap();
        assert_eq!(json["v"], 1);
        assert_eq!(json["type"], "version");
        assert_eq!(json["pid"], 1);
    }

    #[tokio::test]
    async fn garbage_gets_a_bad_request_reply() {
        assert_eq!(
            error_code(exchange(b"hello there\n", Some(1000)).await),
            ErrorCode::BadRequest
        );
        assert_eq!(
            error_code(exchange(b"{\"v\":1,\"cmd\":\"fly\"}\n", Some(1000)).await),
            ErrorCode::BadRequest
        );
        assert_eq!(
            error_code(exchange(b"{\"cmd\":\"status\"}\n", Some(1000)).await),
            ErrorCode::BadRequest
        );
        assert_eq!(
            error_code(exchange(b"{\"v\":1,\"cmd\":\"sta", Some(1000)).await),
            ErrorCode::BadRequest
        );
    }

    #[tokio::test]
    async fn another_protocol_version_is_named_in_the_reply() {
        let message = exchange(b"{\"v\":2,\"cmd\":\"anything\"}\n", Some(1000)).await;
        let Body::Error(reply) = message.body else {
            panic!("expected an error");
        };
        assert_eq!(reply.code, ErrorCode::UnsupportedVersion);
        assert!(reply.message.contains("version 2"), "{}", reply.message);
    }

    #[tokio::test]
    async fn a_line_over_the_cap_is_refused_without_reading_it_all() {
        let mut huge = vec![b'x'; MAX_REQUEST_BYTES * 4];
        huge.push(b'\n');
        let (client, server) = UnixStream::pair().unwrap();
        let serving =
            tokio::spawn(async move { serve_connection(server, Some(1000), ME, &Fake).await });
        // The server stops reading at the cap, so the rest of the write may fail.
        let (read_half, mut write_half) = tokio::io::split(client);
        let (_, line) = tokio::join!(write_half.write_all(&huge), read_line(read_half));
        serving.await.unwrap();
        let message: Message = serde_json::from_str(&line).unwrap();
        assert_eq!(error_code(message), ErrorCode::TooLarge);
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_client_times_out() {
        let (client, server) = UnixStream::pair().unwrap();
        let serving =
            tokio::spawn(async move { serve_connection(server, Some(1000), ME, &Fake).await });
        let line = read_line(client).await;
        serving.await.unwrap();
        let message: Message = serde_json::from_str(&line).unwrap();
        assert_eq!(error_code(message), ErrorCode::Timeout);
    }

    #[tokio::test]
    async fn a_peer_of_another_uid_is_refused_before_it_is_read() {
        let message = exchange(b"{\"v\":1,\"cmd\":\"status\"}\n", Some(4242)).await;
        let Body::Error(reply) = message.body else {
            panic!("expected a refusal");
        };
        assert_eq!(reply.code, ErrorCode::Refused);
        assert!(reply.message.contains("uid 4242"), "{}", reply.message);
        assert_eq!(error_code(exchange(b"", None).await), ErrorCode::Refused);
    }

    #[tokio::test]
    async fn root_and_the_own_uid_are_allowed() {
        assert!(ME.allows(0) && ME.allows(1000) && !ME.allows(65534));
    }

    #[test]
    fn a_stale_socket_file_is_replaced_and_a_live_supervisor_refuses_the_bind() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.sock");
        let uid = crate::config::current_uid();
        drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
        assert!(path.exists(), "a dropped listener leaves its file behind");
        let listener = bind(&path, uid).unwrap();
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o660);
        // A worker thread serves while this thread makes the blocking bind attempt.
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let _guard = runtime.enter();
        let listener = UnixListener::from_std(listener).unwrap();
        runtime.spawn(serve(
            listener,
            Arc::new(Fake),
            Access { uid },
            std::future::pending(),
        ));
        let err = bind(&path, uid).unwrap_err();
        assert!(
            matches!(err, BindError::AnotherSupervisor { pid: 1, .. }),
            "{err}"
        );
        drop(runtime);
    }

    #[test]
    fn a_regular_file_at_the_socket_path_is_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("precious.conf");
        std::fs::write(&path, "keep me").unwrap();
        let err = bind(&path, crate::config::current_uid()).unwrap_err();
        assert!(matches!(err, BindError::NotASocket(_)), "{err}");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "keep me");
    }

    #[tokio::test]
    async fn past_the_connection_cap_clients_are_told_the_supervisor_is_busy() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let access = Access {
            uid: crate::config::current_uid(),
        };
        tokio::spawn(serve(
            listener,
            Arc::new(Fake),
            access,
            std::future::pending(),
        ));
        // Silent clients hold every slot until their read timeout.
        let mut silent = Vec::new();
        for _ in 0..MAX_CONNECTIONS {
            silent.push(UnixStream::connect(&path).await.unwrap());
        }
        let one_more = UnixStream::connect(&path).await.unwrap();
        let message: Message = serde_json::from_str(&read_line(one_more).await).unwrap();
        assert_eq!(error_code(message), ErrorCode::Busy);
        // A freed slot serves again.
        drop(silent.pop());
        let body = tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                let stream = UnixStream::connect(&path).await.unwrap();
                match call(stream, Command::Version, |_| {}).await.unwrap() {
                    Body::Error(e) if e.code == ErrorCode::Busy => tokio::task::yield_now().await,
                    body => return body,
                }
            }
        })
        .await
        .unwrap();
        assert!(matches!(body, Body::Version(_)));
    }
}
