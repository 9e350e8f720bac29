//! A configured machine: its shared parts, starting a run, building its hooks.

use super::budget::{AgentCallBudget, RunTotals};
use super::builder::MachineBuilder;
use super::handlers::{ActionFn, AgentFn, FallbackActionFn};
use super::handover::{HandOffs, HandOver};
use super::invoker::MachineInvoker;
use super::launches::Launches;
use super::result::{RunError, RunFailure, RunOptions, RunResult};
use super::step::{Entry, Run};
use crate::agents::{AgentAdapterRegistry, AgentExecutor, LlmBackend};
use crate::events::{EventKind, RunEvents, RunStream};
use crate::hooks::{HooksFor, HooksRegistry, MachineHooks, NoopHooks};
use crate::lock::ExecutionLock;
use crate::machine::{MachineDef, MachineSpec};
use crate::persistence::{CheckpointStore, CheckpointWriter};
use crate::results::ResultBackend;
use crate::signals::SignalBackend;
use crate::template::{self, ScopeRef};
use crate::{Context, Value};
use std::collections::HashMap;
use std::sync::Arc;

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
    pub max_foreach_items: Option<usize>,
    pub max_concurrency: Option<usize>,
    pub ignore_unhandled_actions: bool,
    /// Rust tools registered on the builder, in registration order.
    pub rust_tools: Arc<Vec<Arc<dyn crate::tools::Tool>>>,
    /// Handlers of inline (YAML) tools, by tool name.
    pub tool_handlers: Arc<HashMap<String, crate::tools::HandlerFn>>,
    /// Most tool calls of one reply run at the same time.
    pub tool_concurrency: usize,
    pub results: Arc<dyn ResultBackend>,
    pub launches: Arc<Launches>,
    pub invoker: Arc<dyn MachineInvoker>,
    /// Whether `invoker` is the default [`InProcessInvoker`](super::InProcessInvoker):
    /// children then run here, through [`Machine::run_child_in_process`].
    pub default_invoker: bool,
    /// Child machines configured so far (built on first use, then shared by every run).
    pub children: std::sync::Mutex<Vec<(&'static str, Machine)>>,
    /// The named action handler of each state (by state index), looked up once.
    pub state_actions: std::sync::OnceLock<Box<[Option<ActionFn>]>>,
    /// Signals for `wait_for` states (shared with children).
    pub signals: Arc<dyn SignalBackend>,
    /// Whether checkpoints carry the machine's fingerprint (`config_hash`).
    pub write_config_hash: bool,
    /// Whether runs write trace records ([`crate::trace`]) to a store outside this process.
    pub trace: bool,
}

impl Inner {
    /// The fingerprint written into this machine's checkpoints, if any.
    pub(super) fn config_hash(&self) -> Option<&'static str> {
        (self.write_config_hash && !self.spec.config_hash.is_empty())
            .then_some(self.spec.config_hash)
    }

    /// The store trace records go to: the checkpoint store, when tracing is on and the store
    /// is not this process's memory.
    pub(super) fn trace_store(&self) -> Option<&CheckpointStore> {
        if !self.trace {
            return None;
        }
        self.store.as_ref().filter(|s| !s.backend().keeps_records())
    }
}

/// A compiled machine, configured and ready to run (cheap to clone).
#[derive(Clone)]
pub struct Machine {
    pub(super) inner: Arc<Inner>,
}

impl std::fmt::Debug for Machine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Machine")
            .field("spec", &self.inner.spec.name)
            .finish_non_exhaustive()
    }
}

/// The shared no-op hooks of runs whose machine has none (their calls are skipped).
pub(super) fn noop_hooks() -> Arc<dyn MachineHooks> {
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

    /// The signal backend of `wait_for` states (`settings.backends.signal`, or the one given
    /// to [`MachineBuilder::signal_backend`]); send signals through it.
    pub fn signal_backend(&self) -> &Arc<dyn SignalBackend> {
        &self.inner.signals
    }

    /// Run with a new execution id.
    pub async fn run(&self, input: Value) -> Result<RunResult, RunError> {
        self.run_with(input, RunOptions::new()).await
    }

    /// Run with a given execution id (it must be a plain name: no `/`, no `..`).
    pub async fn run_with_id(
        &self,
        execution_id: impl Into<String>,
        input: Value,
    ) -> Result<RunResult, RunError> {
        self.run_with(input, RunOptions::new().execution_id(execution_id))
            .await
    }

    /// Run with per-run options (execution id, parent execution id, `max_steps`,
    /// `max_agent_calls`, or resume).
    pub async fn run_with(&self, input: Value, options: RunOptions) -> Result<RunResult, RunError> {
        self.execute(input, options).await.map_err(|f| f.error)
    }

    /// Run (or, with [`RunOptions::resume_from`], resume) with per-run options, like the
    /// reference's `execute(input, max_steps, max_agent_calls, resume_from)`. On failure the
    /// [`RunFailure`] carries, besides the error, what the run left: its context at the
    /// failure and its totals (calls, cost, tokens) and steps.
    pub async fn execute(
        &self,
        input: Value,
        options: RunOptions,
    ) -> Result<RunResult, Box<RunFailure>> {
        let budget = AgentCallBudget::new(options.max_agent_calls.or(self.inner.max_agent_calls));
        if options.resume {
            let id = options.execution_id.unwrap_or_default();
            return self
                .resume_run(
                    &id,
                    options.max_steps,
                    budget,
                    options.allow_fingerprint_change,
                )
                .await;
        }
        let fresh = options.execution_id.is_none();
        let id = options
            .execution_id
            .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
        self.start(
            id,
            options.parent_execution_id,
            input,
            options.max_steps,
            budget,
            fresh,
            HandOffs::default(),
        )
        .await
    }

    /// Starts a run (or, with [`RunOptions::resume_from`], resumes one) as a task and returns
    /// the stream of its events as they happen, those of its children included (tagged with
    /// their execution ids), then its result ([`RunStream::result`]). Buffers
    /// [`events::DEFAULT_CAPACITY`](crate::events::DEFAULT_CAPACITY) events; see
    /// [`events`](crate::events) for what happens when the consumer is slow. Needs a tokio
    /// runtime.
    pub fn stream(&self, input: Value, options: RunOptions) -> RunStream {
        self.stream_with_capacity(input, options, crate::events::DEFAULT_CAPACITY)
    }

    /// [`stream`](Self::stream) with a buffer of `capacity` events (at least 1).
    pub fn stream_with_capacity(
        &self,
        input: Value,
        options: RunOptions,
        capacity: usize,
    ) -> RunStream {
        let machine = self.clone();
        RunStream::spawn(
            capacity,
            async move { machine.execute(input, options).await },
        )
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

    pub(super) fn hooks_for_resume(
        &self,
        execution_id: &str,
        parent: Option<String>,
    ) -> Result<Option<Arc<dyn MachineHooks>>, RunError> {
        self.build_hooks(&Value::Object(Context::new()), execution_id, parent, true)
    }

    pub(super) fn build_hooks(
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

    /// Whether the checkpoint store writes through a backend of the lock fencing domain
    /// `domain` (so its batches can take and release the lock).
    pub(super) fn shares_fencing_domain(&self, domain: Option<&str>) -> bool {
        match (&self.inner.store, domain) {
            (Some(store), Some(domain)) => {
                !store.backend().keeps_records()
                    && store.backend().fencing_domain().as_deref() == Some(domain)
            }
            _ => false,
        }
    }

    /// Starts a run: `budget` is the run tree's (a child shares its parent's). `fresh`: the
    /// execution id was just made up (no checkpoint can name it yet).
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn start(
        &self,
        execution_id: String,
        parent: Option<String>,
        input: Value,
        max_steps: Option<u64>,
        budget: AgentCallBudget,
        fresh: bool,
        hand_offs: HandOffs,
    ) -> Result<RunResult, Box<RunFailure>> {
        let early = |e: RunError| RunFailure::early(&execution_id, e);
        let spec = self.inner.spec;
        let writer = CheckpointWriter::new(&execution_id).map_err(|e| early(e.into()))?;
        // A fresh id no checkpoint names yet: a lock sharing the store's fencing domain is
        // taken by the first checkpoint, in the same round trip.
        let lock = &self.inner.lock;
        let guard = if fresh && self.shares_fencing_domain(lock.fencing_domain().as_deref()) {
            lock.acquire_fresh(&execution_id).await
        } else {
            lock.acquire(&execution_id).await
        }
        .map_err(|e| early(e.into()))?;
        if let Some(store) = &self.inner.store {
            store
                .clean_execution(&execution_id)
                .await
                .map_err(|e| early(e.into()))?;
        }
        let input = match input {
            Value::Null => Value::Object(Context::new()),
            v => v,
        };
        let limit = crate::agents::output::MAX_JSON_DEPTH;
        if crate::agents::output::value_depth(&input, limit) > limit {
            return Err(early(RunError::Template {
                machine: spec.name.to_string(),
                execution_id: execution_id.clone(),
                error: crate::StateError::new(
                    "ValueError",
                    format!(
                        "the run's input nests arrays/objects more than {limit} levels deep (the limit for values entering a run)"
                    ),
                ),
            }));
        }
        let hooks = self
            .build_hooks(&input, &execution_id, parent.clone(), false)
            .map_err(early)?;
        let mut run = Run::new(writer, parent, hooks, max_steps, budget);
        run.fencing_token = guard.fencing_token();
        run.store_hold = guard
            .store_hold()
            .filter(|h| self.shares_fencing_domain(Some(h.domain())))
            .cloned();
        run.config_hash = self.inner.config_hash();
        run.events =
            RunEvents::for_run(&execution_id, run.parent_execution_id.as_deref(), spec.name);
        let accepted = |h: &HandOver| self.inner.store.as_ref().is_some_and(|s| h.accepts(s));
        run.hand_over = hand_offs.to_parent.filter(accepted);
        run.inherited = hand_offs.from_parent.filter(accepted);
        let empty = Context::new();
        let mut context = match &spec.context {
            Some(tv) => {
                match template::render_with(tv, &ScopeRef::new(&empty).with_input(&input)) {
                    Ok(Value::Object(m)) => m,
                    Ok(_) => Context::new(),
                    Err(e) => {
                        return Err(early(RunError::Template {
                            machine: spec.name.to_string(),
                            execution_id: run.execution_id.clone(),
                            error: e.into(),
                        }));
                    }
                }
            }
            None => Context::new(),
        };
        if self.inner.trace_store().is_some() {
            // Saved with the first checkpoint (no round trip of its own), else at the end.
            match crate::trace::graph_text(&run.execution_id, spec) {
                Ok(text) => run.pending_texts.push(text),
                Err(e) => {
                    tracing::warn!(execution_id = %run.execution_id, error = %e, "cannot write the machine's graph");
                }
            }
        }
        let live = run.live.clone();
        let events = run.events.clone();
        let ran = RunEvents::scope(
            events,
            RunTotals::scope(live, async {
                run.emit(|| EventKind::MachineStart { resumed: false })
                    .await;
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
                self.run_loop(&mut run, &mut context, spec.initial, Entry::Enter)
                    .await
            }),
        )
        .await;
        run.tools.close().await;
        match &run.hand_over {
            // Its lock is released when the parent saves the batch.
            Some(hand_over) if run.handed_over => hand_over.keep_guard(&run.execution_id, guard),
            _ => drop(guard),
        }
        if let Err(error) = &ran {
            self.trace_failure(&mut run, error).await;
        }
        let outcome = ran.map_err(|error| run.failure(error, context));
        run.emit(|| crate::events::machine_finished(&outcome)).await;
        outcome
    }

    pub(super) fn hook_error(&self, run: &Run, e: impl std::fmt::Display) -> RunError {
        RunError::Hook {
            machine: self.inner.spec.name.to_string(),
            execution_id: run.execution_id.clone(),
            message: e.to_string(),
        }
    }
}
