//! SQLite backends (cargo feature `sqlite`): one database file shared by any number of
//! processes.
//!
//! * WAL journal, `synchronous=NORMAL` (durable across process crashes; a power loss may drop
//!   the last transactions), a busy handler that retries with short sleeps up to
//!   [`SqliteOptions::busy_timeout`].
//! * Every write runs in `BEGIN IMMEDIATE`, so the write lock is taken up front and concurrent
//!   writers queue instead of failing on a lock upgrade. A claim is one statement
//!   (`UPDATE … WHERE rowid IN (SELECT … LIMIT n) RETURNING …`), so no two processes can claim
//!   the same job.
//! * One connection per backend instance; rusqlite is synchronous, so each call runs on tokio's
//!   blocking pool, statements come from the connection's prepared-statement cache.
//! * Tables keep the reference's names and columns (`worker_registry`, `work_pool`) plus a few
//!   new columns, added in place to a file the reference created. The reference's single-column
//!   `pool_name` and `status` indexes are not created (the `(pool_name, status)` index covers
//!   them, and each index costs every status change an extra write). `flatmachine_schema` records
//!   a version per table group so a later release can migrate; a file from a newer release is
//!   refused ([`DistributedError::SchemaTooNew`]).
//!
//! The connection handling (WAL, `synchronous`, busy handler, schema versions) is shared with
//! the SQLite checkpoint store, in `crate::sqlite`.

use rusqlite::Connection;

use super::DistributedError;

mod registration;
mod work;

pub use registration::SqliteRegistrationBackend;
pub use work::{SqliteWorkBackend, SqliteWorkPool};

/// Schema version of `worker_registry` this release writes.
const REGISTRY_SCHEMA: i64 = 1;
/// Schema version of `work_pool` this release writes.
const WORK_SCHEMA: i64 = 2;

pub use crate::sqlite::SqliteOptions;
use crate::sqlite::{Db, SqliteError, check_version, immediate};

fn storage(e: impl std::fmt::Display) -> DistributedError {
    DistributedError::Storage(e.to_string())
}

impl From<rusqlite::Error> for DistributedError {
    fn from(e: rusqlite::Error) -> Self {
        storage(e)
    }
}

impl From<SqliteError> for DistributedError {
    fn from(e: SqliteError) -> Self {
        match e {
            SqliteError::SchemaTooNew {
                component,
                found,
                supported,
            } => DistributedError::SchemaTooNew {
                component,
                found,
                supported,
            },
            other => storage(other),
        }
    }
}

impl Db {
    /// [`Db::run`] with the distributed backends' error type.
    async fn call<T, F>(&self, f: F) -> Result<T, DistributedError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T, DistributedError> + Send + 'static,
    {
        self.run(f).await
    }
}

/// Adds `column` to `table` if a file created by the reference lacks it.
fn ensure_column(
    tx: &rusqlite::Transaction<'_>,
    table: &str,
    column: &str,
    decl: &str,
) -> Result<(), DistributedError> {
    let mut stmt = tx.prepare(&format!("PRAGMA table_info({table})"))?;
    let names = stmt
        .query_map([], |r| r.get::<_, String>(1))?
        .collect::<Result<Vec<_>, _>>()?;
    if !names.iter().any(|n| n == column) {
        tx.execute_batch(&format!("ALTER TABLE {table} ADD COLUMN {column} {decl}"))?;
    }
    Ok(())
}

fn registry_schema(conn: &mut Connection) -> Result<(), DistributedError> {
    immediate(conn, |tx| {
        check_version(tx, "worker_registry", REGISTRY_SCHEMA)?;
        tx.execute_batch(
            "CREATE TABLE IF NOT EXISTS worker_registry (
                worker_id TEXT PRIMARY KEY,
                status TEXT NOT NULL DEFAULT 'active',
                last_heartbeat TEXT NOT NULL,
                host TEXT,
                pid INTEGER,
                capabilities TEXT,
                started_at TEXT,
                current_task_id TEXT,
                metadata TEXT,
                pool_id TEXT
            );
            CREATE INDEX IF NOT EXISTS idx_worker_status ON worker_registry(status);
            CREATE INDEX IF NOT EXISTS idx_worker_heartbeat ON worker_registry(last_heartbeat);",
        )?;
        ensure_column(tx, "worker_registry", "pool_id", "TEXT")
    })
}

fn work_schema(conn: &mut Connection) -> Result<(), DistributedError> {
    immediate(conn, |tx| {
        check_version(tx, "work_pool", WORK_SCHEMA)?;
        tx.execute_batch(
            "CREATE TABLE IF NOT EXISTS work_pool (
                item_id TEXT PRIMARY KEY,
                pool_name TEXT NOT NULL,
                data TEXT NOT NULL,
                status TEXT NOT NULL DEFAULT 'pending',
                claimed_by TEXT,
                claimed_at TEXT,
                attempts INTEGER NOT NULL DEFAULT 0,
                max_retries INTEGER NOT NULL DEFAULT 3,
                created_at TEXT NOT NULL,
                error TEXT,
                result TEXT,
                completed_at TEXT
            );
            CREATE INDEX IF NOT EXISTS idx_work_claimed_by ON work_pool(claimed_by);
            CREATE INDEX IF NOT EXISTS idx_work_pool_status ON work_pool(pool_name, status);",
        )?;
        ensure_column(tx, "work_pool", "result", "TEXT")?;
        ensure_column(tx, "work_pool", "completed_at", "TEXT")?;
        // Version 2: claim tokens, leases, the claiming execution; per-pool counters.
        ensure_column(tx, "work_pool", "claim_token", "TEXT")?;
        ensure_column(tx, "work_pool", "lease_expires_at", "TEXT")?;
        ensure_column(tx, "work_pool", "claim_execution", "TEXT")?;
        ensure_column(tx, "work_pool", "previous_execution", "TEXT")?;
        tx.execute_batch(
            "CREATE TABLE IF NOT EXISTS work_pool_counters (
                pool_name TEXT PRIMARY KEY,
                released INTEGER NOT NULL DEFAULT 0,
                expired INTEGER NOT NULL DEFAULT 0,
                requeued INTEGER NOT NULL DEFAULT 0,
                removed INTEGER NOT NULL DEFAULT 0
            );",
        )?;
        Ok(())
    })
}

fn parse_json<T: serde::de::DeserializeOwned>(text: &str) -> Result<T, DistributedError> {
    serde_json::from_str(text).map_err(|e| DistributedError::Data(e.to_string()))
}

fn to_json(value: &impl serde::Serialize) -> Result<String, DistributedError> {
    serde_json::to_string(value).map_err(|e| DistributedError::Data(e.to_string()))
}
