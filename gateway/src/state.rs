//! What the gateway reports about itself: its startup phase, whether it drains, whether it
//! leads. Shared by the startup task (which writes) and the routes (which read); whether
//! it leads is read from the channel the leader elector publishes on.
//!
//! ```text
//! HealthOnly                                  (no AIHUMMER_DATABASE_URL; stays here)
//! Connecting ──► WaitingForMigrationLock ──► Migrating ──► Ready
//!     ▲  │                                        │
//!     │  ▼                                        │
//! DatabaseUnavailable ◄───────────────────────────┘  (transient error: retry with backoff)
//! ```
//! Draining is a separate flag: it overrides every phase once set and is never cleared.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, OnceLock};

use sqlx::PgPool;
use tokio::sync::watch;

use crate::tenant::AppPool;

/// The startup phase, as `/readyz` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Phase {
    /// No database configured: health endpoints only.
    HealthOnly,
    /// Opening connections.
    Connecting,
    /// The database could not be reached; the reason, and a retry is scheduled.
    DatabaseUnavailable(String),
    /// Another gateway holds the migration lock.
    WaitingForMigrationLock,
    /// This gateway holds the lock and applies migrations.
    Migrating,
    /// Pools open, migrations done.
    Ready,
}

impl Phase {
    /// The public reason for every database failure: the error text itself names hosts,
    /// roles and databases, so it goes to the log and the private listeners only.
    pub const UNAVAILABLE: &'static str = "database unavailable";

    /// A short machine-readable name.
    pub fn name(&self) -> &'static str {
        match self {
            Phase::HealthOnly => "health_only",
            Phase::Connecting => "connecting",
            Phase::DatabaseUnavailable(_) => "database_unavailable",
            Phase::WaitingForMigrationLock => "waiting_for_migrations",
            Phase::Migrating => "migrating",
            Phase::Ready => "ready",
        }
    }

    /// Why the gateway is not ready in this phase, for `/readyz`.
    pub fn reason(&self) -> String {
        match self {
            Phase::HealthOnly => "health-only mode: AIHUMMER_DATABASE_URL is not set".to_string(),
            Phase::Connecting => "connecting to the database".to_string(),
            Phase::DatabaseUnavailable(why) => format!("database unavailable: {why}"),
            Phase::WaitingForMigrationLock => {
                "waiting for migrations: another gateway holds the migration lock".to_string()
            }
            Phase::Migrating => "applying migrations".to_string(),
            Phase::Ready => "ready".to_string(),
        }
    }

    /// [`Phase::reason`] without database error text, for the public listener.
    pub fn public_reason(&self) -> String {
        match self {
            Phase::DatabaseUnavailable(_) => Self::UNAVAILABLE.to_string(),
            other => other.reason(),
        }
    }
}

/// The pools the gateway serves with, once startup has opened them.
#[derive(Debug, Clone)]
pub struct Pools {
    /// Owner connection: migrations and cross-tenant background work.
    pub owner: PgPool,
    /// Serving connection: transactions switch to `aihummer_app` when
    /// `AIHUMMER_DB_APP_URL` is set; else the owner pool, unrestricted.
    pub app: AppPool,
}

/// Shared, cheaply readable gateway state.
#[derive(Debug)]
pub struct Shared {
    phase: Mutex<Phase>,
    pools: OnceLock<Pools>,
    draining: AtomicBool,
    withdrawn: AtomicBool,
    database_problem: Mutex<Option<String>>,
    leadership: watch::Receiver<bool>,
    ready_answered: watch::Sender<bool>,
    /// Whether a database is configured at all.
    pub full_mode: bool,
    /// This process's id, reported so a supervisor can tell children apart.
    pub pid: u32,
    /// A name unique to this process's lifetime: lease owner and leader in the database.
    pub instance: String,
}

impl Shared {
    /// Fresh state: `Connecting` with a database configured, `HealthOnly` without;
    /// whether this gateway leads is read from `leadership`.
    pub fn new(full_mode: bool, leadership: watch::Receiver<bool>) -> Self {
        let phase = if full_mode {
            Phase::Connecting
        } else {
            Phase::HealthOnly
        };
        Self {
            phase: Mutex::new(phase),
            pools: OnceLock::new(),
            draining: AtomicBool::new(false),
            withdrawn: AtomicBool::new(false),
            database_problem: Mutex::new(None),
            leadership,
            ready_answered: watch::channel(false).0,
            full_mode,
            pid: std::process::id(),
            instance: format!(
                "{}-{}",
                std::process::id(),
                &uuid::Uuid::new_v4().simple().to_string()[..8]
            ),
        }
    }

    /// The current phase.
    pub fn phase(&self) -> Phase {
        self.phase
            .lock()
            .map(|p| p.clone())
            .unwrap_or(Phase::Connecting)
    }

    /// Moves to `phase`, logging the change.
    pub fn set_phase(&self, phase: Phase) {
        if let Ok(mut current) = self.phase.lock() {
            if *current != phase {
                tracing::info!(phase = phase.name(), detail = %phase.reason(), "gateway phase");
            }
            *current = phase;
        }
    }

    /// Records the opened pools and moves to `Ready`.
    pub fn set_ready(&self, pools: Pools) {
        // Startup runs once; a second call would be a bug, and the first pools stay.
        let _ = self.pools.set(pools);
        self.set_phase(Phase::Ready);
    }

    /// The pools, once ready.
    pub fn pools(&self) -> Option<&Pools> {
        self.pools.get()
    }

    /// Marks the gateway as draining; returns whether it already was.
    pub fn start_draining(&self) -> bool {
        self.draining.swap(true, Ordering::SeqCst)
    }

    /// Takes the gateway out of rotation: `/readyz` answers 503 from now on while every
    /// route keeps serving, so a proxy stops sending traffic before the drain begins.
    pub fn withdraw(&self) {
        if !self.withdrawn.swap(true, Ordering::SeqCst) {
            tracing::info!("withdrawn from rotation: /readyz answers 503, still serving");
        }
    }

    /// Whether the gateway was taken out of rotation.
    pub fn is_withdrawn(&self) -> bool {
        self.withdrawn.load(Ordering::SeqCst)
    }

    /// Whether a drain has started.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }

    /// Records what the last readiness check found wrong with the database (`None`: it
    /// answered), logging each change once rather than at every probe.
    pub fn note_database_problem(&self, problem: Option<&str>) {
        let Ok(mut last) = self.database_problem.lock() else {
            return;
        };
        if last.as_deref() == problem {
            return;
        }
        match problem {
            Some(problem) => tracing::warn!(%problem, "database unreachable; not ready"),
            None => tracing::info!("database answers again; ready"),
        }
        *last = problem.map(str::to_string);
    }

    /// Records that a private `/readyz` (the supervisor's probe, when supervised) has
    /// answered 200.
    pub fn note_ready_answered(&self) {
        self.ready_answered
            .send_if_modified(|answered| !std::mem::replace(answered, true));
    }

    /// Turns true once a private `/readyz` has answered 200, and stays true.
    pub fn ready_answered(&self) -> watch::Receiver<bool> {
        self.ready_answered.subscribe()
    }

    /// Whether this gateway holds the scheduler's leadership: the elector's last word,
    /// `false` before it has any and after it is gone.
    pub fn is_leader(&self) -> bool {
        *self.leadership.borrow()
    }
}
