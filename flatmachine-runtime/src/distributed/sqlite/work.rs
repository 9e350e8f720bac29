//! Work pools in SQLite (table `work_pool`, one row per job; `work_pool_counters`).
//!
//! A claim stores its token (`claim_token`), lease end (`lease_expires_at`, fixed-width ISO
//! text of this host's clock) and execution (`claim_execution`); completing, failing and
//! heartbeating match on the token, so a claim that was taken back cannot finish the job.

use async_trait::async_trait;
use rusqlite::{Connection, OptionalExtension, Transaction, params};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::{Db, SqliteOptions, parse_json, storage, to_json, work_schema};
use crate::Value;
use crate::distributed::time::{iso_ms, now_ms};
use crate::distributed::work::{
    Claim, ClaimRequest, JobStatus, PoolCounters, PoolStats, PushOptions, ReleasedJob, WorkBackend,
    WorkItem, WorkPool,
};
use crate::distributed::{DistributedError, now_iso};
use crate::sqlite::immediate;

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

#[async_trait]
impl WorkBackend for SqliteWorkBackend {
    fn pool(&self, name: &str) -> Arc<dyn WorkPool> {
        self.sqlite_pool(name)
    }

    async fn pool_names(&self) -> Result<Vec<String>, DistributedError> {
        self.db
            .call(|conn| {
                let mut stmt = conn.prepare_cached(
                    "SELECT pool_name FROM work_pool UNION SELECT pool_name FROM work_pool_counters
                     ORDER BY 1",
                )?;
                let names = stmt
                    .query_map([], |r| r.get(0))?
                    .collect::<Result<Vec<String>, _>>()?;
                Ok(names)
            })
            .await
    }
}

/// One pool of a [`SqliteWorkBackend`] (shares its connection).
#[derive(Debug)]
pub struct SqliteWorkPool {
    name: String,
    db: Db,
}

const ITEM_COLUMNS: &str = "item_id, data, claimed_by, claimed_at, attempts, max_retries, status, \
     created_at, result, error, claim_token, lease_expires_at, claim_execution, previous_execution";

/// A row as read, before its JSON columns are parsed.
struct RawItem {
    id: String,
    data: String,
    claimed_by: Option<String>,
    claimed_at: Option<String>,
    attempts: i64,
    max_retries: i64,
    status: String,
    created_at: String,
    result: Option<String>,
    error: Option<String>,
    claim_token: Option<String>,
    lease_expires_at: Option<String>,
    execution_id: Option<String>,
    previous_execution_id: Option<String>,
}

/// Reads [`ITEM_COLUMNS`] starting at column `at`.
fn raw_item_at(row: &rusqlite::Row<'_>, at: usize) -> rusqlite::Result<RawItem> {
    Ok(RawItem {
        id: row.get(at)?,
        data: row.get(at + 1)?,
        claimed_by: row.get(at + 2)?,
        claimed_at: row.get(at + 3)?,
        attempts: row.get(at + 4)?,
        max_retries: row.get(at + 5)?,
        status: row.get(at + 6)?,
        created_at: row.get(at + 7)?,
        result: row.get(at + 8)?,
        error: row.get(at + 9)?,
        claim_token: row.get(at + 10)?,
        lease_expires_at: row.get(at + 11)?,
        execution_id: row.get(at + 12)?,
        previous_execution_id: row.get(at + 13)?,
    })
}

fn raw_item(row: &rusqlite::Row<'_>) -> rusqlite::Result<RawItem> {
    raw_item_at(row, 0)
}

fn finish_item(raw: RawItem) -> Result<WorkItem, DistributedError> {
    let id = raw.id;
    Ok(WorkItem {
        data: parse_json(&raw.data)?,
        claimed_by: raw.claimed_by,
        claimed_at: raw.claimed_at,
        attempts: u32::try_from(raw.attempts).unwrap_or(0),
        max_retries: u32::try_from(raw.max_retries).unwrap_or(0),
        status: JobStatus::parse(&raw.status).ok_or_else(|| {
            DistributedError::Data(format!(
                "work item `{id}` has unknown status `{}`",
                raw.status
            ))
        })?,
        created_at: raw.created_at,
        result: raw.result.as_deref().map(parse_json).transpose()?,
        error: raw.error,
        claim_token: raw
            .claim_token
            .as_deref()
            .and_then(|t| crate::distributed::ClaimToken::parse(t).ok()),
        lease_expires_at: raw.lease_expires_at,
        execution_id: raw.execution_id,
        previous_execution_id: raw.previous_execution_id,
        id,
    })
}

/// Why an update of the job `claim` holds touched no row.
fn not_held(tx: &Transaction<'_>, pool: &str, claim: &Claim) -> DistributedError {
    let found: Result<Option<(String, Option<String>)>, _> = tx
        .prepare_cached(
            "SELECT status, claimed_by FROM work_pool WHERE item_id = ?1 AND pool_name = ?2",
        )
        .and_then(|mut s| {
            s.query_row(params![claim.job_id, pool], |r| Ok((r.get(0)?, r.get(1)?)))
                .optional()
        });
    match found {
        Ok(Some((status, holder))) if status == "claimed" => DistributedError::NotHolder {
            id: claim.job_id.clone(),
            holder,
        },
        Ok(Some((status, _))) => DistributedError::NotClaimed {
            id: claim.job_id.clone(),
            status,
        },
        Ok(None) => DistributedError::JobNotFound(claim.job_id.clone()),
        Err(e) => e.into(),
    }
}

/// Adds `n` to one counter of `pool` (`column` is one of the table's fixed names).
fn count(tx: &Transaction<'_>, pool: &str, column: &str, n: usize) -> rusqlite::Result<()> {
    if n == 0 {
        return Ok(());
    }
    tx.prepare_cached(&format!(
        "INSERT INTO work_pool_counters (pool_name, {column}) VALUES (?1, ?2)
         ON CONFLICT(pool_name) DO UPDATE SET {column} = {column} + excluded.{column}"
    ))?
    .execute(params![pool, n as i64])?;
    Ok(())
}

const CLAIM_SQL: &str = "UPDATE work_pool
    SET status = 'claimed', claimed_by = ?1, claimed_at = ?2, attempts = attempts + 1,
        claim_token = ?5, lease_expires_at = ?6, claim_execution = ?7
    WHERE rowid IN (
        SELECT rowid FROM work_pool
        WHERE pool_name = ?3 AND status = 'pending'
        ORDER BY rowid LIMIT ?4
    )
    RETURNING rowid, item_id, data, claimed_by, claimed_at, attempts, max_retries, status,
              created_at, result, error, claim_token, lease_expires_at, claim_execution, previous_execution";

/// Takes back the claimed jobs `ids` (rowid order): pending again, or poisoned when their
/// attempts are used up (`why` becomes their error).
fn take_back(
    tx: &Transaction<'_>,
    pool: &str,
    ids: &[String],
    why: &str,
) -> Result<Vec<ReleasedJob>, DistributedError> {
    let mut select = tx.prepare_cached(
        "SELECT claimed_by, claim_execution, attempts >= max_retries FROM work_pool
         WHERE item_id = ?1 AND pool_name = ?2 AND status = 'claimed'",
    )?;
    let mut update = tx.prepare_cached(
        "UPDATE work_pool SET
            status = CASE WHEN attempts >= max_retries THEN 'poisoned' ELSE 'pending' END,
            claimed_by = CASE WHEN attempts >= max_retries THEN claimed_by END,
            claimed_at = CASE WHEN attempts >= max_retries THEN claimed_at END,
            error = CASE WHEN attempts >= max_retries THEN ?3 ELSE error END,
            previous_execution = COALESCE(claim_execution, previous_execution),
            claim_token = NULL, lease_expires_at = NULL, claim_execution = NULL
         WHERE item_id = ?1 AND pool_name = ?2 AND status = 'claimed'",
    )?;
    let mut out = Vec::with_capacity(ids.len());
    for id in ids {
        let Some((worker_id, execution_id, used_up)) = select
            .query_row(params![id, pool], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get::<_, bool>(2)?))
            })
            .optional()?
        else {
            continue;
        };
        update.execute(params![id, pool, why])?;
        out.push(ReleasedJob {
            id: id.clone(),
            worker_id,
            execution_id,
            status: if used_up {
                JobStatus::Poisoned
            } else {
                JobStatus::Pending
            },
        });
    }
    Ok(out)
}

impl SqliteWorkPool {
    fn claim_blocking(
        conn: &mut Connection,
        pool: &str,
        request: &ClaimRequest,
    ) -> Result<Vec<WorkItem>, DistributedError> {
        let limit = i64::try_from(request.limit).unwrap_or(i64::MAX);
        let now = now_ms();
        let until = iso_ms(now.saturating_add(request.lease_ms()));
        let mut rows = immediate(conn, |tx| {
            let mut stmt = tx.prepare_cached(CLAIM_SQL)?;
            let rows = stmt
                .query_map(
                    params![
                        request.worker_id,
                        iso_ms(now),
                        pool,
                        limit,
                        request.token.as_str(),
                        until,
                        request.execution_id,
                    ],
                    |r| Ok((r.get::<_, i64>(0)?, raw_item_at(r, 1)?)),
                )?
                .collect::<Result<Vec<(i64, RawItem)>, _>>()?;
            Ok::<_, DistributedError>(rows)
        })?;
        rows.sort_by_key(|(rowid, _)| *rowid);
        rows.into_iter().map(|(_, raw)| finish_item(raw)).collect()
    }

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

    async fn claim_with(&self, request: &ClaimRequest) -> Result<Vec<WorkItem>, DistributedError> {
        if request.limit == 0 {
            return Ok(Vec::new());
        }
        let (pool, request) = (self.name.clone(), request.clone());
        self.db
            .call(move |conn| Self::claim_blocking(conn, &pool, &request))
            .await
    }

    async fn complete(&self, claim: &Claim, result: Option<Value>) -> Result<(), DistributedError> {
        self.complete_many(vec![(claim.clone(), result)]).await
    }

    async fn complete_many(
        &self,
        results: Vec<(Claim, Option<Value>)>,
    ) -> Result<(), DistributedError> {
        let results = results
            .into_iter()
            .map(|(c, r)| Ok((c, r.as_ref().map(to_json).transpose()?)))
            .collect::<Result<Vec<_>, DistributedError>>()?;
        let pool = self.name.clone();
        self.db
            .call(move |conn| {
                immediate(conn, |tx| {
                    let now = now_iso();
                    let mut stmt = tx.prepare_cached(
                        "UPDATE work_pool
                         SET status = 'done', result = ?1, completed_at = ?2, error = NULL,
                             lease_expires_at = NULL
                         WHERE item_id = ?3 AND pool_name = ?4 AND status = 'claimed'
                           AND claim_token = ?5",
                    )?;
                    for (claim, result) in &results {
                        let changed = stmt.execute(params![
                            result,
                            now,
                            claim.job_id,
                            pool,
                            claim.token.as_str()
                        ])?;
                        if changed == 0 {
                            return Err(not_held(tx, &pool, claim));
                        }
                    }
                    Ok(())
                })
            })
            .await
    }

    async fn fail(
        &self,
        claim: &Claim,
        error: Option<&str>,
    ) -> Result<JobStatus, DistributedError> {
        let (pool, claim, error) = (self.name.clone(), claim.clone(), error.map(str::to_string));
        self.db
            .call(move |conn| {
                immediate(conn, |tx| {
                    let status: Option<String> = tx
                        .prepare_cached(
                            "UPDATE work_pool SET
                                status = CASE WHEN attempts >= max_retries THEN 'poisoned' ELSE 'pending' END,
                                claimed_by = CASE WHEN attempts >= max_retries THEN claimed_by END,
                                claimed_at = CASE WHEN attempts >= max_retries THEN claimed_at END,
                                claim_token = CASE WHEN attempts >= max_retries THEN claim_token END,
                                lease_expires_at = NULL, claim_execution = NULL,
                                error = ?1
                             WHERE item_id = ?2 AND pool_name = ?3 AND status = 'claimed'
                               AND claim_token = ?4
                             RETURNING status",
                        )?
                        .query_row(
                            params![error, claim.job_id, pool, claim.token.as_str()],
                            |r| r.get(0),
                        )
                        .optional()?;
                    match status {
                        Some(s) => JobStatus::parse(&s)
                            .ok_or_else(|| storage(format!("unexpected status `{s}`"))),
                        None => Err(not_held(tx, &pool, &claim)),
                    }
                })
            })
            .await
    }

    async fn heartbeat(
        &self,
        claim: &Claim,
        extend_lease: Option<Duration>,
    ) -> Result<(), DistributedError> {
        let (pool, claim) = (self.name.clone(), claim.clone());
        self.db
            .call(move |conn| {
                let Some(extend) = extend_lease else {
                    // A check only: no write transaction.
                    let tx = conn.transaction()?;
                    let held: Option<i64> = tx
                        .prepare_cached(
                            "SELECT 1 FROM work_pool WHERE item_id = ?1 AND pool_name = ?2
                             AND status = 'claimed' AND claim_token = ?3",
                        )?
                        .query_row(params![claim.job_id, pool, claim.token.as_str()], |r| {
                            r.get(0)
                        })
                        .optional()?;
                    return match held {
                        Some(_) => Ok(()),
                        None => Err(not_held(&tx, &pool, &claim)),
                    };
                };
                let ms = u64::try_from(extend.as_millis()).unwrap_or(u64::MAX);
                let until = iso_ms(now_ms().saturating_add(ms));
                immediate(conn, |tx| {
                    let changed = tx
                        .prepare_cached(
                            "UPDATE work_pool SET lease_expires_at = MAX(COALESCE(lease_expires_at, ''), ?1)
                             WHERE item_id = ?2 AND pool_name = ?3 AND status = 'claimed'
                               AND claim_token = ?4",
                        )?
                        .execute(params![until, claim.job_id, pool, claim.token.as_str()])?;
                    if changed == 0 {
                        return Err(not_held(tx, &pool, &claim));
                    }
                    Ok(())
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

    async fn release_worker(&self, worker_id: &str) -> Result<Vec<ReleasedJob>, DistributedError> {
        let (pool, worker) = (self.name.clone(), worker_id.to_string());
        self.db
            .call(move |conn| {
                immediate(conn, |tx| {
                    let ids = tx
                        .prepare_cached(
                            "SELECT item_id FROM work_pool
                             WHERE pool_name = ?1 AND claimed_by = ?2 AND status = 'claimed'
                             ORDER BY rowid",
                        )?
                        .query_map(params![pool, worker], |r| r.get(0))?
                        .collect::<Result<Vec<String>, _>>()?;
                    let released =
                        take_back(tx, &pool, &ids, &format!("worker `{worker}` was lost"))?;
                    count(tx, &pool, "released", released.len())?;
                    Ok(released)
                })
            })
            .await
    }

    async fn reclaim_expired(&self) -> Result<Vec<ReleasedJob>, DistributedError> {
        let pool = self.name.clone();
        self.db
            .call(move |conn| {
                immediate(conn, |tx| {
                    let ids = tx
                        .prepare_cached(
                            "SELECT item_id FROM work_pool
                             WHERE pool_name = ?1 AND status = 'claimed'
                               AND lease_expires_at IS NOT NULL AND lease_expires_at <= ?2
                             ORDER BY lease_expires_at, rowid",
                        )?
                        .query_map(params![pool, now_iso()], |r| r.get(0))?
                        .collect::<Result<Vec<String>, _>>()?;
                    let released = take_back(tx, &pool, &ids, "its lease expired")?;
                    count(tx, &pool, "expired", released.len())?;
                    Ok(released)
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

    async fn jobs(
        &self,
        status: JobStatus,
        limit: usize,
    ) -> Result<Vec<WorkItem>, DistributedError> {
        let pool = self.name.clone();
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let order = if status == JobStatus::Claimed {
            "lease_expires_at, rowid"
        } else {
            "rowid"
        };
        self.db
            .call(move |conn| {
                let mut stmt = conn.prepare_cached(&format!(
                    "SELECT {ITEM_COLUMNS} FROM work_pool WHERE pool_name = ?1 AND status = ?2
                     ORDER BY {order} LIMIT ?3"
                ))?;
                let raws = stmt
                    .query_map(params![pool, status.as_str(), limit], raw_item)?
                    .collect::<Result<Vec<_>, _>>()?;
                raws.into_iter().map(finish_item).collect()
            })
            .await
    }

    async fn requeue(&self, ids: &[String]) -> Result<Vec<ReleasedJob>, DistributedError> {
        let (pool, ids) = (self.name.clone(), ids.to_vec());
        self.db
            .call(move |conn| {
                immediate(conn, |tx| {
                    let mut select = tx.prepare_cached(
                        "SELECT status, claimed_by, claim_execution FROM work_pool
                         WHERE item_id = ?1 AND pool_name = ?2
                           AND status IN ('poisoned', 'claimed')",
                    )?;
                    let mut update = tx.prepare_cached(
                        "UPDATE work_pool SET status = 'pending',
                            attempts = CASE WHEN status = 'poisoned' THEN 0 ELSE attempts END,
                            previous_execution = COALESCE(claim_execution, previous_execution),
                            claimed_by = NULL, claimed_at = NULL, claim_token = NULL,
                            lease_expires_at = NULL, claim_execution = NULL
                         WHERE item_id = ?1 AND pool_name = ?2",
                    )?;
                    let mut out = Vec::new();
                    for id in &ids {
                        let Some((_, worker_id, execution_id)) = select
                            .query_row(params![id, pool], |r| {
                                Ok((r.get::<_, String>(0)?, r.get(1)?, r.get(2)?))
                            })
                            .optional()?
                        else {
                            continue;
                        };
                        update.execute(params![id, pool])?;
                        out.push(ReleasedJob {
                            id: id.clone(),
                            worker_id,
                            execution_id,
                            status: JobStatus::Pending,
                        });
                    }
                    drop((select, update));
                    count(tx, &pool, "requeued", out.len())?;
                    Ok(out)
                })
            })
            .await
    }

    async fn remove_poisoned(&self, ids: &[String]) -> Result<u64, DistributedError> {
        let (pool, ids) = (self.name.clone(), ids.to_vec());
        self.db
            .call(move |conn| {
                immediate(conn, |tx| {
                    let mut stmt = tx.prepare_cached(
                        "DELETE FROM work_pool
                         WHERE item_id = ?1 AND pool_name = ?2 AND status = 'poisoned'",
                    )?;
                    let mut n = 0;
                    for id in &ids {
                        n += stmt.execute(params![id, pool])?;
                    }
                    drop(stmt);
                    count(tx, &pool, "removed", n)?;
                    Ok(n as u64)
                })
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

    async fn counters(&self) -> Result<PoolCounters, DistributedError> {
        let pool = self.name.clone();
        self.db
            .call(move |conn| {
                let found = conn
                    .prepare_cached(
                        "SELECT released, expired, requeued, removed FROM work_pool_counters
                         WHERE pool_name = ?1",
                    )?
                    .query_row(params![pool], |r| {
                        let n =
                            |i: usize| r.get::<_, i64>(i).map(|v| u64::try_from(v).unwrap_or(0));
                        Ok(PoolCounters {
                            released: n(0)?,
                            expired: n(1)?,
                            requeued: n(2)?,
                            removed: n(3)?,
                        })
                    })
                    .optional()?;
                Ok(found.unwrap_or_default())
            })
            .await
    }
}
