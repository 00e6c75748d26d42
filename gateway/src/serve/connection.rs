//! One HTTP/1 connection: served with the header and body read limits, and closed during a
//! drain only once it has sat idle (the lame-duck phase the module above describes).

use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::http::{HeaderValue, Request, header};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpStream;
use tokio::sync::{OwnedSemaphorePermit, watch};
use tokio::time::Instant;
use tower::ServiceExt;

use super::Limits;
use super::body_deadline::{self, BodyDeadline};

/// How long a connection must sit idle during a drain before it is closed. Long enough
/// that a client reusing it right away gets its answer (with `Connection: close`) rather
/// than a connection closed under its request.
pub const IDLE_CLOSE: Duration = Duration::from_millis(500);
/// How often a draining connection checks whether it has become idle.
const IDLE_CHECK: Duration = Duration::from_millis(50);

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

/// Serves `stream` until the client or the drain ends it. `_slot` is this connection's
/// place under the cap, given back when the connection ends.
pub(super) async fn serve(
    stream: TcpStream,
    router: Router,
    limits: Limits,
    mut drain: watch::Receiver<bool>,
    _slot: OwnedSemaphorePermit,
) {
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
                let (request, expired) = BodyDeadline::wrap(
                    request,
                    Instant::now() + limits.body_read_timeout,
                    drain.clone(),
                );
                let mut response = router.oneshot(request).await?;
                if expired.is_set() {
                    // Whatever the handler made of its broken body, the client was too slow.
                    response = body_deadline::answer(limits.body_read_timeout);
                }
                if *drain.borrow() || expired.is_set() {
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
        .header_read_timeout(limits.header_read_timeout)
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
