//! Scheduled jobs, run only while this gateway leads. The job list is a table of name,
//! interval and function, so a new job is one line.
//!
//! The scheduler follows the leadership the elector publishes ([`crate::leader`]): it
//! waits while that reads `false`, runs due jobs each tick while it reads `true`, and ends
//! when the elector is gone.
//!
//! Time is cut into slots of each job's interval. Before a job's effect, its run is
//! recorded in `job_runs` under the primary key (job, slot): a second leader (say, during
//! a partition, before the first noticed it lost its lock) fails that insert and skips the
//! slot, so no slot ever runs twice.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sqlx::PgPool;
use tokio::sync::watch;

use crate::leader::TICK;
use crate::outbox::housekeeping;

/// What a job gets to work with.
#[derive(Clone)]
pub struct Context {
    /// The owner pool.
    pub pool: PgPool,
    /// How long delivered replies and answered inbound messages are kept.
    pub retention: Duration,
}

/// A job's body; its `Ok` is a one-line outcome recorded with the run.
pub type JobFn = fn(Context) -> Pin<Box<dyn Future<Output = Result<String, sqlx::Error>> + Send>>;

/// One scheduled job.
#[derive(Clone, Copy)]
pub struct Job {
    /// Its name in `job_runs`.
    pub name: &'static str,
    /// How often it runs.
    pub every: Duration,
    /// What it does.
    pub run: JobFn,
}

/// The jobs, and the last slot each has handled here.
pub struct Scheduler {
    ctx: Context,
    leader: String,
    jobs: Vec<Job>,
    handled: HashMap<&'static str, i64>,
}

impl Scheduler {
    /// The product's jobs, run as `leader`.
    pub fn new(ctx: Context, leader: String, housekeeping_every: Duration) -> Self {
        let jobs = vec![Job {
            name: "outbox_housekeeping",
            every: housekeeping_every,
            run: |ctx| Box::pin(async move { outbox_housekeeping(&ctx).await }),
        }];
        Self {
            ctx,
            leader,
            jobs,
            handled: HashMap::new(),
        }
    }

    /// Runs due jobs while `leadership` reads `true`, until its sender is dropped.
    pub async fn run(mut self, mut leadership: watch::Receiver<bool>) {
        // The condition's `Ref` is dropped before the body awaits anything.
        while leadership.wait_for(|leading| *leading).await.is_ok() {
            if self.lead(&mut leadership).await == Term::Closed {
                return;
            }
        }
    }

    /// Runs due jobs each tick until leadership turns `false` or its sender is gone. A
    /// job under way is never cut short: an unfinished run would stay unrecorded.
    async fn lead(&mut self, leadership: &mut watch::Receiver<bool>) -> Term {
        let mut tick = tokio::time::interval(TICK);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                changed = leadership.changed() => if changed.is_err() {
                    return Term::Closed;
                },
            }
            if !*leadership.borrow_and_update() {
                return Term::Ended;
            }
            self.run_due(SystemTime::now()).await;
        }
    }

    /// Runs every job whose current slot has not been handled yet.
    pub async fn run_due(&mut self, now: SystemTime) {
        // Jobs are copied out so no borrow of `self.jobs` is held across an await.
        for job in self.jobs.clone() {
            let slot = slot_of(now, job.every);
            if self.handled.get(job.name) == Some(&slot) {
                continue;
            }
            match claim_slot(&self.ctx.pool, job.name, slot, &self.leader).await {
                Ok(true) => {
                    let outcome = match (job.run)(self.ctx.clone()).await {
                        Ok(summary) => summary,
                        Err(err) => {
                            tracing::warn!(job = job.name, error = %err, "scheduled job failed");
                            format!("failed: {err}")
                        }
                    };
                    if let Err(err) = finish_slot(&self.ctx.pool, job.name, slot, &outcome).await {
                        tracing::warn!(job = job.name, error = %err, "recording the job outcome failed");
                    }
                }
                Ok(false) => {}
                Err(err) => {
                    tracing::warn!(job = job.name, error = %err, "claiming a job slot failed");
                    continue;
                }
            }
            self.handled.insert(job.name, slot);
        }
    }
}

/// How a term of running jobs ended.
#[derive(Debug, PartialEq, Eq)]
enum Term {
    /// Leadership turned `false`; it may come back.
    Ended,
    /// The elector is gone; it will not.
    Closed,
}

/// The start of the slot `now` falls in, in milliseconds since the epoch.
pub fn slot_of(now: SystemTime, every: Duration) -> i64 {
    let now_ms = now
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis() as i64;
    let every_ms = (every.as_millis() as i64).max(1);
    now_ms - now_ms.rem_euclid(every_ms)
}

/// Records that `leader` runs `job` in `slot`; `false` when someone already did.
pub async fn claim_slot(
    pool: &PgPool,
    job: &str,
    slot: i64,
    leader: &str,
) -> Result<bool, sqlx::Error> {
    let done = sqlx::query(
        "INSERT INTO job_runs (job, slot, leader) VALUES ($1, to_timestamp($2::float8 / 1000), $3)
         ON CONFLICT DO NOTHING",
    )
    .bind(job)
    .bind(slot)
    .bind(leader)
    .execute(pool)
    .await?;
    Ok(done.rows_affected() == 1)
}

async fn finish_slot(
    pool: &PgPool,
    job: &str,
    slot: i64,
    outcome: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE job_runs SET finished_at = now(), outcome = $3
         WHERE job = $1 AND slot = to_timestamp($2::float8 / 1000)",
    )
    .bind(job)
    .bind(slot)
    .bind(outcome)
    .execute(pool)
    .await?;
    Ok(())
}

/// The housekeeping job: one [`housekeeping::sweep`], logged, summed up in one line.
async fn outbox_housekeeping(ctx: &Context) -> Result<String, sqlx::Error> {
    let sweep = housekeeping::sweep(&ctx.pool, ctx.retention).await?;
    sweep.log();
    Ok(sweep.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_slot_is_the_start_of_the_interval_now_falls_in() {
        let at = |ms: u64| UNIX_EPOCH + Duration::from_millis(ms);
        let minute = Duration::from_secs(60);
        assert_eq!(slot_of(at(120_000), minute), 120_000);
        assert_eq!(slot_of(at(179_999), minute), 120_000);
        assert_eq!(slot_of(at(180_000), minute), 180_000);
        assert_eq!(slot_of(at(5), Duration::ZERO), 5);
    }
}
