//! The built-in actions of [`DistributedWorkerHooks`].

use serde_json::json;
use std::time::Duration;

use super::DistributedWorkerHooks;
use super::liveness::{Beat, HeldClaim, LostClaim, claim_gone, mark_for, write_mark};
use crate::distributed::metrics::metrics;
use crate::distributed::registration::{WorkerFilter, WorkerRegistration, worker_status};
use crate::distributed::spawn::SpawnRequest;
use crate::distributed::superseded::SupersededMark;
use crate::distributed::work::{Claim, ClaimRequest, ClaimToken, ReleasedJob};
use crate::distributed::{DistributedError, now_iso};
use crate::engine::ActionCall;
use crate::{Context, StateError, Value};

/// The built-in action names.
pub const BUILTIN_ACTIONS: &[&str] = &[
    "get_pool_state",
    "claim_job",
    "complete_job",
    "fail_job",
    "register_worker",
    "deregister_worker",
    "heartbeat",
    "list_stale_workers",
    "reclaim_expired_jobs",
    "reap_worker",
    "reap_stale_workers",
    "calculate_spawn",
    "spawn_workers",
];

fn invalid(message: impl Into<String>) -> StateError {
    DistributedError::InvalidContext(message.into()).into()
}

fn pool_id(ctx: &Context) -> String {
    match ctx.get("pool_id") {
        Some(Value::String(s)) if !s.is_empty() => s.clone(),
        Some(Value::Number(n)) => n.to_string(),
        _ => "default".to_string(),
    }
}

fn required_str(ctx: &Context, key: &str, action: &str) -> Result<String, StateError> {
    match ctx.get(key) {
        Some(Value::String(s)) if !s.is_empty() => Ok(s.clone()),
        Some(Value::Number(n)) => Ok(n.to_string()),
        _ => Err(invalid(format!("{key} is required for {action}"))),
    }
}

/// The claim `job_id` + `job_claim_token` of the context.
fn context_claim(ctx: &Context, action: &str) -> Result<Claim, StateError> {
    let job_id = required_str(ctx, "job_id", action)?;
    let token = match ctx.get("job_claim_token") {
        Some(Value::String(s)) if !s.is_empty() => ClaimToken::parse(s)?,
        _ => {
            return Err(invalid(format!(
                "job_claim_token is required for {action} (claim_job sets it; it proves this worker still holds job `{job_id}`)"
            )));
        }
    };
    Ok(Claim::new(job_id, token))
}

/// A number, or a string holding one.
fn number(ctx: &Context, key: &str) -> Option<f64> {
    match ctx.get(key)? {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().parse().ok(),
        Value::Bool(b) => Some(f64::from(u8::from(*b))),
        _ => None,
    }
}

fn count(ctx: &Context, key: &str, default: u64) -> u64 {
    number(ctx, key)
        .filter(|n| n.is_finite())
        .map(|n| n.clamp(0.0, 1e9) as u64)
        .unwrap_or(default)
}

fn hostname() -> Option<String> {
    std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| {
            std::fs::read_to_string("/etc/hostname")
                .ok()
                .map(|h| h.trim().to_string())
                .filter(|h| !h.is_empty())
        })
}

/// The execution running the current action, if any.
fn current_execution() -> Option<String> {
    ActionCall::current()
        .map(|c| c.execution_id)
        .filter(|e| !e.is_empty())
}

impl DistributedWorkerHooks {
    /// Runs the built-in action `action`; `Ok(false)` if it is not one.
    pub async fn run_builtin(&self, action: &str, ctx: &mut Context) -> Result<bool, StateError> {
        match action {
            "get_pool_state" => self.get_pool_state(ctx).await?,
            "claim_job" => self.claim_job(ctx).await?,
            "complete_job" => self.complete_job(ctx).await?,
            "fail_job" => self.fail_job(ctx).await?,
            "register_worker" => self.register_worker(ctx).await?,
            "deregister_worker" => self.deregister_worker(ctx).await?,
            "heartbeat" => self.heartbeat(ctx).await?,
            "list_stale_workers" => self.list_stale_workers(ctx).await?,
            "reclaim_expired_jobs" => self.reclaim_expired_jobs(ctx).await?,
            "reap_worker" => self.reap_worker(ctx).await?,
            "reap_stale_workers" => self.reap_stale_workers(ctx).await?,
            "calculate_spawn" => Self::calculate_spawn(ctx),
            "spawn_workers" => self.spawn_workers(ctx).await?,
            _ => return Ok(false),
        }
        Ok(true)
    }

    fn beat(&self) -> Beat {
        Beat {
            registration: self.registration.clone(),
            work: self.work.clone(),
            store: self.checkpoints.clone(),
            interval: Duration::from_secs_f64(self.heartbeat_interval),
        }
    }

    /// `get_pool_state`: pending jobs of the pool and active workers of the pool.
    pub async fn get_pool_state(&self, ctx: &mut Context) -> Result<(), StateError> {
        let pool_id = pool_id(ctx);
        let depth = self.work.pool(&pool_id).size().await?;
        let filter = WorkerFilter {
            pool_id: Some(pool_id),
            ..WorkerFilter::status(worker_status::ACTIVE)
        };
        let active = self.registration.list(&filter).await?.len();
        ctx.insert("queue_depth".into(), json!(depth));
        ctx.insert("active_workers".into(), json!(active));
        Ok(())
    }

    /// `claim_job`: claims the next job for `worker_id` with a fresh token and the job lease,
    /// recording the current execution with the claim; the worker's heartbeats check it from
    /// now on.
    pub async fn claim_job(&self, ctx: &mut Context) -> Result<(), StateError> {
        let pool_id = pool_id(ctx);
        let worker_id = required_str(ctx, "worker_id", "claim_job")?;
        let execution = current_execution();
        let mut request = ClaimRequest::new(worker_id.clone()).lease(self.job_lease);
        if let Some(e) = &execution {
            request = request.execution_id(e.clone());
        }
        let item = self.work.pool(&pool_id).claim_with(&request).await?.pop();
        let Some(item) = item else {
            for key in ["job", "job_id", "job_attempts", "job_claim_token"] {
                ctx.insert(key.into(), Value::Null);
            }
            return Ok(());
        };
        metrics().claimed(1);
        self.live.start(&worker_id, self.beat());
        self.live.hold(
            &worker_id,
            HeldClaim {
                pool: pool_id.clone(),
                claim: Claim::new(item.id.clone(), request.token.clone()),
                execution_id: execution.clone(),
            },
        );
        // The execution the job was taken back from last time is superseded by this claim.
        if let (Some(previous), Some(store)) = (&item.previous_execution_id, &self.checkpoints)
            && execution.as_ref() != Some(previous)
        {
            let mark = match crate::distributed::superseded::superseded(store, previous).await {
                Ok(Some(mark)) => mark,
                _ => SupersededMark {
                    execution_id: previous.clone(),
                    pool: pool_id.clone(),
                    job_id: item.id.clone(),
                    worker_id: None,
                    reason: "its claim was taken back".to_string(),
                    holder: None,
                    holder_execution_id: None,
                    at: now_iso(),
                },
            };
            let mark = SupersededMark {
                holder: Some(worker_id.clone()),
                holder_execution_id: execution.clone(),
                ..mark
            };
            if let Err(e) = crate::distributed::superseded::mark_superseded(store, &mark).await {
                tracing::warn!(execution_id = %previous, error = %e, "could not name the new holder in a superseded mark");
            }
        }
        ctx.insert("job".into(), item.data);
        ctx.insert("job_id".into(), Value::String(item.id));
        ctx.insert("job_attempts".into(), json!(item.attempts));
        ctx.insert(
            "job_claim_token".into(),
            Value::String(request.token.to_string()),
        );
        Ok(())
    }

    /// What a refused `complete_job` / `fail_job` leaves behind: the claim recorded lost, the
    /// execution marked superseded.
    async fn claim_refused(
        &self,
        ctx: &Context,
        pool: &str,
        claim: &Claim,
        error: &DistributedError,
    ) {
        if !claim_gone(error) {
            return;
        }
        metrics().claim_lost();
        let worker = ctx
            .get("worker_id")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        self.live.release(&worker, claim);
        let held = HeldClaim {
            pool: pool.to_string(),
            claim: claim.clone(),
            execution_id: current_execution(),
        };
        if let Some(execution) = &held.execution_id {
            self.live.lost(
                execution,
                LostClaim {
                    pool: pool.to_string(),
                    job_id: claim.job_id.clone(),
                    worker_id: worker.clone(),
                    error: error.clone(),
                },
            );
        }
        write_mark(self.checkpoints.as_ref(), mark_for(&held, &worker, error)).await;
    }

    /// `complete_job`: marks `job_id` done with `result`, if `job_claim_token` still holds it.
    pub async fn complete_job(&self, ctx: &mut Context) -> Result<(), StateError> {
        let pool_id = pool_id(ctx);
        let claim = context_claim(ctx, "complete_job")?;
        let result = ctx.get("result").cloned();
        // No longer checked by the heartbeat from here: its check could otherwise meet the
        // job done by this very call and take the claim for lost.
        if let Some(worker) = super::context_worker(ctx) {
            self.live.release(&worker, &claim);
        }
        match self.work.pool(&pool_id).complete(&claim, result).await {
            Ok(()) => {
                metrics().completed();
                Ok(())
            }
            Err(e) => {
                self.claim_refused(ctx, &pool_id, &claim, &e).await;
                Err(e.into())
            }
        }
    }

    /// `fail_job`: returns `job_id` to the pool, or poisons it at `max_retries`, if
    /// `job_claim_token` still holds it.
    pub async fn fail_job(&self, ctx: &mut Context) -> Result<(), StateError> {
        let pool_id = pool_id(ctx);
        let claim = context_claim(ctx, "fail_job")?;
        let error = match ctx.get("error").or_else(|| ctx.get("last_error")) {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(s.clone()),
            Some(other) => Some(other.to_string()),
        };
        // As in `complete_job`: settled by this call, not by the heartbeat.
        if let Some(worker) = super::context_worker(ctx) {
            self.live.release(&worker, &claim);
        }
        match self
            .work
            .pool(&pool_id)
            .fail(&claim, error.as_deref())
            .await
        {
            Ok(status) => {
                metrics().failed();
                ctx.insert("job_status".into(), json!(status.as_str()));
                Ok(())
            }
            Err(e) => {
                self.claim_refused(ctx, &pool_id, &claim, &e).await;
                Err(e.into())
            }
        }
    }

    /// `register_worker`: registers `worker_id` (host, pid, capabilities, pool) and starts its
    /// heartbeat task — once per process: a later run of the worker machine in the same
    /// process finds it registered and heartbeating and writes nothing (see
    /// [`deregister_worker`](Self::deregister_worker)).
    pub async fn register_worker(&self, ctx: &mut Context) -> Result<(), StateError> {
        let worker_id = required_str(ctx, "worker_id", "register_worker")?;
        // Registered by an earlier run of this process and heartbeating since: nothing to write.
        if let Some(registered_at) = self.live.registration(&worker_id) {
            ctx.insert("worker_id".into(), Value::String(worker_id));
            ctx.insert(
                "status".into(),
                Value::String(worker_status::ACTIVE.to_string()),
            );
            ctx.insert("registered_at".into(), registered_at);
            return Ok(());
        }
        let capabilities = match ctx.get("capabilities") {
            Some(Value::Array(items)) => Some(
                items
                    .iter()
                    .filter_map(|v| v.as_str().map(str::to_string))
                    .collect(),
            ),
            _ => Some(Vec::new()),
        };
        let registration = WorkerRegistration {
            host: hostname(),
            pid: Some(std::process::id()),
            capabilities,
            pool_id: Some(pool_id(ctx)),
            ..WorkerRegistration::new(worker_id.clone())
        };
        let record = self.registration.register(registration).await?;
        self.live.start(&worker_id, self.beat());
        let registered_at = json!(record.started_at);
        self.live
            .registered(&record.worker_id, registered_at.clone());
        ctx.insert("worker_id".into(), Value::String(record.worker_id));
        ctx.insert("status".into(), Value::String(record.status));
        ctx.insert("registered_at".into(), registered_at);
        Ok(())
    }

    /// `deregister_worker`: the end of one run of a worker machine. The worker stays
    /// registered and heartbeating for as long as this process lives — the process runs the
    /// machine again for the next job — until [`shutdown`](Self::shutdown) marks it
    /// `terminated`. Without a heartbeat task running here (the worker was registered
    /// elsewhere, or the action is called on its own) it is marked `terminated` at once.
    pub async fn deregister_worker(&self, ctx: &mut Context) -> Result<(), StateError> {
        let worker_id = required_str(ctx, "worker_id", "deregister_worker")?;
        if self.live.registration(&worker_id).is_some() {
            return Ok(());
        }
        self.live.stop(&worker_id);
        self.registration
            .update_status(&worker_id, worker_status::TERMINATED)
            .await?;
        Ok(())
    }

    /// Deregisters every worker registered through these hooks: stops their heartbeats and
    /// marks them `terminated`. Call it once before the worker process exits (a process that
    /// exits without it leaves its workers `active` until the reaper finds their heartbeat
    /// stale and marks them `lost`). Every worker is tried; the first error is returned.
    pub async fn shutdown(&self) -> Result<(), DistributedError> {
        let mut first = None;
        for worker_id in self.live.registered_workers() {
            self.live.stop(&worker_id);
            match self
                .registration
                .update_status(&worker_id, worker_status::TERMINATED)
                .await
            {
                Ok(()) | Err(DistributedError::WorkerNotFound(_)) => {}
                Err(e) => {
                    first.get_or_insert(e);
                }
            }
        }
        first.map_or(Ok(()), Err)
    }

    /// `heartbeat`: refreshes `worker_id`'s heartbeat now (merging `heartbeat_metadata` if an
    /// object). The heartbeat task does this on its own; the action is for machines that want
    /// to beat at a particular step.
    pub async fn heartbeat(&self, ctx: &mut Context) -> Result<(), StateError> {
        let worker_id = required_str(ctx, "worker_id", "heartbeat")?;
        let metadata = match ctx.get("heartbeat_metadata") {
            Some(Value::Object(m)) => Some(m.clone()),
            _ => None,
        };
        self.registration.heartbeat(&worker_id, metadata).await?;
        metrics().heartbeat(true);
        Ok(())
    }

    /// Marks the executions of `released` jobs superseded (when there is a store).
    async fn mark_released(&self, pool: &str, released: &[ReleasedJob], reason: &str) {
        let Some(store) = &self.checkpoints else {
            return;
        };
        for job in released {
            let Some(execution) = &job.execution_id else {
                continue;
            };
            let mark = SupersededMark {
                execution_id: execution.clone(),
                pool: pool.to_string(),
                job_id: job.id.clone(),
                worker_id: job.worker_id.clone(),
                reason: reason.to_string(),
                holder: None,
                holder_execution_id: None,
                at: now_iso(),
            };
            // The reaper's mark replaces any older one: this claim is the newest to end.
            if let Err(e) = crate::distributed::superseded::mark_superseded(store, &mark).await {
                tracing::warn!(execution_id = %execution, error = %e, "could not mark a worker execution superseded");
            }
        }
    }

    /// `reclaim_expired_jobs`: takes back the pool's jobs whose lease ended (stuck jobs, even
    /// of live workers); writes `expired_jobs_released`.
    pub async fn reclaim_expired_jobs(&self, ctx: &mut Context) -> Result<(), StateError> {
        let pool_id = pool_id(ctx);
        let released = self.work.pool(&pool_id).reclaim_expired().await?;
        if !released.is_empty() {
            tracing::warn!(pool = %pool_id, jobs = released.len(), "took back jobs whose lease expired");
            metrics().reaped(0, released.len() as u64);
            self.mark_released(&pool_id, &released, "its lease expired")
                .await;
        }
        ctx.insert("expired_jobs_released".into(), json!(released.len()));
        Ok(())
    }

    /// `list_stale_workers`: active workers whose heartbeat is older than the threshold. It
    /// first takes back the pool's expired leases (`reclaim_expired_jobs`), so the reference's
    /// reaper machine, which starts here, reclaims stuck jobs on every cycle.
    pub async fn list_stale_workers(&self, ctx: &mut Context) -> Result<(), StateError> {
        self.reclaim_expired_jobs(ctx).await?;
        let threshold = number(ctx, "stale_threshold_seconds")
            .filter(|n| n.is_finite() && *n >= 0.0)
            .unwrap_or(2.0 * self.heartbeat_interval);
        let workers = self
            .registration
            .list(&WorkerFilter::stale(threshold))
            .await?;
        let stale: Vec<Value> = workers
            .iter()
            .map(|w| {
                json!({
                    "worker_id": w.worker_id,
                    "last_heartbeat": w.last_heartbeat,
                    "host": w.host,
                })
            })
            .collect();
        ctx.insert("stale_count".into(), json!(stale.len()));
        ctx.insert("workers".into(), Value::Array(stale));
        Ok(())
    }

    /// Marks one worker lost and releases its jobs, unless it heartbeated since it was listed
    /// (`listed_heartbeat`). Returns the jobs released, or `None` if it was left alone.
    async fn reap(
        &self,
        pool_id: &str,
        worker_id: &str,
        listed_heartbeat: Option<&str>,
    ) -> Result<Option<u64>, StateError> {
        if let Some(listed) = listed_heartbeat {
            match self.registration.get(worker_id).await? {
                Some(current)
                    if current.last_heartbeat.as_str() > listed
                        || current.status != worker_status::ACTIVE =>
                {
                    return Ok(None);
                }
                None => return Ok(None),
                Some(_) => {}
            }
        }
        self.registration
            .update_status(worker_id, worker_status::LOST)
            .await?;
        let released = self.work.pool(pool_id).release_worker(worker_id).await?;
        metrics().reaped(1, released.len() as u64);
        tracing::warn!(
            worker_id,
            pool = pool_id,
            jobs = released.len(),
            "reaped a stale worker"
        );
        self.mark_released(
            pool_id,
            &released,
            &format!("worker `{worker_id}` was lost (no heartbeat)"),
        )
        .await;
        Ok(Some(released.len() as u64))
    }

    /// `reap_worker`: marks `worker` lost and releases its jobs.
    pub async fn reap_worker(&self, ctx: &mut Context) -> Result<(), StateError> {
        let worker_id = match ctx.get("worker") {
            Some(Value::Object(w)) => w.get("worker_id").and_then(Value::as_str),
            Some(Value::String(s)) => Some(s.as_str()),
            _ => None,
        }
        .map(str::to_string)
        .ok_or_else(|| invalid("worker is required for reap_worker"))?;
        let released = self
            .reap(&pool_id(ctx), &worker_id, None)
            .await?
            .unwrap_or(0);
        ctx.insert("reaped_worker_id".into(), Value::String(worker_id));
        ctx.insert("jobs_released".into(), json!(released));
        Ok(())
    }

    /// `reap_stale_workers`: reaps every worker in `stale_workers` (or, when that is absent,
    /// the `workers` list `list_stale_workers` wrote — action output is not mapped by
    /// `output_to_context`, so the reference's reaper machine only gets it this way).
    pub async fn reap_stale_workers(&self, ctx: &mut Context) -> Result<(), StateError> {
        let pool_id = pool_id(ctx);
        let list = match ctx.get("stale_workers") {
            Some(Value::Array(a)) => a.clone(),
            _ => match ctx.get("workers") {
                Some(Value::Array(a)) => a.clone(),
                _ => Vec::new(),
            },
        };
        let mut reaped = Vec::new();
        let mut total = 0;
        for worker in &list {
            let (id, listed) = match worker {
                Value::Object(w) => (
                    w.get("worker_id").and_then(Value::as_str),
                    w.get("last_heartbeat").and_then(Value::as_str),
                ),
                Value::String(s) => (Some(s.as_str()), None),
                _ => (None, None),
            };
            let Some(id) = id else { continue };
            if let Some(released) = self.reap(&pool_id, id, listed).await? {
                reaped.push(Value::String(id.to_string()));
                total += released;
            }
        }
        ctx.insert("reaped_count".into(), json!(reaped.len()));
        ctx.insert("reaped_workers".into(), Value::Array(reaped));
        ctx.insert("total_jobs_released".into(), json!(total));
        Ok(())
    }

    /// `calculate_spawn`: `workers_needed = min(queue_depth, max_workers)`,
    /// `workers_to_spawn = max(0, workers_needed - active_workers)`.
    pub fn calculate_spawn(ctx: &mut Context) {
        let depth = count(ctx, "queue_depth", 0);
        let active = count(ctx, "active_workers", 0);
        let max = count(ctx, "max_workers", 3);
        let needed = depth.min(max);
        let to_spawn = needed.saturating_sub(active);
        ctx.insert("workers_needed".into(), json!(needed));
        ctx.insert("workers_to_spawn".into(), json!(to_spawn));
        ctx.insert(
            "spawn_list".into(),
            Value::Array((0..to_spawn).map(|i| json!(i)).collect()),
        );
    }

    /// `spawn_workers`: starts `workers_to_spawn` workers through the spawner.
    pub async fn spawn_workers(&self, ctx: &mut Context) -> Result<(), StateError> {
        let n = count(ctx, "workers_to_spawn", 0);
        let pool_id = pool_id(ctx);
        let config = ctx
            .get("worker_config_path")
            .and_then(Value::as_str)
            .map(str::to_string);
        let mut spawned = Vec::new();
        if n > 0 {
            let spawner = self.spawner.as_ref().ok_or_else(|| {
                invalid("spawn_workers needs a WorkerSpawner: DistributedWorkerHooks::spawner(...)")
            })?;
            for _ in 0..n {
                let uuid = uuid::Uuid::new_v4().simple().to_string();
                let worker_id = format!("worker-{}", &uuid[..8]);
                let request = SpawnRequest {
                    input: json!({"pool_id": pool_id, "worker_id": worker_id}),
                    worker_id: worker_id.clone(),
                    pool_id: pool_id.clone(),
                    worker_config_path: config.clone(),
                };
                spawner.spawn(&request).await?;
                spawned.push(Value::String(worker_id));
            }
        }
        ctx.insert("spawned_count".into(), json!(spawned.len()));
        ctx.insert("spawned_ids".into(), Value::Array(spawned));
        Ok(())
    }
}
