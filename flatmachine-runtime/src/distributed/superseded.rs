//! Superseded worker executions: a worker machine's execution whose claim on its job was taken
//! back (its worker reaped, its lease expired, an operator requeued the job). The job runs
//! again under another claim, so the execution must not be resumed: [`Machine::resume`]
//! refuses it with a [`SupersededError`] naming the job and, when known, its new holder, and
//! `inspect` shows the mark.
//!
//! The mark is one text entry beside the execution's checkpoints, `{execution_id}/superseded`
//! (JSON of a [`SupersededMark`]), written by whoever learns of the move first: the reaper
//! when it takes the job back, the next claimer (which names itself as the holder), or the
//! superseded worker itself when a heartbeat or its completion is refused.
//!
//! [`Machine::resume`]: crate::Machine::resume

use serde::{Deserialize, Serialize};

use crate::persistence::{CheckpointStore, PersistenceError, validate_execution_id};

/// The key of an execution's mark: `{execution_id}/superseded`.
pub fn superseded_key(execution_id: &str) -> String {
    format!("{execution_id}/superseded")
}

/// Why a worker execution is superseded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SupersededMark {
    /// The superseded execution.
    pub execution_id: String,
    /// The pool of its job.
    pub pool: String,
    /// The job it had claimed.
    pub job_id: String,
    /// The worker that held the claim.
    pub worker_id: Option<String>,
    /// What took the claim back (`worker `w` was lost`, `its lease expired`, ...).
    pub reason: String,
    /// The worker holding the job now, when known.
    #[serde(default)]
    pub holder: Option<String>,
    /// The execution processing the job now, when known.
    #[serde(default)]
    pub holder_execution_id: Option<String>,
    /// When the mark was written (ISO 8601 UTC).
    pub at: String,
}

impl SupersededMark {
    /// One line for people: what happened to the claim and where the job is.
    pub fn describe(&self) -> String {
        let holder = match (&self.holder, &self.holder_execution_id) {
            (Some(h), Some(e)) => format!("it is now held by worker `{h}` (execution `{e}`)"),
            (Some(h), None) => format!("it is now held by worker `{h}`"),
            _ => "it went back to the pool for another worker".to_string(),
        };
        format!(
            "its claim on job `{}` of pool `{}`{} was taken back at {} ({}); {holder}",
            self.job_id,
            self.pool,
            self.worker_id
                .as_deref()
                .map(|w| format!(" (worker `{w}`)"))
                .unwrap_or_default(),
            self.at,
            self.reason,
        )
    }
}

/// A resume refused because the execution is superseded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "execution `{}` is superseded and cannot be resumed: {}. The pool runs the job again under the new claim; resuming would repeat its work without being able to complete it (see docs/many-hosts.md, \"Recovery\")",
    .0.execution_id,
    .0.describe()
)]
pub struct SupersededError(pub SupersededMark);

/// Writes (or replaces) the mark of `mark.execution_id`.
pub async fn mark_superseded(
    store: &CheckpointStore,
    mark: &SupersededMark,
) -> Result<(), PersistenceError> {
    validate_execution_id(&mark.execution_id)?;
    let text = serde_json::to_string(mark).map_err(|e| PersistenceError::Other(Box::new(e)))?;
    store
        .backend()
        .save_text(&superseded_key(&mark.execution_id), &text)
        .await
}

/// Writes `mark` unless the execution already has one; an existing mark keeps its reason and
/// time and only learns the holder it did not know. What every writer but the reaper uses, so
/// the first cause stays on record.
pub async fn add_superseded(
    store: &CheckpointStore,
    mark: SupersededMark,
) -> Result<(), PersistenceError> {
    let merged = match superseded(store, &mark.execution_id).await? {
        None => mark,
        Some(old) if old.holder.is_some() || mark.holder.is_none() => return Ok(()),
        Some(old) => SupersededMark {
            holder: mark.holder,
            holder_execution_id: mark.holder_execution_id,
            ..old
        },
    };
    mark_superseded(store, &merged).await
}

/// The mark of `execution_id`, if it is superseded. A mark that cannot be parsed still counts
/// (its text becomes the reason).
pub async fn superseded(
    store: &CheckpointStore,
    execution_id: &str,
) -> Result<Option<SupersededMark>, PersistenceError> {
    validate_execution_id(execution_id)?;
    let Some(text) = store
        .backend()
        .load_text(&superseded_key(execution_id))
        .await?
    else {
        return Ok(None);
    };
    Ok(Some(serde_json::from_str(&text).unwrap_or_else(|e| {
        SupersededMark {
            execution_id: execution_id.to_string(),
            pool: String::new(),
            job_id: String::new(),
            worker_id: None,
            reason: format!("unreadable mark ({e})"),
            holder: None,
            holder_execution_id: None,
            at: String::new(),
        }
    })))
}

/// Fails with [`SupersededError`] (as a persistence error) if `execution_id` is superseded:
/// what a resume checks first.
pub(crate) async fn refuse_if_superseded(
    store: &CheckpointStore,
    execution_id: &str,
) -> Result<(), PersistenceError> {
    match superseded(store, execution_id).await? {
        Some(mark) => Err(PersistenceError::Other(Box::new(SupersededError(mark)))),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn marks_round_trip_and_refuse() {
        let store = CheckpointStore::memory();
        assert!(superseded(&store, "e1").await.unwrap().is_none());
        refuse_if_superseded(&store, "e1").await.unwrap();
        let mark = SupersededMark {
            execution_id: "e1".into(),
            pool: "jobs".into(),
            job_id: "j1".into(),
            worker_id: Some("w1".into()),
            reason: "worker `w1` was lost".into(),
            holder: Some("w2".into()),
            holder_execution_id: Some("e2".into()),
            at: "2026-01-01T00:00:00.000000+00:00".into(),
        };
        mark_superseded(&store, &mark).await.unwrap();
        assert_eq!(superseded(&store, "e1").await.unwrap(), Some(mark));
        let err = refuse_if_superseded(&store, "e1")
            .await
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("held by worker `w2` (execution `e2`)") && err.contains("job `j1`"),
            "{err}"
        );
        store
            .backend()
            .save_text(&superseded_key("e3"), "not json")
            .await
            .unwrap();
        let odd = superseded(&store, "e3").await.unwrap().unwrap();
        assert!(odd.reason.starts_with("unreadable mark"));
        assert!(superseded(&store, "../x").await.is_err());
    }
}
