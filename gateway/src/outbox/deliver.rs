//! The delivery worker, one per gateway: keeps a window of up to `concurrency` attempts in
//! flight, each posting one reply to `AIHUMMER_REPLY_WEBHOOK_URL` with its
//! `Idempotency-Key`, and starts the next as soon as one ends (no rounds, so a slow POST
//! holds one slot, not the whole window).
//!
//! A POST still unanswered after [`SLOW_AFTER`] steps out of the window into a slow lane of
//! up to [`SLOW_LANE`] × `concurrency` attempts, freeing its slot: replies to a receiver
//! route that answers in seconds then stop taking slots from the ones answered in
//! milliseconds, whatever in the reply makes them slow.
//!
//! Three things overlap with the posts, each one statement at a time:
//! - claiming: while fewer than `2 × concurrency` rows are held, the next batch is claimed
//!   under a lease (prefetch), so a freed slot finds a row waiting;
//! - recording: verdicts are gathered and written by one statement every [`FLUSH_EVERY`]
//!   (or [`FLUSH_MAX`] verdicts), fenced by the lease owner;
//! - waking: a committed enqueue wakes the worker through `LISTEN`; a slow poll covers
//!   retries coming due and lost notifications.
//!
//! On stop it claims nothing more, lets attempts under way finish for a short grace,
//! abandons the rest, records the verdicts it has and then gives back every lease it still
//! holds, so a handoff does not delay delivery by a lease period.

use futures_util::FutureExt;
use prometheus::{Histogram, IntCounterVec};
use std::collections::{HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use reqwest::Url;
use sqlx::PgPool;
use sqlx::postgres::PgListener;
use tokio::sync::{Notify, watch};
use tokio::task::{self, JoinSet};
use tokio::time::Instant;

use super::policy::{self, Attempt, Verdict};
use super::store::{self, Claimed, Completion, Outcome, Position};
use aihummer_common::backoff::Backoff;

/// How often the worker looks for due rows without being woken.
const POLL: Duration = Duration::from_secs(1);
/// How long attempts under way may still take once the worker is told to stop.
const STOP_GRACE: Duration = Duration::from_secs(2);
/// The longest a verdict waits to be recorded with others.
const FLUSH_EVERY: Duration = Duration::from_millis(3);
/// The most verdicts recorded by one statement.
const FLUSH_MAX: usize = 512;
/// Recording statements under way at once.
const FLUSHES: usize = 2;
/// How long an attempt holds a window slot before it counts as slow and steps aside.
const SLOW_AFTER: Duration = Duration::from_millis(250);
/// Slow attempts kept in flight besides the window, as a multiple of the window.
const SLOW_LANE: usize = 4;

/// Delivers replies from the outbox.
pub struct Deliverer {
    pool: PgPool,
    webhook: Url,
    lease: Duration,
    owner: String,
    client: reqwest::Client,
    concurrency: usize,
    observed: Option<(IntCounterVec, Histogram)>,
}

impl Deliverer {
    /// A worker posting to `webhook` with up to `concurrency` prompt attempts in flight
    /// (and [`SLOW_LANE`] times as many slow ones), claiming
    /// rows as `owner` for `lease` on `pool` (the owner pool: delivery crosses tenants).
    pub fn new(
        pool: PgPool,
        webhook: Url,
        lease: Duration,
        owner: String,
        concurrency: usize,
    ) -> Result<Self, reqwest::Error> {
        let concurrency = concurrency.max(1);
        // An attempt must end well inside its lease, or a second deliverer could take the
        // row over while the first is still waiting for an answer.
        let timeout = (lease / 2).min(Duration::from_secs(10));
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(3)))
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("aihummer-gateway/", env!("AIHUMMER_VERSION")))
            // Keep one warm HTTP/1.1 connection per slot, so a busy window never pays for a
            // new TCP (or TLS) handshake.
            .pool_max_idle_per_host(concurrency)
            .pool_idle_timeout(Duration::from_secs(60))
            .tcp_nodelay(true)
            .build()?;
        Ok(Self {
            pool,
            webhook,
            lease,
            owner,
            client,
            concurrency,
            observed: None,
        })
    }

    /// The most attempts a worker with `concurrency` slots keeps in flight, each one
    /// connection to the receiver: its window and its slow lane.
    pub fn most_in_flight(concurrency: usize) -> usize {
        concurrency.max(1).saturating_mul(1 + SLOW_LANE)
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
        let wake = Arc::new(Notify::new());
        let listening = tokio::spawn(listen(this.pool.clone(), wake.clone()));
        let mut window = Window::default();
        let fresh_backoff = || Backoff::new(Duration::from_millis(500), Duration::from_secs(10));
        let mut failures = fresh_backoff();
        // When the last claim found fewer rows than asked: sleep until woken or polled.
        let mut idle_until: Option<Instant> = None;
        let mut claim_again_at: Option<Instant> = None;
        let mut flush_at: Option<Instant> = None;
        let slow_lane = SLOW_LANE * this.concurrency;
        while !*stop.borrow() {
            window.step_aside_slow(Instant::now(), slow_lane);
            while window.prompt.len() < this.concurrency {
                let Some(row) = window.queued.pop_front() else {
                    break;
                };
                window.start(this.clone().attempt(row));
            }
            let room = (2 * this.concurrency).saturating_sub(window.held());
            if window.claiming.is_empty()
                && idle_until.is_none()
                && claim_again_at.is_none()
                && room >= (this.concurrency / 4).max(1)
            {
                let (pool, owner, lease) = (this.pool.clone(), this.owner.clone(), this.lease);
                let limit = i64::try_from(room).unwrap_or(i64::MAX);
                let after = window.cursor.position(Instant::now());
                if after.is_none() {
                    // A claim from the head finds every row committed before it, so a
                    // wake stored before it (the one sent on connecting, or one that came
                    // while a claim was under way) asks for nothing more; kept, it would
                    // start a second walk from the head as soon as this one comes back
                    // short.
                    let _ = wake.notified().now_or_never();
                }
                window.claiming.spawn(async move {
                    let claimed = store::claim(&pool, &owner, limit, lease, after).await;
                    (limit, after.is_some(), claimed)
                });
            }
            if window.done.len() >= FLUSH_MAX && window.flushing.len() < FLUSHES {
                this.flush(&mut window);
                flush_at = None;
            }
            let may_flush = window.flushing.len() < FLUSHES;
            let flush_due = async {
                match flush_at {
                    Some(at) if may_flush => tokio::time::sleep_until(at).await,
                    _ => std::future::pending().await,
                }
            };
            let poll_due = async {
                match (idle_until, claim_again_at) {
                    (Some(at), _) | (None, Some(at)) => tokio::time::sleep_until(at).await,
                    (None, None) => std::future::pending().await,
                }
            };
            let next_slow = window.next_slow(slow_lane);
            let slow_due = async {
                match next_slow {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                Some(ended) = window.attempts.join_next_with_id() => {
                    if let Some(completion) = window.ended(ended) {
                        window.done.push(completion);
                        flush_at.get_or_insert_with(|| Instant::now() + FLUSH_EVERY);
                    }
                }
                // The loop's head moves the attempts now slow out of the window.
                _ = slow_due => {}
                Some(claimed) = window.claiming.join_next() => {
                    let Ok((limit, went_on, claimed)) = claimed else { continue };
                    match claimed {
                        Ok(rows) => {
                            failures = fresh_backoff();
                            let short = (rows.len() as i64) < limit;
                            window.cursor.claimed(&rows, short, Instant::now());
                            // Short from the head: nothing more is due. Short past the
                            // cursor: rows behind it may be (retries, given-back leases),
                            // so the next claim goes from the head at once.
                            if short && !went_on {
                                idle_until = Some(Instant::now() + POLL);
                            }
                            window.queued.extend(rows);
                        }
                        Err(err) => {
                            let delay = failures.next_delay();
                            tracing::warn!(error = %err, retry_in = ?delay, "claiming outbox rows failed");
                            claim_again_at = Some(Instant::now() + delay);
                        }
                    }
                }
                Some(flushed) = window.flushing.join_next() => {
                    if let Ok(Err(err)) = flushed {
                        // Those rows' leases run out and they are tried again, same key.
                        tracing::warn!(error = %err, "recording delivery outcomes failed");
                    }
                }
                _ = flush_due => {
                    this.flush(&mut window);
                    flush_at = None;
                }
                _ = wake.notified(), if idle_until.is_some() => idle_until = None,
                _ = poll_due => {
                    idle_until = None;
                    claim_again_at = None;
                }
                // A dropped sender means nobody can stop us any more: stop now.
                changed = stop.changed() => if changed.is_err() { break },
            }
        }
        this.stop(window).await;
        listening.abort();
    }

    /// Starts recording the verdicts gathered so far.
    fn flush(&self, window: &mut Window) {
        if window.done.is_empty() {
            return;
        }
        let batch = std::mem::take(&mut window.done);
        let (pool, owner) = (self.pool.clone(), self.owner.clone());
        let lag = self.observed.as_ref().map(|(_, lag)| lag.clone());
        window.flushing.spawn(async move {
            let (changed, lags) = store::complete(&pool, &owner, &batch).await?;
            if let Some(lag) = lag {
                lags.into_iter().for_each(|seconds| lag.observe(seconds));
            }
            Ok(changed)
        });
    }

    /// Winds down: lets the claim under way land, gives attempts under way
    /// [`STOP_GRACE`], records every verdict, then releases the leases still held, so
    /// another gateway retries those rows now rather than after the lease.
    async fn stop(&self, mut window: Window) {
        // A claim cut off mid-statement could still commit after the release below.
        while window.claiming.join_next().await.is_some() {}
        window.queued.clear();
        let grace_ends = Instant::now() + STOP_GRACE;
        loop {
            tokio::select! {
                ended = window.attempts.join_next() => match ended {
                    Some(Ok(completion)) => window.done.push(completion),
                    Some(Err(_)) => {}
                    None => break,
                },
                _ = tokio::time::sleep_until(grace_ends) => {
                    tracing::info!(abandoned = window.attempts.len(), "stopping: abandoning slow reply deliveries");
                    window.attempts.abort_all();
                    break;
                }
            }
        }
        self.flush(&mut window);
        while let Some(flushed) = window.flushing.join_next().await {
            if let Ok(Err(err)) = flushed {
                tracing::warn!(error = %err, "recording delivery outcomes failed");
            }
        }
        match store::release(&self.pool, &self.owner).await {
            Ok(0) => {}
            Ok(released) => tracing::info!(released, "released outbox leases"),
            Err(err) => {
                tracing::warn!(error = %err, "releasing outbox leases failed; they expire by themselves")
            }
        }
    }

    /// Posts one claimed row and judges the answer.
    async fn attempt(self: Arc<Self>, row: Claimed) -> Completion {
        let sent = self
            .client
            .post(self.webhook.clone())
            .header("Idempotency-Key", &row.idempotency_key)
            .json(&row.payload)
            .send()
            .await;
        let attempt = match sent {
            Ok(response) => Attempt::Status(response.status().as_u16()),
            // The webhook URL may carry a token: keep it out of the stored reason.
            Err(err) => Attempt::Transport(err.without_url().to_string()),
        };
        let verdict = policy::judge(&attempt, row.attempts);
        if let Some((attempts, _)) = &self.observed {
            let counted = match &verdict {
                Verdict::Delivered => "delivered",
                Verdict::Retry(_) => "retry",
                Verdict::Dead(_) => "dead",
            };
            attempts.with_label_values(&[counted]).inc();
        }
        let outcome = match verdict {
            Verdict::Delivered => Outcome::Delivered,
            Verdict::Retry(reason) => {
                let delay = policy::retry_delay(row.attempts, rand::random());
                tracing::info!(reply = %row.id, attempts = row.attempts, %reason, retry_in = ?delay, "reply delivery failed; will retry");
                Outcome::Retry { delay, reason }
            }
            Verdict::Dead(reason) => {
                tracing::warn!(reply = %row.id, attempts = row.attempts, %reason, "reply dead-lettered");
                Outcome::Dead(reason)
            }
        };
        Completion {
            id: row.id,
            outcome,
        }
    }
}

/// What the worker holds: rows claimed but not started, attempts in flight (those not yet
/// slow in `prompt`, with when each turns slow in `started`, oldest first), verdicts not
/// yet recorded, and the claim and recording statements under way.
#[derive(Default)]
struct Window {
    queued: VecDeque<Claimed>,
    attempts: JoinSet<Completion>,
    prompt: HashSet<task::Id>,
    started: VecDeque<(Instant, task::Id)>,
    done: Vec<Completion>,
    claiming: JoinSet<(i64, bool, Result<Vec<Claimed>, sqlx::Error>)>,
    flushing: JoinSet<Result<u64, sqlx::Error>>,
    cursor: Cursor,
}

/// Where the next claim goes on from: the last row the claims before it took, while they
/// keep coming back full. A claim from the head of the queue walks over every row other
/// deliverers hold and every row version not yet pruned, which pile up there while a
/// backlog drains; going on past the last claimed row skips them. Rows that come due
/// behind the cursor (a retry, a lease given back or run out) are found by the next claim
/// from the head: after a short claim, and at least every [`POLL`].
#[derive(Debug, Default)]
struct Cursor {
    /// The furthest position claimed, and when the run of claims began with one from the
    /// head.
    at: Option<(Position, Instant)>,
}

impl Cursor {
    /// Where to claim from now: past the cursor, or from the head (`None`).
    fn position(&self, now: Instant) -> Option<Position> {
        let (position, since) = self.at?;
        (now.duration_since(since) < POLL).then_some(position)
    }

    /// Moves past `rows`, or back to the head when the claim came back `short`.
    fn claimed(&mut self, rows: &[Claimed], short: bool, now: Instant) {
        let furthest = rows.iter().map(Claimed::position).max();
        self.at = match (short, furthest) {
            (false, Some(furthest)) => {
                let since = self
                    .at
                    .map(|(_, since)| since)
                    .filter(|since| now.duration_since(*since) < POLL)
                    .unwrap_or(now);
                Some((furthest, since))
            }
            _ => None,
        };
    }
}

impl Window {
    /// Rows claimed but not started, and attempts holding a window slot: what prefetching
    /// keeps topped up. Slow attempts are left out, so they do not stop the claiming.
    fn held(&self) -> usize {
        self.queued.len() + self.prompt.len()
    }

    /// Starts an attempt in a window slot.
    fn start(&mut self, attempt: impl Future<Output = Completion> + Send + 'static) {
        let id = self.attempts.spawn(attempt).id();
        self.prompt.insert(id);
        self.started.push_back((Instant::now() + SLOW_AFTER, id));
    }

    /// Frees the slot of an attempt that ended; its verdict, unless it panicked or was
    /// aborted.
    fn ended(
        &mut self,
        ended: Result<(task::Id, Completion), task::JoinError>,
    ) -> Option<Completion> {
        let id = match &ended {
            Ok((id, _)) => *id,
            Err(err) => err.id(),
        };
        self.prompt.remove(&id);
        ended.ok().map(|(_, completion)| completion)
    }

    /// Moves attempts unanswered for [`SLOW_AFTER`] out of the window while the slow lane
    /// (at most `lane` attempts) has room.
    fn step_aside_slow(&mut self, now: Instant, lane: usize) {
        while let Some(&(slow_at, id)) = self.started.front() {
            if !self.prompt.contains(&id) {
                self.started.pop_front();
                continue;
            }
            if slow_at > now || self.slow() >= lane {
                break;
            }
            self.started.pop_front();
            self.prompt.remove(&id);
        }
    }

    /// When the oldest attempt in the window turns slow, if the slow lane has room for it.
    /// Call after [`Window::step_aside_slow`], which drops ended attempts from the front.
    fn next_slow(&self, lane: usize) -> Option<Instant> {
        let (slow_at, _) = self.started.front()?;
        (self.slow() < lane).then_some(*slow_at)
    }

    /// Attempts in flight in the slow lane.
    fn slow(&self) -> usize {
        self.attempts.len() - self.prompt.len()
    }
}

/// Wakes the worker on every notification of [`store::CHANNEL`], reconnecting after a
/// failure; the worker's poll covers the gaps.
async fn listen(pool: PgPool, wake: Arc<Notify>) {
    loop {
        if let Ok(mut listener) = PgListener::connect_with(&pool).await
            && listener.listen(store::CHANNEL).await.is_ok()
        {
            // Wake once on (re)connecting: a notification may have been missed.
            wake.notify_one();
            while listener.recv().await.is_ok() {
                wake.notify_one();
            }
        }
        tokio::time::sleep(POLL).await;
    }
}
