//! `machine:` and `foreach:` children: built from the parent, run through the invoker.

use super::budget::{AgentCallBudget, Budgeted};
use super::handover::{HandDown, HandOffs, HandOver, HandedOver};
use super::invoker::InvokeRequest;
use super::machine::{Inner, Machine};
use super::result::{RunError, RunResult};
use super::step::{ChildTotals, Run, WaitingChild};
use crate::error::error_type;
use crate::machine::StateSpec;
use crate::persistence::{CheckpointStore, checkpoint_event};
use crate::template::{self, ScopeRef};
use crate::{Context, StateError, Value};
use futures::StreamExt;
use futures::future::BoxFuture;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

/// The execution id of the `position`-th child that state `state` of execution `parent`
/// started at step `step` with `machine:` or `foreach:` (position in the `machine:` list or
/// the `foreach` items; 0 for a single `machine:`): a UUID (v4 layout) derived from those four
/// the way launch ids are, in its own domain, so a resumed parent finds the children it
/// started before a crash.
pub(crate) fn child_id(parent: &str, step: u64, state: &str, position: usize) -> String {
    super::launches::derive_id(&[
        parent.as_bytes(),
        &step.to_le_bytes(),
        state.as_bytes(),
        b"child",
        &(position as u64).to_le_bytes(),
    ])
}

/// Runs the futures `pending` yields, at most `cap` at a time: the next one starts as soon as
/// any running one finishes (a slow child does not hold a slot for a fast one behind it).
/// Returns the results in `pending`'s order and whether it stopped early: before starting
/// each future it asks `stop`, and once that says so it starts no more (those already
/// running finish; the rest are not in the result).
pub(super) async fn run_capped<T: Send + 'static>(
    pending: impl Iterator<Item = BoxFuture<'static, T>>,
    cap: usize,
    stop: impl Fn() -> bool,
) -> (Vec<T>, bool) {
    let mut pending = pending.peekable();
    let mut running = futures::stream::FuturesUnordered::new();
    let mut results: Vec<Option<T>> = Vec::new();
    let mut stopped = false;
    loop {
        while running.len() < cap && !stopped && pending.peek().is_some() {
            if stop() {
                stopped = true;
                break;
            }
            if let Some(f) = pending.next() {
                running.push(tag(results.len(), f));
                results.push(None);
            }
        }
        match running.next().await {
            Some((i, value)) => results[i] = Some(value),
            None => break,
        }
    }
    (results.into_iter().flatten().collect(), stopped)
}

/// Runs at most `cap` of `futures` at a time and returns the first to finish with its
/// position; the rest are dropped (cancelled). `None` when there are none.
pub(super) async fn first_to_finish<T: Send + 'static>(
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

pub(super) fn tag<T: Send + 'static>(
    i: usize,
    f: BoxFuture<'static, T>,
) -> BoxFuture<'static, (usize, T)> {
    Box::pin(async move { (i, f.await) })
}

/// The error of a state whose child `name` (execution `child_id`) parked in a `wait_for` state.
fn child_waiting_error(name: &str, child_id: &str, waiting: &super::result::Waiting) -> StateError {
    StateError::new(
        crate::signals::CHILD_WAITING,
        format!(
            "child machine `{name}` (execution {child_id}) is waiting for a signal on `{}` in state `{}`; a parent does not go on without its child's result, and this one has no checkpoint store to park in until the child is signalled (give it a `persistence` section)",
            waiting.channel, waiting.state
        ),
    )
}

/// The first [`CHILD_WAITING`](crate::signals::CHILD_WAITING) error among a state's child
/// results: such a state fails rather than record a waiting child as an entry.
fn first_waiting<'a>(
    results: impl IntoIterator<Item = &'a Result<RunResult, StateError>>,
) -> Option<StateError> {
    results.into_iter().find_map(|r| match r {
        Err(e) if e.error_type == crate::signals::CHILD_WAITING => Some(e.clone()),
        _ => None,
    })
}

/// A child's result as an entry of a parallel/foreach result: its output, or `{_error, _error_type}`.
pub(super) fn child_entry(r: Result<RunResult, StateError>) -> Value {
    match r {
        Ok(res) => res.output,
        Err(e) => serde_json::json!({"_error": e.message, "_error_type": e.error_type}),
    }
}

impl Machine {
    /// The machine for the child `name` (in `machines:`), configured like this one: the same
    /// handlers, agents, hooks registry, checkpoint store, lock, result backend and invoker.
    /// `None` when the machine has no such child.
    pub fn child_machine(&self, name: &str) -> Option<Machine> {
        self.child(name).ok()
    }

    /// The child machine `name`, sharing this machine's handlers and backends. It checkpoints
    /// into this machine's store (unless its own YAML says `persistence: {enabled: false}`),
    /// with its own `checkpoint_on` if it has one.
    pub(super) fn child(&self, name: &str) -> Result<Machine, StateError> {
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

    pub(super) fn new_child(&self, name: &str) -> Result<Machine, StateError> {
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
            // A child run through the invoker draws from its parent's budget; these apply
            // when the child machine is run on its own (`child_machine(..).run(..)`).
            max_agent_calls: self.inner.max_agent_calls,
            max_foreach_items: self.inner.max_foreach_items,
            max_concurrency: self.inner.max_concurrency,
            ignore_unhandled_actions: self.inner.ignore_unhandled_actions,
            rust_tools: self.inner.rust_tools.clone(),
            tool_handlers: self.inner.tool_handlers.clone(),
            tool_concurrency: self.inner.tool_concurrency,
            results: self.inner.results.clone(),
            launches: self.inner.launches.clone(),
            invoker: self.inner.invoker.clone(),
            default_invoker: self.inner.default_invoker,
            children: std::sync::Mutex::default(),
            state_actions: std::sync::OnceLock::new(),
            signals: self.inner.signals.clone(),
            write_config_hash: self.inner.write_config_hash,
            trace: self.inner.trace,
        }))
    }

    /// Runs the child `name` to completion through the invoker, as the `position`-th child of
    /// the state `state` at this run's step (a derived execution id, this run as its parent,
    /// the run tree's budget), giving it this run's pending batch to save when `from_parent`
    /// (see [`hand_down`](Self::hand_down)). When this run is a resume, a child that already
    /// has checkpoints continues from them (a finished one returns its recorded result). A
    /// child that parks in a `wait_for` state is a
    /// [`CHILD_WAITING`](crate::signals::CHILD_WAITING) error, never a result: the parent must
    /// not go on as if the child had produced something. The child is also recorded in
    /// `run.waiting_child`, so the loop parks the parent with it (when the parent has a
    /// checkpoint store) instead of routing the error.
    pub(super) fn run_child(
        &self,
        run: &Run,
        state: &str,
        position: usize,
        name: &'static str,
        input: Value,
        from_parent: Option<HandOver>,
    ) -> BoxFuture<'static, Result<RunResult, StateError>> {
        let request = InvokeRequest {
            parent: self.clone(),
            machine: name,
            execution_id: child_id(&run.execution_id, run.step, state, position),
            parent_execution_id: Some(run.execution_id.clone()),
            input,
            resume: run.resumed,
            agent_calls: run.budget.clone(),
            hand_offs: HandOffs {
                to_parent: self.hand_over_for(run, state),
                from_parent,
            },
        };
        let invoker = self.inner.invoker.clone();
        let child_id = request.execution_id.clone();
        let slot = run.waiting_child.clone();
        Box::pin(async move {
            let result = GrowStack(invoker.invoke(request)).await?;
            match result.waiting() {
                Some(w) => {
                    let mut slot = slot
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner);
                    if slot.is_none() {
                        *slot = Some(WaitingChild {
                            // Through nested children, the one that holds the waiter.
                            execution_id: w.child.clone().unwrap_or_else(|| child_id.clone()),
                            waiting: w.clone(),
                        });
                    }
                    Err(child_waiting_error(name, &child_id, w))
                }
                None => Ok(result),
            }
        })
    }

    /// The store a run shares with the one child of a `machine:` state (no `foreach`, no
    /// parallel children) for hand-overs ([`super::handover`]): one that saves several
    /// executions in one operation, of a run nobody watches, which checkpoints `execute`
    /// events (its next checkpoint then comes before its next work).
    fn hand_over_store(&self, run: &Run, state: &StateSpec) -> Option<&CheckpointStore> {
        let store = self.inner.store.as_ref()?;
        let linked = store.backend().saves_executions_together()
            && run.events.is_none()
            && self.checkpoints(checkpoint_event::EXECUTE)
            && state.machine.len() == 1
            && !state.machine_list
            && state.foreach.is_none();
        linked.then_some(store)
    }

    /// The hand-over the child of the state `state` leaves its last checkpoints in.
    fn hand_over_for(&self, run: &Run, state: &str) -> Option<HandOver> {
        let spec = self.inner.spec.states.iter().find(|s| s.name == state)?;
        let store = self.hand_over_store(run, spec)?;
        Some(run.adopted.get_or_init(|| HandOver::new(store)).clone())
    }

    /// Whether the `execute` checkpoint of `state` waits for its child's first checkpoint
    /// (see [`super::handover`]): the state only runs one child, which starts fresh in this
    /// process, saves to the same store and checkpoints `execute` events — and this run holds
    /// no batch of its own parent's (that one is saved before the child starts).
    pub(super) fn hands_down(&self, run: &Run, state: &StateSpec) -> bool {
        if run.holds_parent_batch() {
            return false;
        }
        let Some(store) = self.hand_over_store(run, state) else {
            return false;
        };
        // (A state with a `timeout` drops its work when it expires: the batch would go with it.)
        let only_the_child = state.action.is_none()
            && state.agent.is_none()
            && state.launch.is_empty()
            && state.wait_for.is_none()
            && state.tool_loop.is_none()
            && state.timeout.is_none_or(|t| t <= 0.0);
        only_the_child
            && !run.resumed
            && self.inner.default_invoker
            && self.child(state.machine[0].name).is_ok_and(|child| {
                child.checkpoints(checkpoint_event::EXECUTE)
                    && child
                        .inner
                        .store
                        .as_ref()
                        .is_some_and(|s| Arc::ptr_eq(s.backend(), store.backend()))
            })
    }

    /// Gives this run's pending batch (its deferred checkpoints, trace texts and the taking of
    /// its lock) to the child `state` starts, when it [`hands_down`](Self::hands_down).
    fn hand_down(&self, run: &mut Run, state: &StateSpec) -> Option<HandDown> {
        if run.deferred.is_empty() || !self.hands_down(run, state) {
            return None;
        }
        let store = self.inner.store.as_ref()?;
        let deferred = std::mem::take(&mut run.deferred);
        let texts = std::mem::take(&mut run.pending_texts);
        let saved = Arc::new(AtomicBool::new(false));
        let slot = HandOver::new(store);
        slot.push(HandedOver {
            checkpoints: deferred.iter().map(|d| d.checkpoint.clone()).collect(),
            texts: texts.clone(),
            hold: run.store_hold.clone().filter(|h| !h.is_acquired()),
            release: false,
            guard: None,
            saved: Some(saved.clone()),
        });
        Some(HandDown {
            slot,
            deferred,
            texts,
            saved,
        })
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
            return child
                .resume_run(&request.execution_id, None, request.agent_calls, false)
                .await
                .map_err(|f| f.error);
        }
        // A child of a run that was never resumed has an id no one used: fresh. (A
        // resumed parent's child may have run before, its lock issued tokens.)
        let fresh = !request.resume;
        child
            .start(
                request.execution_id,
                request.parent_execution_id,
                request.input,
                None,
                request.agent_calls,
                fresh,
                request.hand_offs,
            )
            .await
            .map_err(|f| f.error)
    }

    /// The machine named `machine_name` (`data.name`) in this machine's tree of children,
    /// breadth-first (this machine included), configured like this one.
    pub(super) fn find_in_tree(&self, machine_name: &str) -> Option<Machine> {
        let mut queue = vec![self.clone()];
        let mut seen: Vec<*const crate::MachineSpec> = Vec::new();
        let mut i = 0;
        while let Some(m) = queue.get(i).cloned() {
            i += 1;
            let spec = m.inner.spec;
            if seen.contains(&(spec as *const _)) {
                continue;
            }
            seen.push(spec as *const _);
            if spec.name == machine_name {
                return Some(m);
            }
            for (key, child) in spec.machines {
                if child.is_some()
                    && let Ok(c) = m.child(key)
                {
                    queue.push(c);
                }
            }
        }
        None
    }

    /// Most items one `foreach` may yield.
    pub(super) fn max_foreach_items(&self) -> usize {
        self.inner
            .max_foreach_items
            .unwrap_or(super::DEFAULT_MAX_FOREACH_ITEMS)
    }

    pub(super) fn concurrency(&self) -> usize {
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
    pub(super) async fn run_children(
        &self,
        run: &mut Run,
        state: &'static StateSpec,
        context: &mut Context,
    ) -> Result<Value, StateError> {
        let base = ScopeRef::for_state(context);
        let cap = self.concurrency();
        let budget = run.budget.clone();
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
            let limit = self.max_foreach_items();
            if items.len() > limit {
                return Err(StateError::new(
                    error_type::FOREACH_LIMIT,
                    format!(
                        "foreach in state `{}` yielded {} items, more than max_foreach_items ({limit}): no child was started (raise the limit with `MachineBuilder::max_foreach_items`, or give a shorter list)",
                        state.name,
                        items.len()
                    ),
                ));
            }
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
            drop(items);
            if state.mode_any {
                let futures: Vec<_> = inputs
                    .into_iter()
                    .enumerate()
                    .map(|(i, input)| self.run_child(run, state.name, i, name, input, None))
                    .collect();
                // The first child to finish wins; the others are cancelled (dropped).
                let Some((i, first)) = first_to_finish(futures, cap).await else {
                    return Ok(if state.key.is_some() {
                        Value::Object(Context::new())
                    } else {
                        Value::Array(Vec::new())
                    });
                };
                if let Some(e) = first_waiting([&first]) {
                    return Err(e);
                }
                match &first {
                    Ok(r) => run.add_child_totals(r),
                    Err(e) if e.error_type == error_type::MAX_AGENT_CALLS => {
                        return Err(e.clone());
                    }
                    Err(_) => {}
                }
                let entry = child_entry(first);
                return Ok(match keys.get(i) {
                    Some(key) if state.key.is_some() => {
                        Value::Object(std::iter::once((key.clone(), entry)).collect())
                    }
                    _ => Value::Array(vec![entry]),
                });
            }
            // A child starts as soon as a slot frees up (at most `cap` run at a time), and
            // its result is cut down to its entry as it arrives: a foreach over many items
            // holds the pending inputs and the entries, not every child's whole `RunResult`.
            let count = inputs.len();
            run.emit(|| crate::events::EventKind::Foreach {
                state: state.name,
                machine: name,
                count,
            })
            .await;
            type Entry = Result<(Option<ChildTotals>, Value), StateError>;
            let children = inputs.into_iter().enumerate().map(|(i, input)| {
                let child = self.run_child(run, state.name, i, name, input, None);
                Box::pin(async move {
                    let r = child.await;
                    match first_waiting([&r]) {
                        Some(e) => Err(e),
                        None => Ok((r.as_ref().ok().map(ChildTotals::of), child_entry(r))),
                    }
                }) as BoxFuture<'static, Entry>
            });
            let (results, stopped) = run_capped(children, cap, || budget.was_refused()).await;
            let mut entries = Vec::with_capacity(results.len());
            for item in results {
                let (totals, entry) = item?;
                if let Some(totals) = totals {
                    run.add_totals(totals);
                }
                entries.push(entry);
            }
            out_of_budget(&budget, stopped, &entries)?;
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
            let down = self.hand_down(run, state);
            let from_parent = down.as_ref().map(|d| d.slot.clone());
            let result = self
                .run_child(run, state.name, 0, call.name, shared_input, from_parent)
                .await;
            if let Some(down) = down {
                down.settle(run);
            }
            let result = result?;
            run.add_child_totals(&result);
            return Ok(result.output);
        }
        let mut futures = Vec::new();
        for (i, call) in state.machine.iter().enumerate() {
            let input = match &call.input {
                Some(tv) => template::render_with(tv, &base)?,
                None => shared_input.clone(),
            };
            futures.push(self.run_child(run, state.name, i, call.name, input, None));
        }
        if state.mode_any {
            // The first child to finish wins and is returned under its name (as the
            // reference does); the others are cancelled (dropped).
            let Some((i, first)) = first_to_finish(futures, cap).await else {
                return Ok(Value::Object(Context::new()));
            };
            if let Some(e) = first_waiting([&first]) {
                return Err(e);
            }
            match &first {
                Ok(r) => run.add_child_totals(r),
                Err(e) if e.error_type == error_type::MAX_AGENT_CALLS => return Err(e.clone()),
                Err(_) => {}
            }
            let name = state.machine[i].name.to_string();
            return Ok(Value::Object(
                std::iter::once((name, child_entry(first))).collect(),
            ));
        }
        let (results, stopped) =
            run_capped(futures.into_iter(), cap, || budget.was_refused()).await;
        if let Some(e) = first_waiting(&results) {
            return Err(e);
        }
        let mut out = Context::new();
        for (call, result) in state.machine.iter().zip(results) {
            if let Ok(r) = &result {
                run.add_child_totals(r);
            }
            out.insert(call.name.to_string(), child_entry(result));
        }
        out_of_budget(&budget, stopped, out.values())?;
        Ok(Value::Object(out))
    }
}

/// The run tree's budget refused a call during a `foreach` / `machine: [..]` state: children
/// were left unstarted, or one of them was refused. The state then fails with `MaxAgentCallsError`
/// (not routed: the run ends with `RunError::MaxAgentCalls`) instead of passing on a partial
/// result.
fn out_of_budget<'a>(
    budget: &AgentCallBudget,
    stopped: bool,
    entries: impl IntoIterator<Item = &'a Value>,
) -> Result<(), StateError> {
    let refused = entries
        .into_iter()
        .any(|e| e.get("_error_type").and_then(Value::as_str) == Some(error_type::MAX_AGENT_CALLS));
    if stopped || refused {
        return Err(Budgeted::refused(budget));
    }
    Ok(())
}

/// Polls a child machine's run on a fresh stack segment when this thread's stack runs low.
///
/// A child runs inside its parent's task (task-locals such as the run's budget, events and
/// trace collectors stay in scope), so each level of `machine:` nesting adds its poll frames
/// to the same stack; unoptimized builds keep those frames large enough for three levels to
/// overflow a 2 MiB thread. Past [`STACK_RED_ZONE`] of headroom the poll moves to a new
/// [`STACK_SEGMENT`]-byte segment ([`stacker`]); with room to spare it costs one comparison.
pub(super) struct GrowStack<F>(pub(super) F);

/// Headroom below which a child's poll moves to a new stack segment.
const STACK_RED_ZONE: usize = 1024 * 1024;
/// Size of a new stack segment for a child's poll.
const STACK_SEGMENT: usize = 4 * 1024 * 1024;

impl<F: Future + Unpin> Future for GrowStack<F> {
    type Output = F::Output;

    fn poll(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<F::Output> {
        let inner = &mut self.get_mut().0;
        stacker::maybe_grow(STACK_RED_ZONE, STACK_SEGMENT, || {
            std::pin::Pin::new(&mut *inner).poll(cx)
        })
    }
}
