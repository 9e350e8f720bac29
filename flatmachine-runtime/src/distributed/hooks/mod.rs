//! [`DistributedWorkerHooks`]: the reference's ready-made actions for checker, worker and reaper
//! machines, with heartbeats, claim tokens and superseded executions on top.

use async_trait::async_trait;
use futures::future::BoxFuture;
use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use super::registration::RegistrationBackend;
use super::spawn::WorkerSpawner;
use super::work::{DEFAULT_JOB_LEASE, WorkBackend};
use super::{Backends, BackendsError};
use crate::engine::{ActionCall, ActionFn};
use crate::hooks::{ActionOutcome, HookError, MachineHooks};
use crate::machine::MachineSpec;
use crate::persistence::CheckpointStore;
use crate::{Context, StateError, Value};

mod builtins;
mod liveness;

pub use builtins::BUILTIN_ACTIONS;
use liveness::Liveness;

/// A job action added to [`DistributedWorkerHooks`] (the same shape as
/// [`MachineBuilder::action_mut`](crate::MachineBuilder::action_mut)): changes the context in
/// place; what it wrote stays also when it then fails.
pub type JobAction = ActionFn;

/// The default heartbeat interval, in seconds (the reference's example value).
pub const DEFAULT_HEARTBEAT_INTERVAL: f64 = 30.0;

/// Hooks whose `on_action` implements the distributed worker actions of the reference
/// (`flatmachines` `DistributedWorkerHooks`), with the same names and context keys:
///
/// | action | reads | writes |
/// |---|---|---|
/// | `get_pool_state` | `pool_id` | `queue_depth`, `active_workers` |
/// | `claim_job` | `pool_id`, `worker_id` | `job`, `job_id` (null when empty), `job_attempts`, `job_claim_token` |
/// | `complete_job` | `pool_id`, `job_id`, `job_claim_token`, `result` | |
/// | `fail_job` | `pool_id`, `job_id`, `job_claim_token`, `error` (else `last_error`) | `job_status` |
/// | `register_worker` | `worker_id`, `capabilities`, `pool_id` | `worker_id`, `status`, `registered_at` |
/// | `deregister_worker` | `worker_id` | |
/// | `heartbeat` | `worker_id`, `heartbeat_metadata` | |
/// | `list_stale_workers` | `stale_threshold_seconds` (default 2 × heartbeat interval), `pool_id` | `workers`, `stale_count`, `expired_jobs_released` |
/// | `reclaim_expired_jobs` | `pool_id` | `expired_jobs_released` |
/// | `reap_worker` | `worker`, `pool_id` | `reaped_worker_id`, `jobs_released` |
/// | `reap_stale_workers` | `stale_workers` (else `workers`), `pool_id` | `reaped_workers`, `reaped_count`, `total_jobs_released` |
/// | `calculate_spawn` | `queue_depth`, `active_workers`, `max_workers` (default 3) | `workers_needed`, `workers_to_spawn`, `spawn_list` |
/// | `spawn_workers` | `workers_to_spawn`, `pool_id`, `worker_config_path` | `spawned_ids`, `spawned_count` |
///
/// `pool_id` defaults to `"default"`. Numbers may be given as numeric strings (templates render
/// `{{ input.max_workers | default(3) }}` as text).
///
/// **Heartbeats by default.** `register_worker` (or, without it, `claim_job`) starts a task
/// that heartbeats the worker every [`heartbeat_interval`](Self::heartbeat_interval) seconds
/// (the worker YAML's `settings.heartbeat_interval` with [`for_machine`](Self::for_machine),
/// default 30) and checks the claims it holds; `deregister_worker`, a run that fails, or
/// dropping the hooks stop it. A claim is a lease ([`job_lease`](Self::job_lease), default
/// 10 minutes, `settings.job_lease_seconds`) that heartbeats do not extend: the reaper takes
/// a job back when its lease ends even if its worker is alive (a stuck job), and
/// `list_stale_workers` does that on every reaper cycle.
///
/// **Claim tokens.** `claim_job` puts the claim's token in `job_claim_token`; `complete_job`
/// and `fail_job` need it, so a worker whose claim was taken back cannot finish the job. A
/// claim found lost (by a heartbeat, or by a refused completion) stops the execution: every
/// later action of it, and of its child machines, fails with the `ClaimLost` error type, and
/// the execution is marked superseded (see [`crate::distributed::superseded`]) in the
/// [`checkpoints`](Self::checkpoints) store, as the reaper does when it takes a job back.
///
/// Add job-processing actions with [`DistributedWorkerHooks::action_mut`] (they are tried
/// first, so one can also replace a built-in, e.g. a custom `calculate_spawn`), and register
/// the hooks under the class name the YAML uses:
///
/// ```
/// # use flatmachine_runtime::distributed::*;
/// # use flatmachine_runtime::hooks::HooksRegistry;
/// # use std::sync::Arc;
/// let hooks = DistributedWorkerHooks::new(Backends::memory())
///     .action_mut("echo_delay", |ctx, _call| Box::pin(async move {
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
    job_lease: Duration,
    checkpoints: Option<CheckpointStore>,
    actions: HashMap<String, JobAction>,
    fallback: Option<Arc<dyn MachineHooks>>,
    live: Arc<Liveness>,
}

impl std::fmt::Debug for DistributedWorkerHooks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut actions: Vec<_> = self.actions.keys().collect();
        actions.sort();
        f.debug_struct("DistributedWorkerHooks")
            .field("heartbeat_interval", &self.heartbeat_interval)
            .field("job_lease", &self.job_lease)
            .field("actions", &actions)
            .field("spawner", &self.spawner.is_some())
            .field("checkpoints", &self.checkpoints.is_some())
            .finish_non_exhaustive()
    }
}

/// The machine in `spec`'s tree (itself first, then its children breadth-first) that claims
/// jobs (has a `claim_job` action): the worker machine whose settings the hooks follow.
pub(crate) fn worker_machine(spec: &'static MachineSpec) -> Option<&'static MachineSpec> {
    let mut queue = vec![spec];
    let mut i = 0;
    while let Some(m) = queue.get(i).copied() {
        i += 1;
        if is_worker_machine(m) {
            return Some(m);
        }
        for (_, child) in m.machines {
            if let Some(c) = child
                && !queue.iter().any(|q| std::ptr::eq(*q, *c))
            {
                queue.push(c);
            }
        }
    }
    None
}

/// Whether `spec` is a worker machine: one of its states runs the `claim_job` action.
pub fn is_worker_machine(spec: &MachineSpec) -> bool {
    spec.actions.contains(&"claim_job")
}

/// The checkpoint store a machine's YAML names, opened the way `MachineBuilder::build` opens
/// it with its defaults (`.checkpoints` for `local`; `sqlite_path`, else
/// `.checkpoints/checkpoints.sqlite`, for `sqlite`; the shared connection for `redis`).
/// `None` for memory or no checkpoints: marks there would not outlive the process.
fn checkpoints_for(spec: &'static MachineSpec) -> Result<Option<CheckpointStore>, BackendsError> {
    let settings = spec.backends.unwrap_or_default();
    let backend = match &spec.persistence {
        Some(p) if !p.enabled => return Ok(None),
        Some(p) => p.backend,
        None => match settings.persistence {
            Some(b) => b,
            None => return Ok(None),
        },
    };
    match backend {
        "local" => Ok(Some(CheckpointStore::local(".checkpoints"))),
        #[cfg(feature = "sqlite")]
        "sqlite" => {
            let path = settings
                .sqlite_path
                .map(std::path::PathBuf::from)
                .unwrap_or_else(|| std::path::Path::new(".checkpoints").join("checkpoints.sqlite"));
            CheckpointStore::sqlite(&path)
                .map(Some)
                .map_err(|e| BackendsError::RedisSetup(format!("checkpoint store: {e}")))
        }
        #[cfg(feature = "redis")]
        "redis" => {
            let conn = crate::redis_backends::RedisConnection::from_env()
                .map_err(|e| BackendsError::RedisSetup(e.to_string()))?;
            Ok(Some(CheckpointStore::new(Arc::new(
                crate::redis_backends::RedisPersistence::new(conn),
            ))))
        }
        _ => Ok(None),
    }
}

impl DistributedWorkerHooks {
    /// Hooks over these backends: heartbeat interval 30 s, job lease 10 minutes, no spawner,
    /// no checkpoint store for superseded marks, no extra actions.
    pub fn new(backends: Backends) -> Self {
        Self {
            registration: backends.registration,
            work: backends.work,
            spawner: None,
            heartbeat_interval: DEFAULT_HEARTBEAT_INTERVAL,
            job_lease: DEFAULT_JOB_LEASE,
            checkpoints: None,
            actions: HashMap::new(),
            fallback: None,
            live: Arc::default(),
        }
    }

    /// Hooks configured from a machine's YAML: the backends its `settings.backends` names, and
    /// — from the worker machine in its tree (itself, or the child that runs `claim_job`) —
    /// `settings.heartbeat_interval`, `settings.job_lease_seconds` and the checkpoint store its
    /// persistence names (where superseded executions are marked). Build the reaper's and the
    /// checker's hooks from the worker machine too, so they mark the workers' executions and
    /// judge staleness by the workers' interval.
    pub fn for_machine(spec: &'static MachineSpec) -> Result<Self, BackendsError> {
        let worker = worker_machine(spec).unwrap_or(spec);
        let mut hooks = Self::new(Backends::for_machine(spec)?);
        if let Some(seconds) = worker.heartbeat_interval {
            hooks = hooks.heartbeat_interval(seconds);
        }
        if let Some(seconds) = worker
            .job_lease_seconds
            .filter(|s| s.is_finite() && *s > 0.0)
        {
            hooks = hooks.job_lease(Duration::from_secs_f64(seconds.min(1e9)));
        }
        hooks.checkpoints = checkpoints_for(worker)?;
        Ok(hooks)
    }

    /// How `spawn_workers` starts workers (without one, spawning more than zero is an error).
    pub fn spawner(mut self, spawner: Arc<dyn WorkerSpawner>) -> Self {
        self.spawner = Some(spawner);
        self
    }

    /// The workers' heartbeat interval in seconds (the worker YAML's
    /// `settings.heartbeat_interval`): how often the heartbeat task beats, and
    /// `list_stale_workers`' default threshold is twice this.
    pub fn heartbeat_interval(mut self, seconds: f64) -> Self {
        if seconds.is_finite() && seconds > 0.0 {
            self.heartbeat_interval = seconds.min(1e9);
        }
        self
    }

    /// How long a job claimed by `claim_job` stays claimed before the reaper may take it back
    /// (default [`DEFAULT_JOB_LEASE`], 10 minutes).
    pub fn job_lease(mut self, lease: Duration) -> Self {
        self.job_lease = lease.max(Duration::from_millis(1));
        self
    }

    /// Where superseded worker executions are marked: the checkpoint store of the worker
    /// machines (what [`for_machine`](Self::for_machine) opens from their YAML).
    pub fn checkpoints(mut self, store: CheckpointStore) -> Self {
        self.checkpoints = Some(store);
        self
    }

    /// Adds (or replaces) an action handled before the built-ins, in the shape of
    /// [`MachineBuilder::action_mut`](crate::MachineBuilder::action_mut): it changes the context
    /// in place, and what it wrote stays also when it then fails.
    pub fn action_mut<F>(mut self, name: impl Into<String>, f: F) -> Self
    where
        F: for<'a> Fn(&'a mut Context, &'a ActionCall) -> BoxFuture<'a, Result<(), StateError>>
            + Send
            + Sync
            + 'static,
    {
        self.actions.insert(name.into(), Arc::new(f));
        self
    }

    /// Adds an action that takes the context by value and returns the new one.
    ///
    /// A failing closure has nothing to give back, so its changes are lost, unlike every other
    /// kind of action handler. Kept so existing code compiles; use
    /// [`action_mut`](Self::action_mut).
    #[deprecated(
        since = "0.1.0",
        note = "a failing closure cannot hand its changes back; use `action_mut(name, |ctx, call| Box::pin(async move { .. }))`, whose changes stay on failure"
    )]
    pub fn action<F, Fut>(self, name: impl Into<String>, f: F) -> Self
    where
        F: Fn(Context) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Context, StateError>> + Send + 'static,
    {
        self.action_mut(name, move |ctx, _call| {
            let fut = f(ctx.clone());
            Box::pin(async move {
                *ctx = fut.await?;
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

    /// The checkpoint store superseded executions are marked in, if any.
    pub fn checkpoint_store(&self) -> Option<&CheckpointStore> {
        self.checkpoints.as_ref()
    }

    /// Whether a heartbeat task runs for `worker_id` in this process.
    pub fn heartbeating(&self, worker_id: &str) -> bool {
        self.live.running(worker_id)
    }

    /// Refuses to run an action for an execution whose claim was found taken back (or for a
    /// child machine of one).
    fn refuse_if_lost(&self, action: &str) -> Result<(), StateError> {
        let Some(call) = ActionCall::current() else {
            return Ok(());
        };
        let executions =
            std::iter::once(call.execution_id.as_str()).chain(call.parent_execution_id.as_deref());
        match self.live.lost_for(executions) {
            None => Ok(()),
            Some(lost) => Err(StateError::new(
                super::CLAIM_LOST_ERROR_TYPE,
                format!(
                    "not running `{action}`: worker `{}` lost its claim on job `{}` of pool `{}` ({})",
                    lost.worker_id, lost.job_id, lost.pool, lost.error
                ),
            )),
        }
    }
}

/// The worker id of a context, if it has one.
fn context_worker(ctx: &Context) -> Option<String> {
    match ctx.get("worker_id") {
        Some(Value::String(s)) if !s.is_empty() => Some(s.clone()),
        _ => None,
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
        let recovery = match &self.fallback {
            Some(f) => f.on_error(state, error, context).await?,
            None => None,
        };
        // No recovery: the run fails. A worker that is not running any more stops
        // heartbeating, so the reaper takes back what it held.
        if recovery.is_none()
            && let Some(worker) = context_worker(context)
        {
            self.live.stop(&worker);
        }
        Ok(recovery)
    }

    /// The registration built-ins (`register_worker`, `deregister_worker`, `heartbeat`: upserts
    /// of this worker's record, idempotent) and the job built-ins (`claim_job`, `complete_job`,
    /// `fail_job`: a worker execution is never the way back for its job — the reaper is — so
    /// a checkpoint before them would be a resume point nobody uses), unless an action of the
    /// same name replaces them; the fallback hooks' answer for the actions they handle.
    fn may_defer_checkpoint(&self, action: &str) -> bool {
        if self.actions.contains_key(action) {
            return false;
        }
        if matches!(
            action,
            "register_worker"
                | "deregister_worker"
                | "heartbeat"
                | "claim_job"
                | "complete_job"
                | "fail_job"
        ) {
            return true;
        }
        self.fallback
            .as_ref()
            .is_some_and(|f| f.may_defer_checkpoint(action))
    }

    async fn on_action(
        &self,
        action: &str,
        context: &mut Context,
    ) -> Result<ActionOutcome, HookError> {
        self.refuse_if_lost(action)?;
        if let Some(f) = self.actions.get(action) {
            let call = ActionCall::current().unwrap_or_else(detached_call);
            f(context, &call).await?;
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

/// The call given to a user action when the hooks are called outside a run (tests, direct
/// calls): no machine, state or execution.
fn detached_call() -> ActionCall {
    ActionCall {
        action: "",
        machine: "",
        state: "",
        execution_id: String::new(),
        parent_execution_id: None,
        step: 0,
    }
}
