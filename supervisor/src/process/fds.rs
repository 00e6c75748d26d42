//! Descriptor plumbing: the public listener (bound here or inherited from systemd socket
//! activation) and the sockets each gateway child inherits. With the `pre_exec` of
//! [`super::identity`], the crate's only `unsafe`.
//!
//! A child gets exactly two descriptors beyond stdio, systemd-style: fd 3 is a duplicate of
//! the public listener (one accept queue shared by every child, so nothing queued is lost
//! when a child stops), fd 4 a fresh loopback listener only the supervisor talks to.
//! `command-fds` installs them between fork and exec without allocating; every other
//! descriptor this process opens is close-on-exec (std and tokio open them so), which keeps
//! the control socket out of the child.

use aihummer_common::sockets;
use std::net::{SocketAddr, TcpListener};
use std::os::fd::OwnedFd;

use command_fds::FdMapping;

/// The descriptor a child finds its public listener on (`SD_LISTEN_FDS_START`).
pub const CHILD_PUBLIC_FD: i32 = sockets::FIRST_FD;
/// The descriptor a child finds its probe listener on.
pub const CHILD_PROBE_FD: i32 = sockets::FIRST_FD + 1;
/// `LISTEN_FDNAMES` for a child, in descriptor order.
pub fn child_fd_names() -> String {
    format!("{}:{}", sockets::PUBLIC, sockets::PROBE)
}

/// A socket that cannot be set up.
#[derive(Debug, thiserror::Error)]
pub enum FdError {
    /// systemd passed something other than exactly one TCP listener.
    #[error("socket activation passed {0} sockets; expected exactly one TCP listener")]
    InheritedCount(usize),
    /// The inherited descriptor is not a TCP listener.
    #[error("the socket passed by systemd (fd 3) is not a TCP listener: {0}")]
    InheritedNotTcp(std::io::Error),
    /// Binding the public address failed.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why it failed.
        source: std::io::Error,
    },
    /// Duplicating the public listener or binding a probe listener failed.
    #[error("cannot prepare a child's sockets: {0}")]
    ChildSockets(std::io::Error),
}

/// Takes the public listener from systemd socket activation, if the supervisor was started
/// with `LISTEN_FDS`, and removes `LISTEN_PID`, `LISTEN_FDS` and `LISTEN_FDNAMES` from the
/// environment so they can never leak into a child's. `Ok(None)` when nothing was passed.
///
/// # Safety
///
/// Must run before any other thread exists: it edits the process environment, which is
/// unsound while another thread may read it.
pub unsafe fn take_inherited_listener() -> Result<Option<TcpListener>, FdError> {
    // SAFETY: the caller guarantees this process is still single-threaded.
    unsafe { std::env::remove_var("LISTEN_FDNAMES") };
    // `from_env` removes LISTEN_PID and LISTEN_FDS itself, and takes the sockets only when
    // LISTEN_PID is absent or names this process.
    let mut fds = listenfd::ListenFd::from_env();
    match fds.len() {
        0 => Ok(None),
        1 => fds
            .take_tcp_listener(0)
            .and_then(|l| l.ok_or_else(|| std::io::Error::other("already taken")))
            .map(Some)
            .map_err(FdError::InheritedNotTcp),
        n => Err(FdError::InheritedCount(n)),
    }
}

/// Binds the public listener. It is never accepted on here: children accept on their
/// duplicates, and this descriptor only keeps the queue alive between children.
pub fn bind_public(addr: SocketAddr) -> Result<TcpListener, FdError> {
    let listener = TcpListener::bind(addr).map_err(|source| FdError::Bind { addr, source })?;
    // std listens with a backlog of 128. Between a crash and the next child that queue is
    // all clients have, so raise it to the system's maximum: Linux applies a repeated
    // listen() to a socket that already listens.
    nix::sys::socket::listen(&listener, nix::sys::socket::Backlog::MAXCONN).map_err(|errno| {
        FdError::Bind {
            addr,
            source: errno.into(),
        }
    })?;
    Ok(listener)
}

/// The descriptors one child inherits, and where its probe listener answers.
#[derive(Debug)]
pub struct ChildSockets {
    /// Mappings for `command-fds`: public to fd 3, probe to fd 4.
    pub mappings: Vec<FdMapping>,
    /// The probe listener's loopback address.
    pub probe: SocketAddr,
}

/// Prepares a child's sockets: a duplicate of `public` and a fresh loopback probe listener
/// on an ephemeral port. This process's copies close when the spawning `Command` is
/// dropped, so only the child keeps the probe listener.
pub fn child_sockets(public: &TcpListener) -> Result<ChildSockets, FdError> {
    let public = OwnedFd::from(public.try_clone().map_err(FdError::ChildSockets)?);
    let probe = TcpListener::bind(("127.0.0.1", 0)).map_err(FdError::ChildSockets)?;
    let probe_addr = probe.local_addr().map_err(FdError::ChildSockets)?;
    Ok(ChildSockets {
        mappings: vec![
            FdMapping {
                parent_fd: public,
                child_fd: CHILD_PUBLIC_FD,
            },
            FdMapping {
                parent_fd: OwnedFd::from(probe),
                child_fd: CHILD_PROBE_FD,
            },
        ],
        probe: probe_addr,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_child_gets_the_public_queue_on_fd_3_and_its_own_loopback_probe_on_fd_4() {
        let public = bind_public("127.0.0.1:0".parse().unwrap()).unwrap();
        let sockets = child_sockets(&public).unwrap();
        let fds: Vec<_> = sockets.mappings.iter().map(|m| m.child_fd).collect();
        assert_eq!(fds, [CHILD_PUBLIC_FD, CHILD_PROBE_FD]);
        assert!(sockets.probe.ip().is_loopback());
        assert_ne!(sockets.probe, public.local_addr().unwrap());
    }
}
