//! Worker registration: who is working, since when, and whether they are still alive.

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use super::DistributedError;
use crate::Value;

/// Worker status values (strings, not an enum, for extensibility — as the spec says).
pub mod worker_status {
    /// Running and healthy.
    pub const ACTIVE: &str = "active";
    /// Received a shutdown signal.
    pub const TERMINATING: &str = "terminating";
    /// Exited cleanly.
    pub const TERMINATED: &str = "terminated";
    /// Missed its heartbeats; presumed dead (set by the reaper).
    pub const LOST: &str = "lost";
}

/// What a worker tells the registry when it starts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkerRegistration {
    /// Unique worker id.
    pub worker_id: String,
    /// Host name.
    #[serde(default)]
    pub host: Option<String>,
    /// Process id.
    #[serde(default)]
    pub pid: Option<u32>,
    /// Capabilities (`["gpu", "paper-analysis"]`).
    #[serde(default)]
    pub capabilities: Option<Vec<String>>,
    /// Worker pool grouping.
    #[serde(default)]
    pub pool_id: Option<String>,
    /// When the worker started (ISO 8601).
    pub started_at: String,
}

impl WorkerRegistration {
    /// A registration for `worker_id` started now, with no other details.
    pub fn new(worker_id: impl Into<String>) -> Self {
        Self {
            worker_id: worker_id.into(),
            host: None,
            pid: None,
            capabilities: None,
            pool_id: None,
            started_at: super::now_iso(),
        }
    }
}

/// A worker as the registry knows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkerRecord {
    /// Unique worker id.
    pub worker_id: String,
    /// See [`worker_status`].
    pub status: String,
    /// Last heartbeat (ISO 8601 UTC).
    pub last_heartbeat: String,
    /// Host name.
    pub host: Option<String>,
    /// Process id.
    pub pid: Option<u32>,
    /// Capabilities.
    pub capabilities: Option<Vec<String>>,
    /// Worker pool grouping.
    pub pool_id: Option<String>,
    /// When the worker started.
    pub started_at: Option<String>,
    /// The task it works on, if it said.
    pub current_task_id: Option<String>,
    /// Metadata merged from heartbeats.
    pub metadata: Option<serde_json::Map<String, Value>>,
}

impl WorkerRecord {
    /// A fresh `active` record for `registration`, heartbeat `now`.
    pub(crate) fn from_registration(registration: &WorkerRegistration, now: String) -> Self {
        Self {
            worker_id: registration.worker_id.clone(),
            status: worker_status::ACTIVE.to_string(),
            last_heartbeat: now,
            host: registration.host.clone(),
            pid: registration.pid,
            capabilities: registration.capabilities.clone(),
            pool_id: registration.pool_id.clone(),
            started_at: Some(registration.started_at.clone()),
            current_task_id: None,
            metadata: None,
        }
    }
}

/// One status or any of several.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum StatusFilter {
    /// Exactly this status.
    One(String),
    /// Any of these.
    Any(Vec<String>),
}

impl StatusFilter {
    /// Whether `status` passes.
    pub fn matches(&self, status: &str) -> bool {
        match self {
            Self::One(s) => s == status,
            Self::Any(list) => list.iter().any(|s| s == status),
        }
    }

    /// The statuses as a list.
    pub fn as_list(&self) -> Vec<&str> {
        match self {
            Self::One(s) => vec![s.as_str()],
            Self::Any(list) => list.iter().map(String::as_str).collect(),
        }
    }
}

impl From<&str> for StatusFilter {
    fn from(s: &str) -> Self {
        Self::One(s.to_string())
    }
}

/// Which workers [`RegistrationBackend::list`] returns. All criteria must hold; `None` means
/// any.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct WorkerFilter {
    /// Status, or any of several.
    pub status: Option<StatusFilter>,
    /// Workers that list this capability.
    pub capability: Option<String>,
    /// Workers of this pool.
    pub pool_id: Option<String>,
    /// Only workers whose last heartbeat is older than this many seconds (stale workers).
    pub stale_threshold_seconds: Option<f64>,
}

impl WorkerFilter {
    /// Every worker.
    pub fn all() -> Self {
        Self::default()
    }

    /// Workers with this status.
    pub fn status(status: impl Into<String>) -> Self {
        Self {
            status: Some(StatusFilter::One(status.into())),
            ..Self::default()
        }
    }

    /// Active workers whose last heartbeat is older than `threshold_seconds`.
    pub fn stale(threshold_seconds: f64) -> Self {
        Self {
            status: Some(StatusFilter::One(worker_status::ACTIVE.to_string())),
            stale_threshold_seconds: Some(threshold_seconds),
            ..Self::default()
        }
    }

    /// Active workers that missed two heartbeats of `heartbeat_interval_seconds` (the spec's
    /// default stale threshold: 2 × heartbeat interval).
    pub fn stale_for_heartbeat(heartbeat_interval_seconds: f64) -> Self {
        Self::stale(2.0 * heartbeat_interval_seconds)
    }

    /// Whether `record` passes, given the cutoff time for staleness (ISO text).
    pub(crate) fn matches(&self, record: &WorkerRecord, stale_cutoff: Option<&str>) -> bool {
        if let Some(status) = &self.status
            && !status.matches(&record.status)
        {
            return false;
        }
        if let Some(cap) = &self.capability
            && !record
                .capabilities
                .as_ref()
                .is_some_and(|caps| caps.iter().any(|c| c == cap))
        {
            return false;
        }
        if let Some(pool) = &self.pool_id
            && record.pool_id.as_deref() != Some(pool.as_str())
        {
            return false;
        }
        if let Some(cutoff) = stale_cutoff
            && record.last_heartbeat.as_str() >= cutoff
        {
            return false;
        }
        true
    }

    /// The staleness cutoff (ISO text) this filter implies, if any.
    pub(crate) fn stale_cutoff(&self) -> Option<String> {
        self.stale_threshold_seconds
            .map(super::time::iso_seconds_ago)
    }
}

/// Worker lifecycle storage. Implementations must be safe to share between tasks (and, for
/// persistent ones, between processes).
#[async_trait]
pub trait RegistrationBackend: Send + Sync {
    /// Registers (or re-registers) a worker with status `active` and a fresh heartbeat.
    async fn register(&self, worker: WorkerRegistration) -> Result<WorkerRecord, DistributedError>;

    /// Refreshes the worker's heartbeat; `metadata` keys are merged into its metadata (new keys
    /// win). [`DistributedError::WorkerNotFound`] if unknown.
    async fn heartbeat(
        &self,
        worker_id: &str,
        metadata: Option<serde_json::Map<String, Value>>,
    ) -> Result<(), DistributedError>;

    /// Sets the worker's status (see [`worker_status`]). [`DistributedError::WorkerNotFound`] if
    /// unknown.
    async fn update_status(&self, worker_id: &str, status: &str) -> Result<(), DistributedError>;

    /// The worker, if registered.
    async fn get(&self, worker_id: &str) -> Result<Option<WorkerRecord>, DistributedError>;

    /// Workers matching `filter`, in registration order.
    async fn list(&self, filter: &WorkerFilter) -> Result<Vec<WorkerRecord>, DistributedError>;

    /// Deletes the worker's record (an operator cleaning up dead workers); whether it existed.
    async fn remove(&self, worker_id: &str) -> Result<bool, DistributedError>;
}
