//! Checkpoint persistence: the snapshot wire format, storage backends and the
//! [`CheckpointStore`] the execution loop calls.
//!
//! # Layout (same as the reference, `flatmachines` 1.0.0)
//!
//! Every checkpoint is stored under `{execution_id}/step_{step:06}_{event}.json`
//! ([`snapshot_key`]) and the key text of the newest one under `{execution_id}/latest`
//! ([`latest_key`]). With [`LocalFileBackend`] a key is a path below the root directory
//! (default `.checkpoints`), and `latest` is a text file holding the key, without a newline:
//!
//! ```text
//! .checkpoints/3f2a…/step_000000_machine_start.json
//! .checkpoints/3f2a…/step_000001_state_enter.json
//! .checkpoints/3f2a…/latest          ← "3f2a…/step_000001_state_enter.json"
//! ```
//!
//! Snapshot files are JSON written exactly as the reference writes them (see [`snapshot`]), so
//! checkpoints move freely between this runtime and the Python one.
//!
//! # Backends
//!
//! * [`MemoryBackend`] — the default when a machine has no `persistence` section; keeps the
//!   loop's checkpoints as [`CheckpointRecord`]s (compact parts, the context's JSON shared
//!   while it does not change), serialized to the same bytes when read.
//! * [`LocalFileBackend`] — files below a directory, written atomically (temporary file
//!   `.<name>.tmp`, fsync, rename, fsync of the directory; fsync can be turned off).
//! * `SqlitePersistence` (cargo feature `sqlite`) — one SQLite file, one transaction per
//!   checkpoint (snapshot and `latest` pointer together), the same snapshot JSON.
//!
//! [`copy_executions`] copies executions between any two stores byte for byte (file layout
//! ⇄ SQLite).
//!
//! Keys are checked by [`validate_key`]: `..`, absolute paths, backslashes, NUL and segments
//! starting with `.` are rejected, so no key (and no execution id) reaches outside the storage.

use std::error::Error as StdError;
use std::path::PathBuf;
use std::sync::Arc;

use async_trait::async_trait;

use crate::StateError;

mod convert;
mod crc32;
pub(crate) mod encoded;
mod key;
mod local;
mod memory;
pub(crate) mod record;
pub mod snapshot;
#[cfg(feature = "sqlite")]
mod sqlite;
pub(crate) mod store;

#[cfg(feature = "sqlite")]
pub use crate::sqlite::SqliteOptions;
pub use convert::{CopyReport, copy_executions};
pub use encoded::{CheckpointWriter, EncodedCheckpoint};
pub use key::{InvalidKey, MAX_EXECUTION_ID_LEN, validate_execution_id, validate_key};
pub use local::LocalFileBackend;
#[cfg(feature = "sqlite")]
pub(crate) use local::create_private as create_private_file;
pub(crate) use local::create_private_dir_all;
pub use memory::MemoryBackend;
pub use record::CheckpointRecord;
pub use snapshot::{ForkOrigin, LaunchIntent, MachineSnapshot, utc_now_isoformat};
#[cfg(feature = "sqlite")]
pub use sqlite::SqlitePersistence;
pub use store::{CheckpointStore, latest_key, parse_snapshot_key, snapshot_key};

/// Checkpoint event names, written to [`MachineSnapshot::event`] and into snapshot keys.
/// One execution's part of [`PersistenceBackend::save_encoded_batches`]: what
/// [`save_encoded_batch`](PersistenceBackend::save_encoded_batch) takes.
#[derive(Debug)]
pub struct BatchPart<'a> {
    /// The execution's checkpoints, in run order.
    pub checkpoints: Vec<EncodedCheckpoint>,
    /// Texts of the same execution, saved with them.
    pub texts: &'a [(String, String)],
    /// Keep only the newest `keep` checkpoints after saving.
    pub keep: Option<usize>,
    /// What the part does to the execution's lock.
    pub lock: Option<crate::lock::HoldOps<'a>>,
}

pub mod checkpoint_event {
    /// Before the first state (step 0).
    pub const MACHINE_START: &str = "machine_start";
    /// A state is entered (before `on_state_enter`).
    pub const STATE_ENTER: &str = "state_enter";
    /// A state is about to run its action/agent/machine.
    pub const EXECUTE: &str = "execute";
    /// A `wait_for` state found no signal: the run stops here until one arrives (written
    /// whenever there is a store, whatever `checkpoint_on` says; the reference 4.2.1's event).
    pub const WAITING: &str = "waiting";
    /// A state finished (not written when the state failed and `on_error` routed away).
    pub const STATE_EXIT: &str = "state_exit";
    /// The run ended.
    pub const MACHINE_END: &str = "machine_end";
    /// After a round of a `tool_loop` state (the model's calls and their results, kept in the
    /// context's `_tool_loop` record): resuming from it continues the loop after that round.
    /// One key per step, like the reference: each round replaces the previous round's
    /// checkpoint, whose whole conversation it contains.
    pub const TOOL_CALL: &str = "tool_call";
    /// Written in a key when a snapshot has no event (reference behaviour).
    pub const UNKNOWN: &str = "unknown";
    /// The default `checkpoint_on` set: every event above except [`WAITING`] (always
    /// written) and [`UNKNOWN`], in run order.
    pub const ALL: [&str; 5] = [MACHINE_START, STATE_ENTER, EXECUTE, STATE_EXIT, MACHINE_END];

    /// Every event a run writes, in run order within a step (`tool_call`, once per round of a
    /// `tool_loop` state, and `waiting` come after `execute`; `waiting` is followed by the same
    /// step's `state_exit` once the signal is there).
    pub const WRITTEN: [&str; 7] = [
        MACHINE_START,
        STATE_ENTER,
        EXECUTE,
        TOOL_CALL,
        WAITING,
        STATE_EXIT,
        MACHINE_END,
    ];

    /// Position of an event within one step, in run order (`machine_start` 0, `state_enter`
    /// 1, `execute` 2, `tool_call`, `waiting` and any other event 3, `state_exit` 4,
    /// `machine_end` 5): how every store orders, prunes and resumes the checkpoints of one step.
    pub fn rank(event: &str) -> u8 {
        match event {
            MACHINE_START => 0,
            STATE_ENTER => 1,
            EXECUTE => 2,
            STATE_EXIT => 4,
            MACHINE_END => 5,
            _ => 3,
        }
    }
}

/// The `error_type` given to a [`PersistenceError`] converted into a [`StateError`].
pub const PERSISTENCE_ERROR_TYPE: &str = "PersistenceError";

/// An error of a persistence backend or of the [`CheckpointStore`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PersistenceError {
    /// A key or execution id that would not stay inside the storage.
    #[error("invalid checkpoint key: {0}")]
    InvalidKey(#[from] InvalidKey),
    /// A stored checkpoint (or `latest` pointer) that cannot be read back. Nothing is changed
    /// on disk when this is reported.
    #[error("corrupt checkpoint {}: {reason}", describe(key, path.as_ref()))]
    Corrupt {
        /// The key that was read.
        key: String,
        /// The file behind the key, for file backends.
        path: Option<PathBuf>,
        /// What is wrong with it.
        reason: String,
    },
    /// The `latest` pointer of an execution names a checkpoint that does not exist.
    #[error(
        "the latest pointer of execution `{execution_id}` names checkpoint `{key}`, which does not exist"
    )]
    DanglingLatest {
        /// The execution whose pointer is dangling.
        execution_id: String,
        /// The key the pointer names.
        key: String,
    },
    /// A file-system operation failed.
    #[error("could not {op} {}: {source}", path.display())]
    Io {
        /// What was being done (`"write"`, `"read"`, `"rename"`, ...).
        op: &'static str,
        /// The path involved.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A snapshot could not be serialized.
    #[error("could not serialize checkpoint `{key}`: {source}")]
    Serialize {
        /// The key being written.
        key: String,
        /// The underlying error.
        #[source]
        source: serde_json::Error,
    },
    /// Any other failure (for custom backends).
    #[error("persistence backend error: {0}")]
    Other(Box<dyn StdError + Send + Sync>),
}

fn describe(key: &str, path: Option<&PathBuf>) -> String {
    match path {
        Some(path) => format!("{} (key `{key}`)", path.display()),
        None => format!("`{key}`"),
    }
}

impl From<PersistenceError> for StateError {
    fn from(error: PersistenceError) -> Self {
        StateError::new(PERSISTENCE_ERROR_TYPE, error.to_string())
    }
}

/// Storage for checkpoints: snapshots and short texts (the `latest` pointers) under string keys.
///
/// Keys are `/`-separated relative paths, checked with [`validate_key`]; implementations must
/// reject invalid keys with [`PersistenceError::InvalidKey`]. Every write must be atomic (fully
/// written or not at all). Usually driven through a [`CheckpointStore`].
#[async_trait]
pub trait PersistenceBackend: Send + Sync {
    /// Stores a snapshot under `key`, replacing what was there.
    async fn save(&self, key: &str, snapshot: &MachineSnapshot) -> Result<(), PersistenceError>;

    /// Stores a shared snapshot. Backends that keep snapshots in memory override this to keep
    /// the `Arc` instead of copying; the default calls [`save`](Self::save).
    async fn save_shared(
        &self,
        key: &str,
        snapshot: Arc<MachineSnapshot>,
    ) -> Result<(), PersistenceError> {
        self.save(key, &snapshot).await
    }

    /// Stores the checkpoint `snapshot` under `key` and points the execution's `latest` text
    /// (`latest_key`) at it. Backends that can do both in one atomic operation (a transaction,
    /// MULTI/EXEC) override this. The default saves the snapshot, then the pointer: a crash in
    /// between leaves the previous pointer, which still names a complete checkpoint.
    async fn save_checkpoint(
        &self,
        key: &str,
        latest_key: &str,
        snapshot: Arc<MachineSnapshot>,
    ) -> Result<(), PersistenceError> {
        self.save_shared(key, snapshot).await?;
        self.save_text(latest_key, key).await
    }

    /// Stores a checkpoint the execution loop serialized once ([`EncodedCheckpoint`]): the
    /// snapshot under [`EncodedCheckpoint::key`] and the `latest` pointer, with the guarantees
    /// of [`save_checkpoint`](Self::save_checkpoint). Backends that store bytes override this
    /// to keep [`EncodedCheckpoint::json`] as is; the default parses the JSON back into a
    /// snapshot and calls [`save_checkpoint`](Self::save_checkpoint).
    async fn save_encoded(&self, checkpoint: EncodedCheckpoint) -> Result<(), PersistenceError> {
        let snapshot = checkpoint.to_snapshot()?;
        self.save_checkpoint(
            checkpoint.key(),
            checkpoint.latest_key(),
            Arc::new(snapshot),
        )
        .await
    }

    /// [`save_encoded`](Self::save_encoded) done on the spot, for backends whose save is a
    /// quick in-memory operation (no I/O, no waiting): `Some(result)` when it was done,
    /// `None` (the default) to have [`save_encoded`](Self::save_encoded) awaited instead.
    /// Spares the execution loop an async call per checkpoint.
    fn save_encoded_now(
        &self,
        checkpoint: &EncodedCheckpoint,
    ) -> Option<Result<(), PersistenceError>> {
        let _ = checkpoint;
        None
    }

    /// Whether this backend keeps checkpoints in this process and takes them as
    /// [`CheckpointRecord`]s: their parts, the context shared between records, serialized
    /// only when read. The execution loop then calls [`save_record_now`](Self::save_record_now)
    /// instead of serializing each checkpoint. `false` by default.
    fn keeps_records(&self) -> bool {
        false
    }

    /// Stores a checkpoint record (the snapshot and the `latest` pointer, with the guarantees
    /// of [`save_checkpoint`](Self::save_checkpoint)) on the spot. Only called when
    /// [`keeps_records`](Self::keeps_records) is `true`; a backend saying so must override
    /// this (the default reports an error).
    fn save_record_now(&self, record: CheckpointRecord) -> Result<(), PersistenceError> {
        Err(PersistenceError::Other(
            format!(
                "this backend says it keeps records but cannot save checkpoint `{}`",
                record.key()
            )
            .into(),
        ))
    }

    /// Saves checkpoints of one execution, in run order, then (with `keep`) deletes all but
    /// its newest `keep` checkpoints, never the last one saved — what [`CheckpointStore`]
    /// calls when the run loop hands it several checkpoints at once, or one that retention
    /// prunes after. The `latest` pointer ends on the last one. With `lock` (a hold of the
    /// execution's lock in this backend's [`fencing_domain`](Self::fencing_domain)), a
    /// backend that can takes a pending hold before writing (calling
    /// [`StoreHold::mark_acquired`](crate::lock::StoreHold::mark_acquired)) and releases it
    /// after when asked ([`StoreHold::mark_released`](crate::lock::StoreHold::mark_released)).
    ///
    /// Backends that can do it all in one operation (one transaction, one server-side script)
    /// override this. The default saves each checkpoint
    /// ([`save_encoded_now`](Self::save_encoded_now), else [`save_encoded`](Self::save_encoded)),
    /// then prunes ([`prune_checkpoints`](Self::prune_checkpoints)), and leaves the lock to its
    /// guard (it has no fencing domain, so no hold is ever pending on it). Nothing is pruned
    /// unless every save succeeded.
    ///
    /// `texts` are (key, text) pairs of the same execution stored as
    /// [`save_text`](Self::save_text) would, with the checkpoints (the run's trace graph goes
    /// with its first checkpoint this way, at no round trip of its own). The default saves
    /// them after the checkpoints.
    async fn save_encoded_batch(
        &self,
        checkpoints: Vec<EncodedCheckpoint>,
        texts: &[(String, String)],
        keep: Option<usize>,
        lock: Option<crate::lock::HoldOps<'_>>,
    ) -> Result<(), PersistenceError> {
        let _ = lock;
        let last = checkpoints.last().map(|c| c.key_shared().clone());
        for checkpoint in checkpoints {
            match self.save_encoded_now(&checkpoint) {
                Some(result) => result?,
                None => self.save_encoded(checkpoint).await?,
            }
        }
        for (key, text) in texts {
            self.save_text(key, text).await?;
        }
        if let (Some(keep), Some(key)) = (keep, last) {
            let execution_id = &key[..key.rfind('/').unwrap_or(0)];
            self.prune_checkpoints(execution_id, &key, keep).await?;
        }
        Ok(())
    }

    /// Whether [`save_encoded_batches`](Self::save_encoded_batches) saves several executions'
    /// batches in one operation (all or nothing). The engine then has a child machine's last
    /// checkpoints saved with its parent's next ones, sparing a round trip. `false` by default.
    fn saves_executions_together(&self) -> bool {
        false
    }

    /// Saves the batches of several executions (each as
    /// [`save_encoded_batch`](Self::save_encoded_batch) would, in the order given) — a child
    /// machine's last checkpoints with its parent's next ones. A backend that can do it in one
    /// operation overrides this and writes nothing unless every part may be written; the
    /// default saves the parts one after the other.
    async fn save_encoded_batches(
        &self,
        parts: Vec<BatchPart<'_>>,
    ) -> Result<(), PersistenceError> {
        for part in parts {
            self.save_encoded_batch(part.checkpoints, part.texts, part.keep, part.lock)
                .await?;
        }
        Ok(())
    }

    /// The fencing domain of this backend: a name shared with the execution locks that keep
    /// their keys and fencing tokens in the same place (the same Redis server, database and
    /// key prefix), so [`save_encoded_batch`](Self::save_encoded_batch) can release such a
    /// lock. `None` (the default): no lock shares this backend's domain.
    fn fencing_domain(&self) -> Option<String> {
        None
    }

    /// Deletes all but the newest `keep` checkpoints of `execution_id` (ordered by step, then
    /// event in run order), never the checkpoint `saved` (the one `latest` names). Backends that
    /// can prune where the data lives (a server-side script, one `DELETE`) override this; the
    /// default lists the execution's keys and deletes the excess one by one.
    async fn prune_checkpoints(
        &self,
        execution_id: &str,
        saved: &str,
        keep: usize,
    ) -> Result<(), PersistenceError> {
        let keys = self.list(&format!("{execution_id}/")).await?;
        for key in store::keys_to_prune(&keys, saved, keep) {
            self.delete(key).await?;
        }
        Ok(())
    }

    /// Loads the snapshot under `key`; `Ok(None)` if there is none, [`PersistenceError::Corrupt`]
    /// if what is stored is not a snapshot.
    async fn load(&self, key: &str) -> Result<Option<MachineSnapshot>, PersistenceError>;

    /// Stores a text under `key` (used for the `latest` pointer), replacing what was there.
    async fn save_text(&self, key: &str, text: &str) -> Result<(), PersistenceError>;

    /// Loads the text under `key` (a stored snapshot reads as its JSON); `Ok(None)` if there is
    /// none, [`PersistenceError::Corrupt`] if it is not UTF-8.
    async fn load_text(&self, key: &str) -> Result<Option<String>, PersistenceError>;

    /// Deletes `key`; not an error if it does not exist.
    async fn delete(&self, key: &str) -> Result<(), PersistenceError>;

    /// All keys starting with `prefix` (a plain string prefix, e.g. `"{execution_id}/"`),
    /// sorted lexicographically.
    async fn list(&self, prefix: &str) -> Result<Vec<String>, PersistenceError>;

    /// Removes what interrupted writes left in an execution's storage (temporary files).
    /// Called before a run or resume of `execution_id` starts, with its lock held; the
    /// default does nothing.
    async fn remove_temporaries(&self, execution_id: &str) -> Result<(), PersistenceError> {
        let _ = execution_id;
        Ok(())
    }

    /// The file behind `key`, for backends that store files (used in error messages).
    fn file_path(&self, key: &str) -> Option<PathBuf> {
        let _ = key;
        None
    }

    /// At most `limit` execution ids that have a `latest` pointer and sort after `after`
    /// (all when `None`), in order: one page of a store's executions, for listings of any
    /// size (the console's). The default lists every key; backends that can seek override it.
    async fn execution_ids_after(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<String>, PersistenceError> {
        let keys = self.list("").await?;
        Ok(keys
            .iter()
            .filter_map(|key| key.strip_suffix("/latest"))
            .filter(|id| !id.contains('/') && after.is_none_or(|a| *id > a))
            .take(limit)
            .map(str::to_owned)
            .collect())
    }
}
