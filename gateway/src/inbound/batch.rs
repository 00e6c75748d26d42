//! Group commit for inbound messages: messages that arrive while the store statements are
//! busy wait in a queue and are stored together by the next statement, one transaction and
//! one WAL flush for all of them.
//!
//! A statement's fixed costs (the round trip, the transaction, the executor's start, the
//! commit) are most of what storing one message costs PostgreSQL: measured with `pgbench`
//! on a 2-core machine, eight messages per statement stored 3 times as many messages per
//! second as one per statement. Nothing waits on a timer: a message that finds a statement
//! slot free is stored at once, alone; only under load do the groups grow, as large as the
//! load makes them (at most [`MOST_PER_STATEMENT`]).
//!
//! Statements run on their own tasks, so a client that hangs up does not cancel the others'
//! messages stored with its own.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::oneshot;
use uuid::Uuid;

use super::store::{self, NewMessage};
use crate::tenant::AppPool;

/// Store statements under way at once: enough to keep a few PostgreSQL backends busy
/// while the next groups gather.
const STATEMENTS: usize = 2;
/// The most messages one statement stores.
const MOST_PER_STATEMENT: usize = 64;

/// Whether a message was stored (`true`) or its key was already taken (`false`); an error
/// is shared by the messages of the statement that failed.
pub type Stored = Result<bool, Arc<sqlx::Error>>;

/// A message waiting to be stored, and where its outcome goes.
struct Job {
    app: AppPool,
    workspace: Uuid,
    message: NewMessage,
    done: oneshot::Sender<Stored>,
}

/// The queue of messages waiting for a statement; cheap to clone.
#[derive(Clone, Default)]
pub struct Batch {
    queue: Arc<Mutex<Queue>>,
}

#[derive(Default)]
struct Queue {
    jobs: VecDeque<Job>,
    running: usize,
}

/// Why a message's outcome never came.
#[derive(Debug, thiserror::Error)]
#[error("the statement storing the message ended without an outcome (the gateway is stopping)")]
pub struct Abandoned;

impl Batch {
    /// Stores `message` in `workspace` on `app`, with whatever else is waiting: whether it
    /// was stored, or its idempotency key was already taken.
    pub async fn store(
        &self,
        app: &AppPool,
        workspace: Uuid,
        message: NewMessage,
    ) -> Result<Stored, Abandoned> {
        let (done, outcome) = oneshot::channel();
        let start = {
            let mut queue = self.lock();
            queue.jobs.push_back(Job {
                app: app.clone(),
                workspace,
                message,
                done,
            });
            let start = queue.running < STATEMENTS;
            if start {
                queue.running += 1;
            }
            start
        };
        if start {
            tokio::spawn(self.clone().run());
        }
        outcome.await.map_err(|_| Abandoned)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Queue> {
        // The queue stays consistent whatever panicked while holding it: take it anyway.
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Stores groups of waiting messages until none waits.
    async fn run(self) {
        let mut slot = Slot(Some(self));
        while let Some(group) = slot.next_group() {
            store_group(group).await;
        }
    }
}

/// A statement slot, given back when its task ends, however it ends. Given back under
/// the same lock that found the queue empty, so a message queued just then finds the slot
/// free and starts a statement itself.
struct Slot(Option<Batch>);

impl Slot {
    /// The waiting messages of the first one's workspace, up to [`MOST_PER_STATEMENT`];
    /// `None`, giving the slot back, when none waits.
    fn next_group(&mut self) -> Option<Vec<Job>> {
        let batch = self.0.take()?;
        let mut queue = batch.lock();
        let Some(workspace) = queue.jobs.front().map(|job| job.workspace) else {
            queue.running -= 1;
            return None;
        };
        let mut group = Vec::new();
        let mut others = VecDeque::new();
        while group.len() < MOST_PER_STATEMENT {
            let Some(job) = queue.jobs.pop_front() else {
                break;
            };
            if job.workspace == workspace {
                group.push(job);
            } else {
                others.push_back(job);
            }
        }
        others.append(&mut queue.jobs);
        queue.jobs = others;
        drop(queue);
        self.0 = Some(batch);
        Some(group)
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Some(batch) = self.0.take() {
            batch.lock().running -= 1;
        }
    }
}

/// Stores `group` in one statement. When the server refuses it, each message is tried
/// again alone, so that one message the database refuses does not take the others down
/// with it; any other failure (no connection, a timeout) is every message's.
async fn store_group(group: Vec<Job>) {
    let Some(first) = group.first() else { return };
    let (app, workspace) = (first.app.clone(), first.workspace);
    let messages: Vec<&NewMessage> = group.iter().map(|job| &job.message).collect();
    match store::store_group(&app, workspace, &messages).await {
        Ok(stored) => {
            for job in group {
                let _ = job.done.send(Ok(stored.contains(&job.message.inbound_id)));
            }
        }
        Err(sqlx::Error::Database(_)) if group.len() > 1 => {
            for job in group {
                let outcome = store::store_group(&app, workspace, &[&job.message])
                    .await
                    .map(|stored| stored.contains(&job.message.inbound_id))
                    .map_err(Arc::new);
                let _ = job.done.send(outcome);
            }
        }
        Err(err) => {
            let err = Arc::new(err);
            for job in group {
                let _ = job.done.send(Err(err.clone()));
            }
        }
    }
}
