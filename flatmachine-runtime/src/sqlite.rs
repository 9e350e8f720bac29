//! SQLite connection handling shared by the SQLite stores (cargo feature `sqlite`): the
//! distributed registration and work backends and the checkpoint store
//! ([`SqlitePersistence`](crate::persistence::SqlitePersistence)).
//!
//! Every connection is opened the same way: parent directories created, WAL journal,
//! `synchronous` per [`SqliteOptions`], a busy handler that retries with short sleeps up to
//! [`SqliteOptions::busy_timeout`], a 16 MiB page cache, a prepared-statement cache. Writes run
//! in `BEGIN IMMEDIATE` ([`immediate`]) so concurrent writers queue for the lock instead of
//! failing on a lock upgrade. `flatmachine_schema` records a version per table group
//! ([`check_version`]); a file written by a newer release is refused.

use rusqlite::{Connection, OpenFlags, OptionalExtension, TransactionBehavior, params};
use std::cell::Cell;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Connection settings of the SQLite stores.
///
/// What a committed write survives, by [`synchronous_full`](Self::synchronous_full) (both in
/// WAL mode):
///
/// * `false` — `PRAGMA synchronous=NORMAL` (the default): a commit is in the WAL file when it
///   returns, so it **survives a crash of the process**; the WAL is fsynced only at WAL
///   checkpoints, so a **power loss or OS crash may drop the last transactions** (the database
///   stays consistent: it rolls back to an earlier commit, never to a torn one).
/// * `true` — `PRAGMA synchronous=FULL`: the WAL is fsynced at every commit, so a commit
///   **survives power loss** too, at the cost of one fsync per transaction.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SqliteOptions {
    /// How long a statement waits for another connection's write lock before failing
    /// (default 30 s).
    pub busy_timeout: Duration,
    /// `PRAGMA synchronous=FULL` instead of `NORMAL` (survives power loss, slower).
    pub synchronous_full: bool,
}

impl Default for SqliteOptions {
    fn default() -> Self {
        Self {
            busy_timeout: Duration::from_secs(30),
            synchronous_full: false,
        }
    }
}

/// Why a SQLite store could not do its work (converted into each store's own error type).
#[derive(Debug, thiserror::Error)]
pub(crate) enum SqliteError {
    /// SQLite reported an error.
    #[error(transparent)]
    Sqlite(#[from] rusqlite::Error),
    /// The database's directory could not be created.
    #[error("could not create directory {}: {source}", path.display())]
    CreateDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The file was written by a newer release.
    #[error(
        "table group `{component}` has schema version {found}; this release supports up to {supported}"
    )]
    SchemaTooNew {
        component: String,
        found: i64,
        supported: i64,
    },
    /// The file is not a database of this kind (read-only opening checks before reading).
    #[error("{0}")]
    NotOurs(String),
    /// The blocking task running the statement failed (panicked or was cancelled).
    #[error("sqlite task failed: {0}")]
    Task(String),
}

thread_local! {
    /// The busy timeout of the call running on this thread, and when its current wait began.
    static BUSY: Cell<(Duration, Option<Instant>)> = const { Cell::new((Duration::from_secs(30), None)) };
}

/// Busy handler: spin briefly, then sleep in growing steps (≤ 1 ms, so a queue of writers keeps
/// moving) until the call's timeout. SQLite's default handler sleeps in steps up to 100 ms.
fn busy_handler(attempt: i32) -> bool {
    BUSY.with(|b| {
        let (limit, start) = b.get();
        let start = match (attempt, start) {
            (0, _) | (_, None) => {
                let now = Instant::now();
                b.set((limit, Some(now)));
                now
            }
            (_, Some(s)) => s,
        };
        if start.elapsed() > limit {
            return false;
        }
        if attempt < 4 {
            std::thread::yield_now();
        } else {
            let micros = (20u64 << (attempt - 4).min(6) as u64).min(1000);
            std::thread::sleep(Duration::from_micros(
                micros + fastrand::u64(0..=micros / 2),
            ));
        }
        true
    })
}

/// Opens `path` (creating it and its directory) with the settings described in the module
/// docs.
fn open_connection(path: &Path, options: SqliteOptions) -> Result<Connection, SqliteError> {
    if let Some(parent) = path.parent()
        && !parent.as_os_str().is_empty()
    {
        crate::persistence::create_private_dir_all(parent).map_err(|source| {
            SqliteError::CreateDir {
                path: parent.to_owned(),
                source,
            }
        })?;
    }
    // A new database file is created owner-only (SQLite gives its -wal and -shm files the
    // database file's mode); an existing one keeps its mode.
    if let Err(error) = crate::persistence::create_private_file(path)
        && error.kind() != std::io::ErrorKind::AlreadyExists
    {
        tracing::debug!(%error, path = %path.display(), "could not pre-create the database file");
    }
    let conn = Connection::open(path)?;
    conn.busy_handler(Some(busy_handler))?;
    BUSY.with(|b| b.set((options.busy_timeout, None)));
    // Switching to WAL needs a moment without other connections mid-transaction; retry.
    let mut tries = 0;
    loop {
        let mode: Result<String, _> = conn.query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0));
        match mode {
            Ok(_) => break,
            Err(e) if tries < 200 => {
                tries += 1;
                tracing::debug!(error = %e, "journal_mode=WAL busy; retrying");
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(e) => return Err(e.into()),
        }
    }
    conn.execute_batch(if options.synchronous_full {
        "PRAGMA synchronous=FULL;"
    } else {
        "PRAGMA synchronous=NORMAL;"
    })?;
    // 16 MiB page cache: the job table's id index is random-access (UUIDs).
    conn.execute_batch("PRAGMA cache_size=-16384; PRAGMA temp_store=MEMORY;")?;
    conn.set_prepared_statement_cache_capacity(64);
    Ok(conn)
}

/// One connection, used from tokio's blocking pool.
#[derive(Clone)]
pub(crate) struct Db {
    conn: Arc<Mutex<Connection>>,
    busy_timeout: Duration,
}

impl std::fmt::Debug for Db {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Db").finish_non_exhaustive()
    }
}

impl Db {
    /// Opens the database at `path` and sets up its tables with `schema`.
    pub(crate) fn open<E: From<SqliteError>>(
        path: &Path,
        options: SqliteOptions,
        schema: fn(&mut Connection) -> Result<(), E>,
    ) -> Result<Self, E> {
        let mut conn = open_connection(path, options)?;
        schema(&mut conn)?;
        Ok(Self {
            conn: Arc::new(Mutex::new(conn)),
            busy_timeout: options.busy_timeout,
        })
    }

    /// Opens the existing database at `path` read-only: nothing is created, no table, no
    /// journal-mode switch; `check` refuses a file that does not hold the expected tables.
    pub(crate) fn open_read_only<E: From<SqliteError>>(
        path: &Path,
        options: SqliteOptions,
        check: fn(&Connection) -> Result<(), E>,
    ) -> Result<Self, E> {
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(SqliteError::from)?;
        conn.busy_handler(Some(busy_handler))
            .map_err(SqliteError::from)?;
        BUSY.with(|b| b.set((options.busy_timeout, None)));
        conn.set_prepared_statement_cache_capacity(16);
        check(&conn)?;
        Ok(Self {
            conn: Arc::new(Mutex::new(conn)),
            busy_timeout: options.busy_timeout,
        })
    }

    /// Runs `f` with the connection on the blocking pool (inline when there is no tokio runtime).
    pub(crate) async fn run<T, E, F>(&self, f: F) -> Result<T, E>
    where
        T: Send + 'static,
        E: From<SqliteError> + Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T, E> + Send + 'static,
    {
        let conn = Arc::clone(&self.conn);
        let timeout = self.busy_timeout;
        let job = move || {
            BUSY.with(|b| b.set((timeout, None)));
            let mut guard = conn.lock().unwrap_or_else(|e| e.into_inner());
            f(&mut guard)
        };
        match tokio::runtime::Handle::try_current() {
            Ok(handle) => handle
                .spawn_blocking(job)
                .await
                .map_err(|e| SqliteError::Task(e.to_string()))?,
            Err(_) => job(),
        }
    }
}

impl Db {
    /// Runs `f` with the connection on the calling thread (for statements that do not wait on
    /// the disk).
    pub(crate) fn run_inline<T, E>(
        &self,
        f: impl FnOnce(&mut Connection) -> Result<T, E>,
    ) -> Result<T, E> {
        BUSY.with(|b| b.set((self.busy_timeout, None)));
        let mut guard = self.conn.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut guard)
    }
}

/// `BEGIN IMMEDIATE` … `COMMIT` around `f` (rolled back when `f` fails).
pub(crate) fn immediate<T, E: From<rusqlite::Error>>(
    conn: &mut Connection,
    f: impl FnOnce(&rusqlite::Transaction<'_>) -> Result<T, E>,
) -> Result<T, E> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let value = f(&tx)?;
    tx.commit()?;
    Ok(value)
}

/// For a read-only connection: the schema version recorded for `component`, refusing a file
/// without `flatmachine_schema`, without `table`, or written by a newer release.
pub(crate) fn check_version_read_only(
    conn: &Connection,
    component: &str,
    table: &str,
    supported: i64,
) -> Result<i64, SqliteError> {
    let has_table = |name: &str| -> Result<bool, SqliteError> {
        Ok(conn
            .query_row(
                "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?1",
                params![name],
                |_| Ok(()),
            )
            .optional()?
            .is_some())
    };
    let not_ours = || {
        SqliteError::NotOurs(format!(
            "not a flatmachine database: it has no `{table}` table recorded in `flatmachine_schema`"
        ))
    };
    if !has_table("flatmachine_schema")? || !has_table(table)? {
        return Err(not_ours());
    }
    let found: Option<i64> = conn
        .query_row(
            "SELECT version FROM flatmachine_schema WHERE component = ?1",
            params![component],
            |r| r.get(0),
        )
        .optional()?;
    match found {
        None => Err(not_ours()),
        Some(v) if v > supported => Err(SqliteError::SchemaTooNew {
            component: component.to_string(),
            found: v,
            supported,
        }),
        Some(v) => Ok(v),
    }
}

/// Checks (and records) the schema version of the table group `component`: a file of a newer
/// release is refused with [`SqliteError::SchemaTooNew`].
pub(crate) fn check_version(
    tx: &rusqlite::Transaction<'_>,
    component: &str,
    supported: i64,
) -> Result<(), SqliteError> {
    tx.execute_batch(
        "CREATE TABLE IF NOT EXISTS flatmachine_schema (
            component TEXT PRIMARY KEY,
            version INTEGER NOT NULL
        );",
    )?;
    let found: Option<i64> = tx
        .query_row(
            "SELECT version FROM flatmachine_schema WHERE component = ?1",
            params![component],
            |r| r.get(0),
        )
        .optional()?;
    match found {
        Some(v) if v > supported => Err(SqliteError::SchemaTooNew {
            component: component.to_string(),
            found: v,
            supported,
        }),
        // Version 1 is the first; later releases migrate `Some(older)` here.
        _ => {
            tx.execute(
                "INSERT INTO flatmachine_schema (component, version) VALUES (?1, ?2)
                 ON CONFLICT(component) DO UPDATE SET version = excluded.version",
                params![component, supported],
            )?;
            Ok(())
        }
    }
}
