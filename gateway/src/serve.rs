//! Accepting and serving HTTP/1 connections, and draining them without failing a request.
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
//!    the drain's start at the earliest), and dropped
//!    if a client still holds it with half-sent headers a while later;
//! 4. whatever is still open at the drain deadline is dropped.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::http::{HeaderValue, Request, header};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus::IntGauge;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;

use crate::metrics::OpenConnection;

/// How long a connection must sit idle during a drain before it is closed. Long enough
/// that a client reusing it right away gets its answer (with `Connection: close`) rather
/// than a connection closed under its request.
pub const IDLE_CLOSE: Duration = Duration::from_millis(500);
/// How often a draining connection checks whether it has become idle.
const IDLE_CHECK: Duration = Duration::from_millis(50);
/// A client must send its request headers within this time (slowloris protection).
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// Pause after an accept error that is not the peer's fault (EMFILE and the like): retrying
/// at once would spin while no descriptor is free.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(500);

/// Serves a router on listeners until [`Server::drain`].
pub struct Server {
    router: Router,
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
    /// A server for `router` with no listener yet.
    pub fn new(router: Router) -> Self {
        Self {
            router,
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

    /// Accepts on `listener` from now on. Must run inside a tokio runtime.
    pub fn serve(&self, listener: std::net::TcpListener) -> std::io::Result<SocketAddr> {
        self.serve_when(listener, self.always_open.subscribe())
    }

    /// Accepts on `listener` once `open` turns true. Until then, connections wait in the
    /// socket's queue, where another process holding the same socket may take them.
    pub fn serve_when(
        &self,
        listener: std::net::TcpListener,
        open: watch::Receiver<bool>,
    ) -> std::io::Result<SocketAddr> {
        let listener = TcpListener::from_std(listener)?;
        let addr = listener.local_addr()?;
        self.tasks.spawn(accept_loop(
            listener,
            self.router.clone(),
            open,
            self.drain.subscribe(),
            self.tasks.clone(),
            self.connections.clone(),
        ));
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

async fn accept_loop(
    listener: TcpListener,
    router: Router,
    mut open: watch::Receiver<bool>,
    mut drain: watch::Receiver<bool>,
    tasks: TaskTracker,
    connections: Option<IntGauge>,
) {
    tokio::select! {
        biased;
        _ = drain.wait_for(|draining| *draining) => return,
        opened = open.wait_for(|open| *open) => if opened.is_err() { return },
    }
    loop {
        // `accept` is cancel-safe: a connection not yet taken stays queued for another
        // process holding the same socket.
        let accepted = tokio::select! {
            biased;
            _ = drain.wait_for(|draining| *draining) => break,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, _)) => {
                let open = connections.clone().map(OpenConnection::new);
                let serve = serve_connection(stream, router.clone(), drain.clone());
                tasks.spawn(async move {
                    serve.await;
                    drop(open);
                });
            }
            Err(err) if is_peer_error(&err) => {}
            Err(err) => {
                tracing::warn!(error = %err, "accept failed; pausing before the next accept");
                tokio::select! {
                    _ = drain.wait_for(|draining| *draining) => break,
                    _ = tokio::time::sleep(ACCEPT_ERROR_PAUSE) => {}
                }
            }
        }
    }
}

/// Errors that concern one connection that died in the queue, not the listener.
fn is_peer_error(err: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(
        err.kind(),
        ConnectionRefused | ConnectionAborted | ConnectionReset
    )
}

/// Requests in flight on one connection, and since when it has been idle.
struct Activity {
    in_flight: AtomicUsize,
    idle_since: Mutex<Instant>,
}

/// Marks a request in flight until dropped.
struct Busy(Arc<Activity>);

impl Activity {
    fn begin(self: &Arc<Self>) -> Busy {
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        Busy(self.clone())
    }

    fn restart_idle_clock(&self) {
        if let Ok(mut since) = self.idle_since.lock() {
            *since = Instant::now();
        }
    }

    fn idle_for(&self, now: Instant) -> Option<Duration> {
        if self.in_flight.load(Ordering::SeqCst) > 0 {
            return None;
        }
        let since = *self.idle_since.lock().ok()?;
        Some(now.saturating_duration_since(since))
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        if let Ok(mut since) = self.0.idle_since.lock() {
            *since = Instant::now();
        }
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

async fn serve_connection(stream: TcpStream, router: Router, mut drain: watch::Receiver<bool>) {
    // Small JSON answers: do not let Nagle hold them back.
    let _ = stream.set_nodelay(true);
    let activity = Arc::new(Activity {
        in_flight: AtomicUsize::new(0),
        idle_since: Mutex::new(Instant::now()),
    });
    let service = {
        let activity = activity.clone();
        let drain = drain.clone();
        hyper::service::service_fn(move |request: Request<Incoming>| {
            let busy = activity.begin();
            let router = router.clone();
            let drain = drain.clone();
            async move {
                let _busy = busy;
                let mut response = router.oneshot(request).await?;
                if *drain.borrow() {
                    response
                        .headers_mut()
                        .insert(header::CONNECTION, HeaderValue::from_static("close"));
                }
                Ok::<_, Infallible>(response)
            }
        })
    };
    let connection = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .serve_connection(TokioIo::new(stream), service);
    tokio::pin!(connection);

    let mut lame_duck = *drain.borrow_and_update();
    let mut closing = false;
    let mut check = tokio::time::interval(IDLE_CHECK);
    loop {
        tokio::select! {
            result = connection.as_mut() => {
                if let Err(err) = result {
                    tracing::debug!(error = %err, "connection ended with an error");
                }
                return;
            }
            changed = drain.changed(), if !lame_duck => {
                // A dropped sender means the server is gone: treat it as a drain too.
                lame_duck = changed.is_err() || *drain.borrow();
                // Idle time counts from the drain's start, so a client about to reuse a
                // connection idle until now still gets its answer (with `Connection: close`).
                activity.restart_idle_clock();
            }
            _ = check.tick(), if lame_duck => {
                let idle = activity.idle_for(Instant::now());
                if !closing && idle.is_some_and(|idle| idle >= IDLE_CLOSE) {
                    connection.as_mut().graceful_shutdown();
                    closing = true;
                } else if closing && idle.is_some_and(|idle| idle >= 2 * IDLE_CLOSE) {
                    // Still open with nothing dispatched a while after the graceful close:
                    // a client sitting on half-sent headers. No answer is owed; drop it.
                    return;
                }
            }
        }
    }
}
