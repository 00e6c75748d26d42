//! The client side of the control socket: connect, check who serves it, send one request,
//! hand each progress event to a callback, return the final body. [`ask`] does all of it
//! for the CLI and turns every failure, a missing supervisor and a refusal included, into
//! a [`CallError`] that says what the operator can do.
//!
//! Before a request is sent, the server's owner (SO_PEERCRED of the listening side) must
//! be one the CLI [`Trust`]s: root, the CLI's own user or the service user
//! (`AIHUMMER_GATEWAY_USER`, the user a non-root unit runs as). An admin running
//! `aihummer rollback` must not take its answer from a socket someone else put in the way.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::UnixStream;

use super::framing::{Connection, FrameError, Limits};
use super::protocol::{
    Body, Command, ErrorCode, MAX_REPLY_BYTES, Message, Progress, Request, WRITE_TIMEOUT,
};

/// The client's side of the framing. Replies are not timed here: an update streams
/// progress for as long as its download takes, so the caller bounds the whole exchange.
const LIMITS: Limits = Limits {
    max_line: MAX_REPLY_BYTES,
    read_timeout: None,
    write_timeout: WRITE_TIMEOUT,
};

/// Why a client exchange failed.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// Nothing listens at the control socket.
    #[error("no supervisor is running at {} ({reason}); start one with `aihummer run`", path.display())]
    NoSupervisor {
        /// The socket.
        path: PathBuf,
        /// What connecting said.
        reason: String,
    },
    /// Connecting failed otherwise.
    #[error("cannot connect to the supervisor at {}: {source}", path.display())]
    Connect {
        /// The socket.
        path: PathBuf,
        /// What failed.
        source: std::io::Error,
    },
    /// The socket is served by a user the CLI does not trust.
    #[error(
        "{} is served by uid {uid}, which is not root, this user, nor the service user (AIHUMMER_GATEWAY_USER={service}); refusing to trust its answers",
        path.display()
    )]
    Untrusted {
        /// The socket.
        path: PathBuf,
        /// The server's uid.
        uid: u32,
        /// The service user's name.
        service: String,
    },
    /// The supervisor refused this user.
    #[error("{0}")]
    Refused(String),
    /// The supervisor answered with a failure.
    #[error("{0}")]
    Failed(String),
    /// No answer in time.
    #[error("the supervisor did not answer within {}", humantime::format_duration(*.0))]
    Timeout(Duration),
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

impl From<FrameError> for CallError {
    fn from(err: FrameError) -> Self {
        match err {
            FrameError::Io(err) => CallError::Io(err),
            FrameError::Unfinished => CallError::Closed,
            FrameError::ReadTimeout(limit) | FrameError::WriteTimeout(limit) => {
                CallError::Timeout(limit)
            }
            FrameError::TooLong(_) | FrameError::NotUtf8 | FrameError::Json(_) => {
                CallError::Garbled(err.to_string())
            }
        }
    }
}

/// The owners of a control socket a client believes.
#[derive(Debug, Clone)]
pub struct Trust {
    /// The client's own uid.
    pub own_uid: u32,
    /// The service user's name (`AIHUMMER_GATEWAY_USER`).
    pub service: String,
    /// Its uid, when that user exists.
    pub service_uid: Option<u32>,
}

impl Trust {
    /// The trust of this process: its own uid and the service user named in its
    /// environment (or the default), looked up in the user database.
    pub fn from_env() -> Trust {
        let service = crate::config::gateway_user(|name| std::env::var(name).ok());
        let service_uid = nix::unistd::User::from_name(&service)
            .ok()
            .flatten()
            .map(|user| user.uid.as_raw());
        Trust {
            own_uid: crate::config::current_uid(),
            service,
            service_uid,
        }
    }

    /// Whether a socket at `path` served by `uid` may be believed.
    pub fn check(&self, path: &Path, uid: u32) -> Result<(), CallError> {
        if uid == 0 || uid == self.own_uid || Some(uid) == self.service_uid {
            return Ok(());
        }
        Err(CallError::Untrusted {
            path: path.to_path_buf(),
            uid,
            service: self.service.clone(),
        })
    }
}

/// Connects to the control socket at `path`, served by an owner this process trusts.
pub async fn connect(path: &Path) -> Result<UnixStream, CallError> {
    connect_trusting(path, &Trust::from_env()).await
}

/// Connects to the control socket at `path` and checks its server's uid against `trust`.
pub async fn connect_trusting(path: &Path, trust: &Trust) -> Result<UnixStream, CallError> {
    let stream = UnixStream::connect(path).await.map_err(|source| {
        use std::io::ErrorKind::*;
        match source.kind() {
            NotFound | ConnectionRefused => CallError::NoSupervisor {
                path: path.to_path_buf(),
                reason: source.to_string(),
            },
            PermissionDenied => CallError::Refused(format!(
                "permission denied on {}: only root, the supervisor's user and members of AIHUMMER_ADMIN_GROUP may use it",
                path.display()
            )),
            _ => CallError::Connect {
                path: path.to_path_buf(),
                source,
            },
        }
    })?;
    // The kernel records the listening side's credentials when it called listen(2).
    let server = stream.peer_cred()?.uid();
    trust.check(path, server)?;
    Ok(stream)
}

/// Sends `command` on `stream` and reads replies until the final one, handing each
/// progress event to `on_progress`. An error reply is a body like any other here.
pub async fn call(
    stream: impl AsyncRead + AsyncWrite,
    command: Command,
    mut on_progress: impl FnMut(&Progress),
) -> Result<Body, CallError> {
    let mut connection = Connection::new(stream, LIMITS);
    // A refusing supervisor may close before reading; its reply is still there to read.
    let _ = connection.write(&Request::new(command)).await;
    loop {
        match connection.read::<Message>().await?.map(|m| m.body) {
            None => return Err(CallError::Closed),
            Some(Body::Progress(progress)) => on_progress(&progress),
            Some(body) => return Ok(body),
        }
    }
}

/// Connects to the supervisor at `path`, sends `command` and returns the final answer
/// within `timeout` if one is given; an error reply becomes [`CallError::Refused`] or
/// [`CallError::Failed`].
pub async fn ask(
    path: &Path,
    command: Command,
    on_progress: impl FnMut(&Progress),
    timeout: Option<Duration>,
) -> Result<Body, CallError> {
    let stream = connect(path).await?;
    let call = call(stream, command, on_progress);
    let body = match timeout {
        Some(limit) => tokio::time::timeout(limit, call)
            .await
            .map_err(|_| CallError::Timeout(limit))??,
        None => call.await?,
    };
    answer(body)
}

/// A final body as the caller wants it: an error reply becomes a [`CallError`].
fn answer(body: Body) -> Result<Body, CallError> {
    match body {
        Body::Error(reply) if reply.code == ErrorCode::Refused => {
            Err(CallError::Refused(reply.message))
        }
        Body::Error(reply) => Err(CallError::Failed(reply.message)),
        body => Ok(body),
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

    use super::*;
    use crate::control::fixtures::Fake;
    use crate::control::server::Service;

    #[tokio::test]
    async fn no_socket_file_means_no_supervisor() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nobody-home.sock");
        let err = ask(&path, Command::Status, |_| {}, None).await.unwrap_err();
        assert!(matches!(err, CallError::NoSupervisor { .. }), "{err}");
        assert!(err.to_string().starts_with("no supervisor is running at"));
    }

    #[test]
    fn root_the_own_user_and_the_service_user_are_trusted_to_serve_and_no_one_else() {
        let trust = Trust {
            own_uid: 1000,
            service: "aihummer".into(),
            service_uid: Some(998),
        };
        let path = Path::new("/run/aihummer/supervisor.sock");
        for uid in [0, 1000, 998] {
            trust.check(path, uid).unwrap();
        }
        let err = trust.check(path, 1001).unwrap_err();
        assert_eq!(
            err.to_string(),
            "/run/aihummer/supervisor.sock is served by uid 1001, which is not root, this user, nor the service user (AIHUMMER_GATEWAY_USER=aihummer); refusing to trust its answers"
        );
        let no_service = Trust {
            service_uid: None,
            ..trust
        };
        assert!(no_service.check(path, 998).is_err());
    }

    #[test]
    fn error_replies_become_refusals_or_failures_carrying_their_message() {
        let refused = answer(Body::error(ErrorCode::Refused, "permission denied: uid 7"));
        assert!(matches!(refused, Err(CallError::Refused(m)) if m == "permission denied: uid 7"));
        let failed = answer(Body::error(
            ErrorCode::NoRollback,
            "nothing to roll back to",
        ));
        assert!(matches!(failed, Err(CallError::Failed(m)) if m == "nothing to roll back to"));
        let version = Body::Version(Fake.version());
        assert_eq!(answer(version.clone()).unwrap(), version);
    }

    #[tokio::test]
    async fn a_supervisor_closing_without_a_final_reply_is_reported_as_such() {
        let (client, server) = UnixStream::pair().unwrap();
        tokio::spawn(async move {
            let (reader, mut writer) = tokio::io::split(server);
            let mut request = String::new();
            BufReader::new(reader)
                .read_line(&mut request)
                .await
                .unwrap();
            let progress = r#"{"v":1,"type":"progress","stage":"checking","message":"m"}"#;
            writer.write_all(progress.as_bytes()).await.unwrap();
            writer.write_all(b"\n{\"v\":1,\"ty").await.unwrap();
        });
        let mut seen = 0;
        let err = call(client, Command::Restart, |_| seen += 1)
            .await
            .unwrap_err();
        assert!(matches!(err, CallError::Closed), "{err}");
        assert_eq!(seen, 1);
    }

    #[tokio::test]
    async fn a_reply_that_is_not_the_protocol_is_garbled() {
        let (client, server) = UnixStream::pair().unwrap();
        tokio::spawn(async move {
            let (_, mut writer) = tokio::io::split(server);
            writer.write_all(b"SSH-2.0-OpenSSH\n").await.unwrap();
        });
        let err = call(client, Command::Version, |_| {}).await.unwrap_err();
        assert!(matches!(err, CallError::Garbled(_)), "{err}");
    }
}
