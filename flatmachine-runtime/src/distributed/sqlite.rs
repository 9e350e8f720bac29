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

use async_trait::async_trait;
use rusqlite::{Connection, OptionalExtension, params};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use super::registration::{RegistrationBackend, WorkerFilter, WorkerRecord, WorkerRegistration};
use super::work::{JobStatus, PoolStats, PushOptions, WorkBackend, WorkItem, WorkPool};
use super::{DistributedError, now_iso};
use crate::Value;

/// Schema version of `worker_registry` this release writes.
const REGISTRY_SCHEMA: i64 = 1;
/// Schema version of `work_pool` this release writes.
const WORK_SCHEMA: i64 = 1;

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
        ensure_column(tx, "work_pool", "completed_at", "TEXT")
    })
}

fn parse_json<T: serde::de::DeserializeOwned>(text: &str) -> Result<T, DistributedError> {
    serde_json::from_str(text).map_err(|e| DistributedError::Data(e.to_string()))
}

fn to_json(value: &impl serde::Serialize) -> Result<String, DistributedError> {
    serde_json::to_string(value).map_err(|e| DistributedError::Data(e.to_string()))
}

// ---------------------------------------------------------------------------------------------
// Registration

/// Worker registry in a SQLite file (table `worker_registry`).
#[derive(Debug, Clone)]
pub struct SqliteRegistrationBackend {
    db: Db,
    path: PathBuf,
}

impl SqliteRegistrationBackend {
    /// Opens (creating if needed) the registry in the database at `path`.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, DistributedError> {
        Self::open_with(path, SqliteOptions::default())
    }

    /// [`SqliteRegistrationBackend::open`] with explicit connection settings.
    pub fn open_with(
        path: impl AsRef<Path>,
        options: SqliteOptions,
    ) -> Result<Self, DistributedError> {
        let path = path.as_ref().to_path_buf();
        Ok(Self {
            db: Db::open(&path, options, registry_schema)?,
            path,
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

const WORKER_COLUMNS: &str = "worker_id, status, last_heartbeat, host, pid, capabilities, \
     started_at, current_task_id, metadata, pool_id";

fn row_to_worker(
    row: &rusqlite::Row<'_>,
) -> rusqlite::Result<(WorkerRecord, Option<String>, Option<String>)> {
    Ok((
        WorkerRecord {
            worker_id: row.get(0)?,
            status: row.get(1)?,
            last_heartbeat: row.get(2)?,
            host: row.get(3)?,
            pid: row
                .get::<_, Option<i64>>(4)?
                .and_then(|p| u32::try_from(p).ok()),
            capabilities: None,
            started_at: row.get(6)?,
            current_task_id: row.get(7)?,
            metadata: None,
            pool_id: row.get(9)?,
        },
        row.get(5)?,
        row.get(8)?,
    ))
}

fn finish_worker(
    (mut record, caps, meta): (WorkerRecord, Option<String>, Option<String>),
) -> Result<WorkerRecord, DistributedError> {
    record.capabilities = caps.as_deref().map(parse_json).transpose()?;
    record.metadata = meta.as_deref().map(parse_json).transpose()?;
    Ok(record)
}

#[async_trait]
impl RegistrationBackend for SqliteRegistrationBackend {
    async fn register(&self, worker: WorkerRegistration) -> Result<WorkerRecord, DistributedError> {
        let record = WorkerRecord::from_registration(&worker, now_iso());
        let caps = worker.capabilities.as_ref().map(to_json).transpose()?;
        let r = record.clone();
        self.db
            .call(move |conn| {
                immediate(conn, |tx| {
                    tx.prepare_cached(
                        "INSERT INTO worker_registry
                            (worker_id, status, last_heartbeat, host, pid, capabilities, started_at,
                             current_task_id, metadata, pool_id)
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, NULL, NULL, ?8)
                         ON CONFLICT(worker_id) DO UPDATE SET
                            status = excluded.status, last_heartbeat = excluded.last_heartbeat,
                            host = excluded.host, pid = excluded.pid,
                            capabilities = excluded.capabilities, started_at = excluded.started_at,
                            current_task_id = NULL, metadata = NULL, pool_id = excluded.pool_id",
                    )?
                    .execute(params![
                        r.worker_id,
                        r.status,
                        r.last_heartbeat,
                        r.host,
                        r.pid,
                        caps,
                        r.started_at,
                        r.pool_id
                    ])?;
                    Ok(())
                })
            })
            .await?;
        Ok(record)
    }

    async fn heartbeat(
        &self,
        worker_id: &str,
        metadata: Option<serde_json::Map<String, Value>>,
    ) -> Result<(), DistributedError> {
        let id = worker_id.to_string();
        self.db
            .call(move |conn| {
                immediate(conn, |tx| {
                    let now = now_iso();
                    let merged = match metadata {
                        None => None,
                        Some(new) => {
                            let old: Option<Option<String>> = tx
                                .prepare_cached(
                                    "SELECT metadata FROM worker_registry WHERE worker_id = ?1",
                                )?
                                .query_row(params![id], |r| r.get(0))
                                .optional()?;
                            let Some(old) = old else {
                                return Err(DistributedError::WorkerNotFound(id.clone()));
                            };
                            let mut map: serde_json::Map<String, Value> = match old {
                                Some(text) => parse_json(&text)?,
                                None => serde_json::Map::new(),
                            };
                            map.extend(new);
                            Some(to_json(&map)?)
                        }
                    };
                    let changed = tx
                        .prepare_cached(
                            "UPDATE worker_registry
                             SET last_heartbeat = ?1, metadata = COALESCE(?2, metadata)
                             WHERE worker_id = ?3",
                        )?
                        .execute(params![now, merged, id])?;
                    if changed == 0 {
                        return Err(DistributedError::WorkerNotFound(id.clone()));
                    }
                    Ok(())
                })
            })
            .await
    }

    async fn update_status(&self, worker_id: &str, status: &str) -> Result<(), DistributedError> {
        let (id, status) = (worker_id.to_string(), status.to_string());
        self.db
            .call(move |conn| {
                immediate(conn, |tx| {
                    let changed = tx
                        .prepare_cached(
                            "UPDATE worker_registry SET status = ?1 WHERE worker_id = ?2",
                        )?
                        .execute(params![status, id])?;
                    if changed == 0 {
                        return Err(DistributedError::WorkerNotFound(id.clone()));
                    }
                    Ok(())
                })
            })
            .await
    }

    async fn get(&self, worker_id: &str) -> Result<Option<WorkerRecord>, DistributedError> {
        let id = worker_id.to_string();
        self.db
            .call(move |conn| {
                let row = conn
                    .prepare_cached(&format!(
                        "SELECT {WORKER_COLUMNS} FROM worker_registry WHERE worker_id = ?1"
                    ))?
                    .query_row(params![id], row_to_worker)
                    .optional()?;
                row.map(finish_worker).transpose()
            })
            .await
    }

    async fn list(&self, filter: &WorkerFilter) -> Result<Vec<WorkerRecord>, DistributedError> {
        let mut sql = format!("SELECT {WORKER_COLUMNS} FROM worker_registry WHERE 1=1");
        let mut args: Vec<String> = Vec::new();
        if let Some(status) = &filter.status {
            args.push(to_json(&status.as_list())?);
            sql.push_str(&format!(
                " AND status IN (SELECT value FROM json_each(?{}))",
                args.len()
            ));
        }
        if let Some(cap) = &filter.capability {
            args.push(cap.clone());
            sql.push_str(&format!(
                " AND json_valid(capabilities) AND EXISTS (SELECT 1 FROM json_each(capabilities) WHERE value = ?{})",
                args.len()
            ));
        }
        if let Some(pool) = &filter.pool_id {
            args.push(pool.clone());
            sql.push_str(&format!(" AND pool_id = ?{}", args.len()));
        }
        if let Some(cutoff) = filter.stale_cutoff() {
            args.push(cutoff);
            sql.push_str(&format!(" AND last_heartbeat < ?{}", args.len()));
        }
        sql.push_str(" ORDER BY rowid");
        self.db
            .call(move |conn| {
                let mut stmt = conn.prepare_cached(&sql)?;
                let rows = stmt
                    .query_map(rusqlite::params_from_iter(args.iter()), row_to_worker)?
                    .collect::<Result<Vec<_>, _>>()?;
                rows.into_iter().map(finish_worker).collect()
            })
            .await
    }
}

// ---------------------------------------------------------------------------------------------
// Work

/// Named pools in a SQLite file (table `work_pool`, one row per job).
#[derive(Debug)]
pub struct SqliteWorkBackend {
    db: Db,
    path: PathBuf,
    pools: Mutex<HashMap<String, Arc<SqliteWorkPool>>>,
}

impl SqliteWorkBackend {
    /// Opens (creating if needed) the pools in the database at `path`.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, DistributedError> {
        Self::open_with(path, SqliteOptions::default())
    }

    /// [`SqliteWorkBackend::open`] with explicit connection settings.
    pub fn open_with(
        path: impl AsRef<Path>,
        options: SqliteOptions,
    ) -> Result<Self, DistributedError> {
        let path = path.as_ref().to_path_buf();
        Ok(Self {
            db: Db::open(&path, options, work_schema)?,
            path,
            pools: Mutex::new(HashMap::new()),
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The pool called `name`, with its concrete type.
    pub fn sqlite_pool(&self, name: &str) -> Arc<SqliteWorkPool> {
        self.pools
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(name.to_string())
            .or_insert_with(|| {
                Arc::new(SqliteWorkPool {
                    name: name.to_string(),
                    db: self.db.clone(),
                })
            })
            .clone()
    }
}

impl WorkBackend for SqliteWorkBackend {
    fn pool(&self, name: &str) -> Arc<dyn WorkPool> {
        self.sqlite_pool(name)
    }
}

/// One pool of a [`SqliteWorkBackend`] (shares its connection).
#[derive(Debug)]
pub struct SqliteWorkPool {
    name: String,
    db: Db,
}

const ITEM_COLUMNS: &str = "item_id, data, claimed_by, claimed_at, attempts, max_retries, status, \
     created_at, result, error";

type RawItem = (
    String,
    String,
    Option<String>,
    Option<String>,
    i64,
    i64,
    String,
    String,
    Option<String>,
    Option<String>,
);

fn raw_item(row: &rusqlite::Row<'_>) -> rusqlite::Result<RawItem> {
    Ok((
        row.get(0)?,
        row.get(1)?,
        row.get(2)?,
        row.get(3)?,
        row.get(4)?,
        row.get(5)?,
        row.get(6)?,
        row.get(7)?,
        row.get(8)?,
        row.get(9)?,
    ))
}

fn finish_item(raw: RawItem) -> Result<WorkItem, DistributedError> {
    let (
        id,
        data,
        claimed_by,
        claimed_at,
        attempts,
        max_retries,
        status,
        created_at,
        result,
        error,
    ) = raw;
    Ok(WorkItem {
        data: parse_json(&data)?,
        claimed_by,
        claimed_at,
        attempts: u32::try_from(attempts).unwrap_or(0),
        max_retries: u32::try_from(max_retries).unwrap_or(0),
        status: JobStatus::parse(&status).ok_or_else(|| {
            DistributedError::Data(format!("work item `{id}` has unknown status `{status}`"))
        })?,
        created_at,
        result: result.as_deref().map(parse_json).transpose()?,
        error,
        id,
    })
}

/// Why a claimed-only update touched no row.
fn not_claimed(tx: &rusqlite::Transaction<'_>, pool: &str, id: &str) -> DistributedError {
    let status: Result<Option<String>, _> = tx
        .prepare_cached("SELECT status FROM work_pool WHERE item_id = ?1 AND pool_name = ?2")
        .and_then(|mut s| s.query_row(params![id, pool], |r| r.get(0)).optional());
    match status {
        Ok(Some(status)) => DistributedError::NotClaimed {
            id: id.to_string(),
            status,
        },
        Ok(None) => DistributedError::JobNotFound(id.to_string()),
        Err(e) => e.into(),
    }
}

const CLAIM_SQL: &str = "UPDATE work_pool
    SET status = 'claimed', claimed_by = ?1, claimed_at = ?2, attempts = attempts + 1
    WHERE rowid IN (
        SELECT rowid FROM work_pool
        WHERE pool_name = ?3 AND status = 'pending'
        ORDER BY rowid LIMIT ?4
    )
    RETURNING rowid, item_id, data, claimed_by, claimed_at, attempts, max_retries, status,
              created_at, result, error";

impl SqliteWorkPool {
    fn claim_blocking(
        conn: &mut Connection,
        pool: &str,
        worker: &str,
        limit: usize,
    ) -> Result<Vec<WorkItem>, DistributedError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let mut rows = immediate(conn, |tx| {
            let mut stmt = tx.prepare_cached(CLAIM_SQL)?;
            let rows = stmt
                .query_map(params![worker, now_iso(), pool, limit], |r| {
                    let rowid: i64 = r.get(0)?;
                    Ok((
                        rowid,
                        (
                            r.get(1)?,
                            r.get(2)?,
                            r.get(3)?,
                            r.get(4)?,
                            r.get(5)?,
                            r.get(6)?,
                            r.get(7)?,
                            r.get(8)?,
                            r.get(9)?,
                            r.get(10)?,
                        ),
                    ))
                })?
                .collect::<Result<Vec<(i64, RawItem)>, _>>()?;
            Ok::<_, DistributedError>(rows)
        })?;
        rows.sort_by_key(|(rowid, _)| *rowid);
        rows.into_iter().map(|(_, raw)| finish_item(raw)).collect()
    }
}

#[async_trait]
impl WorkPool for SqliteWorkPool {
    fn name(&self) -> &str {
        &self.name
    }

    async fn push(&self, data: Value, options: PushOptions) -> Result<String, DistributedError> {
        let mut ids = self.push_many(vec![data], options).await?;
        ids.pop().ok_or_else(|| storage("push inserted no row"))
    }

    async fn push_many(
        &self,
        data: Vec<Value>,
        options: PushOptions,
    ) -> Result<Vec<String>, DistributedError> {
        let texts = data.iter().map(to_json).collect::<Result<Vec<_>, _>>()?;
        let pool = self.name.clone();
        self.db
            .call(move |conn| {
                immediate(conn, |tx| {
                    let now = now_iso();
                    let mut stmt = tx.prepare_cached(
                        "INSERT INTO work_pool
                            (item_id, pool_name, data, status, attempts, max_retries, created_at)
                         VALUES (?1, ?2, ?3, 'pending', 0, ?4, ?5)",
                    )?;
                    let mut ids = Vec::with_capacity(texts.len());
                    for text in &texts {
                        let id = uuid::Uuid::new_v4().to_string();
                        stmt.execute(params![id, pool, text, options.max_retries, now])?;
                        ids.push(id);
                    }
                    Ok(ids)
                })
            })
            .await
    }

    async fn claim(&self, worker_id: &str) -> Result<Option<WorkItem>, DistributedError> {
        Ok(self.claim_many(worker_id, 1).await?.pop())
    }

    async fn claim_many(
        &self,
        worker_id: &str,
        limit: usize,
    ) -> Result<Vec<WorkItem>, DistributedError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let (pool, worker) = (self.name.clone(), worker_id.to_string());
        self.db
            .call(move |conn| Self::claim_blocking(conn, &pool, &worker, limit))
            .await
    }

    async fn complete(&self, item_id: &str, result: Option<Value>) -> Result<(), DistributedError> {
        self.complete_many(vec![(item_id.to_string(), result)])
            .await
    }

    async fn complete_many(
        &self,
        results: Vec<(String, Option<Value>)>,
    ) -> Result<(), DistributedError> {
        let results = results
            .into_iter()
            .map(|(id, r)| Ok((id, r.as_ref().map(to_json).transpose()?)))
            .collect::<Result<Vec<_>, DistributedError>>()?;
        let pool = self.name.clone();
        self.db
            .call(move |conn| {
                immediate(conn, |tx| {
                    let now = now_iso();
                    let mut stmt = tx.prepare_cached(
                        "UPDATE work_pool
                         SET status = 'done', result = ?1, completed_at = ?2, error = NULL
                         WHERE item_id = ?3 AND pool_name = ?4 AND status = 'claimed'",
                    )?;
                    for (id, result) in &results {
                        if stmt.execute(params![result, now, id, pool])? == 0 {
                            return Err(not_claimed(tx, &pool, id));
                        }
                    }
                    Ok(())
                })
            })
            .await
    }

    async fn fail(
        &self,
        item_id: &str,
        error: Option<&str>,
    ) -> Result<JobStatus, DistributedError> {
        let (pool, id, error) = (
            self.name.clone(),
            item_id.to_string(),
            error.map(str::to_string),
        );
        self.db
            .call(move |conn| {
                immediate(conn, |tx| {
                    let status: Option<String> = tx
                        .prepare_cached(
                            "UPDATE work_pool SET
                                status = CASE WHEN attempts >= max_retries THEN 'poisoned' ELSE 'pending' END,
                                claimed_by = CASE WHEN attempts >= max_retries THEN claimed_by END,
                                claimed_at = CASE WHEN attempts >= max_retries THEN claimed_at END,
                                error = ?1
                             WHERE item_id = ?2 AND pool_name = ?3 AND status = 'claimed'
                             RETURNING status",
                        )?
                        .query_row(params![error, id, pool], |r| r.get(0))
                        .optional()?;
                    match status {
                        Some(s) => JobStatus::parse(&s)
                            .ok_or_else(|| storage(format!("unexpected status `{s}`"))),
                        None => Err(not_claimed(tx, &pool, &id)),
                    }
                })
            })
            .await
    }

    async fn size(&self) -> Result<u64, DistributedError> {
        let pool = self.name.clone();
        self.db
            .call(move |conn| {
                let n: i64 = conn
                    .prepare_cached(
                        "SELECT COUNT(*) FROM work_pool WHERE pool_name = ?1 AND status = 'pending'",
                    )?
                    .query_row(params![pool], |r| r.get(0))?;
                Ok(u64::try_from(n).unwrap_or(0))
            })
            .await
    }

    async fn release_by_worker(&self, worker_id: &str) -> Result<u64, DistributedError> {
        let (pool, worker) = (self.name.clone(), worker_id.to_string());
        self.db
            .call(move |conn| {
                immediate(conn, |tx| {
                    let lost = format!("worker `{worker}` was lost");
                    let n = tx
                        .prepare_cached(
                            "UPDATE work_pool SET
                                status = CASE WHEN attempts >= max_retries THEN 'poisoned' ELSE 'pending' END,
                                claimed_by = CASE WHEN attempts >= max_retries THEN claimed_by END,
                                claimed_at = CASE WHEN attempts >= max_retries THEN claimed_at END,
                                error = CASE WHEN attempts >= max_retries THEN ?3 ELSE error END
                             WHERE pool_name = ?1 AND claimed_by = ?2 AND status = 'claimed'",
                        )?
                        .execute(params![pool, worker, lost])?;
                    Ok(n as u64)
                })
            })
            .await
    }

    async fn get(&self, item_id: &str) -> Result<Option<WorkItem>, DistributedError> {
        let (pool, id) = (self.name.clone(), item_id.to_string());
        self.db
            .call(move |conn| {
                conn.prepare_cached(&format!(
                    "SELECT {ITEM_COLUMNS} FROM work_pool WHERE item_id = ?1 AND pool_name = ?2"
                ))?
                .query_row(params![id, pool], raw_item)
                .optional()?
                .map(finish_item)
                .transpose()
            })
            .await
    }

    async fn stats(&self) -> Result<PoolStats, DistributedError> {
        let pool = self.name.clone();
        self.db
            .call(move |conn| {
                let mut stmt = conn.prepare_cached(
                    "SELECT status, COUNT(*) FROM work_pool WHERE pool_name = ?1 GROUP BY status",
                )?;
                let mut stats = PoolStats::default();
                for row in stmt.query_map(params![pool], |r| {
                    Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?))
                })? {
                    let (status, n) = row?;
                    let n = u64::try_from(n).unwrap_or(0);
                    match JobStatus::parse(&status) {
                        Some(JobStatus::Pending) => stats.pending += n,
                        Some(JobStatus::Claimed) => stats.claimed += n,
                        Some(JobStatus::Done) => stats.done += n,
                        Some(JobStatus::Poisoned) => stats.poisoned += n,
                        None => {}
                    }
                }
                Ok(stats)
            })
            .await
    }
}

impl SqliteWorkPool {
    /// Every job of the pool (any status), oldest first — for reports and tests.
    pub async fn all(&self) -> Result<Vec<WorkItem>, DistributedError> {
        let pool = self.name.clone();
        self.db
            .call(move |conn| {
                let mut stmt = conn.prepare_cached(&format!(
                    "SELECT {ITEM_COLUMNS} FROM work_pool WHERE pool_name = ?1 ORDER BY rowid"
                ))?;
                let raws = stmt
                    .query_map(params![pool], raw_item)?
                    .collect::<Result<Vec<_>, _>>()?;
                raws.into_iter().map(finish_item).collect()
            })
            .await
    }
}
