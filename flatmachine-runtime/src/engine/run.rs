//! Running a machine: the loop, error routing, checkpoints, resume.

use super::DEFAULT_MAX_STEPS;
use super::builder::MachineBuilder;
use super::handlers::{ActionFn, AgentFn};
use crate::agents::{
    AdapterEnv, AgentAdapterRegistry, AgentExecutor, ClosureExecutor, LlmBackend, Usage,
};
use crate::error::error_type;
use crate::hooks::{ActionOutcome, HooksRegistry, MachineHooks, NoopHooks};
use crate::lock::{ExecutionLock, LockError};
use crate::machine::{MachineDef, MachineSpec, StateSpec};
use crate::persistence::{CheckpointStore, MachineSnapshot, PersistenceError, checkpoint_event};
use crate::template::{self, Scope, TemplateValue};
use crate::{Context, StateError, Value};
use futures::future::BoxFuture;
use std::collections::HashMap;
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
    /// Agent calls made.
    pub total_api_calls: u64,
    /// Agent cost.
    pub total_cost: f64,
    /// Tokens used by agent calls in this run (not restored by `resume`: checkpoints hold
    /// only `total_api_calls` and `total_cost`, as the reference's do).
    pub usage: Usage,
    /// The context at the end.
    pub context: Context,
}

/// Why a run did not finish.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// A state failed and neither `on_error` nor the `on_error` hook recovered.
    #[error("machine `{machine}`: state `{state}` failed: {error}")]
    State {
        /// The machine.
        machine: String,
        /// The state.
        state: String,
        /// The error.
        error: StateError,
    },
    /// `max_steps` was reached before a final state.
    #[error(
        "machine `{machine}`: reached max_steps ({limit}) before a final state (next state: `{next}`)"
    )]
    MaxSteps {
        /// The machine.
        machine: String,
        /// The limit.
        limit: u64,
        /// The state that would have run next.
        next: String,
    },
    /// `max_agent_calls` was reached.
    #[error("machine `{machine}`: reached max_agent_calls ({limit}) in state `{state}`")]
    MaxAgentCalls {
        /// The machine.
        machine: String,
        /// The limit.
        limit: u64,
        /// The state the run was in.
        state: String,
    },
    /// A non-final state had no transition whose condition held.
    #[error("machine `{machine}`: no transition of state `{state}` matched, and it is not final")]
    NoTransition {
        /// The machine.
        machine: String,
        /// The state.
        state: String,
    },
    /// A hook redirected to, or a checkpoint named, a state the machine does not have.
    #[error("machine `{machine}`: unknown state `{state}`")]
    UnknownState {
        /// The machine.
        machine: String,
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
    #[error("machine `{machine}`: hook failed: {message}")]
    Hook {
        /// The machine.
        machine: String,
        /// What failed.
        message: String,
    },
    /// The initial context or final output could not be rendered.
    #[error("machine `{machine}`: {error}")]
    Template {
        /// The machine.
        machine: String,
        /// The error.
        error: StateError,
    },
}

impl RunError {
    /// The error as a state error (for a parent machine routing a child's failure).
    pub fn to_state_error(&self) -> StateError {
        match self {
            RunError::State { error, .. } => error.clone(),
            other => StateError::new(error_type::MACHINE, other.to_string()),
        }
    }
}

pub(crate) struct Inner {
    pub spec: &'static MachineSpec,
    pub hooks: Option<Arc<dyn MachineHooks>>,
    pub registry: Arc<HooksRegistry>,
    pub actions: Arc<HashMap<String, ActionFn>>,
    pub agents: Arc<HashMap<String, AgentFn>>,
    pub adapters: Arc<AgentAdapterRegistry>,
    pub llm: Arc<dyn LlmBackend>,
    pub executors: Arc<ExecutorCache>,
    pub store: Option<CheckpointStore>,
    pub lock: Arc<dyn ExecutionLock>,
    pub checkpoint_on: Option<Vec<String>>,
    pub max_steps: Option<u64>,
    pub max_agent_calls: Option<u64>,
    pub ignore_unhandled_actions: bool,
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

    /// Run with per-run options (execution id, `max_steps`).
    pub async fn run_with(&self, input: Value, options: RunOptions) -> Result<RunResult, RunError> {
        let id = options
            .execution_id
            .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
        self.start(id, None, input, options.max_steps).await
    }

    /// Blocking convenience for callers without an async runtime (the reference's `execute_sync`).
    ///
    /// Runs the machine on a new current-thread runtime. Called from inside an async runtime
    /// (where blocking on one would panic), the run goes to a helper thread and the calling thread
    /// blocks until it ends: prefer `run(input).await` there.
    pub fn run_blocking(&self, input: Value) -> Result<RunResult, RunError> {
        let block = move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| RunError::Hook {
                    machine: self.inner.spec.name.to_string(),
                    message: format!("cannot start a tokio runtime: {e}"),
                })?;
            rt.block_on(self.run(input))
        };
        if tokio::runtime::Handle::try_current().is_err() {
            return block();
        }
        std::thread::scope(|s| match s.spawn(block).join() {
            Ok(result) => result,
            Err(panic) => std::panic::resume_unwind(panic),
        })
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
    pub async fn resume(&self, execution_id: &str) -> Result<RunResult, RunError> {
        let spec = self.inner.spec;
        let store = self
            .inner
            .store
            .as_ref()
            .ok_or_else(|| RunError::UnknownExecution(execution_id.to_string()))?;
        crate::persistence::validate_execution_id(execution_id).map_err(PersistenceError::from)?;
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
        let mut run = Run {
            max_steps: None,
            execution_id: execution_id.to_string(),
            parent_execution_id: snap.parent_execution_id.clone(),
            step: snap.step,
            api_calls: snap.total_api_calls.unwrap_or(0),
            cost: snap.total_cost.unwrap_or(0.0),
            usage: Usage::default(),
            hooks: self.hooks_for_resume()?,
        };
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
            run.hooks
                .on_machine_start(&mut context)
                .await
                .map_err(|e| RunError::Hook {
                    machine: spec.name.to_string(),
                    message: e.to_string(),
                })?;
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

    fn hooks_for_resume(&self) -> Result<Arc<dyn MachineHooks>, RunError> {
        self.build_hooks(&Value::Object(Context::new()))
    }

    fn build_hooks(&self, input: &Value) -> Result<Arc<dyn MachineHooks>, RunError> {
        let spec = self.inner.spec;
        if let Some(h) = &self.inner.hooks {
            return Ok(h.clone());
        }
        let Some(hs) = &spec.hooks else {
            return Ok(Arc::new(NoopHooks));
        };
        let empty = Context::new();
        let scope = Scope::new(&empty).with_input(input);
        let args = match &hs.args {
            Some(a) => template::render(a, &scope).map_err(|e| RunError::Hook {
                machine: spec.name.to_string(),
                message: format!("rendering hooks args: {e}"),
            })?,
            None => Value::Object(Context::new()),
        };
        let args = match args {
            Value::Object(m) => m,
            _ => Context::new(),
        };
        self.inner
            .registry
            .build(hs.class, &args)
            .map_err(|e| RunError::Hook {
                machine: spec.name.to_string(),
                message: e.to_string(),
            })
    }

    async fn start(
        &self,
        execution_id: String,
        parent: Option<String>,
        input: Value,
        max_steps: Option<u64>,
    ) -> Result<RunResult, RunError> {
        let spec = self.inner.spec;
        crate::persistence::validate_execution_id(&execution_id).map_err(PersistenceError::from)?;
        let _guard = self.inner.lock.acquire(&execution_id).await?;
        if let Some(store) = &self.inner.store {
            store.clean_execution(&execution_id).await?;
        }
        let input = match input {
            Value::Null => Value::Object(Context::new()),
            v => v,
        };
        let hooks = self.build_hooks(&input)?;
        let mut run = Run {
            max_steps,
            execution_id,
            parent_execution_id: parent,
            step: 0,
            api_calls: 0,
            cost: 0.0,
            usage: Usage::default(),
            hooks,
        };
        let empty = Context::new();
        let mut context = match &spec.context {
            Some(tv) => match template::render(tv, &Scope::new(&empty).with_input(&input)) {
                Ok(Value::Object(m)) => m,
                Ok(_) => Context::new(),
                Err(e) => {
                    return Err(RunError::Template {
                        machine: spec.name.to_string(),
                        error: e.into(),
                    });
                }
            },
            None => Context::new(),
        };
        let initial_name = spec.states[spec.initial].name;
        self.checkpoint(&run, "machine_start", initial_name, &context, None)
            .await?;
        run.hooks
            .on_machine_start(&mut context)
            .await
            .map_err(|e| RunError::Hook {
                machine: spec.name.to_string(),
                message: e.to_string(),
            })?;
        self.run_loop(&mut run, context, spec.initial, Entry::Enter)
            .await
    }

    async fn checkpoint(
        &self,
        run: &Run,
        event: &str,
        state: &str,
        context: &Context,
        output: Option<&Value>,
    ) -> Result<(), RunError> {
        let Some(store) = &self.inner.store else {
            return Ok(());
        };
        if let Some(on) = &self.inner.checkpoint_on
            && !on.iter().any(|e| e == event)
        {
            return Ok(());
        }
        let spec = self.inner.spec;
        let mut snap = MachineSnapshot::new(
            &run.execution_id,
            spec.name,
            spec.spec_version,
            state,
            context.clone(),
            run.step,
        )
        .with_event(event);
        snap.output = output.map(|o| match o {
            Value::Object(m) => m.clone(),
            _ => Context::new(),
        });
        snap.total_api_calls = Some(run.api_calls);
        snap.total_cost = Some(run.cost);
        snap.parent_execution_id = run.parent_execution_id.clone();
        store.save(snap).await?;
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
        let machine = spec.name.to_string();
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
                        machine,
                        limit: max_steps,
                        next: state.name.to_string(),
                    });
                }
                if let Some(limit) = self.inner.max_agent_calls
                    && run.api_calls >= limit
                {
                    return Err(RunError::MaxAgentCalls {
                        machine,
                        limit,
                        state: state.name.to_string(),
                    });
                }
                run.step += 1;
                self.checkpoint(run, "state_enter", state.name, &context, None)
                    .await?;
            }
            if phase <= 1 {
                if let Err(e) = run.hooks.on_state_enter(state.name, &mut context).await {
                    current = self
                        .route_error(run, current, e.into(), &mut context)
                        .await?;
                    continue;
                }
                self.checkpoint(run, "execute", state.name, &context, None)
                    .await?;
            }
            let mut output = match resumed_output {
                Some(output) => output,
                None => {
                    let executed = match state.timeout.filter(|t| *t > 0.0) {
                        Some(secs) => {
                            // On timeout the state's work is dropped and the context is left
                            // as it was before the state ran.
                            let mut work_ctx = context.clone();
                            match tokio::time::timeout(
                                std::time::Duration::from_secs_f64(secs),
                                self.execute_state(run, state, &mut work_ctx),
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
                        None => self.execute_state(run, state, &mut context).await,
                    };
                    let output = match executed {
                        Ok(o) => o,
                        Err(e) => {
                            current = self.route_error(run, current, e, &mut context).await?;
                            continue;
                        }
                    };
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
                    output
                }
            };
            if let Err(e) = run
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
                self.checkpoint(run, "machine_end", "end", &context, Some(&final_output))
                    .await?;
                run.hooks
                    .on_machine_end(&context, &mut final_output)
                    .await
                    .map_err(|e| RunError::Hook {
                        machine: machine.clone(),
                        message: e.to_string(),
                    })?;
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
                        machine,
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
            let target = match run
                .hooks
                .on_transition(state.name, spec.states[next].name, &mut context)
                .await
            {
                Ok(t) => t,
                Err(e) => {
                    current = self
                        .route_error(run, current, e.into(), &mut context)
                        .await?;
                    continue;
                }
            };
            current = match spec.state(&target) {
                Some((i, _)) => i,
                None => {
                    return Err(RunError::UnknownState {
                        machine,
                        state: target,
                    });
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
            tracing::warn!(machine = spec.name, state = st.name, error = %error, to = spec.states[*to].name, "state failed; recovering via on_error");
            return Ok(*to);
        }
        let hook = run
            .hooks
            .on_error(st.name, &error, context)
            .await
            .map_err(|e| RunError::Hook {
                machine: spec.name.to_string(),
                message: e.to_string(),
            })?;
        match hook {
            Some(target) => match spec.state(&target) {
                Some((i, _)) => Ok(i),
                None => Err(RunError::UnknownState {
                    machine: spec.name.to_string(),
                    state: target,
                }),
            },
            None => Err(RunError::State {
                machine: spec.name.to_string(),
                state: st.name.to_string(),
                error,
            }),
        }
    }

    /// Run one state's work in the reference's order. Returns the state's output.
    async fn execute_state(
        &self,
        run: &mut Run,
        state: &'static StateSpec,
        context: &mut Context,
    ) -> Result<Option<Value>, StateError> {
        let mut output = None;
        if let Some(action) = state.action {
            self.run_action(run, action, context).await?;
        }
        if !state.launch.is_empty() {
            self.launch(run, state, context).await?;
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
            let out = result.output_payload();
            self.output_to_context(state, context, &out)?;
            output = Some(out);
        }
        if state.is_final
            && let Some(tv) = &state.output
        {
            let out = template::render(tv, &Scope::new(context))?;
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

    async fn run_action(
        &self,
        run: &mut Run,
        action: &str,
        context: &mut Context,
    ) -> Result<(), StateError> {
        if let Some(f) = self.inner.actions.get(action) {
            // The handler gets a copy: when it fails, the context is left as it was before the
            // action (the error route then adds `last_error`).
            *context = f(context.clone()).await?;
            return Ok(());
        }
        match run.hooks.on_action(action, context).await {
            Ok(ActionOutcome::Handled) => Ok(()),
            Ok(ActionOutcome::NotHandled) if self.inner.ignore_unhandled_actions => {
                tracing::warn!(action, "unhandled action");
                Ok(())
            }
            Ok(ActionOutcome::NotHandled) => Err(StateError::new(
                error_type::UNHANDLED_ACTION,
                format!(
                    "no handler for action `{action}`: register one with `MachineBuilder::action` or handle it in `MachineHooks::on_action`"
                ),
            )),
            Err(e) => Err(e.into()),
        }
    }

    fn render_state_input(
        &self,
        state: &StateSpec,
        context: &Context,
    ) -> Result<Value, StateError> {
        match &state.input {
            Some(tv) => Ok(template::render(tv, &Scope::for_state(context))?),
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
        // The scope holds its own copy, so updates below do not affect later templates.
        let scope = Scope::for_state(context).with_output(output);
        for (key, tv) in entries.iter() {
            let v = template::render(tv, &scope)?;
            context.insert((*key).to_string(), v);
        }
        Ok(())
    }

    fn child(&self, name: &str) -> Result<Machine, StateError> {
        let spec = self.inner.spec;
        let child = spec.child(name).ok_or_else(|| {
            StateError::new(
                error_type::MACHINE,
                format!("machine `{}` has no child machine `{name}`", spec.name),
            )
        })?;
        Ok(Machine::from_inner(Inner {
            spec: child,
            hooks: None,
            registry: self.inner.registry.clone(),
            actions: self.inner.actions.clone(),
            agents: self.inner.agents.clone(),
            adapters: self.inner.adapters.clone(),
            llm: self.inner.llm.clone(),
            executors: self.inner.executors.clone(),
            store: None,
            lock: Arc::new(crate::lock::NoOpLock),
            checkpoint_on: None,
            max_steps: None,
            max_agent_calls: None,
            ignore_unhandled_actions: self.inner.ignore_unhandled_actions,
        }))
    }

    fn run_child(
        &self,
        run: &Run,
        name: &str,
        input: Value,
    ) -> BoxFuture<'static, Result<RunResult, StateError>> {
        let child = self.child(name);
        let parent = run.execution_id.clone();
        Box::pin(async move {
            let child = child?;
            child
                .start(uuid::Uuid::new_v4().to_string(), Some(parent), input, None)
                .await
                .map_err(|e| e.to_state_error())
        })
    }

    /// `machine:` (one child, a list in parallel, or `foreach`).
    async fn run_children(
        &self,
        run: &mut Run,
        state: &'static StateSpec,
        context: &mut Context,
    ) -> Result<Value, StateError> {
        let base = Scope::for_state(context);
        if let Some(fe) = &state.foreach {
            let items = match template::render(fe, &base)? {
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
            let mut futures = Vec::new();
            let mut keys = Vec::new();
            for item in &items {
                let scope = base.clone().with_item(state.foreach_as, item);
                let input = match &state.input {
                    Some(tv) => template::render(tv, &scope)?,
                    None => Value::Object(Context::new()),
                };
                if let Some(k) = &state.key {
                    let key = match template::render(k, &scope)? {
                        Value::String(s) => s,
                        other => other.to_string(),
                    };
                    keys.push(key);
                }
                futures.push(self.run_child(run, name, input));
            }
            let results = futures::future::join_all(futures).await;
            let entries: Vec<Value> = results.into_iter().map(child_entry).collect();
            if state.key.is_some() {
                return Ok(Value::Object(keys.into_iter().zip(entries).collect()));
            }
            return Ok(Value::Array(entries));
        }
        let shared_input = match &state.input {
            Some(tv) => template::render(tv, &base)?,
            None => Value::Object(Context::new()),
        };
        if !state.machine_list {
            let call = &state.machine[0];
            let result = self.run_child(run, call.name, shared_input).await?;
            return Ok(result.output);
        }
        let mut futures = Vec::new();
        for call in state.machine {
            let input = match &call.input {
                Some(tv) => template::render(tv, &base)?,
                None => shared_input.clone(),
            };
            futures.push(self.run_child(run, call.name, input));
        }
        if state.mode_any {
            let (first, _, _) = futures::future::select_all(futures).await;
            let name = state.machine.first().map(|c| c.name).unwrap_or_default();
            let _ = name;
            return Ok(child_entry(first));
        }
        let results = futures::future::join_all(futures).await;
        Ok(Value::Object(
            state
                .machine
                .iter()
                .map(|c| c.name.to_string())
                .zip(results.into_iter().map(child_entry))
                .collect(),
        ))
    }

    /// `launch:`: start children without waiting for them.
    async fn launch(
        &self,
        run: &mut Run,
        state: &'static StateSpec,
        context: &mut Context,
    ) -> Result<(), StateError> {
        let input = match &state.launch_input {
            Some(tv) => template::render(tv, &Scope::for_state(context))?,
            None => Value::Object(Context::new()),
        };
        for name in state.launch {
            let fut = self.run_child(run, name, input.clone());
            let name = name.to_string();
            tokio::spawn(async move {
                if let Err(e) = fut.await {
                    tracing::error!(machine = %name, error = %e, "launched machine failed");
                }
            });
        }
        Ok(())
    }
}

/// A child's result as an entry of a parallel/foreach result: its output, or `{_error, _error_type}`.
fn child_entry(r: Result<RunResult, StateError>) -> Value {
    match r {
        Ok(res) => res.output,
        Err(e) => serde_json::json!({"_error": e.message, "_error_type": e.error_type}),
    }
}
