//! The control server. [`serve_connection`] answers one connection over any byte stream:
//! refuses a peer [`Access`] does not allow, reads one request, and writes the reply (or
//! a long operation's progress, then its final reply). [`serve`] is the accept loop: each
//! connection in its own task, at most [`MAX_CONNECTIONS`] at once, the rest told the
//! supervisor is busy. The supervisor is reached only through the [`Service`] trait, and no
//! client can hurt it or the other clients.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{Semaphore, mpsc};

use super::access::{Access, Peer, PeerError};
use super::framing::{Connection, FrameError, Limits};
use super::protocol::{
    Body, Command, ErrorCode, ErrorReply, MAX_CONNECTIONS, MAX_REQUEST_BYTES, Message,
    READ_TIMEOUT, Request, StatusReport, VersionReport, WRITE_TIMEOUT, parse_request,
};

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
    /// Starts (or joins) an update check that installs nothing; ends in
    /// [`Body::Checked`] or an error.
    fn check(&self) -> mpsc::UnboundedReceiver<Body>;
    /// Reads the fleet from its database: [`Body::Fleet`], or lifts the halt on
    /// `resume`: [`Body::FleetResumed`]; or an error. A supervisor without a fleet
    /// database says so.
    fn fleet(&self, resume: Option<String>) -> mpsc::UnboundedReceiver<Body> {
        let _ = resume;
        let (reply, events) = mpsc::unbounded_channel();
        let _ = reply.send(Body::error(
            ErrorCode::FleetUnavailable,
            "this supervisor has no fleet database (AIHUMMER_DATABASE_URL is unset)",
        ));
        events
    }
}

/// Where the accept loop gets its connections: the bound control socket, or in tests any
/// source of connected sockets.
pub trait Incoming: Send {
    /// The next connection.
    fn next(&mut self) -> impl Future<Output = std::io::Result<UnixStream>> + Send;
}

impl Incoming for UnixListener {
    async fn next(&mut self) -> std::io::Result<UnixStream> {
        self.accept().await.map(|(stream, _)| stream)
    }
}

/// The server's side of the framing: requests are small and must come promptly.
const LIMITS: Limits = Limits {
    max_line: MAX_REQUEST_BYTES,
    read_timeout: Some(READ_TIMEOUT),
    write_timeout: WRITE_TIMEOUT,
};

/// Accepts control connections until `shutdown` resolves, each in its own task.
pub async fn serve<S: Service>(
    mut incoming: impl Incoming,
    service: Arc<S>,
    access: Access,
    shutdown: impl Future<Output = ()>,
) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            _ = &mut shutdown => return,
            accepted = incoming.next() => accepted,
        };
        let stream = match accepted {
            Ok(stream) => stream,
            Err(err) => {
                // EMFILE and the like: pause instead of spinning while no descriptor is free.
                tracing::warn!(error = %err, "control socket accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let peer = Peer::of(&stream);
        let service = service.clone();
        match slots.clone().try_acquire_owned() {
            Ok(slot) => {
                let access = access.clone();
                tokio::spawn(async move {
                    serve_connection(stream, peer, &access, &*service).await;
                    drop(slot);
                });
            }
            Err(_) => {
                tokio::spawn(async move {
                    let busy =
                        Body::error(ErrorCode::Busy, "too many control connections; try again");
                    let _ = Connection::new(stream, LIMITS)
                        .write(&Message::new(busy))
                        .await;
                });
            }
        }
    }
}

/// Serves one connection from `peer` (not described: refused).
pub async fn serve_connection<S: Service + ?Sized>(
    stream: impl AsyncRead + AsyncWrite,
    peer: Result<Peer, PeerError>,
    access: &Access,
    service: &S,
) {
    let mut connection = Connection::new(stream, LIMITS);
    let verdict = match &peer {
        Ok(peer) => access.check(peer),
        Err(err) => Err(format!(
            "permission denied: cannot tell who is connecting: {err}"
        )),
    };
    if let Err(message) = verdict {
        tracing::warn!(peer = ?peer, reason = %message, "refused a control connection");
        let refusal = Message::new(Body::error(ErrorCode::Refused, message));
        let _ = connection.write(&refusal).await;
        return;
    }
    let request = match read_request(&mut connection).await {
        Ok(request) => request,
        Err(reply) => {
            tracing::debug!(code = ?reply.code, reason = %reply.message, "bad control request");
            let _ = connection.write(&Message::new(Body::Error(reply))).await;
            return;
        }
    };
    match request.command {
        Command::Status => {
            let status = Body::Status(Box::new(service.status()));
            let _ = connection.write(&Message::new(status)).await;
        }
        Command::Version => {
            let version = Body::Version(service.version());
            let _ = connection.write(&Message::new(version)).await;
        }
        Command::Restart => stream_events(&mut connection, service.restart(), "restart").await,
        Command::Update { version } => {
            stream_events(&mut connection, service.update(version), "update").await
        }
        Command::Rollback => stream_events(&mut connection, service.rollback(), "rollback").await,
        Command::Check => stream_events(&mut connection, service.check(), "check").await,
        Command::Fleet => stream_events(&mut connection, service.fleet(None), "fleet query").await,
        Command::FleetResume { version } => {
            stream_events(&mut connection, service.fleet(Some(version)), "fleet query").await
        }
    }
}

/// Reads the one request line. Errors are the reply to send.
async fn read_request<S: AsyncRead + AsyncWrite>(
    connection: &mut Connection<S>,
) -> Result<Request, ErrorReply> {
    let error = |code, message: String| Err(ErrorReply { code, message });
    match connection.read_line().await {
        Ok(Some(line)) => parse_request(&line),
        Ok(None) | Err(FrameError::Unfinished) => error(
            ErrorCode::BadRequest,
            "the connection ended before the request line did (requests end with a newline)".into(),
        ),
        Err(FrameError::ReadTimeout(limit)) => error(
            ErrorCode::Timeout,
            format!(
                "no complete request line within {}",
                humantime::format_duration(limit)
            ),
        ),
        Err(FrameError::TooLong(max)) => error(
            ErrorCode::TooLarge,
            format!("the request line exceeds {max} bytes"),
        ),
        Err(FrameError::NotUtf8) => error(
            ErrorCode::BadRequest,
            "the request is not JSON: the line is not UTF-8".into(),
        ),
        Err(err) => error(
            ErrorCode::BadRequest,
            format!("cannot read the request: {err}"),
        ),
    }
}

/// Forwards a long operation's progress, then its final body, to the client.
async fn stream_events<S: AsyncRead + AsyncWrite>(
    connection: &mut Connection<S>,
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
        if connection.write(&Message::new(body)).await.is_err() || is_final {
            break;
        }
    }
}

/// The server over socket pairs and in-memory pipes: no bound socket, no processes.
#[cfg(test)]
mod tests;
