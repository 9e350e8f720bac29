//! Work pools: named queues of JSON jobs with atomic claims, claim tokens, leases, retries and
//! poisoning.

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use super::DistributedError;
use crate::Value;

/// The default `max_retries` of a pushed job (spec: 3).
pub const DEFAULT_MAX_RETRIES: u32 = 3;

/// The default lease of a claimed job: 10 minutes. A job still claimed when its lease expires
/// is taken back by the reaper ([`WorkPool::reclaim_expired`]) even if its worker still
/// heartbeats; a job that needs longer extends it ([`WorkPool::heartbeat`]) or the worker
/// machine sets `settings.job_lease_seconds`.
pub const DEFAULT_JOB_LEASE: Duration = Duration::from_secs(600);

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

/// The proof of one claim: a random id made by the claimer, stored with the job while the claim
/// holds. [`WorkPool::complete`], [`WorkPool::fail`] and [`WorkPool::heartbeat`] act only when
/// the token they are given is the job's current one, so a worker whose job was taken back
/// (reaped, lease expired, requeued) and claimed by another cannot finish it.
///
/// Each claim has its own token (a job claimed three times has had three), so it also tells
/// apart two claims of the same job by the same worker.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ClaimToken(String);

/// The longest token [`ClaimToken::parse`] accepts.
const MAX_TOKEN_LEN: usize = 128;

impl ClaimToken {
    /// A new random token (32 hex digits).
    pub fn generate() -> Self {
        Self(uuid::Uuid::new_v4().simple().to_string())
    }

    /// A token given as text (from a context or a command line): 1 to 128 printable ASCII
    /// characters without spaces.
    pub fn parse(text: &str) -> Result<Self, DistributedError> {
        if text.is_empty()
            || text.len() > MAX_TOKEN_LEN
            || !text.bytes().all(|b| b.is_ascii_graphic())
        {
            return Err(DistributedError::InvalidContext(format!(
                "invalid claim token {:?}: 1 to {MAX_TOKEN_LEN} printable characters without spaces",
                text.chars().take(MAX_TOKEN_LEN + 1).collect::<String>()
            )));
        }
        Ok(Self(text.to_owned()))
    }

    /// The token as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ClaimToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// One claimed job and the token of the claim: what completing, failing and heartbeating
/// need.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Claim {
    /// The job id.
    pub job_id: String,
    /// The claim's token.
    pub token: ClaimToken,
}

impl Claim {
    /// The claim of `job_id` with `token`.
    pub fn new(job_id: impl Into<String>, token: ClaimToken) -> Self {
        Self {
            job_id: job_id.into(),
            token,
        }
    }
}

/// What [`WorkPool::claim_with`] claims.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimRequest {
    /// The claiming worker.
    pub worker_id: String,
    /// The token every job of this claim gets. A claim repeated with the same token (a retry
    /// after a lost reply) returns the jobs the first one claimed, where the backend can tell
    /// (Redis).
    pub token: ClaimToken,
    /// Most jobs to claim (oldest first).
    pub limit: usize,
    /// How long the claim holds before the reaper may take the job back.
    pub lease: Duration,
    /// The execution that processes the jobs (recorded with the claim, so the execution can be
    /// marked superseded when the job is taken back).
    pub execution_id: Option<String>,
}

impl ClaimRequest {
    /// One job for `worker_id`, a new token, the default lease, no execution.
    pub fn new(worker_id: impl Into<String>) -> Self {
        Self {
            worker_id: worker_id.into(),
            token: ClaimToken::generate(),
            limit: 1,
            lease: DEFAULT_JOB_LEASE,
            execution_id: None,
        }
    }

    /// Claim up to `limit` jobs.
    pub fn limit(mut self, limit: usize) -> Self {
        self.limit = limit;
        self
    }

    /// Hold the jobs for `lease` (at least 1 ms).
    pub fn lease(mut self, lease: Duration) -> Self {
        self.lease = lease.max(Duration::from_millis(1));
        self
    }

    /// Use this token.
    pub fn token(mut self, token: ClaimToken) -> Self {
        self.token = token;
        self
    }

    /// Record the execution processing the jobs.
    pub fn execution_id(mut self, execution_id: impl Into<String>) -> Self {
        self.execution_id = Some(execution_id.into());
        self
    }

    /// The lease in whole milliseconds (at least 1).
    pub(crate) fn lease_ms(&self) -> u64 {
        u64::try_from(self.lease.as_millis())
            .unwrap_or(u64::MAX)
            .clamp(1, 1 << 50)
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
    /// The token of the current claim (of the completing claim, once done).
    #[serde(default)]
    pub claim_token: Option<ClaimToken>,
    /// When the current claim's lease ends (ISO 8601 UTC), while claimed.
    #[serde(default)]
    pub lease_expires_at: Option<String>,
    /// The execution the current claim was made for, if the claimer said.
    #[serde(default)]
    pub execution_id: Option<String>,
    /// The execution of the last claim that was taken back from its holder (reaped, lease
    /// expired, requeued): superseded by the claims after it.
    #[serde(default)]
    pub previous_execution_id: Option<String>,
}

impl WorkItem {
    /// The claim this item carries (its id and token), if it has a token.
    pub fn claim(&self) -> Option<Claim> {
        self.claim_token
            .as_ref()
            .map(|t| Claim::new(self.id.clone(), t.clone()))
    }
}

/// A claimed job taken back from its holder ([`WorkPool::release_worker`],
/// [`WorkPool::reclaim_expired`], [`WorkPool::requeue`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReleasedJob {
    /// The job id.
    pub id: String,
    /// The worker that held it.
    pub worker_id: Option<String>,
    /// The execution its claim was made for, if recorded: a worker execution that can no
    /// longer finish the job (see `DistributedWorkerHooks` for how it is marked superseded).
    pub execution_id: Option<String>,
    /// Where it went: `pending` (claimable again) or `poisoned` (attempts used up).
    pub status: JobStatus,
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

/// What happened to a pool's jobs besides claims and completions, counted since the pool was
/// created (kept in the backend, so every process sees the same numbers).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolCounters {
    /// Claims taken back from workers found dead ([`WorkPool::release_worker`]).
    pub released: u64,
    /// Claims taken back because their lease expired ([`WorkPool::reclaim_expired`]).
    pub expired: u64,
    /// Jobs put back by an operator ([`WorkPool::requeue`]).
    pub requeued: u64,
    /// Poisoned jobs deleted by an operator ([`WorkPool::remove_poisoned`]).
    pub removed: u64,
}

/// One named pool. Every operation is atomic; claims never hand the same job to two workers.
///
/// The batch methods (`push_many`, `complete_many`) have looping defaults; backends override
/// them to do one round trip (SQLite: one transaction).
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

    /// Atomically claims up to `request.limit` pending jobs (oldest first) for
    /// `request.worker_id`: each one's `attempts` goes up by one, it gets the request's token
    /// and a lease of `request.lease`.
    async fn claim_with(&self, request: &ClaimRequest) -> Result<Vec<WorkItem>, DistributedError>;

    /// Claims the oldest pending job for `worker_id` with a new token and the default lease;
    /// `None` when nothing is pending.
    async fn claim(&self, worker_id: &str) -> Result<Option<WorkItem>, DistributedError> {
        Ok(self.claim_with(&ClaimRequest::new(worker_id)).await?.pop())
    }

    /// Claims up to `limit` pending jobs (oldest first) under one new token.
    async fn claim_many(
        &self,
        worker_id: &str,
        limit: usize,
    ) -> Result<Vec<WorkItem>, DistributedError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        self.claim_with(&ClaimRequest::new(worker_id).limit(limit))
            .await
    }

    /// Marks a claimed job `done` and keeps `result` (queryable with [`WorkPool::get`]).
    /// [`DistributedError::NotClaimed`] if the job is not claimed any more (released by a
    /// reaper, already completed...), [`DistributedError::NotHolder`] if another claim holds it.
    async fn complete(&self, claim: &Claim, result: Option<Value>) -> Result<(), DistributedError>;

    /// Completes several claimed jobs at once (all or nothing for SQLite and Redis).
    async fn complete_many(
        &self,
        results: Vec<(Claim, Option<Value>)>,
    ) -> Result<(), DistributedError> {
        for (claim, result) in results {
            self.complete(&claim, result).await?;
        }
        Ok(())
    }

    /// Marks a claimed job failed: back to `pending` for another attempt, or `poisoned` when its
    /// attempts reached `max_retries`. Returns the new status. Same errors as
    /// [`complete`](Self::complete).
    async fn fail(&self, claim: &Claim, error: Option<&str>)
    -> Result<JobStatus, DistributedError>;

    /// Checks that `claim` still holds its job (same errors as [`complete`](Self::complete)),
    /// and with `extend_lease` makes the lease end no sooner than that long from now. What a
    /// worker calls while it processes a job, to learn early that it lost it.
    async fn heartbeat(
        &self,
        claim: &Claim,
        extend_lease: Option<Duration>,
    ) -> Result<(), DistributedError>;

    /// Pending (claimable) jobs.
    async fn size(&self) -> Result<u64, DistributedError>;

    /// Takes back every job `worker_id` holds (stale worker cleanup): each goes back to
    /// `pending`, or to `poisoned` when its attempts already reached `max_retries` (a job that
    /// keeps killing its workers stops being retried). Their claim tokens stop being valid.
    async fn release_worker(&self, worker_id: &str) -> Result<Vec<ReleasedJob>, DistributedError>;

    /// [`release_worker`](Self::release_worker), returning how many jobs were taken back.
    async fn release_by_worker(&self, worker_id: &str) -> Result<u64, DistributedError> {
        Ok(self.release_worker(worker_id).await?.len() as u64)
    }

    /// Takes back every claimed job whose lease has expired, as
    /// [`release_worker`](Self::release_worker) does.
    async fn reclaim_expired(&self) -> Result<Vec<ReleasedJob>, DistributedError>;

    /// The job, in any status.
    async fn get(&self, item_id: &str) -> Result<Option<WorkItem>, DistributedError>;

    /// Up to `limit` jobs with `status`, oldest first (claimed jobs: by lease end). For
    /// `done`, which can be most of a pool, prefer [`stats`](Self::stats).
    async fn jobs(
        &self,
        status: JobStatus,
        limit: usize,
    ) -> Result<Vec<WorkItem>, DistributedError>;

    /// Operator action: puts poisoned or claimed jobs back to `pending` (poisoned ones with
    /// their attempts reset to 0; claimed ones lose their claim, as if reaped). Pending and
    /// done jobs, and unknown ids, are left alone. Returns the jobs requeued.
    async fn requeue(&self, ids: &[String]) -> Result<Vec<ReleasedJob>, DistributedError>;

    /// Operator action: deletes these jobs if they are poisoned; returns how many were.
    async fn remove_poisoned(&self, ids: &[String]) -> Result<u64, DistributedError>;

    /// Job counts by status.
    async fn stats(&self) -> Result<PoolStats, DistributedError>;

    /// Reclaims, requeues and removals so far.
    async fn counters(&self) -> Result<PoolCounters, DistributedError>;
}

/// Work distribution across named pools.
#[async_trait]
pub trait WorkBackend: Send + Sync {
    /// The pool called `name` (created on first use).
    fn pool(&self, name: &str) -> Arc<dyn WorkPool>;

    /// The names of the pools that have (or had) jobs, sorted.
    async fn pool_names(&self) -> Result<Vec<String>, DistributedError>;
}
