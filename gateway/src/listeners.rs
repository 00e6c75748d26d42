//! Where the gateway's sockets come from: inherited systemd-style, or bound here.
//!
//! A supervisor (or systemd socket activation) passes listening sockets from [`FIRST_FD`]
//! on with `LISTEN_FDS`, optionally naming them in `LISTEN_FDNAMES`. The one named
//! [`PROBE`] is a private readiness listener; the other is the public one whatever its
//! name (a supervisor names it [`PUBLIC`](aihummer_common::sockets::PUBLIC); systemd may
//! name it anything). With nothing inherited, the gateway binds `AIHUMMER_GATEWAY_ADDR`
//! itself. A gateway without a probe (running alone) also binds its operator listener at
//! `AIHUMMER_METRICS_ADDR` when that is set. This is the crate's only `unsafe` code.

use std::net::{SocketAddr, TcpListener};
use std::os::fd::RawFd;

use aihummer_common::sockets::{FIRST_FD, LISTEN_VARS, PROBE};

/// The listeners the gateway serves on: public routes on `public`, private routes (see
/// [`crate::http::routes::private`]) on the others.
#[derive(Debug)]
pub struct Listeners {
    /// Client traffic. When inherited, other processes may hold the same socket: never
    /// shut it down, only drop this process's descriptor.
    pub public: TcpListener,
    /// The supervisor's private readiness probe, when running under one.
    pub probe: Option<TcpListener>,
    /// The operator listener (`AIHUMMER_METRICS_ADDR`), only when running alone.
    pub operator: Option<TcpListener>,
}

impl Listeners {
    /// Binds the operator listener at `addr`, unless a supervisor started this gateway:
    /// during a handoff two gateways run at once, and the supervisor owns that address.
    pub fn add_operator(&mut self, addr: Option<SocketAddr>) -> Result<(), ListenerError> {
        match addr {
            Some(addr) if self.probe.is_none() => self.operator = Some(bind_one(addr)?),
            Some(addr) => tracing::info!(
                %addr,
                "AIHUMMER_METRICS_ADDR is the supervisor's to serve; this gateway answers on its probe"
            ),
            None => {}
        }
        Ok(())
    }
}

/// Inherited sockets that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ListenerError {
    /// `LISTEN_FDNAMES` does not match `LISTEN_FDS`.
    #[error("LISTEN_FDNAMES names {names} sockets but LISTEN_FDS passes {fds}")]
    NameCount {
        /// How many names were given.
        names: usize,
        /// How many descriptors were passed.
        fds: usize,
    },
    /// A passed descriptor is not a listening TCP socket.
    #[error("inherited fd {fd} ({name}) is not a TCP listening socket: {source}")]
    NotTcp {
        /// The descriptor number.
        fd: RawFd,
        /// Its name from `LISTEN_FDNAMES`.
        name: String,
        /// Why it was refused.
        source: std::io::Error,
    },
    /// Sockets were passed, but none is for public traffic.
    #[error("sockets were inherited but none is the public listener (names: {0})")]
    NoPublic(String),
    /// More sockets than the gateway knows what to do with.
    #[error(
        "unexpected extra inherited socket {0:?}: expected one public and at most one named probe"
    )]
    Extra(String),
    /// Binding `AIHUMMER_GATEWAY_ADDR` or `AIHUMMER_METRICS_ADDR` failed.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why it failed.
        source: std::io::Error,
    },
    /// A socket could not be switched to non-blocking mode for tokio.
    #[error("cannot make the listener non-blocking: {0}")]
    NonBlocking(std::io::Error),
}

/// Takes the sockets passed with `LISTEN_FDS` and removes every one of [`LISTEN_VARS`]
/// from the environment, so nothing the gateway starts inherits them. `Ok(None)` when
/// nothing was passed.
///
/// # Safety
///
/// Must run before any other thread exists: it edits the process environment, which is
/// unsound while another thread may read it.
pub unsafe fn take_inherited() -> Result<Option<Listeners>, ListenerError> {
    let names = std::env::var("LISTEN_FDNAMES").ok();
    // `from_env` takes the sockets only when LISTEN_PID is absent or names this process.
    let mut fds = listenfd::ListenFd::from_env();
    for var in LISTEN_VARS {
        // SAFETY: the caller guarantees this process is still single-threaded.
        unsafe { std::env::remove_var(var) };
    }
    if fds.len() == 0 {
        return Ok(None);
    }
    let names: Vec<String> = match names {
        Some(names) => names.split(':').map(str::to_string).collect(),
        None => vec![String::new(); fds.len()],
    };
    if names.len() != fds.len() {
        return Err(ListenerError::NameCount {
            names: names.len(),
            fds: fds.len(),
        });
    }
    let mut public = None;
    let mut probe = None;
    for (index, name) in names.iter().enumerate() {
        let listener = fds
            .take_tcp_listener(index)
            .and_then(|l| l.ok_or_else(|| std::io::Error::other("already taken")))
            .map_err(|source| ListenerError::NotTcp {
                fd: FIRST_FD + index as RawFd,
                name: name.clone(),
                source,
            })?;
        listener
            .set_nonblocking(true)
            .map_err(ListenerError::NonBlocking)?;
        let slot = if name == PROBE {
            &mut probe
        } else {
            &mut public
        };
        if slot.replace(listener).is_some() {
            return Err(ListenerError::Extra(name.clone()));
        }
    }
    match public {
        Some(public) => Ok(Some(Listeners {
            public,
            probe,
            operator: None,
        })),
        None => Err(ListenerError::NoPublic(names.join(":"))),
    }
}

/// Binds `addr` for public traffic, when nothing was inherited.
pub fn bind(addr: SocketAddr) -> Result<Listeners, ListenerError> {
    Ok(Listeners {
        public: bind_one(addr)?,
        probe: None,
        operator: None,
    })
}

fn bind_one(addr: SocketAddr) -> Result<TcpListener, ListenerError> {
    let listener =
        TcpListener::bind(addr).map_err(|source| ListenerError::Bind { addr, source })?;
    // std listens with a backlog of 128; at the connection cap the queue is where clients
    // wait, so raise it to the system's maximum (Linux applies a repeated listen()).
    nix::sys::socket::listen(&listener, nix::sys::socket::Backlog::MAXCONN).map_err(|errno| {
        ListenerError::Bind {
            addr,
            source: errno.into(),
        }
    })?;
    listener
        .set_nonblocking(true)
        .map_err(ListenerError::NonBlocking)?;
    Ok(listener)
}
