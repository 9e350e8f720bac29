//! The worker registry in SQLite (table `worker_registry`).

use async_trait::async_trait;
use rusqlite::{OptionalExtension, params};
use std::path::{Path, PathBuf};

use super::{Db, SqliteOptions, parse_json, registry_schema, to_json};
use crate::Value;
use crate::distributed::registration::{
    RegistrationBackend, WorkerFilter, WorkerRecord, WorkerRegistration,
};
use crate::distributed::{DistributedError, now_iso};
use crate::sqlite::immediate;

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

    async fn remove(&self, worker_id: &str) -> Result<bool, DistributedError> {
        let id = worker_id.to_string();
        self.db
            .call(move |conn| {
                immediate(conn, |tx| {
                    let n = tx
                        .prepare_cached("DELETE FROM worker_registry WHERE worker_id = ?1")?
                        .execute(params![id])?;
                    Ok(n > 0)
                })
            })
            .await
    }
}
