//! The fleet's state in PostgreSQL: the node registry, the rollout lease and the halted
//! versions. Every verb is one short transaction on a small pool of the supervisor's own
//! (`AIHUMMER_DATABASE_URL`, the owner role), separate from the gateway's.
//!
//! The rollout lease is one row. A node takes it when the row is free, expired, or already
//! its own; it renews it with every heartbeat and gives it back once its new version has
//! served through the soak window. A node whose supervisor dies loses it [`LEASE_TTL`]
//! after its last renewal. Taking it and reading the halted versions happen in that
//! order in one transaction: a node that halts a version does so in the same transaction
//! that frees the lease, so whoever takes the lease next sees the halt.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use semver::Version;
use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;

use super::node::NodeId;
use super::report::{FleetReport, HaltInfo, LeaseInfo, NodeInfo};
use super::schema;

/// How long the lease outlives its last renewal.
pub const LEASE_TTL: Duration = Duration::from_secs(30);
/// A node not heard from for this long is shown as stale.
pub const STALE_AFTER: Duration = Duration::from_secs(10);
/// How long a fleet query may wait for a connection: a database outage must cost the
/// supervisor a short wait, never a stuck loop.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(5);

const UTC: &str = "'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"'";

/// A fleet query failed.
#[derive(Debug, thiserror::Error)]
#[error("fleet database (AIHUMMER_DATABASE_URL): cannot {action}: {source}")]
pub struct FleetError {
    action: &'static str,
    source: sqlx::Error,
}

fn failed(action: &'static str) -> impl FnOnce(sqlx::Error) -> FleetError {
    move |source| FleetError { action, source }
}

/// What asking for the rollout lease came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lease {
    /// This node holds it now.
    Granted,
    /// Another node rolls out a version.
    Held {
        /// That node.
        node: String,
        /// The version it rolls out.
        version: String,
    },
    /// The version is halted fleet-wide; the lease was not taken.
    Halted {
        /// The node that halted it.
        node: String,
        /// Why.
        reason: String,
    },
}

/// What this node reports with each heartbeat.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Heartbeat {
    /// The host name.
    pub host: String,
    /// The public listener.
    pub address: String,
    /// The gateway version serving.
    pub version: Option<String>,
    /// The supervisor's state.
    pub state: String,
    /// The last check's result, or what the node waits for.
    pub detail: Option<String>,
    /// When the supervisor started (RFC 3339).
    pub started_at: String,
}

/// This node's handle on the fleet's tables.
#[derive(Debug)]
pub struct Fleet {
    pool: PgPool,
    node: NodeId,
    schema_ready: AtomicBool,
    /// The version this node holds the lease for, as far as it knows.
    holding: Mutex<Option<Version>>,
}

impl Fleet {
    /// A handle for `node` on the database at `url`; connects on first use, so a database
    /// that is down at start delays nothing.
    pub fn new(url: &str, node: NodeId) -> Result<Fleet, FleetError> {
        let pool = PgPoolOptions::new()
            .max_connections(2)
            .min_connections(0)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .idle_timeout(Duration::from_secs(60))
            .connect_lazy(url)
            .map_err(failed("parse the URL"))?;
        Ok(Fleet {
            pool,
            node,
            schema_ready: AtomicBool::new(false),
            holding: Mutex::new(None),
        })
    }

    /// This node's id.
    pub fn node(&self) -> &NodeId {
        &self.node
    }

    /// The version this node holds the rollout lease for.
    pub fn holding(&self) -> Option<Version> {
        self.holding.lock().ok().and_then(|held| held.clone())
    }

    fn hold(&self, version: Option<Version>) {
        if let Ok(mut held) = self.holding.lock() {
            *held = version;
        }
    }

    /// The pool, once the schema exists. A clone (a handle on the same pool), so that
    /// the futures using it hold no borrow of `self`.
    async fn ready(&self) -> Result<PgPool, FleetError> {
        if !self.schema_ready.load(Ordering::Acquire) {
            schema::ensure(&self.pool)
                .await
                .map_err(failed("create the aihummer_fleet schema"))?;
            self.schema_ready.store(true, Ordering::Release);
        }
        Ok(self.pool.clone())
    }

    /// Asks for the rollout lease to install `version`.
    pub async fn acquire(&self, version: &Version) -> Result<Lease, FleetError> {
        let pool = self.ready().await?;
        let action = "take the rollout lease";
        let mut tx = pool.begin().await.map_err(failed(action))?;
        let taken: Option<String> = sqlx::query_scalar(
            "INSERT INTO aihummer_fleet.rollout_lease AS l
                 (singleton, node_id, version, acquired_at, expires_at)
             VALUES (true, $1, $2, now(), now() + make_interval(secs => $3))
             ON CONFLICT (singleton) DO UPDATE
                 SET node_id = excluded.node_id,
                     version = excluded.version,
                     acquired_at = CASE WHEN l.node_id = excluded.node_id
                                         AND l.version = excluded.version
                                        THEN l.acquired_at ELSE now() END,
                     expires_at = excluded.expires_at
                 WHERE l.node_id = excluded.node_id OR l.expires_at < now()
             RETURNING node_id",
        )
        .bind(self.node.to_string())
        .bind(version.to_string())
        .bind(LEASE_TTL.as_secs_f64())
        .fetch_optional(&mut *tx)
        .await
        .map_err(failed(action))?;
        if taken.is_none() {
            let (node, version): (String, String) =
                sqlx::query_as("SELECT node_id, version FROM aihummer_fleet.rollout_lease")
                    .fetch_one(&mut *tx)
                    .await
                    .map_err(failed(action))?;
            return Ok(Lease::Held { node, version });
        }
        // Read after taking the lease: a halt committed with the lease's release is seen.
        let halt: Option<(String, String)> = sqlx::query_as(
            "SELECT node_id, reason FROM aihummer_fleet.halted_versions WHERE version = $1",
        )
        .bind(version.to_string())
        .fetch_optional(&mut *tx)
        .await
        .map_err(failed(action))?;
        if let Some((node, reason)) = halt {
            tx.rollback().await.map_err(failed(action))?;
            return Ok(Lease::Halted { node, reason });
        }
        tx.commit().await.map_err(failed(action))?;
        self.hold(Some(version.clone()));
        Ok(Lease::Granted)
    }

    /// Renews the lease this node holds, if any; a lease found lost (it expired and
    /// another node took it) is forgotten, and reported.
    pub async fn renew(&self) -> Result<(), FleetError> {
        let Some(version) = self.holding() else {
            return Ok(());
        };
        let pool = self.ready().await?;
        let renewed = sqlx::query(
            "UPDATE aihummer_fleet.rollout_lease
                SET expires_at = now() + make_interval(secs => $2)
              WHERE node_id = $1 AND version = $3",
        )
        .bind(self.node.to_string())
        .bind(LEASE_TTL.as_secs_f64())
        .bind(version.to_string())
        .execute(&pool)
        .await
        .map_err(failed("renew the rollout lease"))?;
        if renewed.rows_affected() == 0 {
            tracing::error!(%version, "the rollout lease expired and was lost before this node released it");
            self.hold(None);
        }
        Ok(())
    }

    /// Gives the lease back.
    pub async fn release(&self) -> Result<(), FleetError> {
        let Some(version) = self.holding() else {
            return Ok(());
        };
        let pool = self.ready().await?;
        sqlx::query("DELETE FROM aihummer_fleet.rollout_lease WHERE node_id = $1")
            .bind(self.node.to_string())
            .execute(&pool)
            .await
            .map_err(failed("release the rollout lease"))?;
        tracing::info!(%version, "rollout lease released");
        self.hold(None);
        Ok(())
    }

    /// Halts `version` fleet-wide for `reason`, and frees the lease if this node held it
    /// for that version, in one transaction.
    pub async fn halt(&self, version: &Version, reason: &str) -> Result<(), FleetError> {
        let pool = self.ready().await?;
        let action = "record the halted version";
        let mut tx = pool.begin().await.map_err(failed(action))?;
        sqlx::query(
            "INSERT INTO aihummer_fleet.halted_versions (version, node_id, reason, halted_at)
             VALUES ($1, $2, $3, now()) ON CONFLICT (version) DO NOTHING",
        )
        .bind(version.to_string())
        .bind(self.node.to_string())
        .bind(reason.to_string())
        .execute(&mut *tx)
        .await
        .map_err(failed(action))?;
        sqlx::query("DELETE FROM aihummer_fleet.rollout_lease WHERE node_id = $1 AND version = $2")
            .bind(self.node.to_string())
            .bind(version.to_string())
            .execute(&mut *tx)
            .await
            .map_err(failed(action))?;
        tx.commit().await.map_err(failed(action))?;
        tracing::warn!(%version, %reason, "version halted fleet-wide");
        if self.holding().as_ref() == Some(version) {
            self.hold(None);
        }
        Ok(())
    }

    /// Why `version` is halted, if it is: the halting node and its reason.
    pub async fn halted(&self, version: &Version) -> Result<Option<(String, String)>, FleetError> {
        let pool = self.ready().await?;
        sqlx::query_as(
            "SELECT node_id, reason FROM aihummer_fleet.halted_versions WHERE version = $1",
        )
        .bind(version.to_string())
        .fetch_optional(&pool)
        .await
        .map_err(failed("read the halted versions"))
    }

    /// Lifts the halt on `version`; whether it was halted.
    pub async fn resume(&self, version: &Version) -> Result<bool, FleetError> {
        let pool = self.ready().await?;
        let lifted = sqlx::query("DELETE FROM aihummer_fleet.halted_versions WHERE version = $1")
            .bind(version.to_string())
            .execute(&pool)
            .await
            .map_err(failed("lift the halt"))?;
        Ok(lifted.rows_affected() > 0)
    }

    /// Registers this node, or refreshes its row.
    pub async fn heartbeat(&self, beat: &Heartbeat) -> Result<(), FleetError> {
        let pool = self.ready().await?;
        sqlx::query(
            "INSERT INTO aihummer_fleet.nodes AS n (node_id, host, address, version,
                 supervisor_version, state, detail, cohort, started_at, last_seen)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9::timestamptz, now())
             ON CONFLICT (node_id) DO UPDATE SET host = excluded.host,
                 address = excluded.address, version = excluded.version,
                 supervisor_version = excluded.supervisor_version, state = excluded.state,
                 detail = excluded.detail, cohort = excluded.cohort,
                 started_at = excluded.started_at, last_seen = now()",
        )
        .bind(self.node.to_string())
        .bind(beat.host.clone())
        .bind(beat.address.clone())
        .bind(beat.version.clone())
        .bind(crate::VERSION.to_string())
        .bind(beat.state.clone())
        .bind(beat.detail.clone())
        .bind(i16::from(self.node.cohort()))
        .bind(beat.started_at.clone())
        .execute(&pool)
        .await
        .map_err(failed("register this node"))?;
        Ok(())
    }

    /// Every node, the lease and the halted versions.
    pub async fn report(&self) -> Result<FleetReport, FleetError> {
        let pool = self.ready().await?;
        let action = "read the fleet";
        type NodeRow = (
            String,
            String,
            String,
            Option<String>,
            String,
            String,
            Option<String>,
            i16,
            String,
            String,
            i64,
        );
        let rows: Vec<NodeRow> = sqlx::query_as(&format!(
            "SELECT node_id, host, address, version, supervisor_version, state, detail, cohort,
                    to_char(started_at AT TIME ZONE 'UTC', {UTC}),
                    to_char(last_seen AT TIME ZONE 'UTC', {UTC}),
                    greatest(0, (extract(epoch FROM now() - last_seen) * 1000)::bigint)
               FROM aihummer_fleet.nodes ORDER BY host, address, node_id"
        ))
        .fetch_all(&pool)
        .await
        .map_err(failed(action))?;
        let stale_ms = u64::try_from(STALE_AFTER.as_millis()).unwrap_or(u64::MAX);
        let nodes = rows
            .into_iter()
            .map(|r| {
                let seen_ms_ago = u64::try_from(r.10).unwrap_or(0);
                NodeInfo {
                    stale: r.5 != "stopped" && seen_ms_ago > stale_ms,
                    node_id: r.0,
                    host: r.1,
                    address: r.2,
                    version: r.3,
                    supervisor_version: r.4,
                    state: r.5,
                    detail: r.6,
                    cohort: u8::try_from(r.7).unwrap_or(0),
                    started_at: r.8,
                    last_seen: r.9,
                    seen_ms_ago,
                }
            })
            .collect();
        let lease: Option<(String, String, String, i64)> = sqlx::query_as(&format!(
            "SELECT node_id, version, to_char(acquired_at AT TIME ZONE 'UTC', {UTC}),
                    (extract(epoch FROM expires_at - now()) * 1000)::bigint
               FROM aihummer_fleet.rollout_lease"
        ))
        .fetch_optional(&pool)
        .await
        .map_err(failed(action))?;
        let halted: Vec<(String, String, String, String)> = sqlx::query_as(&format!(
            "SELECT version, node_id, reason, to_char(halted_at AT TIME ZONE 'UTC', {UTC})
               FROM aihummer_fleet.halted_versions ORDER BY halted_at"
        ))
        .fetch_all(&pool)
        .await
        .map_err(failed(action))?;
        Ok(FleetReport {
            nodes,
            lease: lease.map(|(node_id, version, acquired_at, expires_in_ms)| LeaseInfo {
                node_id,
                version,
                acquired_at,
                expires_in_ms,
            }),
            halted: halted
                .into_iter()
                .map(|(version, node_id, reason, halted_at)| HaltInfo {
                    version,
                    node_id,
                    reason,
                    halted_at,
                })
                .collect(),
        })
    }

    /// Closes the pool.
    pub async fn close(&self) {
        self.pool.close().await;
    }
}
