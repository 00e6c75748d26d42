//! The delivery worker, one per gateway: claims due replies in batches under a lease,
//! posts each to `AIHUMMER_REPLY_WEBHOOK_URL` with its `Idempotency-Key`, and records the
//! verdict. A committed enqueue wakes it through `LISTEN`; a slow poll covers retries
//! coming due and lost notifications. On stop it lets attempts under way finish for a short
//! grace, abandons the rest and gives back every lease it still holds, so a handoff does
//! not delay delivery by a lease period.

use std::sync::Arc;
use std::time::Duration;

use prometheus::{Histogram, IntCounterVec};
use reqwest::Url;
use sqlx::PgPool;
use sqlx::postgres::PgListener;
use tokio::sync::watch;
use tokio::task::JoinSet;

use super::policy::{self, Attempt, Verdict};
use super::store::{self, Claimed};
use aihummer_common::backoff::Backoff;

/// Rows claimed, and posted concurrently, per round.
const BATCH: i64 = 32;
/// How often the worker looks for due rows without being woken.
const POLL: Duration = Duration::from_secs(1);
/// How long attempts under way may still take once the worker is told to stop.
const STOP_GRACE: Duration = Duration::from_secs(2);

/// Delivers replies from the outbox.
pub struct Deliverer {
    pool: PgPool,
    webhook: Url,
    lease: Duration,
    owner: String,
    client: reqwest::Client,
    observed: Option<(IntCounterVec, Histogram)>,
}

impl Deliverer {
    /// A worker posting to `webhook`, claiming rows as `owner` for `lease` on `pool` (the
    /// owner pool: delivery crosses tenants).
    pub fn new(
        pool: PgPool,
        webhook: Url,
        lease: Duration,
        owner: String,
    ) -> Result<Self, reqwest::Error> {
        // An attempt must end well inside its lease, or a second deliverer could take the
        // row over while the first is still waiting for an answer.
        let timeout = (lease / 2).min(Duration::from_secs(10));
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(3)))
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("aihummer-gateway/", env!("AIHUMMER_VERSION")))
            .build()?;
        Ok(Self {
            pool,
            webhook,
            lease,
            owner,
            client,
            observed: None,
        })
    }

    /// Counts each attempt's outcome on `attempts` and each delivery's lag (enqueue commit
    /// to delivered) on `lag`.
    pub fn observed(mut self, attempts: IntCounterVec, lag: Histogram) -> Self {
        self.observed = Some((attempts, lag));
        self
    }

    /// Delivers until `stop` turns true, then releases its leases.
    pub async fn run(self, mut stop: watch::Receiver<bool>) {
        let this = Arc::new(self);
        let mut listener = this.listen().await;
        let fresh_backoff = || Backoff::new(Duration::from_millis(500), Duration::from_secs(10));
        let mut failures = fresh_backoff();
        while !*stop.borrow() {
            match store::claim(&this.pool, &this.owner, BATCH, this.lease).await {
                Ok(batch) if batch.is_empty() => this.wait(&mut listener, &mut stop).await,
                Ok(batch) => {
                    failures = fresh_backoff();
                    let mut round = JoinSet::new();
                    for row in batch {
                        round.spawn(this.clone().deliver(row));
                    }
                    this.finish_round(round, &mut stop).await;
                }
                Err(err) => {
                    let delay = failures.next_delay();
                    tracing::warn!(error = %err, retry_in = ?delay, "claiming outbox rows failed");
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = stop.changed() => {}
                    }
                }
            }
        }
        match store::release(&this.pool, &this.owner).await {
            Ok(0) => {}
            Ok(released) => tracing::info!(released, "released outbox leases"),
            Err(err) => {
                tracing::warn!(error = %err, "releasing outbox leases failed; they expire by themselves")
            }
        }
    }

    /// Waits for a round of attempts. After a stop they get [`STOP_GRACE`] to finish; the
    /// rest are abandoned, and their leases released by the caller, so another gateway
    /// retries them now rather than after the lease.
    async fn finish_round(&self, mut round: JoinSet<()>, stop: &mut watch::Receiver<bool>) {
        let mut grace_ends = None;
        loop {
            let grace = async {
                match grace_ends {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                done = round.join_next() => if done.is_none() { return },
                _ = stop.changed(), if grace_ends.is_none() => {
                    grace_ends = Some(tokio::time::Instant::now() + STOP_GRACE);
                }
                _ = grace => {
                    tracing::info!(abandoned = round.len(), "stopping: abandoning slow reply deliveries");
                    round.abort_all();
                    return;
                }
            }
        }
    }

    async fn listen(&self) -> Option<PgListener> {
        let mut listener = PgListener::connect_with(&self.pool).await.ok()?;
        listener.listen(store::CHANNEL).await.ok()?;
        Some(listener)
    }

    /// Sleeps until woken by an enqueue, the poll interval, or the stop signal.
    async fn wait(&self, listener: &mut Option<PgListener>, stop: &mut watch::Receiver<bool>) {
        let notified = async {
            match listener {
                // A failed receive reconnects on the next call; the poll covers the gap.
                Some(l) => {
                    if l.recv().await.is_err() {
                        tokio::time::sleep(POLL).await;
                    }
                }
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = notified => {}
            _ = tokio::time::sleep(POLL) => {}
            _ = stop.changed() => {}
        }
    }

    async fn deliver(self: Arc<Self>, row: Claimed) {
        let attempt = self.attempt(&row).await;
        let verdict = policy::judge(&attempt, row.attempts);
        if let Some((attempts, _)) = &self.observed {
            let outcome = match &verdict {
                Verdict::Delivered => "delivered",
                Verdict::Retry(_) => "retry",
                Verdict::Dead(_) => "dead",
            };
            attempts.with_label_values(&[outcome]).inc();
        }
        let recorded = match &verdict {
            Verdict::Delivered => {
                let lag = store::delivered(&self.pool, &self.owner, row.id).await;
                if let (Ok(Some(seconds)), Some((_, histogram))) = (&lag, &self.observed) {
                    histogram.observe(*seconds);
                }
                lag.map(drop)
            }
            Verdict::Retry(reason) => {
                let delay = policy::retry_delay(row.attempts, rand::random());
                tracing::info!(reply = %row.id, attempts = row.attempts, %reason, retry_in = ?delay, "reply delivery failed; will retry");
                store::retry(&self.pool, &self.owner, row.id, delay, reason).await
            }
            Verdict::Dead(reason) => {
                tracing::warn!(reply = %row.id, attempts = row.attempts, %reason, "reply dead-lettered");
                store::dead(&self.pool, &self.owner, row.id, reason).await
            }
        };
        if let Err(err) = recorded {
            // The lease runs out and the row is tried again, with the same key.
            tracing::warn!(reply = %row.id, error = %err, "recording the delivery outcome failed");
        }
    }

    async fn attempt(&self, row: &Claimed) -> Attempt {
        let sent = self
            .client
            .post(self.webhook.clone())
            .header("Idempotency-Key", &row.idempotency_key)
            .json(&row.payload)
            .send()
            .await;
        match sent {
            Ok(response) => Attempt::Status(response.status().as_u16()),
            // The webhook URL may carry a token: keep it out of the stored reason.
            Err(err) => Attempt::Transport(err.without_url().to_string()),
        }
    }
}
