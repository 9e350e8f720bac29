//! What an operator looks at and acts on: pools with their counts, claimed jobs with holder and
//! age, requeueing and dropping poisoned jobs, dead workers, retention of finished executions'
//! checkpoints, and one JSON document of counters and gauges ([`Stats`]).
//!
//! Every function works on any backend (memory, SQLite, Redis) through the traits; the
//! `flatmachine` command and app binaries on `cli::main` expose them as subcommands (feature
//! `cli`, see [`command`]).

use serde::Serialize;
use std::collections::HashSet;

use super::metrics::{METRICS_METADATA_KEY, MetricsSnapshot, metrics};
use super::superseded::{SupersededMark, mark_superseded};
use super::time::{now_ms, parse_iso_ms};
use super::{
    Backends, DistributedError, JobStatus, PoolCounters, PoolStats, RegistrationBackend,
    ReleasedJob, WorkBackend, WorkItem, WorkPool, WorkerFilter, WorkerRecord, now_iso,
    worker_status,
};
use crate::persistence::{CheckpointStore, PersistenceError, checkpoint_event};

#[cfg(feature = "cli")]
pub mod command;

/// The environment variable naming the Redis server (read by `RedisConnection::from_env`
/// and, when no `--store` is given, by the admin commands).
pub const REDIS_URL_VAR: &str = "FLATMACHINE_REDIS_URL";

/// The stores an admin operation works on.
#[derive(Debug, Clone, Default)]
pub struct AdminTarget {
    /// Registration and work backends.
    pub backends: Option<Backends>,
    /// The checkpoint store (for retention, and superseded marks when requeueing).
    pub checkpoints: Option<CheckpointStore>,
}

fn is_redis(store: &str) -> bool {
    store.starts_with("redis://") || store.starts_with("rediss://")
}

/// The stores an address names: `redis://host:port/db` (keys under `prefix`, default
/// `FLATMACHINE_REDIS_PREFIX`, else `flatmachine`; checkpoints on the same server) or
/// `sqlite:PATH` (registration and work; the file must exist).
pub fn open_target(store: &str, prefix: Option<&str>) -> Result<AdminTarget, String> {
    if is_redis(store) {
        #[cfg(feature = "redis")]
        {
            let conn = redis_connection(store, prefix)?;
            return Ok(AdminTarget {
                backends: Some(Backends::redis(conn.clone())),
                checkpoints: Some(CheckpointStore::new(std::sync::Arc::new(
                    crate::redis_backends::RedisPersistence::new(conn),
                ))),
            });
        }
        #[cfg(not(feature = "redis"))]
        {
            let _ = prefix;
            return Err(format!(
                "{store}: this build has no Redis support (the `redis` feature of flatmachine-runtime)"
            ));
        }
    }
    if let Some(path) = store.strip_prefix("sqlite:") {
        #[cfg(feature = "sqlite")]
        {
            if !std::path::Path::new(path).is_file() {
                return Err(format!("database {path} not found"));
            }
            return Ok(AdminTarget {
                backends: Some(Backends::sqlite(path).map_err(|e| e.to_string())?),
                checkpoints: None,
            });
        }
        #[cfg(not(feature = "sqlite"))]
        return Err(format!(
            "sqlite:{path}: this build has no SQLite support (the `sqlite` feature)"
        ));
    }
    Err(format!(
        "unknown store `{store}`: expected redis://HOST:PORT/DB or sqlite:PATH"
    ))
}

/// The checkpoint store an address names: `redis://…` (with `prefix`), `sqlite:PATH` (must
/// exist) or a directory in the reference's layout (must exist).
pub fn open_checkpoints(store: &str, prefix: Option<&str>) -> Result<CheckpointStore, String> {
    if is_redis(store) {
        return open_target(store, prefix)?
            .checkpoints
            .ok_or_else(|| "no checkpoint store".to_string());
    }
    if let Some(path) = store.strip_prefix("sqlite:") {
        if !std::path::Path::new(path).is_file() {
            return Err(format!("checkpoint database {path} not found"));
        }
        #[cfg(feature = "sqlite")]
        return CheckpointStore::sqlite(path).map_err(|e| e.to_string());
        #[cfg(not(feature = "sqlite"))]
        return Err("this build has no SQLite support (the `sqlite` feature)".to_string());
    }
    if !std::path::Path::new(store).is_dir() {
        return Err(format!("checkpoint directory {store} not found"));
    }
    Ok(CheckpointStore::local(store))
}

#[cfg(feature = "redis")]
fn redis_connection(
    url: &str,
    prefix: Option<&str>,
) -> Result<crate::redis_backends::RedisConnection, String> {
    let prefix = prefix.map(str::to_owned).unwrap_or_else(|| {
        std::env::var(crate::redis_backends::REDIS_PREFIX_ENV)
            .unwrap_or_else(|_| crate::redis_backends::DEFAULT_PREFIX.to_owned())
    });
    crate::redis_backends::RedisConnection::shared(url, &prefix).map_err(|e| e.to_string())
}

/// Seconds from an ISO timestamp written by this crate to now (`None` if unparsable).
fn age_seconds(at: Option<&str>, now: u64) -> Option<f64> {
    let at = parse_iso_ms(at?)?;
    Some(now.saturating_sub(at) as f64 / 1000.0)
}

/// One pool as `pool list` and `stats` show it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PoolReport {
    /// The pool's name.
    pub name: String,
    /// Counts by status (`pending` is the queue depth).
    pub stats: PoolStats,
    /// Reclaims, requeues and removals so far.
    pub counters: PoolCounters,
    /// Age of the oldest claim, in seconds (`None` when nothing is claimed).
    pub oldest_claim_seconds: Option<f64>,
    /// Claimed jobs whose lease has ended (the next reaper cycle takes them back).
    pub expired_leases: u64,
    /// The most attempts among claimed jobs.
    pub max_claimed_attempts: u32,
}

/// One claimed job, as `pool jobs` shows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct JobReport {
    /// The job id.
    pub id: String,
    /// Its status.
    pub status: JobStatus,
    /// The worker holding it (or the last one, for a poisoned job).
    pub holder: Option<String>,
    /// The execution processing it.
    pub execution_id: Option<String>,
    /// Seconds since it was claimed.
    pub claimed_seconds: Option<f64>,
    /// Seconds left on its lease (negative: expired).
    pub lease_left_seconds: Option<f64>,
    /// Attempts so far / allowed.
    pub attempts: u32,
    /// Attempts allowed.
    pub max_retries: u32,
    /// The last error.
    pub error: Option<String>,
}

impl JobReport {
    /// The report of `item` at `now` (ms since the epoch).
    pub fn of(item: &WorkItem, now: u64) -> Self {
        let lease_left = item
            .lease_expires_at
            .as_deref()
            .and_then(parse_iso_ms)
            .map(|end| (end as f64 - now as f64) / 1000.0);
        Self {
            id: item.id.clone(),
            status: item.status,
            holder: item.claimed_by.clone(),
            execution_id: item.execution_id.clone(),
            claimed_seconds: if item.status == JobStatus::Claimed {
                age_seconds(item.claimed_at.as_deref(), now)
            } else {
                None
            },
            lease_left_seconds: lease_left.filter(|_| item.status == JobStatus::Claimed),
            attempts: item.attempts,
            max_retries: item.max_retries,
            error: item.error.clone(),
        }
    }
}

/// The most claimed jobs looked at for a pool's gauges.
const CLAIMED_SAMPLE: usize = 10_000;

/// The report of one pool.
pub async fn pool_report(pool: &dyn WorkPool) -> Result<PoolReport, DistributedError> {
    let now = now_ms();
    let stats = pool.stats().await?;
    let counters = pool.counters().await?;
    let claimed = if stats.claimed > 0 {
        pool.jobs(JobStatus::Claimed, CLAIMED_SAMPLE).await?
    } else {
        Vec::new()
    };
    let reports: Vec<JobReport> = claimed.iter().map(|j| JobReport::of(j, now)).collect();
    Ok(PoolReport {
        name: pool.name().to_string(),
        stats,
        counters,
        oldest_claim_seconds: reports
            .iter()
            .filter_map(|r| r.claimed_seconds)
            .fold(None, |m: Option<f64>, a| Some(m.map_or(a, |m| m.max(a)))),
        expired_leases: reports
            .iter()
            .filter(|r| r.lease_left_seconds.is_some_and(|l| l <= 0.0))
            .count() as u64,
        max_claimed_attempts: reports.iter().map(|r| r.attempts).max().unwrap_or(0),
    })
}

/// Every pool of `work`, by name.
pub async fn pool_reports(work: &dyn WorkBackend) -> Result<Vec<PoolReport>, DistributedError> {
    let mut out = Vec::new();
    for name in work.pool_names().await? {
        out.push(pool_report(work.pool(&name).as_ref()).await?);
    }
    Ok(out)
}

/// Up to `limit` jobs of `pool` with `status` (claimed: soonest lease end first).
pub async fn job_reports(
    pool: &dyn WorkPool,
    status: JobStatus,
    limit: usize,
) -> Result<Vec<JobReport>, DistributedError> {
    let now = now_ms();
    Ok(pool
        .jobs(status, limit)
        .await?
        .iter()
        .map(|j| JobReport::of(j, now))
        .collect())
}

/// Marks the executions of `released` jobs superseded in `store` (`reason` says why).
pub async fn mark_released(
    store: &CheckpointStore,
    pool: &str,
    released: &[ReleasedJob],
    reason: &str,
) -> Result<u64, PersistenceError> {
    let mut n = 0;
    for job in released {
        let Some(execution_id) = &job.execution_id else {
            continue;
        };
        let mark = SupersededMark {
            execution_id: execution_id.clone(),
            pool: pool.to_string(),
            job_id: job.id.clone(),
            worker_id: job.worker_id.clone(),
            reason: reason.to_string(),
            holder: None,
            holder_execution_id: None,
            at: now_iso(),
        };
        mark_superseded(store, &mark).await?;
        n += 1;
    }
    Ok(n)
}

/// Requeues `ids` (or, with `all_poisoned`, every poisoned job) in `pool`; the executions of
/// claimed jobs taken back are marked superseded in `checkpoints` when given.
pub async fn requeue(
    pool: &dyn WorkPool,
    ids: &[String],
    all_poisoned: bool,
    checkpoints: Option<&CheckpointStore>,
) -> Result<Vec<ReleasedJob>, String> {
    let mut ids = ids.to_vec();
    if all_poisoned {
        ids.extend(
            pool.jobs(JobStatus::Poisoned, usize::MAX)
                .await
                .map_err(|e| e.to_string())?
                .into_iter()
                .map(|j| j.id),
        );
    }
    let released = pool.requeue(&ids).await.map_err(|e| e.to_string())?;
    if let Some(store) = checkpoints {
        mark_released(store, pool.name(), &released, "requeued by an operator")
            .await
            .map_err(|e| e.to_string())?;
    }
    Ok(released)
}

/// Deletes the poisoned jobs among `ids` (every poisoned job when `ids` is empty); returns
/// how many.
pub async fn drop_poisoned(pool: &dyn WorkPool, ids: &[String]) -> Result<u64, DistributedError> {
    let ids = if ids.is_empty() {
        pool.jobs(JobStatus::Poisoned, usize::MAX)
            .await?
            .into_iter()
            .map(|j| j.id)
            .collect()
    } else {
        ids.to_vec()
    };
    pool.remove_poisoned(&ids).await
}

/// The workers that hold claimed jobs in any pool of `work`.
async fn holders(work: &dyn WorkBackend) -> Result<HashSet<String>, DistributedError> {
    let mut out = HashSet::new();
    for name in work.pool_names().await? {
        for job in work
            .pool(&name)
            .jobs(JobStatus::Claimed, usize::MAX)
            .await?
        {
            out.extend(job.claimed_by);
        }
    }
    Ok(out)
}

/// Dead workers: `lost` or `terminated`.
pub async fn dead_workers(
    registration: &dyn RegistrationBackend,
) -> Result<Vec<WorkerRecord>, DistributedError> {
    registration
        .list(&WorkerFilter {
            status: Some(super::StatusFilter::Any(vec![
                worker_status::LOST.to_string(),
                worker_status::TERMINATED.to_string(),
            ])),
            ..WorkerFilter::default()
        })
        .await
}

/// What [`remove_workers`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct RemovedWorkers {
    /// Records deleted.
    pub removed: Vec<String>,
    /// Ids refused, with the reason (active workers, workers still holding jobs, unknown ids).
    pub refused: Vec<(String, String)>,
}

/// Deletes worker records: `ids`, plus every dead worker with `dead`. An `active` worker, or
/// one still holding a claimed job (the reaper has not taken it back), is refused.
pub async fn remove_workers(
    backends: &Backends,
    ids: &[String],
    dead: bool,
) -> Result<RemovedWorkers, DistributedError> {
    let mut wanted: Vec<String> = ids.to_vec();
    if dead {
        wanted.extend(
            dead_workers(backends.registration.as_ref())
                .await?
                .into_iter()
                .map(|w| w.worker_id),
        );
    }
    let holding = holders(backends.work.as_ref()).await?;
    let mut out = RemovedWorkers::default();
    let mut seen = HashSet::new();
    for id in wanted {
        if !seen.insert(id.clone()) {
            continue;
        }
        let Some(record) = backends.registration.get(&id).await? else {
            out.refused.push((id, "not registered".to_string()));
            continue;
        };
        if record.status == worker_status::ACTIVE {
            out.refused.push((
                id,
                "still active (let the reaper mark it lost first)".to_string(),
            ));
            continue;
        }
        if holding.contains(&id) {
            out.refused
                .push((id, "still holds claimed jobs".to_string()));
            continue;
        }
        if backends.registration.remove(&id).await? {
            out.removed.push(id);
        }
    }
    Ok(out)
}

/// Workers by status; `stale` counts active workers whose heartbeat is older than the
/// threshold.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct WorkerCounts {
    /// Active (heartbeating or not).
    pub active: u64,
    /// Active but silent for longer than the stale threshold.
    pub stale: u64,
    /// Marked lost by a reaper.
    pub lost: u64,
    /// Exited cleanly.
    pub terminated: u64,
    /// Any other status.
    pub other: u64,
}

/// What `stats` prints: gauges of every pool and of the workers, and counters — summed over
/// the workers' published metrics (heartbeat metadata) and this process's own.
#[derive(Debug, Clone, Serialize)]
pub struct Stats {
    /// When the numbers were read (ISO 8601 UTC).
    pub at: String,
    /// The stale threshold used, in seconds.
    pub stale_threshold_seconds: f64,
    /// Every pool.
    pub pools: Vec<PoolReport>,
    /// Pending jobs over all pools.
    pub queue_depth: u64,
    /// Workers by status.
    pub workers: WorkerCounts,
    /// The counters the workers published in their last heartbeats, summed (claims, lost
    /// claims, storage errors and retries, checkpoint latency, ...).
    pub worker_metrics: MetricsSnapshot,
    /// Mean checkpoint save time over the workers, in ms.
    pub checkpoint_mean_ms: Option<f64>,
    /// This process's own counters.
    pub this_process: MetricsSnapshot,
}

/// Reads [`Stats`] from `backends`.
pub async fn stats(
    backends: &Backends,
    stale_threshold_seconds: f64,
) -> Result<Stats, DistributedError> {
    let pools = pool_reports(backends.work.as_ref()).await?;
    let workers = backends.registration.list(&WorkerFilter::all()).await?;
    let cutoff = WorkerFilter::stale(stale_threshold_seconds);
    let mut counts = WorkerCounts::default();
    let mut published = MetricsSnapshot::default();
    let stale: HashSet<String> = backends
        .registration
        .list(&cutoff)
        .await?
        .into_iter()
        .map(|w| w.worker_id)
        .collect();
    for w in &workers {
        match w.status.as_str() {
            worker_status::ACTIVE => {
                counts.active += 1;
                if stale.contains(&w.worker_id) {
                    counts.stale += 1;
                }
            }
            worker_status::LOST => counts.lost += 1,
            worker_status::TERMINATED => counts.terminated += 1,
            _ => counts.other += 1,
        }
        if let Some(m) = w
            .metadata
            .as_ref()
            .and_then(|m| m.get(METRICS_METADATA_KEY))
            .and_then(|v| serde_json::from_value::<MetricsSnapshot>(v.clone()).ok())
        {
            published.add(&m);
        }
    }
    Ok(Stats {
        at: now_iso(),
        stale_threshold_seconds,
        queue_depth: pools.iter().map(|p| p.stats.pending).sum(),
        pools,
        workers: counts,
        checkpoint_mean_ms: published.checkpoint_mean_ms(),
        worker_metrics: published,
        this_process: metrics().snapshot(),
    })
}

/// What [`prune_finished`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct PruneReport {
    /// Finished executions looked at.
    pub finished: u64,
    /// Executions deleted entirely (`keep == 0`).
    pub deleted: u64,
    /// Checkpoints deleted.
    pub checkpoints_deleted: u64,
    /// Executions not finished (left alone).
    pub unfinished: u64,
}

/// Retention for finished executions (their newest checkpoint is `machine_end`) older than
/// `older_than_seconds`: keep the newest `keep` checkpoints of each, or with `keep == 0`
/// delete the execution entirely (checkpoints, `latest`, superseded mark). Unfinished
/// executions are never touched.
pub async fn prune_finished(
    store: &CheckpointStore,
    keep: usize,
    older_than_seconds: f64,
) -> Result<PruneReport, PersistenceError> {
    let now = now_ms();
    let min_age = (older_than_seconds.max(0.0) * 1000.0) as u64;
    let mut report = PruneReport::default();
    for id in store.execution_ids().await? {
        let latest = match store.load_latest(&id).await {
            Ok(Some(s)) => s,
            _ => continue,
        };
        if latest.event.as_deref() != Some(checkpoint_event::MACHINE_END) {
            report.unfinished += 1;
            continue;
        }
        let created = parse_iso_ms(&latest.created_at).unwrap_or(0);
        if now.saturating_sub(created) < min_age {
            continue;
        }
        report.finished += 1;
        let keys = store.checkpoint_keys(&id).await?;
        if keep == 0 {
            report.checkpoints_deleted += keys.len() as u64;
            store.delete_execution(&id).await?;
            report.deleted += 1;
            continue;
        }
        let saved =
            crate::persistence::snapshot_key(&id, latest.step, checkpoint_event::MACHINE_END);
        let before = keys.len();
        store.backend().prune_checkpoints(&id, &saved, keep).await?;
        let after = store.checkpoint_keys(&id).await?.len();
        report.checkpoints_deleted += before.saturating_sub(after) as u64;
    }
    Ok(report)
}
