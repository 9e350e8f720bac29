//! `SqliteSignalBackend` (feature `sqlite`): signals and waiters in one SQLite file, shared by
//! any number of processes.
//!
//! Signals live in the reference's table (`signals(id, channel, data_json, created_at)`), so a
//! signal the Python package sends into the same file is seen here and the other way round;
//! this release adds an `expires_ms` column in place. Signals are taken in insertion order
//! (`rowid`), not by `created_at` text (the reference's order, which ties and mis-sorts
//! timestamps without microseconds). Waiters are a table of their own,
//! `flatmachine_signal_waiters`. Every operation is one `BEGIN IMMEDIATE` transaction, so
//! taking a signal, registering a waiter, handing a signal to waiters and claiming a waiter
//! are atomic across processes.

use std::path::{Path, PathBuf};
use std::time::Duration;

use async_trait::async_trait;
use rusqlite::{Connection, OptionalExtension, params};

use super::clock::{iso_from_millis, millis_after, now_millis};
use super::{
    SendOptions, Signal, SignalBackend, SignalError, WaitRequest, Waiter, encode_data,
    new_signal_id, validate_channel,
};
use crate::Value;
use crate::sqlite::{Db, SqliteError, SqliteOptions, check_version, immediate};

/// Schema version of the signal tables this release writes.
const SIGNALS_SCHEMA: i64 = 1;

impl From<SqliteError> for SignalError {
    fn from(e: SqliteError) -> Self {
        match e {
            SqliteError::SchemaTooNew {
                component,
                found,
                supported,
            } => SignalError::SchemaTooNew(format!(
                "table group `{component}` has schema version {found}; this release supports up to {supported}"
            )),
            other => SignalError::Storage(other.to_string()),
        }
    }
}

impl From<rusqlite::Error> for SignalError {
    fn from(e: rusqlite::Error) -> Self {
        SignalError::Storage(e.to_string())
    }
}

fn schema(conn: &mut Connection) -> Result<(), SignalError> {
    immediate(conn, |tx| {
        check_version(tx, "signals", SIGNALS_SCHEMA)?;
        tx.execute_batch(
            "CREATE TABLE IF NOT EXISTS signals (
                id TEXT PRIMARY KEY,
                channel TEXT NOT NULL,
                data_json TEXT NOT NULL,
                created_at TEXT NOT NULL
            );
            CREATE INDEX IF NOT EXISTS idx_signals_channel ON signals(channel, created_at ASC);
            CREATE TABLE IF NOT EXISTS flatmachine_signal_waiters (
                execution_id TEXT PRIMARY KEY,
                channel TEXT NOT NULL,
                machine TEXT NOT NULL,
                state TEXT NOT NULL,
                step INTEGER NOT NULL,
                deadline_ms INTEGER,
                registered_ms INTEGER NOT NULL,
                delivered_json TEXT,
                claimed_by TEXT,
                claim_until_ms INTEGER
            );
            CREATE INDEX IF NOT EXISTS idx_signal_waiters_channel
                ON flatmachine_signal_waiters(channel);",
        )?;
        let mut stmt = tx.prepare("PRAGMA table_info(signals)")?;
        let names = stmt
            .query_map([], |r| r.get::<_, String>(1))?
            .collect::<Result<Vec<_>, _>>()?;
        drop(stmt);
        if !names.iter().any(|n| n == "expires_ms") {
            tx.execute_batch("ALTER TABLE signals ADD COLUMN expires_ms INTEGER")?;
        }
        Ok(())
    })
}

/// Signals and waiters in a SQLite file (see the [module docs](self)).
#[derive(Debug, Clone)]
pub struct SqliteSignalBackend {
    db: Db,
    path: PathBuf,
}

impl SqliteSignalBackend {
    /// Opens (creating if needed) the signal tables in the database at `path`.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, SignalError> {
        Self::open_with(path, SqliteOptions::default())
    }

    /// [`open`](Self::open) with explicit connection settings.
    pub fn open_with(path: impl AsRef<Path>, options: SqliteOptions) -> Result<Self, SignalError> {
        let path = path.as_ref().to_path_buf();
        Ok(Self {
            db: Db::open(&path, options, schema)?,
            path,
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    async fn call<T, F>(&self, f: F) -> Result<T, SignalError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T, SignalError> + Send + 'static,
    {
        self.db.run(f).await
    }
}

const LIVE: &str = "(expires_ms IS NULL OR expires_ms > ?2)";

fn row_to_signal(row: &rusqlite::Row<'_>) -> rusqlite::Result<(String, String, String, String)> {
    Ok((row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?))
}

fn finish_signal(
    (id, channel, data, created_at): (String, String, String, String),
) -> Result<Signal, SignalError> {
    let data: Value = serde_json::from_str(&data)
        .map_err(|e| SignalError::Storage(format!("signal `{id}` holds invalid JSON: {e}")))?;
    Ok(Signal {
        id,
        channel,
        data,
        created_at,
    })
}

/// Takes the oldest live signal of `channel` inside `tx` (dropping the channel's expired
/// ones, as the other backends do on the way).
fn take(
    tx: &rusqlite::Transaction<'_>,
    channel: &str,
    now: u64,
) -> Result<Option<Signal>, SignalError> {
    tx.prepare_cached(
        "DELETE FROM signals WHERE channel = ?1 AND expires_ms IS NOT NULL AND expires_ms <= ?2",
    )?
    .execute(params![channel, now as i64])?;
    let row = tx
        .prepare_cached(&format!(
            "DELETE FROM signals WHERE rowid = (
                SELECT rowid FROM signals WHERE channel = ?1 AND {LIVE} ORDER BY rowid LIMIT 1)
             RETURNING id, channel, data_json, created_at"
        ))?
        .query_row(params![channel, now as i64], row_to_signal)
        .optional()?;
    row.map(finish_signal).transpose()
}

fn row_to_waiter(row: &rusqlite::Row<'_>) -> rusqlite::Result<(Waiter, Option<String>)> {
    let claimed_by: Option<String> = row.get(8)?;
    let until: Option<i64> = row.get(9)?;
    Ok((
        Waiter {
            execution_id: row.get(0)?,
            channel: row.get(1)?,
            machine: row.get(2)?,
            state: row.get(3)?,
            step: row.get::<_, i64>(4)?.max(0) as u64,
            deadline_ms: row.get::<_, Option<i64>>(5)?.map(|d| d.max(0) as u64),
            registered_ms: row.get::<_, i64>(6)?.max(0) as u64,
            delivered: None,
            claim: claimed_by.map(|o| (o, until.unwrap_or(0).max(0) as u64)),
        },
        row.get(7)?,
    ))
}

fn finish_waiter((mut waiter, delivered): (Waiter, Option<String>)) -> Result<Waiter, SignalError> {
    waiter.delivered = delivered
        .map(|json| {
            serde_json::from_str(&json).map_err(|e| {
                SignalError::Storage(format!(
                    "the waiter of `{}` holds an invalid signal: {e}",
                    waiter.execution_id
                ))
            })
        })
        .transpose()?;
    Ok(waiter)
}

const WAITER_COLUMNS: &str = "execution_id, channel, machine, state, step, deadline_ms, \
     registered_ms, delivered_json, claimed_by, claim_until_ms";

fn signal_json(signal: &Signal) -> Result<String, SignalError> {
    serde_json::to_string(signal).map_err(|e| SignalError::InvalidData(e.to_string()))
}

#[async_trait]
impl SignalBackend for SqliteSignalBackend {
    async fn send(
        &self,
        channel: &str,
        data: Value,
        options: SendOptions,
    ) -> Result<Signal, SignalError> {
        validate_channel(channel)?;
        let text = encode_data(&data)?;
        let signal = Signal {
            id: new_signal_id(),
            channel: channel.to_owned(),
            data,
            created_at: iso_from_millis(now_millis()),
        };
        let expires = options.ttl.map(|t| millis_after(t) as i64);
        let (id, ch, at) = (
            signal.id.clone(),
            signal.channel.clone(),
            signal.created_at.clone(),
        );
        self.call(move |conn| {
            immediate(conn, |tx| {
                tx.prepare_cached(
                    "INSERT INTO signals (id, channel, data_json, created_at, expires_ms)
                     VALUES (?1, ?2, ?3, ?4, ?5)",
                )?
                .execute(params![id, ch, text, at, expires])?;
                Ok(())
            })
        })
        .await?;
        Ok(signal)
    }

    async fn consume(&self, channel: &str) -> Result<Option<Signal>, SignalError> {
        let channel = channel.to_owned();
        let now = now_millis();
        self.call(move |conn| immediate(conn, |tx| take(tx, &channel, now)))
            .await
    }

    async fn peek(&self, channel: &str) -> Result<Vec<Signal>, SignalError> {
        let channel = channel.to_owned();
        let now = now_millis();
        self.call(move |conn| {
            let rows = conn
                .prepare_cached(&format!(
                    "SELECT id, channel, data_json, created_at FROM signals
                     WHERE channel = ?1 AND {LIVE} ORDER BY rowid"
                ))?
                .query_map(params![channel, now as i64], row_to_signal)?
                .collect::<Result<Vec<_>, _>>()?;
            rows.into_iter().map(finish_signal).collect()
        })
        .await
    }

    async fn channels(&self) -> Result<Vec<String>, SignalError> {
        let now = now_millis();
        self.call(move |conn| {
            let names = conn
                .prepare_cached(
                    "SELECT DISTINCT channel FROM signals
                     WHERE expires_ms IS NULL OR expires_ms > ?1 ORDER BY channel",
                )?
                .query_map(params![now as i64], |r| r.get::<_, String>(0))?
                .collect::<Result<Vec<_>, _>>()?;
            Ok(names)
        })
        .await
    }

    async fn wait(&self, request: &WaitRequest<'_>) -> Result<Option<Signal>, SignalError> {
        validate_channel(request.channel)?;
        let now = now_millis();
        let waiter = request.waiter(now);
        self.call(move |conn| {
            immediate(conn, |tx| {
                let held: Option<(i64, Option<String>)> = tx
                    .prepare_cached(
                        "SELECT step, delivered_json FROM flatmachine_signal_waiters
                         WHERE execution_id = ?1",
                    )?
                    .query_row(params![waiter.execution_id], |r| Ok((r.get(0)?, r.get(1)?)))
                    .optional()?;
                if let Some((step, Some(json))) = held
                    && step == waiter.step as i64
                {
                    let signal: Signal = serde_json::from_str(&json).map_err(|e| {
                        SignalError::Storage(format!("a waiter holds an invalid signal: {e}"))
                    })?;
                    return Ok(Some(signal));
                }
                let taken = take(tx, &waiter.channel, now)?;
                let delivered = taken.as_ref().map(signal_json).transpose()?;
                tx.prepare_cached(&format!(
                    "INSERT OR REPLACE INTO flatmachine_signal_waiters ({WAITER_COLUMNS})
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, NULL, NULL)"
                ))?
                .execute(params![
                    waiter.execution_id,
                    waiter.channel,
                    waiter.machine,
                    waiter.state,
                    waiter.step as i64,
                    waiter.deadline_ms.map(|d| d as i64),
                    now as i64,
                    delivered,
                ])?;
                Ok(taken)
            })
        })
        .await
    }

    async fn ack(&self, execution_id: &str, step: u64) -> Result<(), SignalError> {
        let id = execution_id.to_owned();
        self.call(move |conn| {
            immediate(conn, |tx| {
                tx.prepare_cached(
                    "DELETE FROM flatmachine_signal_waiters WHERE execution_id = ?1 AND step = ?2",
                )?
                .execute(params![id, step as i64])?;
                Ok(())
            })
        })
        .await
    }

    async fn waiters(&self, channel: Option<&str>) -> Result<Vec<Waiter>, SignalError> {
        let channel = channel.map(str::to_owned);
        self.call(move |conn| {
            let rows = match &channel {
                Some(c) => conn
                    .prepare_cached(&format!(
                        "SELECT {WAITER_COLUMNS} FROM flatmachine_signal_waiters
                         WHERE channel = ?1 ORDER BY rowid"
                    ))?
                    .query_map(params![c], row_to_waiter)?
                    .collect::<Result<Vec<_>, _>>()?,
                None => conn
                    .prepare_cached(&format!(
                        "SELECT {WAITER_COLUMNS} FROM flatmachine_signal_waiters ORDER BY rowid"
                    ))?
                    .query_map([], row_to_waiter)?
                    .collect::<Result<Vec<_>, _>>()?,
            };
            rows.into_iter().map(finish_waiter).collect()
        })
        .await
    }

    async fn deliver(&self, channel: &str) -> Result<Vec<String>, SignalError> {
        let channel = channel.to_owned();
        let now = now_millis();
        self.call(move |conn| {
            immediate(conn, |tx| {
                let ids = tx
                    .prepare_cached(
                        "SELECT execution_id FROM flatmachine_signal_waiters
                         WHERE channel = ?1 AND delivered_json IS NULL ORDER BY rowid",
                    )?
                    .query_map(params![channel], |r| r.get::<_, String>(0))?
                    .collect::<Result<Vec<_>, _>>()?;
                if ids.is_empty() {
                    return Ok(Vec::new());
                }
                let Some(signal) = take(tx, &channel, now)? else {
                    return Ok(Vec::new());
                };
                let json = signal_json(&signal)?;
                tx.prepare_cached(
                    "UPDATE flatmachine_signal_waiters SET delivered_json = ?2
                     WHERE channel = ?1 AND delivered_json IS NULL",
                )?
                .execute(params![channel, json])?;
                Ok(ids)
            })
        })
        .await
    }

    async fn claim(
        &self,
        execution_id: &str,
        owner: &str,
        lease: Duration,
    ) -> Result<bool, SignalError> {
        let (id, owner) = (execution_id.to_owned(), owner.to_owned());
        let now = now_millis();
        let until = millis_after(lease);
        self.call(move |conn| {
            immediate(conn, |tx| {
                let n = tx
                    .prepare_cached(
                        "UPDATE flatmachine_signal_waiters SET claimed_by = ?2, claim_until_ms = ?3
                         WHERE execution_id = ?1
                           AND (claimed_by IS NULL OR claimed_by = ?2 OR claim_until_ms <= ?4)",
                    )?
                    .execute(params![id, owner, until as i64, now as i64])?;
                Ok(n == 1)
            })
        })
        .await
    }

    async fn release(&self, execution_id: &str, owner: &str) -> Result<(), SignalError> {
        let (id, owner) = (execution_id.to_owned(), owner.to_owned());
        self.call(move |conn| {
            immediate(conn, |tx| {
                tx.prepare_cached(
                    "UPDATE flatmachine_signal_waiters SET claimed_by = NULL, claim_until_ms = NULL
                     WHERE execution_id = ?1 AND claimed_by = ?2",
                )?
                .execute(params![id, owner])?;
                Ok(())
            })
        })
        .await
    }

    async fn forget(&self, execution_id: &str) -> Result<(), SignalError> {
        let id = execution_id.to_owned();
        self.call(move |conn| {
            immediate(conn, |tx| {
                tx.prepare_cached(
                    "DELETE FROM flatmachine_signal_waiters WHERE execution_id = ?1",
                )?
                .execute(params![id])?;
                Ok(())
            })
        })
        .await
    }

    async fn purge_expired(&self) -> Result<u64, SignalError> {
        let now = now_millis();
        self.call(move |conn| {
            immediate(conn, |tx| {
                let n = tx
                    .prepare_cached(
                        "DELETE FROM signals WHERE expires_ms IS NOT NULL AND expires_ms <= ?1",
                    )?
                    .execute(params![now as i64])?;
                Ok(n as u64)
            })
        })
        .await
    }
}
