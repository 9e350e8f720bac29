//! Running a machine: the loop, error routing, checkpoints, resume, child machines.

use super::DEFAULT_MAX_STEPS;
use super::builder::MachineBuilder;
use super::handlers::{ActionCall, ActionFn, AgentFn, FallbackActionFn};
use super::invoker::{InvokeRequest, MachineInvoker};
use crate::agents::{
    AdapterEnv, AgentAdapterRegistry, AgentExecutor, ClosureExecutor, LlmBackend, Usage,
};
use crate::error::error_type;
use crate::hooks::{HooksFor, HooksRegistry, MachineHooks, NoopHooks};
use crate::lock::{ExecutionLock, LockError};
use crate::machine::{MachineDef, MachineSpec, StateSpec};
use crate::persistence::encoded::SnapshotParts;
use crate::persistence::{
    CheckpointStore, CheckpointWriter, LaunchIntent, MachineSnapshot, PersistenceError,
    checkpoint_event,
};
use crate::results::{DEFAULT_PATH, ResultBackend, make_uri};
use crate::template::{self, ScopeRef, TemplateValue};
use crate::{Context, StateError, Value};
use futures::StreamExt;
use futures::future::BoxFuture;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

/// What a finished run returns.
#[derive(Debug, Clone, PartialEq)]
pub struct RunResult {
    /// The final output (`{}` when the final state has no `output`).
    pub output: Value,
    /// The run's execution id.
    pub execution_id: String,
    /// The final state's name.
    pub final_state: String,
    /// State visits, the final state included.
    pub steps: u64,
    /// Agent calls made, those of child machines (`machine:` / `foreach`) included.
    pub total_api_calls: u64,
    /// Agent cost, child machines included.
    pub total_cost: f64,
    /// Tokens used by agent calls in this run, child machines included (not restored by
    /// `resume`: checkpoints hold only `total_api_calls` and `total_cost`, as the
    /// reference's do).
    pub usage: Usage,
    /// The context at the end.
    pub context: Context,
}

/// Why a run did not finish. Every variant about one execution names it (`execution_id`;
/// [`RunError::execution_id`] reads it from any variant that has one).
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// A state failed and neither `on_error` nor the `on_error` hook recovered.
    #[error("machine `{machine}` (execution {execution_id}): state `{state}` failed: {error}")]
    State {
        /// The machine.
        machine: String,
        /// The execution.
        execution_id: String,
        /// The state.
        state: String,
        /// The error.
        error: StateError,
    },
    /// An `action:` no handler accepted (no named handler, no hook's `on_action`, no fallback),
    /// and the state's `on_error` did not route its `UnhandledActionError`.
    #[error(
        "machine `{machine}` (execution {execution_id}): no handler for action `{action}` in state `{state}`: register one with `MachineBuilder::action_mut` or `fallback_action`, or handle it in `MachineHooks::on_action`"
    )]
    UnhandledAction {
        /// The machine.
        machine: String,
        /// The execution.
        execution_id: String,
        /// The state.
        state: String,
        /// The action name.
        action: String,
    },
    /// `max_steps` was reached before a final state.
    #[error(
        "machine `{machine}` (execution {execution_id}): reached max_steps ({limit}) before a final state (next state: `{next}`)"
    )]
    MaxSteps {
        /// The machine.
        machine: String,
        /// The execution.
        execution_id: String,
        /// The limit.
        limit: u64,
        /// The state that would have run next.
        next: String,
    },
    /// `max_agent_calls` was reached.
    #[error(
        "machine `{machine}` (execution {execution_id}): reached max_agent_calls ({limit}) in state `{state}`"
    )]
    MaxAgentCalls {
        /// The machine.
        machine: String,
        /// The execution.
        execution_id: String,
        /// The limit.
        limit: u64,
        /// The state the run was in.
        state: String,
    },
    /// A non-final state had no transition whose condition held.
    #[error(
        "machine `{machine}` (execution {execution_id}): no transition of state `{state}` matched, and it is not final"
    )]
    NoTransition {
        /// The machine.
        machine: String,
        /// The execution.
        execution_id: String,
        /// The state.
        state: String,
    },
    /// A hook redirected to, or a checkpoint named, a state the machine does not have.
    #[error("machine `{machine}` (execution {execution_id}): unknown state `{state}`")]
    UnknownState {
        /// The machine.
        machine: String,
        /// The execution.
        execution_id: String,
        /// The name.
        state: String,
    },
    /// `resume` was given an execution id with no checkpoint.
    #[error("no checkpoint for execution `{0}`")]
    UnknownExecution(String),
    /// Checkpoint storage failed (a corrupt snapshot names its file).
    #[error(transparent)]
    Persistence(#[from] PersistenceError),
    /// The execution is locked by another runner.
    #[error(transparent)]
    Lock(#[from] LockError),
    /// A hook failed outside a state (`on_machine_start`, `on_machine_end`, building hooks).
    #[error("machine `{machine}` (execution {execution_id}): hook failed: {message}")]
    Hook {
        /// The machine.
        machine: String,
        /// The execution.
        execution_id: String,
        /// What failed.
        message: String,
    },
    /// The initial context or final output could not be rendered.
    #[error("machine `{machine}` (execution {execution_id}): {error}")]
    Template {
        /// The machine.
        machine: String,
        /// The execution.
        execution_id: String,
        /// The error.
        error: StateError,
    },
}

impl RunError {
    /// The error as a state error (for a parent machine routing a child's failure).
    pub fn to_state_error(&self) -> StateError {
        match self {
            RunError::State { error, .. } => error.clone(),
            RunError::UnhandledAction { .. } => {
                StateError::new(error_type::UNHANDLED_ACTION, self.to_string())
            }
            RunError::Lock(e) => StateError::new(crate::lock::LOCK_ERROR_TYPE, e.to_string()),
            other => StateError::new(error_type::MACHINE, other.to_string()),
        }
    }

    /// The execution that failed, when the error is about one (every variant but
    /// `Persistence` and `Lock`, whose messages name the key or execution themselves).
    pub fn execution_id(&self) -> Option<&str> {
        match self {
            RunError::State { execution_id, .. }
            | RunError::UnhandledAction { execution_id, .. }
            | RunError::MaxSteps { execution_id, .. }
            | RunError::MaxAgentCalls { execution_id, .. }
            | RunError::NoTransition { execution_id, .. }
            | RunError::UnknownState { execution_id, .. }
            | RunError::Hook { execution_id, .. }
            | RunError::Template { execution_id, .. } => Some(execution_id),
            RunError::UnknownExecution(id) => Some(id),
            RunError::Persistence(_) | RunError::Lock(_) => None,
        }
    }
}

pub(crate) struct Inner {
    pub spec: &'static MachineSpec,
    pub hooks: Option<Arc<dyn MachineHooks>>,
    pub registry: Arc<HooksRegistry>,
    pub actions: Arc<HashMap<String, ActionFn>>,
    pub fallback: Option<FallbackActionFn>,
    pub agents: Arc<HashMap<String, AgentFn>>,
    pub adapters: Arc<AgentAdapterRegistry>,
    pub llm: Arc<dyn LlmBackend>,
    pub executors: Arc<ExecutorCache>,
    pub store: Option<CheckpointStore>,
    pub lock: Arc<dyn ExecutionLock>,
    pub checkpoint_on: Option<Vec<String>>,
    pub max_steps: Option<u64>,
    pub max_agent_calls: Option<u64>,
    pub max_concurrency: Option<usize>,
    pub ignore_unhandled_actions: bool,
    pub results: Arc<dyn ResultBackend>,
    pub launches: Arc<Launches>,
    pub invoker: Arc<dyn MachineInvoker>,
    /// Child machines configured so far (built on first use, then shared by every run).
    pub children: std::sync::Mutex<Vec<(&'static str, Machine)>>,
    /// The named action handler of each state (by state index), looked up once.
    pub state_actions: std::sync::OnceLock<Box<[Option<ActionFn>]>>,
}

/// Children started with `launch:` by a machine and its children, until joined.
#[derive(Default)]
pub(crate) struct Launches {
    tasks: std::sync::Mutex<Vec<LaunchTask>>,
    /// Launched executions that finished (their result is written): dropped from the
    /// `pending_launches` of later checkpoints.
    done: std::sync::Mutex<HashSet<String>>,
}

struct LaunchTask {
    execution_id: String,
    machine: String,
    handle: tokio::task::JoinHandle<Result<Value, StateError>>,
}

impl Launches {
    fn is_done(&self, id: &str) -> bool {
        self.done
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(id)
    }

    fn mark_done(&self, id: &str) {
        self.done
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id.to_string());
    }

    fn push(&self, task: LaunchTask) {
        self.tasks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(task);
    }

    fn take(&self) -> Vec<LaunchTask> {
        std::mem::take(&mut *self.tasks.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

/// A child started with `launch:` that finished (see [`Machine::join_launched`]).
#[derive(Debug, Clone, PartialEq)]
pub struct LaunchOutcome {
    /// The child's execution id (its result is at `flatagents://{execution_id}/result`).
    pub execution_id: String,
    /// The child machine's name in the parent's `machines:`.
    pub machine: String,
    /// The child's output, or its error (a panic in the child is an error too).
    pub result: Result<Value, StateError>,
}

/// Where `Machine::run_loop` starts its first state: from the top, or (resuming) just after
/// one of the state's checkpoints.
enum Entry {
    /// From the top: limits are checked, a step is counted, `state_enter` is written.
    Enter,
    /// After `state_enter` (the step is already counted): `on_state_enter` onward.
    AfterEnter,
    /// After `execute`: the state's work onward.
    AfterExecute,
    /// After `state_exit` (the work is done; the final state's output, if any):
    /// `on_state_exit` onward.
    AfterExit(Option<Value>),
}

/// A compiled machine, configured and ready to run (cheap to clone).
#[derive(Clone)]
pub struct Machine {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Machine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Machine")
            .field("spec", &self.inner.spec.name)
            .finish_non_exhaustive()
    }
}

/// Per-run settings for [`Machine::run_with`].
#[derive(Debug, Clone, Default, PartialEq)]
#[non_exhaustive]
pub struct RunOptions {
    /// The execution id (default: a new UUID v4). A plain name: no `/`, no `..`.
    pub execution_id: Option<String>,
    /// The execution that started this one (written as `parent_execution_id` in checkpoints).
    pub parent_execution_id: Option<String>,
    /// Most state visits in this run (overrides the builder's and `settings.max_steps`).
    pub max_steps: Option<u64>,
}

impl RunOptions {
    /// Defaults: a new execution id, the machine's `max_steps`.
    pub fn new() -> Self {
        Self::default()
    }

    /// Use this execution id.
    pub fn execution_id(mut self, id: impl Into<String>) -> Self {
        self.execution_id = Some(id.into());
        self
    }

    /// Record this parent execution id (lineage) in the run's checkpoints.
    pub fn parent_execution_id(mut self, id: impl Into<String>) -> Self {
        self.parent_execution_id = Some(id.into());
        self
    }

    /// Limit this run to `n` state visits.
    pub fn max_steps(mut self, n: u64) -> Self {
        self.max_steps = Some(n);
        self
    }
}

struct Run {
    max_steps: Option<u64>,
    execution_id: String,
    parent_execution_id: Option<String>,
    step: u64,
    api_calls: u64,
    cost: f64,
    usage: Usage,
    hooks: Arc<dyn MachineHooks>,
    /// Whether `hooks` are the machine's own (`false` for the no-op default: the loop skips
    /// the calls).
    hooks_active: bool,
    /// Encodes this execution's checkpoints (the execution id checked once).
    writer: CheckpointWriter,
    /// The outbox: launch intents not known to have finished.
    pending_launches: Vec<LaunchIntent>,
    /// After a resume: (state, step) whose launch ids the first executed state re-derives, so
    /// launches recorded before the crash are not started twice.
    launch_origin: Option<(usize, u64)>,
    /// The context at this step's `execute` checkpoint (kept only for states that launch).
    step_context: Option<Context>,
    /// Set when the error being returned is an unhandled action.
    unhandled_action: Option<&'static str>,
    /// The execution lock's fencing token, written into every checkpoint.
    fencing_token: Option<u64>,
    /// The [`ActionCall`] of the last action, reused (updated in place) by the next one.
    action_call: Option<Arc<ActionCall>>,
}

impl Run {
    fn new(
        writer: CheckpointWriter,
        parent: Option<String>,
        hooks: Option<Arc<dyn MachineHooks>>,
        max_steps: Option<u64>,
    ) -> Self {
        let hooks_active = hooks.is_some();
        Run {
            max_steps,
            execution_id: writer.execution_id().to_owned(),
            parent_execution_id: parent,
            step: 0,
            api_calls: 0,
            cost: 0.0,
            usage: Usage::default(),
            hooks: hooks.unwrap_or_else(noop_hooks),
            hooks_active,
            writer,
            pending_launches: Vec::new(),
            launch_origin: None,
            step_context: None,
            unhandled_action: None,
            fencing_token: None,
            action_call: None,
        }
    }

    fn add_child_totals(&mut self, child: &RunResult) {
        self.add_totals(ChildTotals::of(child));
    }

    fn add_totals(&mut self, child: ChildTotals) {
        self.api_calls += child.api_calls;
        self.cost += child.cost;
        self.usage += child.usage;
    }
}

/// What a child run adds to its parent's totals.
struct ChildTotals {
    api_calls: u64,
    cost: f64,
    usage: Usage,
}

impl ChildTotals {
    fn of(child: &RunResult) -> Self {
        Self {
            api_calls: child.total_api_calls,
            cost: child.total_cost,
            usage: child.usage,
        }
    }
}

/// The shared no-op hooks of runs whose machine has none (their calls are skipped).
fn noop_hooks() -> Arc<dyn MachineHooks> {
    static NOOP: std::sync::OnceLock<Arc<dyn MachineHooks>> = std::sync::OnceLock::new();
    NOOP.get_or_init(|| Arc::new(NoopHooks)).clone()
}

/// Executors built so far, by machine and agent name (shared by a machine and its children).
pub(crate) type ExecutorCache =
    std::sync::Mutex<HashMap<(usize, &'static str), Arc<dyn AgentExecutor>>>;

impl Machine {
    /// Configure a machine from its compiled description.
    pub fn builder(spec: &'static MachineSpec) -> MachineBuilder {
        MachineBuilder::new(spec)
    }

    /// Configure a machine from its generated marker type (`my_machine::Machine`).
    pub fn of<M: MachineDef>() -> MachineBuilder {
        MachineBuilder::new(M::spec())
    }

    pub(crate) fn from_inner(inner: Inner) -> Self {
        Self {
            inner: Arc::new(inner),
        }
    }

    /// The compiled description.
    pub fn spec(&self) -> &'static MachineSpec {
        self.inner.spec
    }

    /// The checkpoint store in use, if any.
    pub fn store(&self) -> Option<&CheckpointStore> {
        self.inner.store.as_ref()
    }

    /// The result backend children write their results to (`flatagents://{id}/result`).
    pub fn result_backend(&self) -> &Arc<dyn ResultBackend> {
        &self.inner.results
    }

    /// The machine for the child `name` (in `machines:`), configured like this one: the same
    /// handlers, agents, hooks registry, checkpoint store, lock, result backend and invoker.
    /// `None` when the machine has no such child.
    pub fn child_machine(&self, name: &str) -> Option<Machine> {
        self.child(name).ok()
    }

    /// Run with a new execution id.
    pub async fn run(&self, input: Value) -> Result<RunResult, RunError> {
        self.run_with_id(uuid::Uuid::new_v4().to_string(), input)
            .await
    }

    /// Run with a given execution id (it must be a plain name: no `/`, no `..`).
    pub async fn run_with_id(
        &self,
        execution_id: impl Into<String>,
        input: Value,
    ) -> Result<RunResult, RunError> {
        self.start(execution_id.into(), None, input, None).await
    }

    /// Run with per-run options (execution id, parent execution id, `max_steps`).
    pub async fn run_with(&self, input: Value, options: RunOptions) -> Result<RunResult, RunError> {
        let id = options
            .execution_id
            .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
        self.start(id, options.parent_execution_id, input, options.max_steps)
            .await
    }

    /// Blocking convenience for callers without an async runtime (the reference's `execute_sync`).
    ///
    /// Runs the machine on a new current-thread runtime, then waits for every child it
    /// started with `launch:` ([`join_launched`](Self::join_launched)) before returning, since
    /// the runtime (and with it any task still running) ends with this call — as the
    /// reference's `execute()` awaits its launched tasks. Called from inside an async runtime
    /// (where blocking on one would panic), the run goes to a helper thread and the calling
    /// thread blocks until it ends: prefer `run(input).await` there.
    pub fn run_blocking(&self, input: Value) -> Result<RunResult, RunError> {
        let block = move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| RunError::Hook {
                    machine: self.inner.spec.name.to_string(),
                    execution_id: String::new(),
                    message: format!("cannot start a tokio runtime: {e}"),
                })?;
            rt.block_on(async {
                let result = self.run(input).await;
                for launched in self.join_launched().await {
                    if let Err(e) = launched.result {
                        tracing::error!(machine = %launched.machine, execution_id = %launched.execution_id, error = %e, "launched machine failed");
                    }
                }
                result
            })
        };
        if tokio::runtime::Handle::try_current().is_err() {
            return block();
        }
        std::thread::scope(|s| match s.spawn(block).join() {
            Ok(result) => result,
            Err(panic) => std::panic::resume_unwind(panic),
        })
    }

    /// Waits for every child started with `launch:` by this machine (and its children, in any
    /// of their runs) that was not joined yet, and returns how each ended, in launch order.
    /// Children launched while waiting are waited for too.
    ///
    /// `run` does not wait for launched children (they run on as tokio tasks); a process that
    /// exits without joining them ends them, and a later `resume` of the parent starts them
    /// again from the outbox (`pending_launches`). Every launched child also writes its
    /// result to the [`result_backend`](Self::result_backend).
    pub async fn join_launched(&self) -> Vec<LaunchOutcome> {
        let mut out = Vec::new();
        loop {
            let tasks = self.inner.launches.take();
            if tasks.is_empty() {
                return out;
            }
            for task in tasks {
                let result = match task.handle.await {
                    Ok(r) => r,
                    Err(e) => Err(StateError::new(
                        error_type::MACHINE,
                        format!("launched machine `{}` did not finish: {e}", task.machine),
                    )),
                };
                out.push(LaunchOutcome {
                    execution_id: task.execution_id,
                    machine: task.machine,
                    result,
                });
            }
        }
    }

    /// Continue an execution from its latest checkpoint, at exactly the point the checkpoint
    /// was written (see `docs/durability.md`):
    ///
    /// * `machine_start` — runs `on_machine_start`, then the initial state;
    /// * `state_enter` — runs `on_state_enter` and the state (same step number);
    /// * `execute` — runs the state's work again (actions are at-least-once here);
    /// * `state_exit` — does **not** run the state again: runs `on_state_exit`, then its
    ///   transitions (or ends the run if it is final);
    /// * `machine_end` — returns the stored output (nothing runs).
    ///
    /// Step numbers continue from the checkpoint's; none is spent twice.
    ///
    /// Launches recorded in the checkpoint (`pending_launches`) whose child has no result yet
    /// are started again with the same execution id (a child with checkpoints of its own is
    /// resumed instead), so every launched child runs once across a crash.
    pub async fn resume(&self, execution_id: &str) -> Result<RunResult, RunError> {
        let spec = self.inner.spec;
        let store = self
            .inner
            .store
            .as_ref()
            .ok_or_else(|| RunError::UnknownExecution(execution_id.to_string()))?;
        let writer = CheckpointWriter::new(execution_id)?;
        let _guard = self.inner.lock.acquire(execution_id).await?;
        store.clean_execution(execution_id).await?;
        let (key, snap) = store
            .load_latest_entry(execution_id)
            .await?
            .ok_or_else(|| RunError::UnknownExecution(execution_id.to_string()))?;
        let corrupt = |reason: String| {
            RunError::Persistence(PersistenceError::Corrupt {
                path: store.backend().file_path(&key),
                key: key.clone(),
                reason,
            })
        };
        let mut run = Run::new(
            writer,
            snap.parent_execution_id.clone(),
            self.hooks_for_resume(execution_id, snap.parent_execution_id.clone())?,
            None,
        );
        run.fencing_token = _guard.fencing_token();
        run.step = snap.step;
        run.api_calls = snap.total_api_calls.unwrap_or(0);
        run.cost = snap.total_cost.unwrap_or(0.0);
        self.restore_launches(&mut run, &snap).await;
        let event = snap.event.as_deref().unwrap_or(checkpoint_event::UNKNOWN);
        if event == checkpoint_event::MACHINE_END {
            // machine_end records the state as `"end"` (reference layout): take the final
            // state's name from the state_exit checkpoint of the same step, else from the
            // machine when it has a single final state.
            let exit_key = crate::persistence::snapshot_key(execution_id, snap.step, "state_exit");
            let final_state = match store.backend().load(&exit_key).await {
                Ok(Some(exit)) if spec.state(&exit.current_state).is_some() => exit.current_state,
                _ => {
                    let mut finals = spec.states.iter().filter(|s| s.is_final);
                    match (finals.next(), finals.next()) {
                        (Some(only), None) => only.name.to_string(),
                        _ => snap.current_state.clone(),
                    }
                }
            };
            return Ok(RunResult {
                output: Value::Object(snap.output.clone().unwrap_or_default()),
                execution_id: run.execution_id,
                final_state,
                steps: snap.step,
                total_api_calls: run.api_calls,
                total_cost: run.cost,
                usage: run.usage,
                context: snap.context,
            });
        }
        let mut context = snap.context;
        if event == checkpoint_event::MACHINE_START {
            // The reference writes `"start"` as the state of `machine_start` whatever the
            // initial state is called; the run always begins at the initial state.
            if run.hooks_active {
                run.hooks
                    .on_machine_start(&mut context)
                    .await
                    .map_err(|e| RunError::Hook {
                        machine: spec.name.to_string(),
                        execution_id: execution_id.to_string(),
                        message: e.to_string(),
                    })?;
            }
            return self
                .run_loop(&mut run, context, spec.initial, Entry::Enter)
                .await;
        }
        let Some((state, _)) = spec.state(&snap.current_state) else {
            return Err(corrupt(format!(
                "it names state `{}`, which machine `{}` does not have",
                snap.current_state, spec.name
            )));
        };
        let entry = match event {
            checkpoint_event::STATE_ENTER => Entry::AfterEnter,
            checkpoint_event::EXECUTE => Entry::AfterExecute,
            checkpoint_event::STATE_EXIT => Entry::AfterExit(
                snap.output
                    .filter(|_| spec.states[state].is_final)
                    .map(Value::Object),
            ),
            other => {
                return Err(corrupt(format!(
                    "unknown checkpoint event `{other}` (expected one of {})",
                    checkpoint_event::ALL.join(", ")
                )));
            }
        };
        self.run_loop(&mut run, context, state, entry).await
    }

    fn hooks_for_resume(
        &self,
        execution_id: &str,
        parent: Option<String>,
    ) -> Result<Option<Arc<dyn MachineHooks>>, RunError> {
        self.build_hooks(&Value::Object(Context::new()), execution_id, parent, true)
    }

    fn build_hooks(
        &self,
        input: &Value,
        execution_id: &str,
        parent: Option<String>,
        resuming: bool,
    ) -> Result<Option<Arc<dyn MachineHooks>>, RunError> {
        let spec = self.inner.spec;
        if let Some(h) = &self.inner.hooks {
            return Ok(Some(h.clone()));
        }
        let Some(hs) = &spec.hooks else {
            // No hooks: the loop skips the hook calls.
            return Ok(None);
        };
        let hook_error = |message: String| RunError::Hook {
            machine: spec.name.to_string(),
            execution_id: execution_id.to_string(),
            message,
        };
        let empty = Context::new();
        let scope = ScopeRef::new(&empty).with_input(input);
        let args = match &hs.args {
            Some(a) => template::render_with(a, &scope)
                .map_err(|e| hook_error(format!("rendering hooks args: {e}")))?,
            None => Value::Object(Context::new()),
        };
        let args = match args {
            Value::Object(m) => m,
            _ => Context::new(),
        };
        let mut target = HooksFor::new(spec.name, execution_id);
        target.source = spec.source;
        target.parent_execution_id = parent;
        target.resuming = resuming;
        self.inner
            .registry
            .build_for(hs.class, &target, &args)
            .map(Some)
            .map_err(|e| hook_error(e.to_string()))
    }

    async fn start(
        &self,
        execution_id: String,
        parent: Option<String>,
        input: Value,
        max_steps: Option<u64>,
    ) -> Result<RunResult, RunError> {
        let spec = self.inner.spec;
        let writer = CheckpointWriter::new(&execution_id)?;
        let _guard = self.inner.lock.acquire(&execution_id).await?;
        if let Some(store) = &self.inner.store {
            store.clean_execution(&execution_id).await?;
        }
        let input = match input {
            Value::Null => Value::Object(Context::new()),
            v => v,
        };
        let hooks = self.build_hooks(&input, &execution_id, parent.clone(), false)?;
        let mut run = Run::new(writer, parent, hooks, max_steps);
        run.fencing_token = _guard.fencing_token();
        let empty = Context::new();
        let mut context = match &spec.context {
            Some(tv) => {
                match template::render_with(tv, &ScopeRef::new(&empty).with_input(&input)) {
                    Ok(Value::Object(m)) => m,
                    Ok(_) => Context::new(),
                    Err(e) => {
                        return Err(RunError::Template {
                            machine: spec.name.to_string(),
                            execution_id: run.execution_id.clone(),
                            error: e.into(),
                        });
                    }
                }
            }
            None => Context::new(),
        };
        let initial_name = spec.states[spec.initial].name;
        if self.checkpoints("machine_start") {
            self.checkpoint(&mut run, "machine_start", initial_name, &context, None)
                .await?;
        }
        if run.hooks_active
            && let Err(e) = run.hooks.on_machine_start(&mut context).await
        {
            return Err(self.hook_error(&run, e));
        }
        self.run_loop(&mut run, context, spec.initial, Entry::Enter)
            .await
    }

    fn hook_error(&self, run: &Run, e: impl std::fmt::Display) -> RunError {
        RunError::Hook {
            machine: self.inner.spec.name.to_string(),
            execution_id: run.execution_id.clone(),
            message: e.to_string(),
        }
    }

    /// Writes one checkpoint of `run`: serialized once, straight from the borrowed context, or
    /// as a record sharing the context for a store in memory ([`CheckpointStore::write`]).
    async fn write_checkpoint(
        &self,
        store: &CheckpointStore,
        run: &mut Run,
        event: &'static str,
        state: &'static str,
        context: &Context,
        output: Option<&Value>,
    ) -> Result<(), PersistenceError> {
        let spec = self.inner.spec;
        if !run.pending_launches.is_empty() {
            let launches = &self.inner.launches;
            run.pending_launches
                .retain(|intent| !launches.is_done(&intent.execution_id));
        }
        let empty = Context::new();
        let parts = SnapshotParts {
            execution_id: "",
            machine_name: spec.name,
            spec_version: spec.spec_version,
            current_state: state,
            context,
            step: run.step,
            created_at: "",
            event: Some(event),
            output: output.map(|o| match o {
                Value::Object(m) => m,
                _ => &empty,
            }),
            total_api_calls: Some(run.api_calls),
            total_cost: Some(run.cost),
            parent_execution_id: run.parent_execution_id.as_deref(),
            pending_launches: (!run.pending_launches.is_empty())
                .then_some(run.pending_launches.as_slice()),
            fencing_token: run.fencing_token,
        };
        store.write(&mut run.writer, parts).await
    }

    /// Whether `event` gets a checkpoint: there is a store and `checkpoint_on` (if set) lists
    /// it. The run loop asks before calling [`checkpoint`](Self::checkpoint), so a run without
    /// checkpoints builds and polls no checkpoint future.
    #[inline]
    fn checkpoints(&self, event: &str) -> bool {
        self.inner.store.is_some()
            && self
                .inner
                .checkpoint_on
                .as_ref()
                .is_none_or(|on| on.iter().any(|e| e == event))
    }

    async fn checkpoint(
        &self,
        run: &mut Run,
        event: &'static str,
        state: &'static str,
        context: &Context,
        output: Option<&Value>,
    ) -> Result<(), RunError> {
        let Some(store) = &self.inner.store else {
            return Ok(());
        };
        if !self.checkpoints(event) {
            return Ok(());
        }
        self.write_checkpoint(store, run, event, state, context, output)
            .await?;
        Ok(())
    }

    /// The outbox write: this step's `execute` checkpoint again (same key, the context as at
    /// `execute`) with the current `pending_launches`. Written whenever there is a store, also
    /// when `checkpoint_on` leaves `execute` out.
    async fn record_launches(&self, run: &mut Run, state: &StateSpec) -> Result<(), StateError> {
        let Some(store) = &self.inner.store else {
            return Ok(());
        };
        let saved = run.step_context.take();
        let empty = Context::new();
        let written = self
            .write_checkpoint(
                store,
                run,
                checkpoint_event::EXECUTE,
                state.name,
                saved.as_ref().unwrap_or(&empty),
                None,
            )
            .await;
        run.step_context = saved;
        written?;
        Ok(())
    }

    async fn run_loop(
        &self,
        run: &mut Run,
        mut context: Context,
        start: usize,
        entry: Entry,
    ) -> Result<RunResult, RunError> {
        let spec = self.inner.spec;
        let max_steps = run
            .max_steps
            .or(self.inner.max_steps)
            .or(spec.max_steps)
            .unwrap_or(DEFAULT_MAX_STEPS);
        let mut current = start;
        let mut entry = entry;
        loop {
            // A resumed run starts part-way through its first state; every later state (and
            // every error route) starts from the top.
            let (phase, resumed_output) = match std::mem::replace(&mut entry, Entry::Enter) {
                Entry::Enter => (0, None),
                Entry::AfterEnter => (1, None),
                Entry::AfterExecute => (2, None),
                Entry::AfterExit(output) => (3, Some(output)),
            };
            let state = &spec.states[current];
            if phase == 0 {
                if run.step >= max_steps {
                    return Err(RunError::MaxSteps {
                        machine: spec.name.to_string(),
                        execution_id: run.execution_id.clone(),
                        limit: max_steps,
                        next: state.name.to_string(),
                    });
                }
                if let Some(limit) = self.inner.max_agent_calls
                    && run.api_calls >= limit
                {
                    return Err(RunError::MaxAgentCalls {
                        machine: spec.name.to_string(),
                        execution_id: run.execution_id.clone(),
                        limit,
                        state: state.name.to_string(),
                    });
                }
                run.step += 1;
                if self.checkpoints("state_enter") {
                    self.checkpoint(run, "state_enter", state.name, &context, None)
                        .await?;
                }
            }
            if phase <= 1 {
                if run.hooks_active
                    && let Err(e) = run.hooks.on_state_enter(state.name, &mut context).await
                {
                    current = self
                        .route_error(run, current, e.into(), &mut context)
                        .await?;
                    continue;
                }
                if self.checkpoints("execute") {
                    self.checkpoint(run, "execute", state.name, &context, None)
                        .await?;
                }
            }
            let mut output = match resumed_output {
                Some(output) => output,
                None => {
                    // The launch outbox rewrites this step's `execute` checkpoint with the
                    // context the step started from.
                    run.step_context = (!state.launch.is_empty()).then(|| context.clone());
                    let executed = match state.timeout.filter(|t| *t > 0.0) {
                        Some(secs) => {
                            // On timeout the state's work is dropped and the context is left
                            // as it was before the state ran.
                            let mut work_ctx = context.clone();
                            match tokio::time::timeout(
                                std::time::Duration::from_secs_f64(secs),
                                self.execute_state(run, current, &mut work_ctx),
                            )
                            .await
                            {
                                Ok(r) => {
                                    context = work_ctx;
                                    r
                                }
                                Err(_) => Err(StateError::new(
                                    error_type::TIMEOUT,
                                    format!("state `{}` timed out after {secs}s", state.name),
                                )),
                            }
                        }
                        None => match action_only(state) {
                            // Most states only run an action: no `execute_state` future.
                            Some(action) => self
                                .run_action(run, current, action, &mut context)
                                .await
                                .map(|()| None),
                            None => self.execute_state(run, current, &mut context).await,
                        },
                    };
                    run.launch_origin = None;
                    run.step_context = None;
                    let output = match executed {
                        Ok(o) => o,
                        Err(e) => {
                            current = self.route_error(run, current, e, &mut context).await?;
                            continue;
                        }
                    };
                    if self.checkpoints("state_exit") {
                        self.checkpoint(
                            run,
                            "state_exit",
                            state.name,
                            &context,
                            if state.is_final {
                                output.as_ref()
                            } else {
                                None
                            },
                        )
                        .await?;
                    }
                    output
                }
            };
            if run.hooks_active
                && let Err(e) = run
                    .hooks
                    .on_state_exit(state.name, &mut context, &mut output)
                    .await
            {
                current = self
                    .route_error(run, current, e.into(), &mut context)
                    .await?;
                continue;
            }
            if state.is_final {
                let mut final_output = output.unwrap_or_else(|| Value::Object(Context::new()));
                if self.checkpoints("machine_end") {
                    self.checkpoint(run, "machine_end", "end", &context, Some(&final_output))
                        .await?;
                }
                if run.hooks_active
                    && let Err(e) = run.hooks.on_machine_end(&context, &mut final_output).await
                {
                    return Err(self.hook_error(run, e));
                }
                return Ok(RunResult {
                    output: final_output,
                    execution_id: run.execution_id.clone(),
                    final_state: state.name.to_string(),
                    steps: run.step,
                    total_api_calls: run.api_calls,
                    total_cost: run.cost,
                    usage: run.usage,
                    context,
                });
            }
            let next = match (spec.transition)(current, &context) {
                Ok(Some(n)) => n,
                Ok(None) => {
                    return Err(RunError::NoTransition {
                        machine: spec.name.to_string(),
                        execution_id: run.execution_id.clone(),
                        state: state.name.to_string(),
                    });
                }
                Err(e) => {
                    current = self
                        .route_error(run, current, StateError::from(e), &mut context)
                        .await?;
                    continue;
                }
            };
            if !run.hooks_active {
                current = next;
                continue;
            }
            let to = spec.states[next].name;
            let target = match run.hooks.on_transition(state.name, to, &mut context).await {
                Ok(t) => t,
                Err(e) => {
                    current = self
                        .route_error(run, current, e.into(), &mut context)
                        .await?;
                    continue;
                }
            };
            // Most hooks keep the target: no lookup by name then.
            current = if target == to {
                next
            } else {
                match spec.state(&target) {
                    Some((i, _)) => i,
                    None => {
                        return Err(RunError::UnknownState {
                            machine: spec.name.to_string(),
                            execution_id: run.execution_id.clone(),
                            state: target,
                        });
                    }
                }
            };
        }
    }

    /// Record the error in the context and find the recovery state: `on_error` (by type, then
    /// `default`), then the `on_error` hook. `Ok(next)` to recover, `Err` to fail the run.
    async fn route_error(
        &self,
        run: &mut Run,
        state: usize,
        error: StateError,
        context: &mut Context,
    ) -> Result<usize, RunError> {
        let spec = self.inner.spec;
        let st = &spec.states[state];
        let unhandled = run.unhandled_action.take();
        context.insert("last_error".into(), Value::String(error.message.clone()));
        context.insert(
            "last_error_type".into(),
            Value::String(error.error_type.clone()),
        );
        let by_type = st
            .on_error
            .iter()
            .find(|(t, _)| *t == error.error_type)
            .or_else(|| st.on_error.iter().find(|(t, _)| *t == "default"));
        if let Some((_, to)) = by_type {
            tracing::warn!(machine = spec.name, execution_id = %run.execution_id, state = st.name, error = %error, to = spec.states[*to].name, "state failed; recovering via on_error");
            return Ok(*to);
        }
        let hook = if run.hooks_active {
            run.hooks
                .on_error(st.name, &error, context)
                .await
                .map_err(|e| self.hook_error(run, e))?
        } else {
            None
        };
        match hook {
            Some(target) => match spec.state(&target) {
                Some((i, _)) => Ok(i),
                None => Err(RunError::UnknownState {
                    machine: spec.name.to_string(),
                    execution_id: run.execution_id.clone(),
                    state: target,
                }),
            },
            None => match unhandled {
                Some(action) => Err(RunError::UnhandledAction {
                    machine: spec.name.to_string(),
                    execution_id: run.execution_id.clone(),
                    state: st.name.to_string(),
                    action: action.to_string(),
                }),
                None => Err(RunError::State {
                    machine: spec.name.to_string(),
                    execution_id: run.execution_id.clone(),
                    state: st.name.to_string(),
                    error,
                }),
            },
        }
    }

    /// Run one state's work in the reference's order. Returns the state's output.
    async fn execute_state(
        &self,
        run: &mut Run,
        index: usize,
        context: &mut Context,
    ) -> Result<Option<Value>, StateError> {
        let state = &self.inner.spec.states[index];
        let mut output = None;
        if let Some(action) = state.action {
            self.run_action(run, index, action, context).await?;
        }
        if !state.launch.is_empty() {
            self.launch(run, index, context).await?;
        }
        if !state.machine.is_empty() {
            let out = self.run_children(run, state, context).await?;
            self.output_to_context(state, context, &out)?;
            output = Some(out);
        }
        if let Some(agent) = state.agent {
            let input = self.render_state_input(state, context)?;
            let executor = self.executor(agent)?;
            let result = crate::agents::execution::execute(
                state.execution.as_ref(),
                executor.as_ref(),
                &input,
                context,
            )
            .await?;
            run.api_calls += result.api_calls;
            run.cost += result.cost;
            run.usage += result.usage;
            let out = result.into_output_payload();
            self.output_to_context(state, context, &out)?;
            output = Some(out);
        }
        if state.is_final
            && let Some(tv) = &state.output
        {
            let out = template::render_with(tv, &ScopeRef::new(context))?;
            output = Some(out);
        }
        Ok(output)
    }

    /// The executor for `agent:` in this machine: a closure registered under that name, else
    /// the adapter for the agent's type (built once, then cached).
    fn executor(&self, agent: &str) -> Result<Arc<dyn AgentExecutor>, StateError> {
        if let Some(f) = self.inner.agents.get(agent) {
            return Ok(Arc::new(ClosureExecutor::new(f.clone())));
        }
        let spec = self.inner.spec;
        let decl = spec.agents.iter().find(|a| a.name == agent).ok_or_else(|| {
            StateError::new(
                error_type::AGENT,
                format!(
                    "machine `{}` declares no agent `{agent}`: register one with `MachineBuilder::agent`",
                    spec.name
                ),
            )
        })?;
        let key = (spec as *const MachineSpec as usize, decl.name);
        let mut cache = self
            .inner
            .executors
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(e) = cache.get(&key) {
            return Ok(e.clone());
        }
        let adapter = self.inner.adapters.get(decl.kind).ok_or_else(|| {
            StateError::new(
                error_type::AGENT,
                format!(
                    "agent `{agent}` has type `{}`, which has no adapter; registered: {}",
                    decl.kind,
                    self.inner.adapters.names().join(", ")
                ),
            )
        })?;
        let env = AdapterEnv {
            machine: spec,
            llm: self.inner.llm.clone(),
        };
        let executor = adapter.create_executor(decl, &env)?;
        cache.insert(key, executor.clone());
        Ok(executor)
    }

    /// Runs `action:` through the first handler that takes it — a named handler, the hooks'
    /// `on_action`, the fallback — then tells the hooks (`on_action_done`). The handler
    /// changes the context in place, and its changes stay when it fails.
    async fn run_action(
        &self,
        run: &mut Run,
        index: usize,
        action: &'static str,
        context: &mut Context,
    ) -> Result<(), StateError> {
        let state = &self.inner.spec.states[index];
        // The run's call, updated in place (no handler keeps the `Arc`: `current()` copies).
        let mut call = match run.action_call.take() {
            Some(call) => call,
            None => Arc::new(ActionCall {
                action,
                machine: self.inner.spec.name,
                state: state.name,
                execution_id: run.execution_id.clone(),
                parent_execution_id: run.parent_execution_id.clone(),
                step: run.step,
            }),
        };
        {
            let c = Arc::make_mut(&mut call);
            c.action = action;
            c.state = state.name;
            c.step = run.step;
        }
        let hooks = run.hooks_active.then(|| run.hooks.clone());
        let handled = match self.state_action(index) {
            // A named handler (the usual case): its future runs in the scope directly.
            Some(f) => ActionCall::scope(call.clone(), f(context, &call))
                .await
                .map(|()| true),
            None => {
                ActionCall::scope(
                    call.clone(),
                    self.dispatch_action(hooks.as_deref(), &call, context),
                )
                .await
            }
        };
        let result = match handled {
            Ok(true) => Ok(()),
            Ok(false) if self.inner.ignore_unhandled_actions => {
                tracing::warn!(action, "unhandled action");
                Ok(())
            }
            Ok(false) => {
                run.unhandled_action = Some(action);
                Err(StateError::new(
                    error_type::UNHANDLED_ACTION,
                    format!(
                        "no handler for action `{action}`: register one with `MachineBuilder::action_mut` or `fallback_action`, or handle it in `MachineHooks::on_action`"
                    ),
                ))
            }
            Err(e) => Err(e),
        };
        if let Some(hooks) = hooks {
            hooks
                .on_action_done(&call, context, result.as_ref().err())
                .await;
        }
        run.action_call = Some(call);
        result
    }

    /// The named handler of the action of state `index` (the map is read once per machine).
    fn state_action(&self, index: usize) -> Option<&ActionFn> {
        self.inner
            .state_actions
            .get_or_init(|| {
                self.inner
                    .spec
                    .states
                    .iter()
                    .map(|s| s.action.and_then(|a| self.inner.actions.get(a).cloned()))
                    .collect()
            })
            .get(index)?
            .as_ref()
    }

    /// An action without a named handler: the hooks' `on_action`, then the fallback.
    async fn dispatch_action(
        &self,
        hooks: Option<&dyn MachineHooks>,
        call: &ActionCall,
        context: &mut Context,
    ) -> Result<bool, StateError> {
        if let Some(hooks) = hooks
            && hooks.on_action(call.action, context).await?.is_handled()
        {
            return Ok(true);
        }
        if let Some(f) = &self.inner.fallback {
            return Ok(f(call, context).await?.is_handled());
        }
        Ok(false)
    }

    fn render_state_input(
        &self,
        state: &StateSpec,
        context: &Context,
    ) -> Result<Value, StateError> {
        match &state.input {
            Some(tv) => Ok(template::render_with(tv, &ScopeRef::for_state(context))?),
            None => Ok(Value::Object(Context::new())),
        }
    }

    fn output_to_context(
        &self,
        state: &StateSpec,
        context: &mut Context,
        output: &Value,
    ) -> Result<(), StateError> {
        let Some(TemplateValue::Map(entries)) = &state.output_to_context else {
            return Ok(());
        };
        // Every value is rendered before the context changes, so updates do not affect
        // later templates.
        let scope = ScopeRef::for_state(context).with_output(output);
        let mut values = Vec::with_capacity(entries.len());
        for (key, tv) in entries.iter() {
            values.push((*key, template::render_with(tv, &scope)?));
        }
        drop(scope);
        for (key, value) in values {
            context.insert(key.to_string(), value);
        }
        Ok(())
    }

    /// The child machine `name`, sharing this machine's handlers and backends. It checkpoints
    /// into this machine's store (unless its own YAML says `persistence: {enabled: false}`),
    /// with its own `checkpoint_on` if it has one.
    fn child(&self, name: &str) -> Result<Machine, StateError> {
        let mut children = self
            .inner
            .children
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some((_, machine)) = children.iter().find(|(n, _)| *n == name) {
            return Ok(machine.clone());
        }
        let machine = self.new_child(name)?;
        if let Some(key) = self
            .inner
            .spec
            .machines
            .iter()
            .map(|(n, _)| *n)
            .find(|n| *n == name)
        {
            children.push((key, machine.clone()));
        }
        Ok(machine)
    }

    fn new_child(&self, name: &str) -> Result<Machine, StateError> {
        let spec = self.inner.spec;
        let child = spec.child(name).ok_or_else(|| {
            StateError::new(
                error_type::MACHINE,
                format!("machine `{}` has no child machine `{name}`", spec.name),
            )
        })?;
        let (store, checkpoint_on) = match &child.persistence {
            Some(p) if !p.enabled => (None, None),
            Some(p) => (
                self.inner.store.clone(),
                p.checkpoint_on
                    .map(|v| v.iter().map(|s| s.to_string()).collect())
                    .or_else(|| self.inner.checkpoint_on.clone()),
            ),
            None => (self.inner.store.clone(), self.inner.checkpoint_on.clone()),
        };
        Ok(Machine::from_inner(Inner {
            spec: child,
            hooks: None,
            registry: self.inner.registry.clone(),
            actions: self.inner.actions.clone(),
            fallback: self.inner.fallback.clone(),
            agents: self.inner.agents.clone(),
            adapters: self.inner.adapters.clone(),
            llm: self.inner.llm.clone(),
            executors: self.inner.executors.clone(),
            store,
            lock: self.inner.lock.clone(),
            checkpoint_on,
            max_steps: None,
            max_agent_calls: None,
            max_concurrency: self.inner.max_concurrency,
            ignore_unhandled_actions: self.inner.ignore_unhandled_actions,
            results: self.inner.results.clone(),
            launches: self.inner.launches.clone(),
            invoker: self.inner.invoker.clone(),
            children: std::sync::Mutex::default(),
            state_actions: std::sync::OnceLock::new(),
        }))
    }

    /// Runs the child `name` to completion through the invoker (a new execution id, this run
    /// as its parent).
    fn run_child(
        &self,
        run: &Run,
        name: &'static str,
        input: Value,
    ) -> BoxFuture<'static, Result<RunResult, StateError>> {
        let request = InvokeRequest {
            parent: self.clone(),
            machine: name,
            execution_id: child_execution_id(),
            parent_execution_id: Some(run.execution_id.clone()),
            input,
            resume: false,
        };
        let invoker = self.inner.invoker.clone();
        Box::pin(async move { invoker.invoke(request).await })
    }

    /// Starts (or, for `resume`, continues) a child run inside this process: what
    /// [`InProcessInvoker`] does.
    pub(crate) async fn run_child_in_process(
        &self,
        request: InvokeRequest,
    ) -> Result<RunResult, RunError> {
        let child = self.child(request.machine).map_err(|e| RunError::State {
            machine: self.inner.spec.name.to_string(),
            execution_id: request.parent_execution_id.clone().unwrap_or_default(),
            state: String::new(),
            error: e,
        })?;
        if request.resume
            && let Some(store) = child.store()
            && store
                .latest_checkpoint_key(&request.execution_id)
                .await?
                .is_some()
        {
            return child.resume(&request.execution_id).await;
        }
        child
            .start(
                request.execution_id,
                request.parent_execution_id,
                request.input,
                None,
            )
            .await
    }

    fn concurrency(&self) -> usize {
        self.inner
            .max_concurrency
            .or(self
                .inner
                .spec
                .max_concurrency
                .map(|n| usize::try_from(n).unwrap_or(usize::MAX)))
            .unwrap_or(super::DEFAULT_MAX_CONCURRENCY)
            .max(1)
    }

    /// `machine:` (one child, a list in parallel, or `foreach`).
    async fn run_children(
        &self,
        run: &mut Run,
        state: &'static StateSpec,
        context: &mut Context,
    ) -> Result<Value, StateError> {
        let base = ScopeRef::for_state(context);
        let cap = self.concurrency();
        if let Some(fe) = &state.foreach {
            let items = match template::render_with(fe, &base)? {
                Value::Array(items) => items,
                other => {
                    return Err(StateError::new(
                        error_type::TEMPLATE,
                        format!(
                            "foreach must yield a list, got {}",
                            crate::expr::type_name(&other)
                        ),
                    ));
                }
            };
            let name = state.machine[0].name;
            let mut inputs = Vec::with_capacity(items.len());
            let mut keys = Vec::new();
            for item in &items {
                let scope = base.clone().with_item(state.foreach_as, item);
                let input = match &state.input {
                    Some(tv) => template::render_with(tv, &scope)?,
                    None => Value::Object(Context::new()),
                };
                if let Some(k) = &state.key {
                    let key = match template::render_with(k, &scope)? {
                        Value::String(s) => s,
                        other => other.to_string(),
                    };
                    keys.push(key);
                }
                inputs.push(input);
            }
            if state.mode_any {
                let futures: Vec<_> = inputs
                    .into_iter()
                    .map(|input| self.run_child(run, name, input))
                    .collect();
                // The first child to finish wins; the others are cancelled (dropped).
                let Some((i, first)) = first_to_finish(futures, cap).await else {
                    return Ok(if state.key.is_some() {
                        Value::Object(Context::new())
                    } else {
                        Value::Array(Vec::new())
                    });
                };
                if let Ok(r) = &first {
                    run.add_child_totals(r);
                }
                let entry = child_entry(first);
                return Ok(match keys.get(i) {
                    Some(key) if state.key.is_some() => {
                        Value::Object(std::iter::once((key.clone(), entry)).collect())
                    }
                    _ => Value::Array(vec![entry]),
                });
            }
            // A child starts when a slot frees up (at most `cap` started at a time), and its
            // result is cut down to its entry as it arrives: a foreach over many items holds
            // the pending inputs and the entries, not every child's whole `RunResult`.
            let results: Vec<(Option<ChildTotals>, Value)> = futures::stream::iter(inputs)
                .map(|input| self.run_child(run, name, input))
                .buffered(cap)
                .map(|r| (r.as_ref().ok().map(ChildTotals::of), child_entry(r)))
                .collect()
                .await;
            let mut entries = Vec::with_capacity(results.len());
            for (totals, entry) in results {
                if let Some(totals) = totals {
                    run.add_totals(totals);
                }
                entries.push(entry);
            }
            if state.key.is_some() {
                return Ok(Value::Object(keys.into_iter().zip(entries).collect()));
            }
            return Ok(Value::Array(entries));
        }
        let shared_input = match &state.input {
            Some(tv) => template::render_with(tv, &base)?,
            None => Value::Object(Context::new()),
        };
        if !state.machine_list {
            let call = &state.machine[0];
            let result = self.run_child(run, call.name, shared_input).await?;
            run.add_child_totals(&result);
            return Ok(result.output);
        }
        let mut futures = Vec::new();
        for call in state.machine {
            let input = match &call.input {
                Some(tv) => template::render_with(tv, &base)?,
                None => shared_input.clone(),
            };
            futures.push(self.run_child(run, call.name, input));
        }
        if state.mode_any {
            // The first child to finish wins and is returned under its name (as the
            // reference does); the others are cancelled (dropped).
            let Some((i, first)) = first_to_finish(futures, cap).await else {
                return Ok(Value::Object(Context::new()));
            };
            if let Ok(r) = &first {
                run.add_child_totals(r);
            }
            let name = state.machine[i].name.to_string();
            return Ok(Value::Object(
                std::iter::once((name, child_entry(first))).collect(),
            ));
        }
        let results: Vec<_> = futures::stream::iter(futures).buffered(cap).collect().await;
        let mut out = Context::new();
        for (call, result) in state.machine.iter().zip(results) {
            if let Ok(r) = &result {
                run.add_child_totals(r);
            }
            out.insert(call.name.to_string(), child_entry(result));
        }
        Ok(Value::Object(out))
    }

    /// `launch:`: start children without waiting for them, through the outbox. For each
    /// child: record the intent in the checkpoint, start it, record it as launched.
    async fn launch(
        &self,
        run: &mut Run,
        index: usize,
        context: &mut Context,
    ) -> Result<(), StateError> {
        let state = &self.inner.spec.states[index];
        let input = match &state.launch_input {
            Some(tv) => template::render_with(tv, &ScopeRef::for_state(context))?,
            None => Value::Object(Context::new()),
        };
        let input_map = match &input {
            Value::Object(m) => m.clone(),
            _ => Context::new(),
        };
        // Launch ids are derived from (execution, step, state, position): a state re-entered
        // by `resume` derives the ids of the visit that crashed and finds its launches.
        let (origin, resumed) = match run.launch_origin {
            Some((i, step)) if i == index => (step, true),
            _ => (run.step, false),
        };
        for (i, name) in state.launch.iter().enumerate() {
            let id = launch_id(&run.execution_id, origin, state.name, i);
            let mut resume_child = false;
            if resumed {
                if run.pending_launches.iter().any(|p| p.execution_id == id)
                    || self.inner.launches.is_done(&id)
                {
                    // Recorded before the crash: `resume` already started it again.
                    continue;
                }
                // Started before the crash, then dropped from the outbox when it finished.
                if let Some(store) = &self.inner.store
                    && store.latest_checkpoint_key(&id).await?.is_some()
                {
                    resume_child = true;
                }
            }
            run.pending_launches
                .push(LaunchIntent::new(id.clone(), *name, input_map.clone()));
            self.record_launches(run, state).await?;
            self.spawn_launch(
                name,
                id.clone(),
                input.clone(),
                run.execution_id.clone(),
                resume_child,
            );
            if let Some(intent) = run
                .pending_launches
                .iter_mut()
                .find(|p| p.execution_id == id)
            {
                intent.launched = true;
            }
            self.record_launches(run, state).await?;
        }
        Ok(())
    }

    /// Starts a launched child as a task: it runs through the invoker, writes its result (or
    /// `{_error, _error_type}`) to `flatagents://{id}/result`, and is joined by
    /// [`join_launched`](Self::join_launched).
    fn spawn_launch(
        &self,
        machine: &str,
        execution_id: String,
        input: Value,
        parent: String,
        resume: bool,
    ) {
        let Some(name) = self
            .inner
            .spec
            .machines
            .iter()
            .map(|(n, _)| *n)
            .find(|n| *n == machine)
        else {
            tracing::error!(machine, "launch of an unknown child machine");
            return;
        };
        let request = InvokeRequest {
            parent: self.clone(),
            machine: name,
            execution_id: execution_id.clone(),
            parent_execution_id: Some(parent),
            input,
            resume,
        };
        let invoker = self.inner.invoker.clone();
        let results = self.inner.results.clone();
        let launches = self.inner.launches.clone();
        let id = execution_id.clone();
        let handle = tokio::spawn(async move {
            let outcome = invoker.invoke(request).await;
            let value = match &outcome {
                Ok(r) => r.output.clone(),
                Err(e) => serde_json::json!({"_error": e.message, "_error_type": e.error_type}),
            };
            if let Err(e) = results.write(&make_uri(&id, DEFAULT_PATH), value).await {
                tracing::error!(execution_id = %id, error = %e, "cannot write the launched machine's result");
            }
            launches.mark_done(&id);
            if let Err(e) = &outcome {
                tracing::error!(machine = name, execution_id = %id, error = %e, "launched machine failed");
            }
            outcome.map(|r| r.output)
        });
        self.inner.launches.push(LaunchTask {
            execution_id,
            machine: name.to_string(),
            handle,
        });
    }

    /// On resume: restore the outbox, start again every recorded launch whose child has no
    /// result yet, and remember which step's launches the re-entered state must not repeat.
    async fn restore_launches(&self, run: &mut Run, snap: &MachineSnapshot) {
        run.pending_launches = snap.pending_launches.clone().unwrap_or_default();
        for intent in &mut run.pending_launches {
            let uri = make_uri(&intent.execution_id, DEFAULT_PATH);
            if matches!(self.inner.results.exists(&uri).await, Ok(true)) {
                self.inner.launches.mark_done(&intent.execution_id);
                continue;
            }
            tracing::info!(machine = %intent.machine, execution_id = %intent.execution_id, "resuming launch");
            self.spawn_launch(
                &intent.machine,
                intent.execution_id.clone(),
                Value::Object(intent.input.clone()),
                run.execution_id.clone(),
                true,
            );
            intent.launched = true;
        }
        let event = snap.event.as_deref();
        if matches!(
            event,
            Some(checkpoint_event::EXECUTE) | Some(checkpoint_event::STATE_EXIT)
        ) && let Some((index, state)) = self.inner.spec.state(&snap.current_state)
            && !state.launch.is_empty()
        {
            let origin = self
                .launch_origin(&snap.execution_id, snap.step, state.name)
                .await;
            run.launch_origin = Some((index, origin));
        }
    }

    /// The step at which the visit of `state` that a resume continues began: earlier steps
    /// that entered the same state without leaving it were resumed visits of it too.
    async fn launch_origin(&self, execution_id: &str, step: u64, state: &str) -> u64 {
        let Some(store) = &self.inner.store else {
            return step;
        };
        let backend = store.backend();
        let mut origin = step;
        while origin > 1 {
            let k = origin - 1;
            let exit =
                crate::persistence::snapshot_key(execution_id, k, checkpoint_event::STATE_EXIT);
            if !matches!(backend.load(&exit).await, Ok(None)) {
                break;
            }
            let enter =
                crate::persistence::snapshot_key(execution_id, k, checkpoint_event::STATE_ENTER);
            match backend.load(&enter).await {
                Ok(Some(s)) if s.current_state == state => origin = k,
                _ => break,
            }
        }
        origin
    }
}

/// The action of a state whose only work is that action (what [`Machine::execute_state`] would
/// do for it is just [`Machine::run_action`]).
fn action_only(state: &StateSpec) -> Option<&'static str> {
    let only = state.launch.is_empty()
        && state.machine.is_empty()
        && state.agent.is_none()
        && !(state.is_final && state.output.is_some());
    if only { state.action } else { None }
}

/// A new execution id for a child run (`machine:`, `foreach`): a UUID (v4 layout) made from a
/// per-process random seed (one `getrandom`) and a counter, so a foreach over 1,000 items
/// makes no system call per child. Unique within the process (the counter goes through a
/// bijection), and across processes as far as the 128-bit random seeds differ.
fn child_execution_id() -> String {
    static SEED: std::sync::OnceLock<(u64, u64)> = std::sync::OnceLock::new();
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let (a, b) = *SEED.get_or_init(|| uuid::Uuid::new_v4().as_u64_pair());
    let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let mut bytes = [0u8; 16];
    bytes[..8].copy_from_slice(&splitmix64(a.wrapping_add(n)).to_be_bytes());
    bytes[8..].copy_from_slice(&splitmix64(b ^ n.rotate_left(32)).to_be_bytes());
    let mut text = [0u8; uuid::fmt::Hyphenated::LENGTH];
    uuid::Builder::from_random_bytes(bytes)
        .into_uuid()
        .hyphenated()
        .encode_lower(&mut text)
        .to_owned()
}

/// SplitMix64's finalizer: a bijection on `u64` that spreads every input bit.
fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The execution id of the `position`-th child launched by `state` at `step` of `parent`:
/// a UUID (v4 layout) derived from those four, so a resumed parent finds the launches it
/// recorded before a crash. FNV-1a over the parts, two independent 64-bit halves.
fn launch_id(parent: &str, step: u64, state: &str, position: usize) -> String {
    let mut text = Vec::new();
    for part in [
        parent.as_bytes(),
        &step.to_le_bytes(),
        state.as_bytes(),
        &(position as u64).to_le_bytes(),
    ] {
        text.extend_from_slice(&(part.len() as u64).to_le_bytes());
        text.extend_from_slice(part);
    }
    let fnv = |offset: u64| {
        text.iter().fold(offset, |h, b| {
            (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
        })
    };
    let hi = fnv(0xcbf2_9ce4_8422_2325);
    let lo = fnv(0x6c62_272e_07bb_0142);
    let mut bytes = [0u8; 16];
    bytes[..8].copy_from_slice(&hi.to_be_bytes());
    bytes[8..].copy_from_slice(&lo.to_be_bytes());
    uuid::Builder::from_random_bytes(bytes)
        .into_uuid()
        .to_string()
}

/// Runs at most `cap` of `futures` at a time and returns the first to finish with its
/// position; the rest are dropped (cancelled). `None` when there are none.
async fn first_to_finish<T: Send + 'static>(
    futures: Vec<BoxFuture<'static, T>>,
    cap: usize,
) -> Option<(usize, T)> {
    let tagged: Vec<BoxFuture<'static, (usize, T)>> = futures
        .into_iter()
        .enumerate()
        .map(|(i, f)| tag(i, f))
        .collect();
    futures::stream::iter(tagged)
        .buffer_unordered(cap)
        .next()
        .await
}

fn tag<T: Send + 'static>(i: usize, f: BoxFuture<'static, T>) -> BoxFuture<'static, (usize, T)> {
    Box::pin(async move { (i, f.await) })
}

/// A child's result as an entry of a parallel/foreach result: its output, or `{_error, _error_type}`.
fn child_entry(r: Result<RunResult, StateError>) -> Value {
    match r {
        Ok(res) => res.output,
        Err(e) => serde_json::json!({"_error": e.message, "_error_type": e.error_type}),
    }
}
