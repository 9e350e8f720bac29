//! Configuring a [`Machine`] before running it.

use super::handlers::{ActionCall, ActionFn, AgentFn, AgentOutput, FallbackActionFn};
use super::invoker::{InProcessInvoker, MachineInvoker};
use super::machine::{Inner, Machine};
use crate::agents::{AgentAdapter, AgentAdapterRegistry, LlmBackend};
use crate::hooks::{ActionOutcome, HooksRegistry, MachineHooks};
use crate::lock::{ExecutionLock, LocalFileLock, NoOpLock};
use crate::machine::MachineSpec;
use crate::persistence::CheckpointStore;
use crate::results::{InMemoryResultBackend, ResultBackend};
use crate::signals::SignalBackend;
use crate::tools::{HandlerFn, Tool, ToolError, ToolInvocation, ToolOutput, Typed, TypedTool};
use crate::{Context, StateError, Value};
use futures::future::BoxFuture;
use std::collections::HashMap;
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;

/// Why a machine could not be built.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum BuildError {
    /// The YAML names a hooks class that is not in the registry.
    #[error("machine `{machine}`: hooks class `{class}` is not registered{}; registered: {}", .suggestion.as_ref().map(|s| format!(" (did you mean `{s}`?)")).unwrap_or_default(), if .registered.is_empty() { "(none)".to_string() } else { .registered.join(", ") })]
    UnknownHooksClass {
        /// The machine.
        machine: String,
        /// The class name.
        class: String,
        /// What is registered.
        registered: Vec<String>,
        /// The closest registered name.
        suggestion: Option<String>,
    },
    /// The Rust tools registered on the builder are not the ones the machine declared to the
    /// compiler (`flatmachine!("m.yml", tools = [..])`), or an inline tool handler names no
    /// inline tool.
    #[error("machine `{machine}`: {message}")]
    Tools {
        /// The machine.
        machine: String,
        /// What does not match, and how to fix it.
        message: String,
    },
    /// The YAML names a persistence backend this runtime does not have.
    #[error(
        "machine `{machine}`: persistence backend `{backend}` is not available (use `memory`, `local`, `sqlite` (cargo feature `sqlite`) or `redis` (cargo feature `redis`), or pass a store to the builder)"
    )]
    UnknownBackend {
        /// The machine.
        machine: String,
        /// The backend name.
        backend: String,
    },
    /// States use actions or agents that nothing was given to run (no named handler, no
    /// fallback, no hooks; no closure or adapter for an agent).
    #[error("{}", super::required::message(.machine, .missing))]
    MissingHandlers {
        /// The machine being built.
        machine: String,
        /// Every action and agent without a handler, in state order (children after their
        /// parent).
        missing: Vec<super::required::MissingHandler>,
    },
    /// A backend the YAML names could not be set up.
    #[error("machine `{machine}`: {message}")]
    Backend {
        /// The machine.
        machine: String,
        /// What went wrong.
        message: String,
    },
    /// `build_typed::<M>()` / `TypedMachine::<M>::new` on a machine not built from `M`.
    #[error(
        "machine `{machine}` cannot run with the types of machine `{typed}`: build it with `Machine::of::<M>()`, `M` being the `Machine` generated for `{typed}`"
    )]
    NotThisMachine {
        /// The machine that was built.
        machine: String,
        /// The machine whose types were asked for.
        typed: String,
    },
}

/// Builds a [`Machine`]: `Machine::builder(&my_machine::SPEC).action(..).build()?`.
pub struct MachineBuilder {
    pub(crate) spec: &'static MachineSpec,
    hooks: Option<Arc<dyn MachineHooks>>,
    registry: HooksRegistry,
    actions: HashMap<String, ActionFn>,
    fallback: Option<FallbackActionFn>,
    results: Option<Arc<dyn ResultBackend>>,
    max_concurrency: Option<usize>,
    invoker: Option<Arc<dyn MachineInvoker>>,
    agents: HashMap<String, AgentFn>,
    adapters: AgentAdapterRegistry,
    llm: Option<Arc<dyn LlmBackend>>,
    endpoints: crate::agents::EndpointOverrides,
    store: Option<Option<CheckpointStore>>,
    lock: Option<Arc<dyn ExecutionLock>>,
    max_steps: Option<u64>,
    max_agent_calls: Option<u64>,
    max_foreach_items: Option<usize>,
    ignore_unhandled_actions: bool,
    rust_tools: Vec<Arc<dyn Tool>>,
    tool_handlers: HashMap<String, HandlerFn>,
    tool_concurrency: usize,
    checkpoint_dir: PathBuf,
    lock_dir: PathBuf,
    keep_last: Option<usize>,
    signals: Option<Arc<dyn SignalBackend>>,
    write_config_hash: bool,
    trace: bool,
    keep_finished: Option<Option<usize>>,
    checkpoint_on: Option<Vec<String>>,
}

impl MachineBuilder {
    pub(crate) fn new(spec: &'static MachineSpec) -> Self {
        Self {
            spec,
            hooks: None,
            registry: HooksRegistry::new(),
            actions: HashMap::new(),
            fallback: None,
            results: None,
            max_concurrency: None,
            invoker: None,
            agents: HashMap::new(),
            adapters: AgentAdapterRegistry::new(),
            llm: None,
            endpoints: crate::agents::EndpointOverrides::new(),
            store: None,
            lock: None,
            max_steps: None,
            max_agent_calls: None,
            max_foreach_items: None,
            ignore_unhandled_actions: false,
            rust_tools: Vec::new(),
            tool_handlers: HashMap::new(),
            tool_concurrency: super::DEFAULT_TOOL_CONCURRENCY,
            checkpoint_dir: PathBuf::from(".checkpoints"),
            lock_dir: PathBuf::from(".locks"),
            keep_last: None,
            signals: None,
            write_config_hash: true,
            trace: true,
            keep_finished: None,
            checkpoint_on: None,
        }
    }

    /// Hooks for this machine (replaces the YAML `hooks:` class).
    pub fn hooks(mut self, hooks: Arc<dyn MachineHooks>) -> Self {
        self.hooks = Some(hooks);
        self
    }

    /// The registry YAML `hooks: {class}` names resolve through (for this machine and children).
    pub fn hooks_registry(mut self, registry: HooksRegistry) -> Self {
        self.registry = registry;
        self
    }

    /// Handle `action: name` with an async closure that changes the context in place:
    ///
    /// ```ignore
    /// builder.action_mut("count", |ctx, call| Box::pin(async move {
    ///     let n = ctx.get("n").and_then(Value::as_i64).unwrap_or(0);
    ///     ctx.insert("n".into(), (n + 1).into());
    ///     tracing::info!(machine = call.machine, state = call.state, "counted");
    ///     Ok(())
    /// }))
    /// ```
    ///
    /// What the closure wrote stays in the context **also when it then returns an error**
    /// (the reference's behaviour; the same for every kind of action handler). `call` says
    /// which action, machine, state and execution is running it: child machines use their
    /// parent's handlers.
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

    /// Handle `action: name` with an async closure that takes the context by value and returns
    /// the new one.
    ///
    /// The closure owns its copy of the context, so when it fails it has nothing to give
    /// back: the changes it made are lost, unlike every other kind of action handler (whose
    /// changes stay). Kept so existing code compiles; use
    /// [`action_mut`](Self::action_mut) instead.
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

    /// A catch-all handler for applications that dispatch actions themselves: called for every
    /// action with no named handler that no hook's `on_action` handled, with the
    /// [`ActionCall`] (its `action` is the name) and the context. Return
    /// [`ActionOutcome::NotHandled`] to report the action as unhandled.
    pub fn fallback_action<F>(mut self, f: F) -> Self
    where
        F: for<'a> Fn(
                &'a ActionCall,
                &'a mut Context,
            ) -> BoxFuture<'a, Result<ActionOutcome, StateError>>
            + Send
            + Sync
            + 'static,
    {
        self.fallback = Some(Arc::new(f));
        self
    }

    /// Where child machines write their results (`flatagents://{execution_id}/result`) and
    /// callers read them back (default: one [`InMemoryResultBackend`] per built machine, shared
    /// with its children). Launched children always write their result here.
    pub fn result_backend(mut self, backend: Arc<dyn ResultBackend>) -> Self {
        self.results = Some(backend);
        self
    }

    /// How child machines run (default: [`InProcessInvoker`], tasks in this process sharing
    /// this machine's handlers and backends).
    pub fn invoker(mut self, invoker: Arc<dyn MachineInvoker>) -> Self {
        self.invoker = Some(invoker);
        self
    }

    /// Most child machines one `foreach` or `machine: [..]` state runs at the same time
    /// (overrides `settings.max_concurrency`; default
    /// [`DEFAULT_MAX_CONCURRENCY`](super::DEFAULT_MAX_CONCURRENCY)). Children past the cap
    /// wait for a slot; results keep the input order. `0` is treated as `1`.
    pub fn max_concurrency(mut self, n: usize) -> Self {
        self.max_concurrency = Some(n.max(1));
        self
    }

    /// Serve `agent: name` with an async closure over the rendered input and the context.
    pub fn agent<F, Fut>(mut self, name: impl Into<String>, f: F) -> Self
    where
        F: Fn(Value, Context) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<AgentOutput, StateError>> + Send + 'static,
    {
        self.agents.insert(
            name.into(),
            Arc::new(move |input, ctx| Box::pin(f(input, ctx))),
        );
        self
    }

    /// The model service flatagents call (default: the built-in providers chosen by each
    /// agent's `provider` — OpenAI-compatible or Anthropic, with the `openai`/`anthropic`
    /// features — keys from the environment). Pass a
    /// [`ScriptedBackend`](crate::agents::ScriptedBackend) to run offline.
    pub fn llm_backend(mut self, backend: Arc<dyn LlmBackend>) -> Self {
        self.llm = Some(backend);
        self
    }

    /// Sends every flatagent's calls to `base_url` (an OpenAI-compatible `.../v1` or an
    /// Anthropic root, as the agent's provider speaks), whatever the profiles compiled in.
    /// [`profile_base_url`](Self::profile_base_url) beats it; both beat the environment
    /// (`$FLATMACHINE_BASE_URL`, `$FLATMACHINE_BASE_URL_<PROFILE>`). See
    /// [`agents::endpoints`](crate::agents::endpoints) for the whole order.
    pub fn base_url(mut self, base_url: impl Into<String>) -> Self {
        self.endpoints = std::mem::take(&mut self.endpoints).global(base_url);
        self
    }

    /// Sends the calls of flatagents using model profile `profile` to `base_url`.
    pub fn profile_base_url(
        mut self,
        profile: impl Into<String>,
        base_url: impl Into<String>,
    ) -> Self {
        self.endpoints = std::mem::take(&mut self.endpoints).profile(profile, base_url);
        self
    }

    /// Adds an adapter for agents declared as `{type: <name>, ref, config}` (replaces one of the
    /// same type; `flatagent` and `subprocess` are built in).
    pub fn agent_adapter(mut self, adapter: Arc<dyn AgentAdapter>) -> Self {
        self.adapters.register(adapter);
        self
    }

    /// Checkpoint into this store (overrides the YAML `persistence:` section). A store on
    /// files (one whose backend reports a [`file_path`](crate::persistence::PersistenceBackend::file_path),
    /// like [`CheckpointStore::local`]) gets the same file lock in [`lock_dir`](Self::lock_dir)
    /// as `backend: local`, unless [`lock`](Self::lock) sets another.
    pub fn persistence(mut self, store: CheckpointStore) -> Self {
        self.store = Some(Some(store));
        self
    }

    /// Do not checkpoint at all.
    pub fn no_persistence(mut self) -> Self {
        self.store = Some(None);
        self
    }

    /// Directory for `persistence: {backend: local}` (default `.checkpoints`); with
    /// `backend: sqlite` the database is `checkpoints.sqlite` in it, unless
    /// `settings.backends.sqlite_path` names a file.
    pub fn checkpoint_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.checkpoint_dir = dir.into();
        self
    }

    /// Directory for lock files with the local backend (default `.locks`).
    pub fn lock_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.lock_dir = dir.into();
        self
    }

    /// Keep only the newest `n` checkpoints of each execution.
    pub fn keep_last_checkpoints(mut self, n: usize) -> Self {
        self.keep_last = Some(n);
        self
    }

    /// Retention of finished executions: when a run ends, delete all but its newest `n`
    /// checkpoints (`None`: keep everything). Default: keep everything, except for worker
    /// machines (a state runs `claim_job`), which keep 1 — see
    /// [`CheckpointStore::with_keep_finished`].
    pub fn keep_finished_checkpoints(mut self, n: Option<usize>) -> Self {
        self.keep_finished = Some(n);
        self
    }

    /// Checkpoint only at these events (overrides the YAML's `persistence.checkpoint_on` and
    /// the worker-machine default); `checkpoint_event::ALL` for every event.
    pub fn checkpoint_on<I, S>(mut self, events: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.checkpoint_on = Some(events.into_iter().map(Into::into).collect());
        self
    }

    /// The execution lock (default: a [`LocalFileLock`] in [`lock_dir`](Self::lock_dir) when
    /// checkpoints go to files — `backend: local` or a file store passed to
    /// [`persistence`](Self::persistence) — else [`NoOpLock`]).
    pub fn lock(mut self, lock: Arc<dyn ExecutionLock>) -> Self {
        self.lock = Some(lock);
        self
    }

    /// Most state visits in one run (overrides `settings.max_steps`).
    pub fn max_steps(mut self, n: u64) -> Self {
        self.max_steps = Some(n);
        self
    }

    /// Most agent calls in one run tree: a run and every child it starts share one budget,
    /// checked before every call (concurrent children reserve atomically; see
    /// [`AgentCallBudget`](super::AgentCallBudget)). The call that would pass it is not made
    /// and the run fails with `RunError::MaxAgentCalls`; a run that needs no more calls than
    /// the limit finishes. `RunOptions::max_agent_calls` overrides it per run. Default:
    /// unlimited.
    pub fn max_agent_calls(mut self, n: u64) -> Self {
        self.max_agent_calls = Some(n);
        self
    }

    /// Most items one `foreach:` may yield (default
    /// [`DEFAULT_MAX_FOREACH_ITEMS`](super::DEFAULT_MAX_FOREACH_ITEMS)): past it the state
    /// fails with a `ForeachLimitError` (routable by `on_error`) before any child starts.
    /// Applies to child machines too.
    pub fn max_foreach_items(mut self, n: usize) -> Self {
        self.max_foreach_items = Some(n);
        self
    }

    /// Where `wait_for` states find their signals and register as waiters (overrides
    /// `settings.backends.signal`; default: what the YAML names, else one
    /// [`MemorySignalBackend`](crate::signals::MemorySignalBackend) per built machine, shared
    /// with its children).
    pub fn signal_backend(mut self, backend: Arc<dyn SignalBackend>) -> Self {
        self.signals = Some(backend);
        self
    }

    /// Whether checkpoints carry the machine's fingerprint, `config_hash` (default `true`).
    /// Without it they are byte-identical to the reference 1.0.0's (whose loader refuses
    /// fields it does not know), but `resume` cannot tell a checkpoint of another build's
    /// shape from one of this build's. See `docs/signals.md`.
    pub fn write_config_hash(mut self, yes: bool) -> Self {
        self.write_config_hash = yes;
        self
    }

    /// Whether runs write trace records beside their checkpoints (default `true`): each agent
    /// call's prompts, reply, usage and latency, state errors with their route, failures, and
    /// the machine's graph, for the console (`docs/console.md`). Only stores outside this
    /// process (files, SQLite, Redis) get them. See [`crate::trace`].
    pub fn trace(mut self, yes: bool) -> Self {
        self.trace = yes;
        self
    }

    /// Treat an `action:` no handler accepts as a no-op (the reference's behaviour) instead of an
    /// `UnhandledActionError`.
    pub fn ignore_unhandled_actions(mut self, yes: bool) -> Self {
        self.ignore_unhandled_actions = yes;
        self
    }

    /// Offers a Rust tool to every `tool_loop` state of this machine and its children (a
    /// state's `allowed_tools` / `denied_tools` narrow it down). Its name must be declared to
    /// the compiler, `flatmachine!("m.yml", tools = [name, ..])`, and must not be the name of
    /// an inline tool; [`build`](Self::build) checks both. See [`tools::tool_fn`](crate::tools::tool_fn)
    /// for a closure over a typed argument.
    pub fn tool(mut self, tool: impl Tool + 'static) -> Self {
        self.rust_tools.push(Arc::new(tool));
        self
    }

    /// [`tool`](Self::tool) for a [`TypedTool`] (a type with its argument struct, name and
    /// description).
    pub fn typed_tool(self, tool: impl TypedTool) -> Self {
        self.tool(Typed::new(tool))
    }

    /// Implements the inline tool `name` (defined in an agent's `tools:`) with an async
    /// closure over its arguments (already checked against the tool's `parameters` schema) and
    /// the [`ToolInvocation`]. An `Err` goes back to the model as an error result.
    pub fn tool_handler<F, Fut, O>(mut self, name: impl Into<String>, f: F) -> Self
    where
        F: Fn(Value, ToolInvocation) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<O, ToolError>> + Send + 'static,
        O: Into<ToolOutput>,
    {
        let f = Arc::new(f);
        self.tool_handlers.insert(
            name.into(),
            Arc::new(move |args, invocation| {
                let fut = f(args, invocation);
                Box::pin(async move { fut.await.map(Into::into) })
            }),
        );
        self
    }

    /// Most tool calls of one model reply run at the same time (default
    /// [`DEFAULT_TOOL_CONCURRENCY`](super::DEFAULT_TOOL_CONCURRENCY); `0` is treated as `1`).
    pub fn tool_concurrency(mut self, n: usize) -> Self {
        self.tool_concurrency = n.max(1);
        self
    }

    /// Check the configuration and build the machine: the hooks classes the YAML names are
    /// registered, the persistence backend exists, and every `action:` and `agent:` of the
    /// machine and its children has something to run it (a named handler, the generated
    /// `Actions` trait, a fallback, hooks, or [`ignore_unhandled_actions`](Self::ignore_unhandled_actions)
    /// for actions; a flatagent config, a closure or a registered adapter for agents) —
    /// otherwise [`BuildError::MissingHandlers`] lists what is missing.
    pub fn build(self) -> Result<Machine, BuildError> {
        self.with_redis_from_yaml()?.build_checked()
    }

    fn build_checked(self) -> Result<Machine, BuildError> {
        let spec = self.spec;
        // Hooks given in Rust replace the root machine's YAML class; children still resolve
        // theirs through the registry, so check those either way.
        check_hooks_classes(spec, &self.registry, self.hooks.is_some(), &mut Vec::new())?;
        check_tools(spec, &self.rust_tools, &self.tool_handlers)?;
        let missing = super::required::missing_handlers(
            spec,
            &super::required::Available {
                actions: &self.actions,
                agents: &self.agents,
                adapters: &self.adapters,
                catch_all_actions: self.fallback.is_some() || self.ignore_unhandled_actions,
                root_hooks: self.hooks.is_some(),
            },
        );
        if !missing.is_empty() {
            return Err(BuildError::MissingHandlers {
                machine: spec.name.to_string(),
                missing,
            });
        }
        let (store, lock) = match (self.store, &spec.persistence) {
            (Some(store), _) => {
                // A store on files gets the same file lock as `backend: local`; a store in
                // memory (one process) needs none.
                let on_files = store
                    .as_ref()
                    .is_some_and(|s| s.backend().file_path("lock-probe").is_some());
                let lock = self.lock.unwrap_or_else(|| {
                    if on_files {
                        Arc::new(LocalFileLock::new(self.lock_dir.clone()))
                    } else {
                        Arc::new(NoOpLock)
                    }
                });
                (
                    store.map(|s| match self.keep_last {
                        Some(n) => s.with_keep_last(Some(n)),
                        None => s,
                    }),
                    lock,
                )
            }
            (None, Some(p)) if !p.enabled => {
                (None, self.lock.unwrap_or_else(|| Arc::new(NoOpLock)))
            }
            (None, Some(p)) if p.backend == "local" => (
                Some(
                    CheckpointStore::local(self.checkpoint_dir.clone())
                        .with_keep_last(self.keep_last),
                ),
                self.lock
                    .unwrap_or_else(|| Arc::new(LocalFileLock::new(self.lock_dir.clone()))),
            ),
            #[cfg(feature = "sqlite")]
            (None, Some(p)) if p.backend == "sqlite" => {
                let path = match spec.backends.and_then(|b| b.sqlite_path) {
                    Some(path) => PathBuf::from(path),
                    None => self.checkpoint_dir.join("checkpoints.sqlite"),
                };
                let store = CheckpointStore::sqlite(&path).map_err(|e| BuildError::Backend {
                    machine: spec.name.to_string(),
                    message: format!("could not open its checkpoint store: {e}"),
                })?;
                (
                    Some(store.with_keep_last(self.keep_last)),
                    self.lock
                        .unwrap_or_else(|| Arc::new(LocalFileLock::new(self.lock_dir.clone()))),
                )
            }
            (None, Some(p)) if p.backend == "memory" => (
                Some(CheckpointStore::memory().with_keep_last(self.keep_last)),
                self.lock.unwrap_or_else(|| Arc::new(NoOpLock)),
            ),
            (None, Some(p)) => {
                return Err(BuildError::UnknownBackend {
                    machine: spec.name.to_string(),
                    backend: p.backend.to_string(),
                });
            }
            (None, None) => (
                Some(CheckpointStore::memory().with_keep_last(self.keep_last)),
                self.lock.unwrap_or_else(|| Arc::new(NoOpLock)),
            ),
        };
        let signals = match self.signals {
            Some(s) => s,
            None => crate::signals::for_machine(spec).map_err(|e| BuildError::Backend {
                machine: spec.name.to_string(),
                message: format!("could not open its signal backend: {e}"),
            })?,
        };
        // Worker machines checkpoint less and keep only their final checkpoint by default
        // (see `distributed::WORKER_CHECKPOINT_ON`).
        let worker = crate::distributed::is_worker_machine(spec);
        let checkpoint_on = self.checkpoint_on.or_else(|| {
            spec.persistence
                .as_ref()
                .and_then(|p| p.checkpoint_on)
                .map(|v| v.iter().map(|s| s.to_string()).collect())
                .or_else(|| {
                    worker.then(|| {
                        crate::distributed::WORKER_CHECKPOINT_ON
                            .iter()
                            .map(|s| s.to_string())
                            .collect()
                    })
                })
        });
        let keep_finished = self
            .keep_finished
            .unwrap_or_else(|| worker.then_some(crate::distributed::WORKER_KEEP_FINISHED));
        let store = store.map(|s| match (keep_finished, s.keep_finished()) {
            (Some(n), None) => s.with_keep_finished(Some(n)),
            _ => s,
        });
        Ok(Machine::from_inner(Inner {
            spec,
            hooks: self.hooks,
            registry: Arc::new(self.registry),
            actions: Arc::new(self.actions),
            fallback: self.fallback,
            results: self
                .results
                .unwrap_or_else(|| Arc::new(InMemoryResultBackend::new())),
            max_concurrency: self.max_concurrency,
            launches: Arc::default(),
            default_invoker: self.invoker.is_none(),
            invoker: self.invoker.unwrap_or_else(|| Arc::new(InProcessInvoker)),
            agents: Arc::new(self.agents),
            adapters: Arc::new(self.adapters),
            llm: self
                .endpoints
                .wrap(self.llm.unwrap_or_else(crate::agents::default_backend)),
            executors: Arc::default(),
            store,
            lock,
            checkpoint_on,
            max_steps: self.max_steps,
            max_agent_calls: self.max_agent_calls,
            max_foreach_items: self.max_foreach_items,
            ignore_unhandled_actions: self.ignore_unhandled_actions,
            rust_tools: Arc::new(self.rust_tools),
            tool_handlers: Arc::new(self.tool_handlers),
            tool_concurrency: self.tool_concurrency,
            children: std::sync::Mutex::default(),
            state_actions: std::sync::OnceLock::new(),
            signals,
            write_config_hash: self.write_config_hash,
            trace: self.trace,
        }))
    }
}

impl MachineBuilder {
    /// Redis checkpoints, lock and results where the YAML asks for them and the builder was
    /// not given others (feature `redis`; see `docs/many-hosts.md`).
    #[cfg(feature = "redis")]
    fn with_redis_from_yaml(mut self) -> Result<Self, BuildError> {
        let chosen = crate::redis_backends::ChosenByYaml::for_spec(self.spec).map_err(|e| {
            BuildError::Backend {
                machine: self.spec.name.to_string(),
                message: e.to_string(),
            }
        })?;
        if self.store.is_none() && chosen.store.is_some() {
            self.store = Some(chosen.store);
        }
        self.lock = self.lock.or(chosen.lock);
        self.results = self.results.or(chosen.results);
        Ok(self)
    }

    /// Without the `redis` feature a YAML naming Redis is refused.
    #[cfg(not(feature = "redis"))]
    fn with_redis_from_yaml(self) -> Result<Self, BuildError> {
        let settings = self.spec.backends.unwrap_or_default();
        let named = [settings.persistence, settings.locking, settings.results]
            .contains(&Some("redis"))
            || self
                .spec
                .persistence
                .as_ref()
                .is_some_and(|p| p.enabled && p.backend == "redis");
        if named {
            return Err(BuildError::Backend {
                machine: self.spec.name.to_string(),
                message: "`redis` needs the `redis` feature of flatmachine-runtime".to_string(),
            });
        }
        Ok(self)
    }
}

/// The Rust tools registered are exactly those the machine declared to the compiler (so its
/// checks of `tool_loop` states held), and every inline tool handler names an inline tool of
/// some flatagent in the machine's tree.
fn check_tools(
    spec: &'static MachineSpec,
    tools: &[Arc<dyn Tool>],
    handlers: &HashMap<String, HandlerFn>,
) -> Result<(), BuildError> {
    let fail = |message: String| BuildError::Tools {
        machine: spec.name.to_string(),
        message,
    };
    let mut seen: Vec<&str> = Vec::new();
    for tool in tools {
        let name = tool.definition().name.as_str();
        if seen.contains(&name) {
            return Err(fail(format!("two Rust tools are named `{name}`")));
        }
        seen.push(name);
        if !spec.rust_tools.contains(&name) {
            return Err(fail(format!(
                "Rust tool `{name}` is registered but not declared: add it to `flatmachine!(\"{}\", tools = [..])` so the compiler can check the machine's tool loops against it",
                spec.source
            )));
        }
    }
    if let Some(missing) = spec.rust_tools.iter().find(|d| !seen.contains(d)) {
        return Err(fail(format!(
            "Rust tool `{missing}` is declared in `flatmachine!(.., tools = [..])` but not registered: add `.tool(..)` for it to the builder"
        )));
    }
    let mut inline = Vec::new();
    inline_tool_names(spec, &mut inline, &mut Vec::new());
    for name in handlers.keys() {
        if !inline.contains(&name.as_str()) {
            let hint = if inline.is_empty() {
                "the machine's agents define no inline tools".to_string()
            } else {
                format!("inline tools: {}", inline.join(", "))
            };
            return Err(fail(format!(
                "`tool_handler(\"{name}\", ..)` names no inline tool of the machine's agents ({hint}); a Rust tool with its own schema is registered with `.tool(..)`"
            )));
        }
    }
    Ok(())
}

fn inline_tool_names(
    spec: &'static MachineSpec,
    out: &mut Vec<&'static str>,
    seen: &mut Vec<*const MachineSpec>,
) {
    if seen.contains(&(spec as *const _)) {
        return;
    }
    seen.push(spec as *const _);
    for agent in spec.agents {
        for tool in agent.flatagent.map(|c| c.tools).unwrap_or_default() {
            if !out.contains(&tool.name) {
                out.push(tool.name);
            }
        }
    }
    for (_, child) in spec.machines {
        if let Some(child) = child {
            inline_tool_names(child, out, seen);
        }
    }
}

/// Every machine in the tree that names a hooks class must find it in the registry.
fn check_hooks_classes(
    spec: &'static MachineSpec,
    registry: &HooksRegistry,
    skip_this: bool,
    seen: &mut Vec<*const MachineSpec>,
) -> Result<(), BuildError> {
    if seen.contains(&(spec as *const _)) {
        return Ok(());
    }
    seen.push(spec as *const _);
    if skip_this {
        for (_, child) in spec.machines {
            if let Some(child) = child {
                check_hooks_classes(child, registry, false, seen)?;
            }
        }
        return Ok(());
    }
    if let Some(h) = &spec.hooks
        && !registry.contains(h.class)
    {
        let registered: Vec<String> = registry.names().into_iter().map(str::to_string).collect();
        let suggestion = registered
            .iter()
            .min_by_key(|n| edit_distance(n, h.class))
            .filter(|n| edit_distance(n, h.class) <= h.class.len().max(3) / 3)
            .cloned();
        return Err(BuildError::UnknownHooksClass {
            machine: spec.name.to_string(),
            class: h.class.to_string(),
            registered,
            suggestion,
        });
    }
    for (_, child) in spec.machines {
        if let Some(child) = child {
            check_hooks_classes(child, registry, false, seen)?;
        }
    }
    Ok(())
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != *cb);
            cur.push((prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1));
        }
        prev = cur;
    }
    prev[b.len()]
}
