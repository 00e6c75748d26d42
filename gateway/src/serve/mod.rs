//! Accepting and serving HTTP/1 connections within limits, and draining them without
//! failing a request.
//!
//! # Limits
//!
//! - A connection cap ([`Limits::max_connections`]) on the public listener: at the cap the
//!   accept loop stops taking connections, so new ones wait in the kernel's listen queue
//!   (never accepted and then reset) until a slot frees. The private probe listener has
//!   its own small allowance ([`PROBE_CONNECTIONS`]), so the supervisor's readiness probe
//!   still gets through while the public side is full.
//! - Headers must arrive within [`Limits::header_read_timeout`] (hyper's
//!   `header_read_timeout`, which also closes a keep-alive connection idle that long).
//! - A request body must arrive within [`Limits::body_read_timeout`] of its headers, else
//!   the request is answered 408 and the connection closed ([`body_deadline`]).
//!
//! # The drain
//!
//! Stopping `accept` is not draining, and hyper's own graceful shutdown closes idle
//! keep-alive connections at once, racing the client's next request on them (the client
//! sees a reset), and even drops connections whose request is read but not yet dispatched
//! (hyperium/hyper#2730). So a drain is a lame-duck phase:
//!
//! 1. every accept loop stops; the socket itself stays open in any other process holding it
//!    (the supervisor, the next gateway), so queued connections are accepted there;
//! 2. each request still arriving on an open connection is answered with
//!    `Connection: close`, so the client moves to a fresh connection;
//! 3. a connection is closed only after it has sat idle for [`IDLE_CLOSE`] (counted from
//!    the drain's start at the earliest), and dropped if a client still holds it with
//!    half-sent headers a while later;
//! 4. a body still arriving gets at most [`DRAIN_BODY_GRACE`] more, then 408: a client
//!    trickling its body cannot hold the drain (and so a handoff) to its deadline, while a
//!    request whose body has arrived runs to its end;
//! 5. whatever is still open at the drain deadline is dropped.

mod accept;
mod body_deadline;
mod connection;

use prometheus::IntGauge;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use tokio::sync::{Semaphore, watch};
use tokio_util::task::TaskTracker;

pub use body_deadline::DRAIN_BODY_GRACE;
pub use connection::IDLE_CLOSE;

/// How many connections the probe listener takes at once, beside the public cap. Only the
/// supervisor connects there (one probe at a time, plus a metrics fetch); the room is kept
/// so a full public side never makes the gateway look dead to it.
pub const PROBE_CONNECTIONS: usize = 32;

/// What one connection may take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Connections served at once on the public listener.
    pub max_connections: usize,
    /// How long a client may take to send its request headers (and how long a keep-alive
    /// connection may sit idle).
    pub header_read_timeout: Duration,
    /// How long a client may take to send a request body once its headers are in.
    pub body_read_timeout: Duration,
}

/// Serves a router on listeners until [`Server::drain`].
pub struct Server {
    router: Router,
    limits: Limits,
    public_slots: Arc<Semaphore>,
    probe_slots: Arc<Semaphore>,
    drain: watch::Sender<bool>,
    always_open: watch::Sender<bool>,
    tasks: TaskTracker,
    connections: Option<IntGauge>,
}

/// How a drain ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Drained {
    /// Every connection finished before the deadline.
    Clean,
    /// The deadline passed with this many connections still open; they are dropped.
    DeadlineReached(usize),
}

impl Server {
    /// A server for `router` within `limits`, with no listener yet.
    pub fn new(router: Router, limits: Limits) -> Self {
        Self {
            router,
            limits,
            public_slots: Arc::new(Semaphore::new(limits.max_connections)),
            probe_slots: Arc::new(Semaphore::new(PROBE_CONNECTIONS)),
            drain: watch::channel(false).0,
            always_open: watch::channel(true).0,
            tasks: TaskTracker::new(),
            connections: None,
        }
    }

    /// Keeps `gauge` at the number of connections open on this server's listeners.
    pub fn count_connections(mut self, gauge: IntGauge) -> Self {
        self.connections = Some(gauge);
        self
    }

    /// Accepts client traffic on `listener`, within the connection cap, once `open` turns
    /// true. Until then, connections wait in the socket's queue, where another process
    /// holding the same socket may take them. Must run inside a tokio runtime.
    pub fn serve_public(
        &self,
        listener: std::net::TcpListener,
        open: watch::Receiver<bool>,
    ) -> std::io::Result<SocketAddr> {
        self.serve(listener, open, self.public_slots.clone())
    }

    /// Accepts on the supervisor's private probe listener from now on, within
    /// [`PROBE_CONNECTIONS`]. Must run inside a tokio runtime.
    pub fn serve_probe(&self, listener: std::net::TcpListener) -> std::io::Result<SocketAddr> {
        self.serve(
            listener,
            self.always_open.subscribe(),
            self.probe_slots.clone(),
        )
    }

    fn serve(
        &self,
        listener: std::net::TcpListener,
        open: watch::Receiver<bool>,
        slots: Arc<Semaphore>,
    ) -> std::io::Result<SocketAddr> {
        let listener = tokio::net::TcpListener::from_std(listener)?;
        let addr = listener.local_addr()?;
        let acceptor = accept::Acceptor {
            listener,
            slots,
            router: self.router.clone(),
            limits: self.limits,
            drain: self.drain.subscribe(),
            tasks: self.tasks.clone(),
            connections: self.connections.clone(),
        };
        self.tasks.spawn(acceptor.run(open));
        Ok(addr)
    }

    /// Runs the lame-duck drain and waits for every connection, at most `deadline`.
    pub async fn drain(self, deadline: Duration) -> Drained {
        self.drain.send_replace(true);
        self.tasks.close();
        match tokio::time::timeout(deadline, self.tasks.wait()).await {
            Ok(()) => Drained::Clean,
            Err(_) => Drained::DeadlineReached(self.tasks.len()),
        }
    }
}
