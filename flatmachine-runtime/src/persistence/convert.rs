//! Copying executions between two [`CheckpointStore`]s (e.g. the reference's file layout and
//! a SQLite database), byte for byte.

use super::{CheckpointStore, MachineSnapshot, PersistenceError, latest_key, parse_snapshot_key};

/// What [`copy_executions`] copied.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CopyReport {
    /// The executions copied, sorted.
    pub executions: Vec<String>,
    /// Checkpoints (snapshots) copied.
    pub checkpoints: usize,
    /// `latest` pointers copied.
    pub pointers: usize,
}

/// Copies the checkpoints and `latest` pointers of executions from `from` to `to`: those
/// named in `only`, or every execution `from` holds (every execution id with a checkpoint or
/// a `latest` pointer). Keys stay the same.
///
/// Snapshots are copied as the exact bytes stored (read with
/// [`load_text`](super::PersistenceBackend::load_text)), so the snapshot JSON is identical
/// in both stores, whatever wrote it (this runtime or the reference). Each snapshot is parsed
/// first and must belong to its execution, else nothing more is copied and the error names it
/// ([`PersistenceError::Corrupt`]). When the bytes are exactly what this runtime would write
/// for the parsed snapshot, it is saved as a snapshot (so a file destination also gets its
/// checksum file); otherwise the bytes are stored as they are. An execution's checkpoints are
/// copied in key order and its `latest` pointer last, so an interrupted copy never leaves a
/// pointer naming a missing checkpoint. Existing keys in `to` are replaced; nothing in `from`
/// changes.
pub async fn copy_executions(
    from: &CheckpointStore,
    to: &CheckpointStore,
    only: Option<&[String]>,
) -> Result<CopyReport, PersistenceError> {
    let executions = match only {
        Some(ids) => {
            let mut ids = ids.to_vec();
            ids.sort();
            ids.dedup();
            ids
        }
        None => execution_ids(from).await?,
    };
    let mut report = CopyReport::default();
    for execution_id in executions {
        let keys = from.checkpoint_keys(&execution_id).await?;
        for key in &keys {
            let Some(text) = from.backend().load_text(key).await? else {
                continue; // deleted while copying
            };
            let corrupt = |reason: String| PersistenceError::Corrupt {
                key: key.clone(),
                path: from.backend().file_path(key),
                reason,
            };
            let snapshot = MachineSnapshot::from_json_slice(text.as_bytes())
                .map_err(|e| corrupt(format!("not a valid snapshot: {e}")))?;
            if snapshot.execution_id != execution_id {
                return Err(corrupt(format!(
                    "it belongs to execution `{}`, not `{execution_id}`",
                    snapshot.execution_id
                )));
            }
            let canonical = snapshot
                .to_json_vec()
                .is_ok_and(|bytes| bytes == text.as_bytes());
            if canonical {
                to.backend().save(key, &snapshot).await?;
            } else {
                to.backend().save_text(key, &text).await?;
            }
            report.checkpoints += 1;
        }
        if let Some(target) = from.latest_checkpoint_key(&execution_id).await? {
            to.backend()
                .save_text(&latest_key(&execution_id), &target)
                .await?;
            report.pointers += 1;
        }
        report.executions.push(execution_id);
    }
    Ok(report)
}

/// Every execution id with a checkpoint or a `latest` pointer in `store`, sorted.
async fn execution_ids(store: &CheckpointStore) -> Result<Vec<String>, PersistenceError> {
    let mut ids: Vec<String> = store
        .backend()
        .list("")
        .await?
        .iter()
        .filter_map(|key| {
            if let Some(id) = key.strip_suffix("/latest") {
                return (!id.contains('/')).then(|| id.to_owned());
            }
            let (id, _, _) = parse_snapshot_key(key)?;
            (!id.contains('/')).then(|| id.to_owned())
        })
        .collect();
    ids.sort();
    ids.dedup();
    Ok(ids)
}
