//! Work pools: named queues of JSON jobs with atomic claims, retries and poisoning.

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::sync::Arc;

use super::DistributedError;
use crate::Value;

/// The default `max_retries` of a pushed job (spec: 3).
pub const DEFAULT_MAX_RETRIES: u32 = 3;

/// Options of [`WorkPool::push`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PushOptions {
    /// Attempts allowed before the job is poisoned (default 3). A claim counts as an attempt.
    pub max_retries: u32,
}

impl Default for PushOptions {
    fn default() -> Self {
        Self {
            max_retries: DEFAULT_MAX_RETRIES,
        }
    }
}

/// Where a job is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobStatus {
    /// Waiting to be claimed.
    Pending,
    /// Claimed by a worker, being processed.
    Claimed,
    /// Completed; the result is kept.
    Done,
    /// Failed `max_retries` times; will not be retried.
    Poisoned,
}

impl JobStatus {
    /// The status as stored (`pending`, `claimed`, `done`, `poisoned`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Claimed => "claimed",
            Self::Done => "done",
            Self::Poisoned => "poisoned",
        }
    }

    /// Parses a stored status.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "pending" => Self::Pending,
            "claimed" => Self::Claimed,
            "done" => Self::Done,
            "poisoned" => Self::Poisoned,
            _ => return None,
        })
    }
}

impl fmt::Display for JobStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A job, as claimed or looked up. Owned: nothing ties it to a connection.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkItem {
    /// Job id (a UUID string).
    pub id: String,
    /// The payload pushed.
    pub data: Value,
    /// The worker holding the claim (or, once done, the one that completed it).
    pub claimed_by: Option<String>,
    /// When it was last claimed (ISO 8601 UTC).
    pub claimed_at: Option<String>,
    /// Claims so far (this one included, for a claimed job).
    pub attempts: u32,
    /// Attempts allowed before poisoning.
    pub max_retries: u32,
    /// Current status.
    pub status: JobStatus,
    /// When it was pushed.
    pub created_at: String,
    /// The result given to [`WorkPool::complete`].
    pub result: Option<Value>,
    /// The last error given to [`WorkPool::fail`].
    pub error: Option<String>,
}

/// Job counts of a pool by status.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolStats {
    /// Waiting.
    pub pending: u64,
    /// Being processed.
    pub claimed: u64,
    /// Completed.
    pub done: u64,
    /// Given up on.
    pub poisoned: u64,
}

impl PoolStats {
    /// Jobs in any status.
    pub fn total(&self) -> u64 {
        self.pending + self.claimed + self.done + self.poisoned
    }
}

/// One named pool. Every operation is atomic; claims never hand the same job to two workers.
///
/// The batch methods (`push_many`, `claim_many`, `complete_many`) have looping defaults; backends
/// override them to do one round trip (SQLite: one transaction).
#[async_trait]
pub trait WorkPool: Send + Sync {
    /// The pool's name.
    fn name(&self) -> &str;

    /// Adds a job; returns its id.
    async fn push(&self, data: Value, options: PushOptions) -> Result<String, DistributedError>;

    /// Adds several jobs at once; returns their ids in order.
    async fn push_many(
        &self,
        data: Vec<Value>,
        options: PushOptions,
    ) -> Result<Vec<String>, DistributedError> {
        let mut ids = Vec::with_capacity(data.len());
        for d in data {
            ids.push(self.push(d, options).await?);
        }
        Ok(ids)
    }

    /// Atomically claims the oldest pending job for `worker_id` (its `attempts` goes up by one);
    /// `None` when nothing is pending.
    async fn claim(&self, worker_id: &str) -> Result<Option<WorkItem>, DistributedError>;

    /// Atomically claims up to `limit` pending jobs (oldest first).
    async fn claim_many(
        &self,
        worker_id: &str,
        limit: usize,
    ) -> Result<Vec<WorkItem>, DistributedError> {
        let mut items = Vec::new();
        while items.len() < limit {
            match self.claim(worker_id).await? {
                Some(item) => items.push(item),
                None => break,
            }
        }
        Ok(items)
    }

    /// Marks a claimed job `done` and keeps `result` (queryable with [`WorkPool::get`]).
    /// [`DistributedError::NotClaimed`] if the job is not claimed any more (released by a reaper,
    /// already completed...).
    async fn complete(&self, item_id: &str, result: Option<Value>) -> Result<(), DistributedError>;

    /// Completes several claimed jobs at once (all or nothing for SQLite).
    async fn complete_many(
        &self,
        results: Vec<(String, Option<Value>)>,
    ) -> Result<(), DistributedError> {
        for (id, result) in results {
            self.complete(&id, result).await?;
        }
        Ok(())
    }

    /// Marks a claimed job failed: back to `pending` for another attempt, or `poisoned` when its
    /// attempts reached `max_retries`. Returns the new status.
    async fn fail(&self, item_id: &str, error: Option<&str>)
    -> Result<JobStatus, DistributedError>;

    /// Pending (claimable) jobs.
    async fn size(&self) -> Result<u64, DistributedError>;

    /// Takes back every job `worker_id` holds (stale worker cleanup): each goes back to
    /// `pending`, or to `poisoned` when its attempts already reached `max_retries` (a job that
    /// keeps killing its workers stops being retried). Returns how many jobs were taken back.
    async fn release_by_worker(&self, worker_id: &str) -> Result<u64, DistributedError>;

    /// The job, in any status.
    async fn get(&self, item_id: &str) -> Result<Option<WorkItem>, DistributedError>;

    /// Job counts by status.
    async fn stats(&self) -> Result<PoolStats, DistributedError>;
}

/// Work distribution across named pools.
pub trait WorkBackend: Send + Sync {
    /// The pool called `name` (created on first use).
    fn pool(&self, name: &str) -> Arc<dyn WorkPool>;
}
