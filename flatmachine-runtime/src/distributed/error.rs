//! Errors of the distributed backends.

use crate::StateError;

/// An error from a registration or work backend.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum DistributedError {
    /// No worker with this id is registered.
    #[error("worker `{0}` not found")]
    WorkerNotFound(String),
    /// No job with this id exists in the pool.
    #[error("work item `{0}` not found")]
    JobNotFound(String),
    /// The job exists but is not claimed (it was released, completed or poisoned meanwhile), so
    /// it cannot be completed or failed.
    #[error("work item `{id}` is not claimed (status `{status}`)")]
    NotClaimed {
        /// The job id.
        id: String,
        /// Its current status.
        status: String,
    },
    /// The job is claimed, but by another claim than the one given: this worker's claim was
    /// taken back (reaped, lease expired, requeued) and the job claimed again since.
    #[error(
        "work item `{id}` is now held by another claim{}: this worker's claim was taken back (its worker was reaped, its lease expired or an operator requeued it)",
        .holder.as_deref().map(|h| format!(" (worker `{h}`)")).unwrap_or_default()
    )]
    NotHolder {
        /// The job id.
        id: String,
        /// The worker holding the job now.
        holder: Option<String>,
    },
    /// A job payload or result could not be (de)serialised.
    #[error("invalid job data: {0}")]
    Data(String),
    /// The storage failed (SQLite error, I/O, a closed connection...).
    #[error("backend storage error: {0}")]
    Storage(String),
    /// The database was written by a newer release of this crate (its schema is unknown).
    #[error(
        "database schema `{component}` is version {found}; this release supports up to {supported}"
    )]
    SchemaTooNew {
        /// The table group (`worker_registry`, `work_pool`).
        component: String,
        /// The version found in the file.
        found: i64,
        /// The newest version this release knows.
        supported: i64,
    },
    /// A worker process could not be started.
    #[error("could not spawn worker: {0}")]
    Spawn(String),
    /// An action got a context without a key it needs, or with a value of the wrong type.
    #[error("{0}")]
    InvalidContext(String),
}

/// The `on_error` type name distributed action failures carry.
pub const DISTRIBUTED_ERROR_TYPE: &str = "DistributedError";

/// The `on_error` type name of a failure because this worker's claim on its job was taken back
/// ([`DistributedError::NotHolder`], or [`DistributedError::NotClaimed`] for a claimed job's
/// completion).
pub const CLAIM_LOST_ERROR_TYPE: &str = "ClaimLost";

impl From<DistributedError> for StateError {
    fn from(error: DistributedError) -> Self {
        let kind = match &error {
            DistributedError::InvalidContext(_) => "ValueError",
            DistributedError::WorkerNotFound(_) | DistributedError::JobNotFound(_) => "KeyError",
            DistributedError::NotHolder { .. } | DistributedError::NotClaimed { .. } => {
                CLAIM_LOST_ERROR_TYPE
            }
            _ => DISTRIBUTED_ERROR_TYPE,
        };
        StateError::new(kind, error.to_string())
    }
}
