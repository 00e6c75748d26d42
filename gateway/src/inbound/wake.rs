//! Waking the outbox deliverers once messages are stored: one `NOTIFY` for many messages.
//!
//! A `NOTIFY` inside the storing statement would serialize every commit: PostgreSQL holds
//! one database-wide lock from a notifying transaction's pre-commit until its commit
//! record is flushed, so notifying transactions commit one WAL flush at a time and cannot
//! share a flush (group commit). So a message is stored without notifying, and the route
//! calls [`Wake::after_commit`]; one task sends `pg_notify` on the outbox channel, one at
//! a time, each covering every message committed before it was sent. A wake that is lost
//! (an error, a crash between the commit and the notify) costs only latency: the
//! deliverers' slow poll finds the reply.

use std::sync::Arc;

use sqlx::PgPool;
use tokio::sync::{Notify, watch};

use crate::outbox::store::CHANNEL;

/// Asks for a wake after a commit; cheap to clone and to call on every request.
#[derive(Debug, Clone, Default)]
pub struct Wake {
    pending: Arc<Notify>,
}

impl Wake {
    /// Records that a reply was committed: the next notify covers it. Calls coalesce while
    /// a notify is being sent, so a burst of messages costs one or two notifies.
    pub fn after_commit(&self) {
        self.pending.notify_one();
    }

    /// Sends the notifies on `pool` until `stop` turns true.
    pub async fn run(self, pool: PgPool, mut stop: watch::Receiver<bool>) {
        loop {
            tokio::select! {
                _ = stop.wait_for(|stop| *stop) => return,
                _ = self.pending.notified() => {}
            }
            // Not waiting for the WAL flush: the lock is held until then, and a notify lost
            // with the server's crash costs only latency.
            let sent = sqlx::query(
                "SELECT pg_notify($1, ''), set_config('synchronous_commit', 'off', true)",
            )
            .bind(CHANNEL)
            .execute(&pool)
            .await;
            if let Err(err) = sent {
                tracing::warn!(
                    error = %err,
                    "cannot wake the outbox deliverers; they find the reply at their next poll"
                );
            }
        }
    }
}
