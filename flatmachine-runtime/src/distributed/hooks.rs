//! [`DistributedWorkerHooks`]: the reference's ready-made actions for checker, worker and reaper
//! machines.

use async_trait::async_trait;
use futures::future::BoxFuture;
use serde_json::json;
use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;

use super::registration::{RegistrationBackend, WorkerFilter, WorkerRegistration, worker_status};
use super::spawn::{SpawnRequest, WorkerSpawner};
use super::work::WorkBackend;
use super::{Backends, DistributedError};
use crate::hooks::{ActionOutcome, HookError, MachineHooks};
use crate::{Context, StateError, Value};

/// A user action added with the deprecated [`DistributedWorkerHooks::action`]: takes the
/// context, returns the new one.
pub type JobAction =
    Arc<dyn Fn(Context) -> BoxFuture<'static, Result<Context, StateError>> + Send + Sync>;

/// A user action added to [`DistributedWorkerHooks`]: changes the context in place; what it
/// wrote stays when it then fails (as for every action handler of `MachineBuilder`).
pub type JobActionMut =
    Arc<dyn for<'a> Fn(&'a mut Context) -> BoxFuture<'a, Result<(), StateError>> + Send + Sync>;

/// Hooks whose `on_action` implements the distributed worker actions of the reference
/// (`flatmachines` `DistributedWorkerHooks`), with the same names and context keys:
///
/// | action | reads | writes |
/// |---|---|---|
/// | `get_pool_state` | `pool_id` | `queue_depth`, `active_workers` |
/// | `claim_job` | `pool_id`, `worker_id` | `job`, `job_id` (null when empty), `job_attempts` |
/// | `complete_job` | `pool_id`, `job_id`, `result` | |
/// | `fail_job` | `pool_id`, `job_id`, `error` (else `last_error`) | `job_status` |
/// | `register_worker` | `worker_id`, `capabilities`, `pool_id` | `worker_id`, `status`, `registered_at` |
/// | `deregister_worker` | `worker_id` | |
/// | `heartbeat` | `worker_id`, `heartbeat_metadata` | |
/// | `list_stale_workers` | `stale_threshold_seconds` (default 2 × heartbeat interval) | `workers`, `stale_count` |
/// | `reap_worker` | `worker`, `pool_id` | `reaped_worker_id`, `jobs_released` |
/// | `reap_stale_workers` | `stale_workers` (else `workers`), `pool_id` | `reaped_workers`, `reaped_count`, `total_jobs_released` |
/// | `calculate_spawn` | `queue_depth`, `active_workers`, `max_workers` (default 3) | `workers_needed`, `workers_to_spawn`, `spawn_list` |
/// | `spawn_workers` | `workers_to_spawn`, `pool_id`, `worker_config_path` | `spawned_ids`, `spawned_count` |
///
/// `pool_id` defaults to `"default"`. Numbers may be given as numeric strings (templates render
/// `{{ input.max_workers | default(3) }}` as text).
///
/// Add job-processing actions with [`DistributedWorkerHooks::action_mut`] (they are tried first, so
/// one can also replace a built-in, e.g. a custom `calculate_spawn`), and register the hooks under
/// the class name the YAML uses:
///
/// ```
/// # use flatmachine_runtime::distributed::*;
/// # use flatmachine_runtime::hooks::HooksRegistry;
/// # use std::sync::Arc;
/// let hooks = DistributedWorkerHooks::new(Backends::memory())
///     .action_mut("echo_delay", |ctx| Box::pin(async move {
///         ctx.insert("processed".into(), true.into());
///         Ok(())
///     }));
/// let mut registry = HooksRegistry::new();
/// registry.register_instance("DistributedWorkerHooks", Arc::new(hooks));
/// ```
pub struct DistributedWorkerHooks {
    registration: Arc<dyn RegistrationBackend>,
    work: Arc<dyn WorkBackend>,
    spawner: Option<Arc<dyn WorkerSpawner>>,
    heartbeat_interval: f64,
    actions: HashMap<String, JobActionMut>,
    fallback: Option<Arc<dyn MachineHooks>>,
}

impl std::fmt::Debug for DistributedWorkerHooks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut actions: Vec<_> = self.actions.keys().collect();
        actions.sort();
        f.debug_struct("DistributedWorkerHooks")
            .field("heartbeat_interval", &self.heartbeat_interval)
            .field("actions", &actions)
            .field("spawner", &self.spawner.is_some())
            .finish_non_exhaustive()
    }
}

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

impl DistributedWorkerHooks {
    /// Hooks over these backends, heartbeat interval 30 s, no spawner, no extra actions.
    pub fn new(backends: Backends) -> Self {
        Self {
            registration: backends.registration,
            work: backends.work,
            spawner: None,
            heartbeat_interval: 30.0,
            actions: HashMap::new(),
            fallback: None,
        }
    }

    /// How `spawn_workers` starts workers (without one, spawning more than zero is an error).
    pub fn spawner(mut self, spawner: Arc<dyn WorkerSpawner>) -> Self {
        self.spawner = Some(spawner);
        self
    }

    /// The workers' heartbeat interval in seconds (the worker YAML's
    /// `settings.heartbeat_interval`); `list_stale_workers` defaults to twice this.
    pub fn heartbeat_interval(mut self, seconds: f64) -> Self {
        if seconds.is_finite() && seconds > 0.0 {
            self.heartbeat_interval = seconds;
        }
        self
    }

    /// Adds (or replaces) an action handled before the built-ins. It changes the context in
    /// place, and what it wrote stays when it then fails (the error route adds `last_error`),
    /// as with `MachineBuilder::action_mut`.
    pub fn action_mut<F>(mut self, name: impl Into<String>, f: F) -> Self
    where
        F: for<'a> Fn(&'a mut Context) -> BoxFuture<'a, Result<(), StateError>>
            + Send
            + Sync
            + 'static,
    {
        self.actions.insert(name.into(), Arc::new(f));
        self
    }

    /// Adds (or replaces) an action that takes the context by value and returns the new one.
    /// A failing closure has nothing to give back, so its changes are lost.
    #[deprecated(
        since = "0.1.0",
        note = "a failing closure cannot hand its changes back; use `action_mut(name, |ctx| Box::pin(async move { .. }))`, whose changes stay on failure"
    )]
    pub fn action<F, Fut>(self, name: impl Into<String>, f: F) -> Self
    where
        F: Fn(Context) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Context, StateError>> + Send + 'static,
    {
        let f = Arc::new(f);
        self.action_mut(name, move |ctx| {
            let f = f.clone();
            Box::pin(async move {
                *ctx = f(ctx.clone()).await?;
                Ok(())
            })
        })
    }

    /// Hooks asked for every other event, and for actions neither the user actions nor the
    /// built-ins know.
    pub fn fallback(mut self, hooks: Arc<dyn MachineHooks>) -> Self {
        self.fallback = Some(hooks);
        self
    }

    /// The registration backend.
    pub fn registration(&self) -> &Arc<dyn RegistrationBackend> {
        &self.registration
    }

    /// The work backend.
    pub fn work(&self) -> &Arc<dyn WorkBackend> {
        &self.work
    }

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
            "reap_worker" => self.reap_worker(ctx).await?,
            "reap_stale_workers" => self.reap_stale_workers(ctx).await?,
            "calculate_spawn" => Self::calculate_spawn(ctx),
            "spawn_workers" => self.spawn_workers(ctx).await?,
            _ => return Ok(false),
        }
        Ok(true)
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

    /// `claim_job`: claims the next job for `worker_id`.
    pub async fn claim_job(&self, ctx: &mut Context) -> Result<(), StateError> {
        let pool_id = pool_id(ctx);
        let worker_id = required_str(ctx, "worker_id", "claim_job")?;
        let item = self.work.pool(&pool_id).claim(&worker_id).await?;
        match item {
            Some(item) => {
                ctx.insert("job".into(), item.data);
                ctx.insert("job_id".into(), Value::String(item.id));
                ctx.insert("job_attempts".into(), json!(item.attempts));
            }
            None => {
                ctx.insert("job".into(), Value::Null);
                ctx.insert("job_id".into(), Value::Null);
                ctx.insert("job_attempts".into(), Value::Null);
            }
        }
        Ok(())
    }

    /// `complete_job`: marks `job_id` done with `result`.
    pub async fn complete_job(&self, ctx: &mut Context) -> Result<(), StateError> {
        let pool_id = pool_id(ctx);
        let job_id = required_str(ctx, "job_id", "complete_job")?;
        let result = ctx.get("result").cloned();
        self.work.pool(&pool_id).complete(&job_id, result).await?;
        Ok(())
    }

    /// `fail_job`: returns `job_id` to the pool, or poisons it at `max_retries`.
    pub async fn fail_job(&self, ctx: &mut Context) -> Result<(), StateError> {
        let pool_id = pool_id(ctx);
        let job_id = required_str(ctx, "job_id", "fail_job")?;
        let error = match ctx.get("error").or_else(|| ctx.get("last_error")) {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(s.clone()),
            Some(other) => Some(other.to_string()),
        };
        let status = self
            .work
            .pool(&pool_id)
            .fail(&job_id, error.as_deref())
            .await?;
        ctx.insert("job_status".into(), json!(status.as_str()));
        Ok(())
    }

    /// `register_worker`: registers `worker_id` (host, pid, capabilities, pool).
    pub async fn register_worker(&self, ctx: &mut Context) -> Result<(), StateError> {
        let worker_id = required_str(ctx, "worker_id", "register_worker")?;
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
            ..WorkerRegistration::new(worker_id)
        };
        let record = self.registration.register(registration).await?;
        ctx.insert("worker_id".into(), Value::String(record.worker_id));
        ctx.insert("status".into(), Value::String(record.status));
        ctx.insert("registered_at".into(), json!(record.started_at));
        Ok(())
    }

    /// `deregister_worker`: marks `worker_id` terminated.
    pub async fn deregister_worker(&self, ctx: &mut Context) -> Result<(), StateError> {
        let worker_id = required_str(ctx, "worker_id", "deregister_worker")?;
        self.registration
            .update_status(&worker_id, worker_status::TERMINATED)
            .await?;
        Ok(())
    }

    /// `heartbeat`: refreshes `worker_id`'s heartbeat (merging `heartbeat_metadata` if an
    /// object).
    pub async fn heartbeat(&self, ctx: &mut Context) -> Result<(), StateError> {
        let worker_id = required_str(ctx, "worker_id", "heartbeat")?;
        let metadata = match ctx.get("heartbeat_metadata") {
            Some(Value::Object(m)) => Some(m.clone()),
            _ => None,
        };
        self.registration.heartbeat(&worker_id, metadata).await?;
        Ok(())
    }

    /// `list_stale_workers`: active workers whose heartbeat is older than the threshold.
    pub async fn list_stale_workers(&self, ctx: &mut Context) -> Result<(), StateError> {
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
        Ok(Some(
            self.work.pool(pool_id).release_by_worker(worker_id).await?,
        ))
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

#[async_trait]
impl MachineHooks for DistributedWorkerHooks {
    async fn on_machine_start(&self, context: &mut Context) -> Result<(), HookError> {
        match &self.fallback {
            Some(f) => f.on_machine_start(context).await,
            None => Ok(()),
        }
    }

    async fn on_machine_end(&self, context: &Context, output: &mut Value) -> Result<(), HookError> {
        match &self.fallback {
            Some(f) => f.on_machine_end(context, output).await,
            None => Ok(()),
        }
    }

    async fn on_state_enter(&self, state: &str, context: &mut Context) -> Result<(), HookError> {
        match &self.fallback {
            Some(f) => f.on_state_enter(state, context).await,
            None => Ok(()),
        }
    }

    async fn on_state_exit(
        &self,
        state: &str,
        context: &mut Context,
        output: &mut Option<Value>,
    ) -> Result<(), HookError> {
        match &self.fallback {
            Some(f) => f.on_state_exit(state, context, output).await,
            None => Ok(()),
        }
    }

    async fn on_transition(
        &self,
        from: &str,
        to: &str,
        context: &mut Context,
    ) -> Result<String, HookError> {
        match &self.fallback {
            Some(f) => f.on_transition(from, to, context).await,
            None => Ok(to.to_string()),
        }
    }

    async fn on_error(
        &self,
        state: &str,
        error: &StateError,
        context: &mut Context,
    ) -> Result<Option<String>, HookError> {
        match &self.fallback {
            Some(f) => f.on_error(state, error, context).await,
            None => Ok(None),
        }
    }

    async fn on_action(
        &self,
        action: &str,
        context: &mut Context,
    ) -> Result<ActionOutcome, HookError> {
        if let Some(f) = self.actions.get(action) {
            // What a failing action wrote stays, as for the builder's handlers.
            f(context).await?;
            return Ok(ActionOutcome::Handled);
        }
        // Built-ins write only after their backend call succeeded.
        if self.run_builtin(action, context).await? {
            return Ok(ActionOutcome::Handled);
        }
        match &self.fallback {
            Some(f) => f.on_action(action, context).await,
            None => Ok(ActionOutcome::NotHandled),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn in_place_actions_keep_their_writes_when_they_fail() {
        let hooks = DistributedWorkerHooks::new(Backends::memory())
            .action_mut("tag", |ctx| {
                Box::pin(async move {
                    ctx.insert("tagged".into(), true.into());
                    Ok(())
                })
            })
            .action_mut("half", |ctx| {
                Box::pin(async move {
                    ctx.insert("started".into(), true.into());
                    Err(StateError::new("JobError", "stopped half way"))
                })
            });
        let mut ctx = Context::new();
        let outcome = hooks.on_action("tag", &mut ctx).await.unwrap();
        assert_eq!(outcome, ActionOutcome::Handled);
        assert_eq!(ctx.get("tagged"), Some(&Value::Bool(true)));
        assert!(hooks.on_action("half", &mut ctx).await.is_err());
        assert_eq!(ctx.get("started"), Some(&Value::Bool(true)));
        let outcome = hooks.on_action("unknown_action", &mut ctx).await.unwrap();
        assert_eq!(outcome, ActionOutcome::NotHandled);
    }

    #[tokio::test]
    #[allow(deprecated)]
    async fn by_value_actions_still_work() {
        let hooks =
            DistributedWorkerHooks::new(Backends::memory()).action("old", |mut ctx| async move {
                ctx.insert("old".into(), 1.into());
                Ok(ctx)
            });
        let mut ctx = Context::new();
        hooks.on_action("old", &mut ctx).await.unwrap();
        assert_eq!(ctx.get("old"), Some(&Value::from(1)));
    }
}
