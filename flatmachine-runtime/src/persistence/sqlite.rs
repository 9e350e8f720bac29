//! [`SqlitePersistence`]: checkpoints in one SQLite file (cargo feature `sqlite`).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use rusqlite::{OptionalExtension, params};

use super::{
    CheckpointStore, EncodedCheckpoint, MachineSnapshot, PersistenceBackend, PersistenceError,
    checkpoint_event, parse_snapshot_key, validate_execution_id, validate_key,
};
use crate::sqlite::{
    Db, SqliteError, SqliteOptions, check_version, check_version_read_only, immediate,
};

/// Schema version of the `flatmachine_checkpoints` table this release writes.
const CHECKPOINT_SCHEMA: i64 = 1;

/// Checkpoint storage in a SQLite database: one row per key, the same snapshot JSON bytes as
/// [`LocalFileBackend`](super::LocalFileBackend) writes (the reference's format), one
/// transaction per checkpoint.
///
/// * **Atomic checkpoints**: [`save_encoded`](PersistenceBackend::save_encoded) (what the
///   execution loop calls, with the JSON it serialized once) and
///   [`save_checkpoint`](PersistenceBackend::save_checkpoint) write the snapshot and the
///   execution's `latest` pointer in one `BEGIN IMMEDIATE` transaction, so
///   no crash can leave one without the other. Pruning
///   ([`prune_checkpoints`](PersistenceBackend::prune_checkpoints)) is one `DELETE`.
/// * **Durability** ([`SqliteOptions::synchronous_full`]): WAL journal with
///   `synchronous=NORMAL` by default — a returned checkpoint survives a crash of the process
///   (SIGKILL, panic, OOM kill); a power loss or OS crash may lose the last checkpoints but
///   never leaves a torn one. With `synchronous_full: true` (`synchronous=FULL`) every
///   checkpoint is fsynced before the save returns and survives power loss too (one fsync per
///   checkpoint, instead of the 2–4 of a file per snapshot).
/// * **Keys** are checked with [`validate_key`] like every backend's, so checkpoints convert
///   to and from the file layout without renaming
///   ([`copy_executions`](super::copy_executions)).
/// * **Table**: `flatmachine_checkpoints(execution_id, key, step, event_rank, data)`, primary
///   key `(execution_id, key)`, `WITHOUT ROWID` (one b-tree: a checkpoint rewrites ~2 pages); `step` and `event_rank` are set for snapshot keys
///   (`{id}/step_{step:06}_{event}.json`) and order them for pruning. `flatmachine_schema`
///   records the table's version (component `checkpoints`); a file written by a newer release
///   is refused. The file may be shared with the distributed SQLite backends
///   (`settings.backends.sqlite_path`): their tables do not overlap.
///
/// Any number of processes may open the same file; SQLite serialises their writes. One
/// connection per instance. With `synchronous=FULL` calls run on tokio's blocking pool (each
/// commit waits for an fsync); with `NORMAL` they run on the calling thread, since a commit
/// only writes to the page cache (it can still wait up to
/// [`busy_timeout`](SqliteOptions::busy_timeout) while another process holds the write lock).
/// [`file_path`](PersistenceBackend::file_path) reports the database file for every key, so
/// error messages name it and the builder gives this store the same file lock as
/// `backend: local`.
#[derive(Debug, Clone)]
pub struct SqlitePersistence {
    db: Db,
    path: PathBuf,
    options: SqliteOptions,
}

impl SqlitePersistence {
    /// The file `backend: sqlite` uses when neither the builder nor `settings.backends.
    /// sqlite_path` names one, relative to the current directory: `checkpoints.sqlite` in
    /// the local backend's directory.
    pub const DEFAULT_PATH: &'static str = ".checkpoints/checkpoints.sqlite";

    /// Opens (creating if needed, with its directory) the checkpoint table in the database at
    /// `path`, with the default [`SqliteOptions`] (`synchronous=NORMAL`).
    pub fn open(path: impl AsRef<Path>) -> Result<Self, PersistenceError> {
        Self::open_with(path, SqliteOptions::default())
    }

    /// [`open`](Self::open) with explicit connection settings (e.g. `synchronous_full: true`
    /// to survive power loss).
    pub fn open_with(
        path: impl AsRef<Path>,
        options: SqliteOptions,
    ) -> Result<Self, PersistenceError> {
        let path = path.as_ref().to_path_buf();
        let db = Db::open(&path, options, schema).map_err(|e| convert_error(&path, e))?;
        Ok(Self { db, path, options })
    }

    /// Opens an existing checkpoint database for reading only (what `flatmachine inspect`
    /// and the source of `flatmachine convert` use): the file is opened read-only, so nothing
    /// is created or changed in it (no table, no switch to WAL), and a file without the
    /// checkpoint table (another application's database, not SQLite at all) is refused. Every
    /// write through it fails.
    pub fn open_read_only(path: impl AsRef<Path>) -> Result<Self, PersistenceError> {
        let path = path.as_ref().to_path_buf();
        let options = SqliteOptions::default();
        let db = Db::open_read_only(&path, options, check_read_only)
            .map_err(|e| convert_error(&path, e))?;
        Ok(Self { db, path, options })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The connection settings.
    pub fn options(&self) -> SqliteOptions {
        self.options
    }

    async fn call<T, F>(&self, f: F) -> Result<T, PersistenceError>
    where
        T: Send + 'static,
        F: FnOnce(&mut rusqlite::Connection) -> Result<T, SqliteError> + Send + 'static,
    {
        if self.options.synchronous_full {
            self.db.run(f).await
        } else {
            // A WAL commit without fsync is a few writes into the page cache: cheaper on the
            // calling thread than the hand-off to the blocking pool and back.
            self.db.run_inline(f)
        }
        .map_err(|e| convert_error(&self.path, e))
    }

    async fn load_bytes(&self, key: &str) -> Result<Option<Vec<u8>>, PersistenceError> {
        validate_key(key)?;
        let (execution_id, _, _) = row_meta(key);
        let key = key.to_owned();
        self.call(move |conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT data FROM flatmachine_checkpoints WHERE execution_id = ?1 AND key = ?2",
            )?;
            Ok(stmt
                .query_row(params![execution_id, key], |r| r.get::<_, Vec<u8>>(0))
                .optional()?)
        })
        .await
    }

    async fn put(&self, rows: Vec<(String, Vec<u8>)>) -> Result<(), PersistenceError> {
        for (key, _) in &rows {
            validate_key(key)?;
        }
        self.call(move |conn| immediate(conn, |tx| insert_rows(tx, &rows)))
            .await
    }

    fn corrupt(&self, key: &str, reason: String) -> PersistenceError {
        PersistenceError::Corrupt {
            key: key.to_owned(),
            path: Some(self.path.clone()),
            reason,
        }
    }
}

impl CheckpointStore {
    /// A store on a [`SqlitePersistence`] at `path` (created if needed), `synchronous=NORMAL`
    /// (survives process crashes; see [`SqlitePersistence`]).
    pub fn sqlite(path: impl AsRef<Path>) -> Result<Self, PersistenceError> {
        Ok(Self::new(Arc::new(SqlitePersistence::open(path)?)))
    }

    /// A store reading an existing checkpoint database (see
    /// [`SqlitePersistence::open_read_only`]).
    pub fn sqlite_read_only(path: impl AsRef<Path>) -> Result<Self, PersistenceError> {
        Ok(Self::new(Arc::new(SqlitePersistence::open_read_only(
            path,
        )?)))
    }

    /// A store on a [`SqlitePersistence`] at `path` with explicit settings
    /// (`SqliteOptions { synchronous_full: true, .. }` survives power loss).
    pub fn sqlite_with(
        path: impl AsRef<Path>,
        options: SqliteOptions,
    ) -> Result<Self, PersistenceError> {
        Ok(Self::new(Arc::new(SqlitePersistence::open_with(
            path, options,
        )?)))
    }
}

/// Writes `(key, bytes)` rows (replacing what was there).
fn insert_rows(conn: &rusqlite::Connection, rows: &[(String, Vec<u8>)]) -> Result<(), SqliteError> {
    let mut stmt = conn.prepare_cached(
        "INSERT OR REPLACE INTO flatmachine_checkpoints
             (execution_id, key, step, event_rank, data)
         VALUES (?1, ?2, ?3, ?4, ?5)",
    )?;
    for (key, data) in rows {
        let (execution_id, step, rank) = row_meta(key);
        stmt.execute(params![execution_id, key, step, rank, data])?;
    }
    Ok(())
}

/// Deletes the snapshots of `execution_id` older than the newest `keep` (by step, event rank,
/// key: the order `CheckpointStore` uses), never `saved`.
fn prune(
    conn: &rusqlite::Connection,
    execution_id: &str,
    saved: &str,
    keep: i64,
) -> Result<(), SqliteError> {
    let mut stmt = conn.prepare_cached(
        "DELETE FROM flatmachine_checkpoints
         WHERE execution_id = ?1 AND step IS NOT NULL AND key <> ?2
           AND key NOT IN (
               SELECT key FROM flatmachine_checkpoints
               WHERE execution_id = ?1 AND step IS NOT NULL
               ORDER BY step DESC, event_rank DESC, key DESC
               LIMIT ?3)",
    )?;
    stmt.execute(params![execution_id, saved, keep])?;
    Ok(())
}

fn check_read_only(conn: &rusqlite::Connection) -> Result<(), SqliteError> {
    check_version_read_only(
        conn,
        "checkpoints",
        "flatmachine_checkpoints",
        CHECKPOINT_SCHEMA,
    )
    .map(|_| ())
}

fn schema(conn: &mut rusqlite::Connection) -> Result<(), SqliteError> {
    immediate(conn, |tx| {
        check_version(tx, "checkpoints", CHECKPOINT_SCHEMA)?;
        tx.execute_batch(
            "CREATE TABLE IF NOT EXISTS flatmachine_checkpoints (
                execution_id TEXT NOT NULL,
                key TEXT NOT NULL,
                step INTEGER,
                event_rank INTEGER,
                data BLOB NOT NULL,
                PRIMARY KEY (execution_id, key)
            ) WITHOUT ROWID;",
        )?;
        Ok(())
    })
}

fn convert_error(path: &Path, error: SqliteError) -> PersistenceError {
    match error {
        SqliteError::CreateDir { path, source } => PersistenceError::Io {
            op: "create directory",
            path,
            source,
        },
        other => PersistenceError::Other(
            format!("checkpoint database {}: {other}", path.display()).into(),
        ),
    }
}

/// The execution id (the key's first segment) and, for a snapshot key directly below it,
/// its step and event rank.
fn row_meta(key: &str) -> (String, Option<i64>, Option<i64>) {
    let execution_id = key.split('/').next().unwrap_or(key);
    match parse_snapshot_key(key) {
        Some((id, step, event)) if id == execution_id => (
            execution_id.to_owned(),
            i64::try_from(step).ok(),
            Some(i64::from(checkpoint_event::rank(event))),
        ),
        _ => (execution_id.to_owned(), None, None),
    }
}

#[async_trait]
impl PersistenceBackend for SqlitePersistence {
    async fn save(&self, key: &str, snapshot: &MachineSnapshot) -> Result<(), PersistenceError> {
        validate_key(key)?;
        let bytes = snapshot.to_json_for(key)?;
        self.put(vec![(key.to_owned(), bytes)]).await
    }

    async fn save_checkpoint(
        &self,
        key: &str,
        latest_key: &str,
        snapshot: Arc<MachineSnapshot>,
    ) -> Result<(), PersistenceError> {
        validate_key(key)?;
        validate_key(latest_key)?;
        let bytes = snapshot.to_json_for(key)?;
        self.put(vec![
            (key.to_owned(), bytes),
            (latest_key.to_owned(), key.as_bytes().to_vec()),
        ])
        .await
    }

    /// The execution loop's checkpoint: its JSON stored as is, with the pointer, in one
    /// transaction.
    async fn save_encoded(&self, checkpoint: EncodedCheckpoint) -> Result<(), PersistenceError> {
        self.put(vec![
            (checkpoint.key().to_owned(), checkpoint.json().to_vec()),
            (
                checkpoint.latest_key().to_owned(),
                checkpoint.key().as_bytes().to_vec(),
            ),
        ])
        .await
    }

    /// The checkpoints, the `latest` pointer and the pruning in one transaction.
    async fn save_encoded_batch(
        &self,
        checkpoints: Vec<EncodedCheckpoint>,
        texts: &[(String, String)],
        keep: Option<usize>,
        _lock: Option<crate::lock::HoldOps<'_>>,
    ) -> Result<(), PersistenceError> {
        let Some(last) = checkpoints.last() else {
            return Ok(());
        };
        let saved = last.key().to_owned();
        let mut rows: Vec<(String, Vec<u8>)> =
            Vec::with_capacity(checkpoints.len() + texts.len() + 1);
        for (key, text) in texts {
            validate_key(key)?;
            rows.push((key.clone(), text.as_bytes().to_vec()));
        }
        rows.extend(
            checkpoints
                .iter()
                .map(|c| (c.key().to_owned(), c.json().to_vec())),
        );
        rows.push((last.latest_key().to_owned(), saved.as_bytes().to_vec()));
        let execution_id = last.execution_id().to_owned();
        let keep = keep.map(|k| i64::try_from(k).unwrap_or(i64::MAX));
        self.call(move |conn| {
            immediate(conn, |tx| {
                insert_rows(tx, &rows)?;
                if let Some(keep) = keep {
                    prune(tx, &execution_id, &saved, keep)?;
                }
                Ok::<_, SqliteError>(())
            })
        })
        .await
    }

    async fn prune_checkpoints(
        &self,
        execution_id: &str,
        saved: &str,
        keep: usize,
    ) -> Result<(), PersistenceError> {
        validate_execution_id(execution_id)?;
        let execution_id = execution_id.to_owned();
        let saved = saved.to_owned();
        let keep = i64::try_from(keep).unwrap_or(i64::MAX);
        self.call(move |conn| prune(conn, &execution_id, &saved, keep))
            .await
    }

    async fn load(&self, key: &str) -> Result<Option<MachineSnapshot>, PersistenceError> {
        let Some(bytes) = self.load_bytes(key).await? else {
            return Ok(None);
        };
        MachineSnapshot::from_json_slice(&bytes)
            .map(Some)
            .map_err(|error| self.corrupt(key, format!("not a valid snapshot: {error}")))
    }

    async fn save_text(&self, key: &str, text: &str) -> Result<(), PersistenceError> {
        self.put(vec![(key.to_owned(), text.as_bytes().to_vec())])
            .await
    }

    async fn load_text(&self, key: &str) -> Result<Option<String>, PersistenceError> {
        let Some(bytes) = self.load_bytes(key).await? else {
            return Ok(None);
        };
        String::from_utf8(bytes)
            .map(Some)
            .map_err(|error| self.corrupt(key, format!("not UTF-8 text: {error}")))
    }

    async fn delete(&self, key: &str) -> Result<(), PersistenceError> {
        validate_key(key)?;
        let (execution_id, _, _) = row_meta(key);
        let key = key.to_owned();
        self.call(move |conn| {
            conn.prepare_cached(
                "DELETE FROM flatmachine_checkpoints WHERE execution_id = ?1 AND key = ?2",
            )?
            .execute(params![execution_id, key])?;
            Ok(())
        })
        .await
    }

    async fn list(&self, prefix: &str) -> Result<Vec<String>, PersistenceError> {
        let prefix = prefix.to_owned();
        let mut keys = self
            .call(move |conn| {
                let mut keys = Vec::new();
                if let Some((execution_id, _)) = prefix.split_once('/') {
                    // Within one execution: the primary key's range for that id.
                    let mut stmt = conn.prepare_cached(
                        "SELECT key FROM flatmachine_checkpoints WHERE execution_id = ?1",
                    )?;
                    let rows = stmt.query_map(params![execution_id], |r| r.get::<_, String>(0))?;
                    for key in rows {
                        let key = key?;
                        if key.starts_with(&prefix) {
                            keys.push(key);
                        }
                    }
                } else {
                    // The prefix is part of an execution id: scan the ids from it on.
                    let mut stmt = conn.prepare_cached(
                        "SELECT execution_id, key FROM flatmachine_checkpoints
                         WHERE execution_id >= ?1 ORDER BY execution_id, key",
                    )?;
                    let mut rows = stmt.query(params![prefix])?;
                    while let Some(row) = rows.next()? {
                        let execution_id: String = row.get(0)?;
                        if !execution_id.starts_with(&prefix) {
                            break;
                        }
                        keys.push(row.get(1)?);
                    }
                }
                Ok(keys)
            })
            .await?;
        keys.sort_unstable();
        Ok(keys)
    }

    fn file_path(&self, key: &str) -> Option<PathBuf> {
        let _ = key;
        Some(self.path.clone())
    }

    async fn execution_ids_after(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<String>, PersistenceError> {
        let after = after.unwrap_or("").to_owned();
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        // The primary key's order from `after` on, stopping at the page's end.
        self.call(move |conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT execution_id FROM flatmachine_checkpoints
                 WHERE execution_id > ?1 AND key = execution_id || '/latest'
                 ORDER BY execution_id LIMIT ?2",
            )?;
            let rows = stmt.query_map(params![after, limit], |r| r.get::<_, String>(0))?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
        .await
    }
}
