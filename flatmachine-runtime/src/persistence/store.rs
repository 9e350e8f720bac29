//! [`CheckpointStore`]: what the execution loop calls to save and resume (the reference's
//! `CheckpointManager`), with optional pruning.

use std::path::PathBuf;
use std::sync::Arc;

use super::encoded::SnapshotParts;
use super::{
    BatchPart, CheckpointWriter, EncodedCheckpoint, LocalFileBackend, MachineSnapshot,
    MemoryBackend, PersistenceBackend, PersistenceError, checkpoint_event, validate_execution_id,
    validate_key,
};

/// One execution's checkpoints, texts and lock operation, as
/// [`CheckpointStore::save_encoded_batch_with`] takes them.
pub(crate) type ExecutionBatch<'a> = (
    Vec<EncodedCheckpoint>,
    &'a [(String, String)],
    Option<crate::lock::HoldOps<'a>>,
);

/// The key of one checkpoint: `{execution_id}/step_{step:06}_{event}.json` (reference layout).
pub fn snapshot_key(execution_id: &str, step: u64, event: &str) -> String {
    format!("{execution_id}/step_{step:06}_{event}.json")
}

/// The key of an execution's `latest` pointer: `{execution_id}/latest`.
pub fn latest_key(execution_id: &str) -> String {
    format!("{execution_id}/latest")
}

/// Splits a checkpoint key made by [`snapshot_key`] into `(execution_id, step, event)`;
/// `None` for any other key.
pub fn parse_snapshot_key(key: &str) -> Option<(&str, u64, &str)> {
    let (execution_id, name) = key.rsplit_once('/')?;
    let rest = name.strip_prefix("step_")?.strip_suffix(".json")?;
    let (step, event) = rest.split_once('_')?;
    if step.len() < 6 || !step.bytes().all(|b| b.is_ascii_digit()) || event.is_empty() {
        return None;
    }
    Some((execution_id, step.parse().ok()?, event))
}

/// Saves and loads the checkpoints of machine runs on a [`PersistenceBackend`].
///
/// [`save`](Self::save) writes the snapshot under [`snapshot_key`], then points
/// `{execution_id}/latest` at it (so a crash between the two leaves `latest` on the previous,
/// complete checkpoint). With [`with_keep_last(Some(n))`](Self::with_keep_last) it then deletes
/// all but the newest `n` checkpoints of that execution. "Newest" is by step, then by event in
/// run order (`machine_start`, `state_enter`, `execute`, others, `state_exit`, `machine_end`),
/// which assumes steps only grow within an execution id (true for runs and resumes).
///
/// Cheap to clone; clones share the backend.
#[derive(Clone)]
pub struct CheckpointStore {
    backend: Arc<dyn PersistenceBackend>,
    keep_last: Option<usize>,
    keep_finished: Option<usize>,
}

impl std::fmt::Debug for CheckpointStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CheckpointStore")
            .field("keep_last", &self.keep_last)
            .field("keep_finished", &self.keep_finished)
            .finish_non_exhaustive()
    }
}

impl CheckpointStore {
    /// A store on `backend` that keeps every checkpoint.
    pub fn new(backend: Arc<dyn PersistenceBackend>) -> Self {
        Self {
            backend,
            keep_last: None,
            keep_finished: None,
        }
    }

    /// A store on a new [`MemoryBackend`].
    pub fn memory() -> Self {
        Self::new(Arc::new(MemoryBackend::new()))
    }

    /// A store on a [`LocalFileBackend`] rooted at `root` (fsync on).
    pub fn local(root: impl Into<PathBuf>) -> Self {
        Self::new(Arc::new(LocalFileBackend::new(root)))
    }

    /// Keep only the newest `n` checkpoints per execution (`None`: keep all, the default and
    /// the reference behaviour). `Some(0)` is treated as `Some(1)`: the checkpoint `latest`
    /// points to is never deleted.
    pub fn with_keep_last(mut self, keep_last: Option<usize>) -> Self {
        self.keep_last = keep_last.map(|n| n.max(1));
        self
    }

    /// The pruning setting (see [`with_keep_last`](Self::with_keep_last)).
    pub fn keep_last(&self) -> Option<usize> {
        self.keep_last
    }

    /// Retention of finished executions: when an execution's `machine_end` checkpoint is saved,
    /// delete all but its newest `n` checkpoints (`None`: keep all; `Some(0)` counts as 1, so
    /// the final checkpoint stays for `inspect` and resume). One prune per run instead of one
    /// per checkpoint; the default for worker machines (see `docs/many-hosts.md`).
    pub fn with_keep_finished(mut self, keep: Option<usize>) -> Self {
        self.keep_finished = keep.map(|n| n.max(1));
        self
    }

    /// The retention of finished executions (see [`with_keep_finished`](Self::with_keep_finished)).
    pub fn keep_finished(&self) -> Option<usize> {
        self.keep_finished
    }

    /// How many checkpoints to keep after saving `key`, if pruning is due.
    fn prune_after(&self, key: &str) -> Option<usize> {
        self.keep_last.or_else(|| {
            self.keep_finished.filter(|_| {
                parse_snapshot_key(key)
                    .is_some_and(|(_, _, event)| event == checkpoint_event::MACHINE_END)
            })
        })
    }

    /// The backend.
    pub fn backend(&self) -> &Arc<dyn PersistenceBackend> {
        &self.backend
    }

    /// Saves a checkpoint, updates the execution's `latest` pointer, prunes if configured;
    /// returns the checkpoint's key. The event in the key is `unknown` when
    /// [`MachineSnapshot::event`] is `None` (reference behaviour).
    pub async fn save(&self, snapshot: MachineSnapshot) -> Result<String, PersistenceError> {
        self.save_shared(Arc::new(snapshot)).await
    }

    /// [`save`](Self::save) for a snapshot the caller also keeps (no copy on the memory
    /// backend).
    pub async fn save_shared(
        &self,
        snapshot: Arc<MachineSnapshot>,
    ) -> Result<String, PersistenceError> {
        let execution_id = snapshot.execution_id.clone();
        validate_execution_id(&execution_id)?;
        let event = snapshot
            .event
            .as_deref()
            .unwrap_or(checkpoint_event::UNKNOWN);
        let key = snapshot_key(&execution_id, snapshot.step, event);
        self.backend
            .save_checkpoint(&key, &latest_key(&execution_id), snapshot)
            .await?;
        if let Some(keep) = self.prune_after(&key) {
            self.backend
                .prune_checkpoints(&execution_id, &key, keep)
                .await?;
        }
        Ok(key)
    }

    /// Saves a checkpoint serialized once by a [`CheckpointWriter`](super::CheckpointWriter)
    /// (what the execution loop calls): like [`save`](Self::save), without building or
    /// copying a [`MachineSnapshot`], and done on the spot when the backend can
    /// ([`PersistenceBackend::save_encoded_now`]). When retention prunes after it, the save
    /// and the pruning are one [`PersistenceBackend::save_encoded_batch`] (one transaction or
    /// round trip where the backend can).
    pub async fn save_encoded(
        &self,
        checkpoint: EncodedCheckpoint,
    ) -> Result<(), PersistenceError> {
        if let Some(keep) = self.prune_after(checkpoint.key_shared()) {
            return self
                .backend
                .save_encoded_batch(vec![checkpoint], &[], Some(keep), None)
                .await;
        }
        match self.backend.save_encoded_now(&checkpoint) {
            Some(result) => result,
            None => self.backend.save_encoded(checkpoint).await,
        }
    }

    /// Saves several checkpoints of one execution, in run order (the `latest` pointer ends
    /// on the last), then prunes as configured after the last one — one
    /// [`PersistenceBackend::save_encoded_batch`]. With `lock`, a backend sharing the hold's
    /// fencing domain also takes (pending) or releases the execution's lock in the same
    /// operation; a hold of another domain is left alone.
    pub async fn save_encoded_batch(
        &self,
        checkpoints: Vec<EncodedCheckpoint>,
        lock: Option<crate::lock::HoldOps<'_>>,
    ) -> Result<(), PersistenceError> {
        self.save_encoded_batch_with(checkpoints, &[], lock).await
    }

    /// [`save_encoded_batch`](Self::save_encoded_batch), with texts of the same execution
    /// (key, text) saved in the same operation (see
    /// [`PersistenceBackend::save_encoded_batch`]).
    pub async fn save_encoded_batch_with(
        &self,
        checkpoints: Vec<EncodedCheckpoint>,
        texts: &[(String, String)],
        lock: Option<crate::lock::HoldOps<'_>>,
    ) -> Result<(), PersistenceError> {
        let Some(mut part) = self.batch_part(checkpoints, texts, lock) else {
            return Ok(());
        };
        if part.checkpoints.len() == 1
            && texts.is_empty()
            && part.keep.is_none()
            && part.lock.is_none()
            && let Some(only) = part.checkpoints.pop()
        {
            return self.save_encoded(only).await;
        }
        self.backend
            .save_encoded_batch(part.checkpoints, part.texts, part.keep, part.lock)
            .await
    }

    /// The batches of several executions — (checkpoints, texts, lock) each, as
    /// [`save_encoded_batch_with`](Self::save_encoded_batch_with) takes them — in one
    /// [`PersistenceBackend::save_encoded_batches`] (one script on Redis).
    pub(crate) async fn save_encoded_batches_with<'a>(
        &self,
        batches: Vec<ExecutionBatch<'a>>,
    ) -> Result<(), PersistenceError> {
        let parts: Vec<BatchPart<'a>> = batches
            .into_iter()
            .filter_map(|(checkpoints, texts, lock)| self.batch_part(checkpoints, texts, lock))
            .collect();
        match parts.len() {
            0 => Ok(()),
            1 => {
                let part = parts.into_iter().next().expect("one part");
                self.backend
                    .save_encoded_batch(part.checkpoints, part.texts, part.keep, part.lock)
                    .await
            }
            _ => self.backend.save_encoded_batches(parts).await,
        }
    }

    /// One execution's batch as the backend gets it: the retention to apply after it, without
    /// the checkpoints that retention would delete at once, and the lock operation only when
    /// the backend shares the hold's fencing domain. `None` without checkpoints.
    fn batch_part<'a>(
        &self,
        mut checkpoints: Vec<EncodedCheckpoint>,
        texts: &'a [(String, String)],
        lock: Option<crate::lock::HoldOps<'a>>,
    ) -> Option<BatchPart<'a>> {
        let last = checkpoints.last()?;
        let keep = self.prune_after(last.key_shared());
        // Checkpoints the pruning after this batch would delete at once are not written: only
        // the batch's newest `keep` (at least its last) can survive it. (A finished worker
        // execution keeping 1 skips its final state's `execute` checkpoint this way.)
        if let Some(keep) = keep {
            let doomed = checkpoints.len().saturating_sub(keep.max(1));
            checkpoints.drain(..doomed);
        }
        let lock = lock.filter(|ops| {
            (ops.release || !ops.hold.is_acquired())
                && self
                    .backend
                    .fencing_domain()
                    .is_some_and(|d| d == ops.hold.domain())
        });
        Some(BatchPart {
            checkpoints,
            texts,
            keep,
            lock,
        })
    }

    /// Saves one checkpoint of the execution `writer` writes (what the execution loop calls):
    /// as a [`CheckpointRecord`] when the backend [keeps records](PersistenceBackend::keeps_records)
    /// (nothing serialized), else serialized once ([`save_encoded`](Self::save_encoded)).
    pub(crate) async fn write(
        &self,
        writer: &mut CheckpointWriter,
        parts: SnapshotParts<'_>,
    ) -> Result<(), PersistenceError> {
        if !self.backend.keeps_records() {
            return self.save_encoded(writer.encode(parts)?).await;
        }
        let record = writer.record(parts)?;
        // The key is built only when some pruning is configured.
        let pruning = if self.keep_last.is_some() || self.keep_finished.is_some() {
            let key = record.key();
            self.prune_after(&key)
                .map(|keep| (keep, key, Arc::clone(record.execution_id_shared())))
        } else {
            None
        };
        self.backend.save_record_now(record)?;
        if let Some((keep, key, execution_id)) = pruning {
            self.backend
                .prune_checkpoints(&execution_id, &key, keep)
                .await?;
        }
        Ok(())
    }

    /// The key `latest` points to for this execution, `None` if it has no checkpoint.
    /// A pointer that is not a valid key is reported as [`PersistenceError::Corrupt`].
    pub async fn latest_checkpoint_key(
        &self,
        execution_id: &str,
    ) -> Result<Option<String>, PersistenceError> {
        validate_execution_id(execution_id)?;
        let pointer = latest_key(execution_id);
        let Some(text) = self.backend.load_text(&pointer).await? else {
            return Ok(None);
        };
        let target = text.trim();
        let corrupt = |reason: String| PersistenceError::Corrupt {
            path: self.backend.file_path(&pointer),
            key: pointer.clone(),
            reason,
        };
        if target.is_empty() {
            return Err(corrupt("the latest pointer is empty".to_owned()));
        }
        // The pointer's text is quoted in no message unless it is a checkpoint key: a pointer
        // replaced by (or linked to) another file must not leak that file into logs.
        if validate_key(target).is_err() || parse_snapshot_key(target).is_none() {
            return Err(corrupt(format!(
                "the latest pointer does not hold a checkpoint key ({} bytes; its content is not shown)",
                text.len()
            )));
        }
        Ok(Some(target.to_owned()))
    }

    /// The newest checkpoint of an execution (what a resume starts from); `None` if the
    /// execution has no checkpoint. See [`load_latest_entry`](Self::load_latest_entry).
    pub async fn load_latest(
        &self,
        execution_id: &str,
    ) -> Result<Option<MachineSnapshot>, PersistenceError> {
        Ok(self
            .load_latest_entry(execution_id)
            .await?
            .map(|(_, snapshot)| snapshot))
    }

    /// The newest checkpoint of an execution with its key; `None` if the execution has no
    /// checkpoint at all.
    ///
    /// * The checkpoint `latest` points to must exist ([`PersistenceError::DanglingLatest`]
    ///   otherwise; the reference silently starts over), lie in the execution's own directory
    ///   and carry the execution id asked for ([`PersistenceError::Corrupt`] naming the file
    ///   otherwise; the reference follows such a pointer).
    /// * Without a `latest` pointer (deleted, or never written because the process died
    ///   between the first snapshot and its pointer) the newest valid checkpoint is used —
    ///   newest by step, then by event in run order — with a warning. When checkpoints exist
    ///   but none is valid, the error names the pointer and says what was found.
    pub async fn load_latest_entry(
        &self,
        execution_id: &str,
    ) -> Result<Option<(String, MachineSnapshot)>, PersistenceError> {
        let Some(key) = self.latest_checkpoint_key(execution_id).await? else {
            return self.newest_valid(execution_id).await;
        };
        let corrupt = |reason: String| PersistenceError::Corrupt {
            path: self.backend.file_path(&key),
            key: key.clone(),
            reason,
        };
        if !key.starts_with(&format!("{execution_id}/")) {
            return Err(PersistenceError::Corrupt {
                path: self.backend.file_path(&latest_key(execution_id)),
                key: latest_key(execution_id),
                reason: format!(
                    "the latest pointer of execution `{execution_id}` names `{key}`, outside the execution's directory"
                ),
            });
        }
        match self.backend.load(&key).await? {
            Some(snapshot) if snapshot.execution_id != execution_id => Err(corrupt(format!(
                "it belongs to execution `{}`, not `{execution_id}`",
                snapshot.execution_id
            ))),
            Some(snapshot) => Ok(Some((key, snapshot))),
            None => Err(PersistenceError::DanglingLatest {
                execution_id: execution_id.to_owned(),
                key,
            }),
        }
    }

    /// Without a `latest` pointer: the newest checkpoint that loads and belongs to the
    /// execution.
    async fn newest_valid(
        &self,
        execution_id: &str,
    ) -> Result<Option<(String, MachineSnapshot)>, PersistenceError> {
        let keys = self.checkpoint_keys(execution_id).await?;
        if keys.is_empty() {
            return Ok(None);
        }
        let mut ordered: Vec<(u64, u8, String)> = keys
            .into_iter()
            .filter_map(|key| {
                let (_, step, event) = parse_snapshot_key(&key)?;
                Some((step, checkpoint_event::rank(event), key.clone()))
            })
            .collect();
        ordered.sort_unstable();
        let mut refused = Vec::new();
        for (_, _, key) in ordered.iter().rev() {
            match self.backend.load(key).await {
                Ok(Some(snapshot)) if snapshot.execution_id == execution_id => {
                    tracing::warn!(
                        execution_id,
                        checkpoint = %key,
                        "the latest pointer is missing; resuming from the newest valid checkpoint"
                    );
                    return Ok(Some((key.clone(), snapshot)));
                }
                Ok(Some(snapshot)) => refused.push(format!(
                    "`{key}` belongs to execution `{}`",
                    snapshot.execution_id
                )),
                Ok(None) => refused.push(format!("`{key}` vanished while reading")),
                Err(error) => refused.push(error.to_string()),
            }
        }
        let pointer = latest_key(execution_id);
        Err(PersistenceError::Corrupt {
            path: self.backend.file_path(&pointer),
            key: pointer,
            reason: format!(
                "the latest pointer is missing and none of the {} checkpoints of execution `{execution_id}` can be used: {}",
                ordered.len(),
                refused.join("; ")
            ),
        })
    }

    /// Housekeeping before a run or resume of an execution takes it over (called with the
    /// execution's lock held): removes the temporary files that killed writes left behind.
    pub async fn clean_execution(&self, execution_id: &str) -> Result<(), PersistenceError> {
        validate_execution_id(execution_id)?;
        self.backend.remove_temporaries(execution_id).await
    }

    /// The checkpoint keys of an execution (not the `latest` pointer), sorted by key.
    pub async fn checkpoint_keys(
        &self,
        execution_id: &str,
    ) -> Result<Vec<String>, PersistenceError> {
        validate_execution_id(execution_id)?;
        let mut keys = self.backend.list(&format!("{execution_id}/step_")).await?;
        keys.retain(|key| parse_snapshot_key(key).is_some());
        Ok(keys)
    }

    /// The execution ids that have a `latest` pointer, sorted.
    pub async fn execution_ids(&self) -> Result<Vec<String>, PersistenceError> {
        let keys = self.backend.list("").await?;
        Ok(keys
            .iter()
            .filter_map(|key| key.strip_suffix("/latest"))
            .filter(|id| !id.contains('/'))
            .map(str::to_owned)
            .collect())
    }

    /// One page of [`execution_ids`](Self::execution_ids): at most `limit` ids after `after`
    /// (an id; `None` for the first page), sorted. Backends that can seek read only the page.
    pub async fn execution_ids_after(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<String>, PersistenceError> {
        if let Some(after) = after {
            validate_execution_id(after)?;
        }
        self.backend.execution_ids_after(after, limit).await
    }

    /// Deletes every checkpoint of an execution and its `latest` pointer.
    pub async fn delete_execution(&self, execution_id: &str) -> Result<(), PersistenceError> {
        validate_execution_id(execution_id)?;
        // The pointer goes first, so an interrupted delete never leaves it dangling.
        self.backend.delete(&latest_key(execution_id)).await?;
        for key in self.backend.list(&format!("{execution_id}/")).await? {
            self.backend.delete(&key).await?;
        }
        Ok(())
    }
}

/// The checkpoint keys among `keys` (an execution's keys, any order; other keys such as
/// `latest` are ignored) that pruning to the newest `keep` deletes: the oldest by step, then
/// event in run order, never `saved`.
pub(crate) fn keys_to_prune<'a>(keys: &'a [String], saved: &str, keep: usize) -> Vec<&'a str> {
    let mut ordered: Vec<(u64, u8, &str)> = keys
        .iter()
        .filter_map(|key| {
            let (_, step, event) = parse_snapshot_key(key)?;
            Some((step, checkpoint_event::rank(event), key.as_str()))
        })
        .collect();
    if ordered.len() <= keep {
        return Vec::new();
    }
    ordered.sort_unstable();
    let excess = ordered.len() - keep;
    ordered[..excess]
        .iter()
        .map(|&(_, _, key)| key)
        .filter(|key| *key != saved)
        .collect()
}
