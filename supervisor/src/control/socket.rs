//! The control socket on disk: [`bind`] creates it with mode 0660 (group
//! `AIHUMMER_ADMIN_GROUP` when root binds it and the group exists), replaces a stale one
//! left by a dead supervisor, refuses when a live one answers, and never replaces
//! anything that is not a socket. Who may connect is [`super::access`]'s concern.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::net::UnixStream;

use super::client;
use super::protocol::{Body, Command};

/// How long a live socket's owner has to say who it is.
const IDENTIFY_TIMEOUT: Duration = Duration::from_secs(2);

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
/// left by a dead supervisor, refuses when a live one answers, and sets mode 0660. When
/// root binds it and `admin_gid` is given, the socket (and a directory created for it)
/// gets that group, so the group's members can reach it.
/// Blocking, and it runs a short-lived runtime of its own to ask a live socket who it is:
/// call it before the supervisor's runtime starts, never from async code.
pub fn bind(
    path: &Path,
    uid: u32,
    admin_gid: Option<u32>,
) -> Result<std::os::unix::net::UnixListener, BindError> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
    let io = |source| BindError::Io {
        path: path.to_path_buf(),
        source,
    };
    let group = admin_gid.filter(|_| uid == 0);
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        let created = !dir.exists();
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o750)
            .create(dir)
            .map_err(io)?;
        // Only a directory made here changes group: an existing one is the operator's.
        if let Some(gid) = group.filter(|_| created) {
            std::os::unix::fs::chown(dir, None, Some(gid)).map_err(io)?;
        }
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
    if let Some(gid) = group {
        std::os::unix::fs::chown(path, Some(0), Some(gid)).map_err(io)?;
    }
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660)).map_err(io)?;
    listener.set_nonblocking(true).map_err(io)?;
    Ok(listener)
}

/// Asks whatever listens on an existing socket who it is, as any client would.
fn identify(stream: std::os::unix::net::UnixStream, path: &Path) -> BindError {
    let pid = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .ok()
        .and_then(|runtime| runtime.block_on(supervisor_pid(stream)));
    match pid {
        Some(pid) => BindError::AnotherSupervisor {
            path: path.to_path_buf(),
            pid,
        },
        None => BindError::InUse(path.to_path_buf()),
    }
}

/// The pid a supervisor on `stream` reports, if it answers as one in time.
async fn supervisor_pid(stream: std::os::unix::net::UnixStream) -> Option<u32> {
    stream.set_nonblocking(true).ok()?;
    let stream = UnixStream::from_std(stream).ok()?;
    let version = client::call(stream, Command::Version, |_| {});
    match tokio::time::timeout(IDENTIFY_TIMEOUT, version).await {
        Ok(Ok(Body::Version(report))) => Some(report.pid),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;
    use std::sync::Arc;

    use super::*;
    use crate::config::current_uid;
    use crate::control::access::Access;
    use crate::control::fixtures::Fake;
    use crate::control::server::serve;

    #[test]
    fn a_stale_socket_file_is_replaced_with_mode_0660() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.sock");
        drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
        assert!(path.exists(), "a dropped listener leaves its file behind");
        let _listener = bind(&path, current_uid(), None).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o660);
    }

    #[test]
    fn a_live_supervisor_on_the_socket_refuses_the_bind_and_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.sock");
        let uid = current_uid();
        let listener = bind(&path, uid, None).unwrap();
        // Another thread's runtime serves while this one makes the blocking bind attempt.
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        runtime.spawn(async move {
            let listener = tokio::net::UnixListener::from_std(listener).unwrap();
            serve(
                listener,
                Arc::new(Fake),
                Access {
                    uid,
                    gateway_uid: uid,
                    ..Access::default()
                },
                std::future::pending(),
            )
            .await
        });
        let err = bind(&path, uid, None).unwrap_err();
        assert!(
            matches!(err, BindError::AnotherSupervisor { pid: 1, .. }),
            "{err}"
        );
    }

    #[test]
    fn something_else_listening_on_the_socket_is_in_use() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.sock");
        // Connections queue in the backlog unanswered, so the question times out.
        let _listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let err = bind(&path, current_uid(), None).unwrap_err();
        assert!(matches!(err, BindError::InUse(_)), "{err}");
    }

    #[test]
    fn a_regular_file_at_the_socket_path_is_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("precious.conf");
        std::fs::write(&path, "keep me").unwrap();
        let err = bind(&path, current_uid(), None).unwrap_err();
        assert!(matches!(err, BindError::NotASocket(_)), "{err}");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "keep me");
    }
}
