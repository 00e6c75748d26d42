//! One listener's accept loop: a connection is taken only when a slot under the cap is
//! free, and accept errors are sorted into the peer's (ignored) and the process's (paused).

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use prometheus::IntGauge;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tokio::time::Instant;
use tokio_util::task::TaskTracker;

use super::Limits;
use super::connection;
use crate::metrics::OpenConnection;

/// Pause after an accept error that is not the peer's fault (EMFILE, ENFILE, ENOBUFS):
/// retrying at once would spin while no descriptor or buffer is free, and the connection
/// stays queued meanwhile. axum's `serve` pauses the same way.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(500);
/// The warning that the cap is reached is repeated at most this often, so a flood of
/// connections cannot flood the log too.
const CAP_WARNING_INTERVAL: Duration = Duration::from_secs(60);

/// What an accept loop needs: its listener, the slots it takes connections under, and what
/// each connection is served with.
pub(super) struct Acceptor {
    pub(super) listener: TcpListener,
    pub(super) slots: Arc<Semaphore>,
    pub(super) router: Router,
    pub(super) limits: Limits,
    pub(super) drain: watch::Receiver<bool>,
    pub(super) tasks: TaskTracker,
    pub(super) connections: Option<IntGauge>,
}

impl Acceptor {
    /// Accepts once `open` turns true, until the drain starts.
    pub(super) async fn run(mut self, mut open: watch::Receiver<bool>) {
        tokio::select! {
            biased;
            _ = self.drain.wait_for(|draining| *draining) => return,
            opened = open.wait_for(|open| *open) => if opened.is_err() { return },
        }
        let mut warned_at: Option<Instant> = None;
        loop {
            if self.slots.available_permits() == 0
                && warned_at.is_none_or(|at| at.elapsed() >= CAP_WARNING_INTERVAL)
            {
                warned_at = Some(Instant::now());
                tracing::warn!(
                    listening = ?self.listener.local_addr().ok(),
                    "connection cap reached: new connections wait in the listen queue \
                     until one closes (AIHUMMER_MAX_CONNECTIONS)"
                );
            }
            // Both waits are cancel-safe: a slot not yet taken stays free, and a connection
            // not yet taken stays queued for another process holding the same socket.
            let slot = tokio::select! {
                biased;
                _ = self.drain.wait_for(|draining| *draining) => break,
                slot = self.slots.clone().acquire_owned() => match slot {
                    Ok(slot) => slot,
                    // The semaphore is never closed; if it were, nothing may be accepted.
                    Err(_) => break,
                },
            };
            let accepted = tokio::select! {
                biased;
                _ = self.drain.wait_for(|draining| *draining) => break,
                accepted = self.listener.accept() => accepted,
            };
            match accepted {
                Ok((stream, _)) => {
                    let open = self.connections.clone().map(OpenConnection::new);
                    let serve = connection::serve(
                        stream,
                        self.router.clone(),
                        self.limits,
                        self.drain.clone(),
                        slot,
                    );
                    self.tasks.spawn(async move {
                        serve.await;
                        drop(open);
                    });
                }
                Err(err) if is_peer_error(&err) => {}
                Err(err) => {
                    tracing::warn!(
                        error = %err,
                        "accept failed (out of descriptors or memory?); pausing before the next accept"
                    );
                    tokio::select! {
                        _ = self.drain.wait_for(|draining| *draining) => break,
                        _ = tokio::time::sleep(ACCEPT_ERROR_PAUSE) => {}
                    }
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
