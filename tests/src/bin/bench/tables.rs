//! What a table costs on disk and how vacuum keeps up with it: sizes from
//! `pg_relation_size`, `pg_indexes_size` and `pg_total_relation_size`, tuple counts and
//! autovacuum runs from `pg_stat_user_tables`.

use sqlx::PgPool;

use crate::report::thousands;

/// One reading of one table.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Reading {
    /// The heap alone, bytes.
    pub heap: i64,
    /// All its indexes, bytes.
    pub indexes: i64,
    /// Heap, indexes and TOAST, bytes.
    pub total: i64,
    /// Live rows, as the statistics estimate them.
    pub live: i64,
    /// Dead rows not yet vacuumed away.
    pub dead: i64,
    /// Rows deleted since the statistics began (purges are the only deletes).
    pub deleted: i64,
    /// Autovacuum runs on it so far.
    pub autovacuums: i64,
    /// Manual `VACUUM` runs on it so far.
    pub vacuums: i64,
    /// Seconds since the last autovacuum ended, if there was one.
    pub since_autovacuum: Option<f64>,
}

/// Reads `table` in the database `pool` is connected to.
pub async fn read(pool: &PgPool, table: &str) -> anyhow::Result<Reading> {
    // The statistics are a snapshot per transaction: a fresh one for each reading.
    sqlx::query("SELECT pg_stat_clear_snapshot()")
        .execute(pool)
        .await?;
    let reading = sqlx::query_as(
        "SELECT pg_relation_size(s.relid) AS heap, pg_indexes_size(s.relid) AS indexes,
                pg_total_relation_size(s.relid) AS total,
                s.n_live_tup AS live, s.n_dead_tup AS dead, s.n_tup_del AS deleted,
                s.autovacuum_count AS autovacuums, s.vacuum_count AS vacuums,
                extract(epoch FROM now() - s.last_autovacuum)::float8 AS since_autovacuum
         FROM pg_stat_user_tables s WHERE s.relname = $1",
    )
    .bind(table)
    .fetch_optional(pool)
    .await?;
    reading.ok_or_else(|| anyhow::anyhow!("no statistics for the table {table}"))
}

/// Bytes as KiB or MiB, one decimal.
pub fn size(bytes: i64) -> String {
    let bytes = bytes as f64;
    if bytes >= 1024.0 * 1024.0 {
        format!("{:.1} MiB", bytes / (1024.0 * 1024.0))
    } else {
        format!("{:.0} KiB", bytes / 1024.0)
    }
}

impl Reading {
    /// Heap / indexes / total.
    pub fn sizes(&self) -> String {
        format!(
            "{} / {} / {}",
            size(self.heap),
            size(self.indexes),
            size(self.total)
        )
    }

    /// Live, dead and deleted rows, and the vacuum and autovacuum runs with how long ago
    /// the last autovacuum ended.
    pub fn vacuum(&self) -> String {
        let last = self
            .since_autovacuum
            .map_or("never".to_string(), |s| format!("last {s:.0} s before"));
        format!(
            "{} live, {} dead, {} deleted, {} vacuums, {} autovacuums ({last})",
            thousands(self.live as f64),
            thousands(self.dead as f64),
            thousands(self.deleted as f64),
            self.vacuums,
            self.autovacuums
        )
    }
}
