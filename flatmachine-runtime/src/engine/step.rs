//! The execution loop: one state after another, errors routed, checkpoints written.

use super::DEFAULT_MAX_STEPS;
use super::budget::{AgentCallBudget, Budgeted, LiveTotals, RunTotals};
use super::handlers::ActionCall;
use super::handover::HandOver;
use super::machine::Machine;
use super::machine::noop_hooks;
use super::result::{RunError, RunFailure, RunResult, RunStatus};
use super::traced::{CallTrace, TotalsMark};
use super::wait::{Parked, WaitOutcome};
use crate::agents::{AdapterEnv, AgentExecutor, AgentResult, ClosureExecutor, Usage};
use crate::error::error_type;
use crate::events::{ErrorRoute, EventKind, RunEvents};
use crate::hooks::MachineHooks;
use crate::machine::{MachineSpec, StateSpec};
use crate::persistence::{CheckpointWriter, EncodedCheckpoint, ForkOrigin, LaunchIntent};
use crate::template::{self, ScopeRef, TemplateValue};
use crate::{Context, StateError, Value};
use std::sync::Arc;

/// Where `Machine::run_loop` starts its first state: from the top, or (resuming) just after
/// one of the state's checkpoints.
pub(super) enum Entry {
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

pub(super) struct Run {
    pub(super) max_steps: Option<u64>,
    pub(super) execution_id: String,
    pub(super) parent_execution_id: Option<String>,
    pub(super) step: u64,
    pub(super) api_calls: u64,
    pub(super) cost: f64,
    pub(super) usage: Usage,
    pub(super) hooks: Arc<dyn MachineHooks>,
    /// Whether `hooks` are the machine's own (`false` for the no-op default: the loop skips
    /// the calls).
    pub(super) hooks_active: bool,
    /// Encodes this execution's checkpoints (the execution id checked once).
    pub(super) writer: CheckpointWriter,
    /// The outbox: launch intents not known to have finished.
    pub(super) pending_launches: Vec<LaunchIntent>,
    /// After a resume: (state, step) whose launch ids the first executed state re-derives, so
    /// launches recorded before the crash are not started twice.
    pub(super) launch_origin: Option<(usize, u64)>,
    /// The context at this step's `execute` checkpoint (kept only for states that launch).
    pub(super) step_context: Option<Context>,
    /// Set when the error being returned is an unhandled action.
    pub(super) unhandled_action: Option<&'static str>,
    /// The execution lock's fencing token, written into every checkpoint.
    pub(super) fencing_token: Option<u64>,
    /// The [`ActionCall`] of the last action, reused (updated in place) by the next one.
    pub(super) action_call: Option<Arc<ActionCall>>,
    /// The run's MCP sessions (closed when the run ends).
    pub(super) tools: crate::tools::RunTools,
    /// The run tree's agent-call budget (shared with the parent for a child run).
    pub(super) budget: AgentCallBudget,
    /// Whether this run continues an execution (`resume`): its children then continue from
    /// their own checkpoints, or return their recorded result, instead of starting again.
    pub(super) resumed: bool,
    /// The totals [`RunTotals::current`] reads, updated whenever they change.
    pub(super) live: Arc<LiveTotals>,
    /// The machine's fingerprint written into checkpoints (`None`: not written).
    pub(super) config_hash: Option<&'static str>,
    /// Where a forked run came from (written into every checkpoint).
    pub(super) forked_from: Option<ForkOrigin>,
    /// The deadline of the `wait_for` state a resumed run waits in (from its checkpoint).
    pub(super) wait_deadline: Option<u64>,
    /// The step whose `wait_for` signal is consumed once the state's exit is recorded.
    pub(super) signal_ack: Option<u64>,
    /// Where this execution's events go, when a stream listens.
    pub(super) events: Option<Arc<RunEvents>>,
    /// The first `machine:`/`foreach` child of the current state that parked in a `wait_for`
    /// state (set by the child's future, taken when the state fails with `ChildWaiting`).
    pub(super) waiting_child: Arc<std::sync::Mutex<Option<WaitingChild>>>,
    /// `execute` checkpoints of states that do no work, not saved yet: they go with the next
    /// checkpoint, in one batch (see [`Machine::defer_checkpoint`]).
    pub(super) deferred: Vec<DeferredCheckpoint>,
    /// Trace texts (key, text) not saved yet: they go with the next checkpoint's batch (the
    /// run's graph, so a worker job pays no round trip for it), or at the end of the run.
    pub(super) pending_texts: Vec<(String, String)>,
    /// The execution lock's hold, when a store of its fencing domain may take it with the
    /// first checkpoint (a fresh execution) and release it with the `machine_end` one.
    pub(super) store_hold: Option<crate::lock::StoreHold>,
    /// Where this child run leaves its `machine_end` batch for its parent to save (see
    /// [`super::handover`]); `None`: it saves its own.
    pub(super) hand_over: Option<HandOver>,
    /// Whether this run left its last batch in `hand_over`.
    pub(super) handed_over: bool,
    /// Where this run's children leave their last batches; saved with this run's next
    /// checkpoint (made when a child is first given it).
    pub(super) adopted: std::sync::OnceLock<HandOver>,
    /// The parent's pending batch this child saves with its first checkpoint.
    pub(super) inherited: Option<HandOver>,
}

/// A checkpoint encoded but not saved yet, with what its `CheckpointSaved` event reports.
pub(super) struct DeferredCheckpoint {
    pub(super) checkpoint: EncodedCheckpoint,
    pub(super) event: &'static str,
    pub(super) state: &'static str,
    pub(super) step: u64,
}

/// A child run that parked in a `wait_for` state: its parent parks with it.
#[derive(Debug, Clone)]
pub(super) struct WaitingChild {
    /// The child execution that waits (the deepest one, through nested children).
    pub(super) execution_id: String,
    /// Where it waits.
    pub(super) waiting: crate::engine::result::Waiting,
}

impl Run {
    pub(super) fn new(
        writer: CheckpointWriter,
        parent: Option<String>,
        hooks: Option<Arc<dyn MachineHooks>>,
        max_steps: Option<u64>,
        budget: AgentCallBudget,
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
            tools: crate::tools::RunTools::default(),
            budget,
            resumed: false,
            live: Arc::default(),
            config_hash: None,
            forked_from: None,
            wait_deadline: None,
            signal_ack: None,
            events: None,
            waiting_child: Arc::default(),
            deferred: Vec::new(),
            pending_texts: Vec::new(),
            store_hold: None,
            hand_over: None,
            handed_over: false,
            adopted: std::sync::OnceLock::new(),
            inherited: None,
        }
    }

    /// Whether batches of other executions (its parent's, its children's) wait for this
    /// run's next save.
    pub(super) fn has_foreign(&self) -> bool {
        self.adopted.get().is_some_and(|h| !h.is_empty()) || self.holds_parent_batch()
    }

    /// Whether this child still holds its parent's pending batch.
    pub(super) fn holds_parent_batch(&self) -> bool {
        self.inherited.as_ref().is_some_and(|h| !h.is_empty())
    }

    /// The batches of other executions to save with this run's next one: its parent's first.
    pub(super) fn take_foreign(&self) -> Vec<super::handover::HandedOver> {
        let mut batches = self
            .inherited
            .as_ref()
            .map(HandOver::take)
            .unwrap_or_default();
        if let Some(adopted) = self.adopted.get() {
            batches.extend(adopted.take());
        }
        batches
    }

    /// Takes the child recorded as waiting by the current state's children, if any.
    pub(super) fn take_waiting_child(&self) -> Option<WaitingChild> {
        self.waiting_child
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take()
    }

    /// Emits the event `kind` builds, when a stream listens (nothing is built otherwise).
    #[inline]
    pub(super) async fn emit(&self, kind: impl FnOnce() -> EventKind) {
        if let Some(events) = &self.events
            && let Some(wait) = events.try_send(kind)
        {
            wait.await;
        }
    }

    pub(super) fn add_child_totals(&mut self, child: &RunResult) {
        self.add_totals(ChildTotals::of(child));
    }

    pub(super) fn add_totals(&mut self, child: ChildTotals) {
        self.api_calls += child.api_calls;
        self.cost = crate::cost::add(self.cost, child.cost);
        self.usage += child.usage;
        self.publish_totals();
    }

    /// Adds one agent execution's calls, cost and tokens.
    pub(super) fn add_agent(&mut self, result: &AgentResult) {
        self.add_billed(result.api_calls, result.cost, result.usage);
    }

    /// Adds calls, cost and tokens to the totals (an agent's, or those a failed call was
    /// still billed for).
    pub(super) fn add_billed(&mut self, api_calls: u64, cost: f64, usage: Usage) {
        self.api_calls += api_calls;
        self.cost = crate::cost::add(self.cost, cost);
        self.usage += usage;
        self.publish_totals();
    }

    /// The totals so far.
    pub(super) fn totals(&self) -> RunTotals {
        RunTotals {
            api_calls: self.api_calls,
            cost: self.cost,
            usage: self.usage,
        }
    }

    /// What the run leaves when it fails with `error`.
    pub(super) fn failure(&self, error: RunError, context: Context) -> Box<RunFailure> {
        Box::new(RunFailure {
            error,
            execution_id: self.execution_id.clone(),
            context: Some(context),
            totals: self.totals(),
            steps: self.step,
        })
    }

    /// Makes the totals visible to [`RunTotals::current`].
    pub(super) fn publish_totals(&self) {
        self.live.set(self.totals());
    }
}

/// What a child run adds to its parent's totals.
pub(super) struct ChildTotals {
    pub(super) api_calls: u64,
    pub(super) cost: f64,
    pub(super) usage: Usage,
}

impl ChildTotals {
    pub(super) fn of(child: &RunResult) -> Self {
        Self {
            api_calls: child.total_api_calls,
            cost: child.total_cost,
            usage: child.usage,
        }
    }
}

/// The action of a state whose only work is that action (what [`Machine::execute_state`] would
/// do for it is just [`Machine::run_action`]).
pub(super) fn action_only(state: &StateSpec) -> Option<&'static str> {
    let only = state.launch.is_empty()
        && state.machine.is_empty()
        && state.agent.is_none()
        && !(state.is_final && state.output.is_some());
    if only { state.action } else { None }
}

/// Whether a state does no work between its `execute` checkpoint and the next one: no action,
/// agent, child machine, launch, `wait_for` or tool loop (a routing state, or a final state
/// whose output is a template). Its `execute` checkpoint can wait for the next checkpoint and
/// be saved with it: a crash in between resumes from the checkpoint before, which re-runs
/// nothing but this state's routing.
pub(super) fn does_no_work(state: &StateSpec) -> bool {
    state.action.is_none() && no_work_but_its_action(state)
}

/// Whether a state has no agent, child machine, launch, `wait_for`, tool loop or `foreach`
/// (its only work, if any, is its action).
fn no_work_but_its_action(state: &StateSpec) -> bool {
    state.agent.is_none()
        && state.machine.is_empty()
        && state.launch.is_empty()
        && state.wait_for.is_none()
        && state.tool_loop.is_none()
        && state.foreach.is_none()
}

impl Machine {
    /// Whether the state's only work is an action whose hooks say its checkpoint may wait
    /// ([`MachineHooks::may_defer_checkpoint`](crate::hooks::MachineHooks::may_defer_checkpoint))
    /// — and no handler registered on the builder replaces theirs: its `execute`
    /// checkpoint, like a state's that does no work, waits for the next one.
    fn only_deferrable_action(&self, run: &Run, index: usize) -> bool {
        let state = &self.inner.spec.states[index];
        let Some(action) = state.action else {
            return false;
        };
        run.hooks_active
            && no_work_but_its_action(state)
            && self.state_action(index).is_none()
            && run.hooks.may_defer_checkpoint(action)
    }

    /// Runs states from `start` until a final state; `context` is left as the run left it
    /// (also on failure, for [`RunFailure`](super::RunFailure)).
    pub(super) async fn run_loop(
        &self,
        run: &mut Run,
        context: &mut Context,
        start: usize,
        entry: Entry,
    ) -> Result<RunResult, RunError> {
        let result = self.run_states(run, context, start, entry).await;
        self.settle_deferred(run, result).await
    }

    async fn run_states(
        &self,
        run: &mut Run,
        context: &mut Context,
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
                run.step += 1;
                let step = run.step;
                run.emit(|| EventKind::StateEnter {
                    state: state.name,
                    step,
                })
                .await;
                if self.checkpoints("state_enter") {
                    self.checkpoint(run, "state_enter", state.name, context, None)
                        .await?;
                }
            }
            if phase <= 1 {
                if run.hooks_active
                    && let Err(e) = run.hooks.on_state_enter(state.name, context).await
                {
                    current = self.route_error(run, current, e.into(), context).await?;
                    continue;
                }
                if self.checkpoints("execute") {
                    // A child holding its parent's batch saves before any work.
                    if does_no_work(state)
                        || (self.only_deferrable_action(run, current) && !run.holds_parent_batch())
                        || self.hands_down(run, state)
                    {
                        self.defer_checkpoint(run, state.name, context).await?;
                    } else {
                        self.checkpoint(run, "execute", state.name, context, None)
                            .await?;
                    }
                }
            }
            let mut output = match resumed_output {
                Some(output) => output,
                None => {
                    // The launch outbox rewrites this step's `execute` checkpoint with the
                    // context the step started from.
                    run.step_context = (!state.launch.is_empty()).then(|| context.clone());
                    let executed = if state.wait_for.is_some() {
                        // A `wait_for` state takes a signal or parks the run (its `timeout` is
                        // a durable deadline, not a bound on work: see `wait.rs`).
                        match self.wait_for_signal(run, current, context).await {
                            Ok(WaitOutcome::Received(output)) => Ok(Some(output)),
                            Ok(WaitOutcome::Park(parked)) => {
                                return self.park(run, current, context.clone(), parked).await;
                            }
                            Err(e) => Err(e),
                        }
                    } else {
                        match state.timeout.filter(|t| *t > 0.0) {
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
                                        *context = work_ctx;
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
                                    .run_action(run, current, action, context)
                                    .await
                                    .map(|()| None),
                                None => self.execute_state(run, current, context).await,
                            },
                        }
                    };
                    run.launch_origin = None;
                    run.step_context = None;
                    // Taken whatever the outcome: a `mode: any` state may succeed while a
                    // child it no longer needs parked.
                    let waiting_child = run.take_waiting_child();
                    let output = match executed {
                        Ok(o) => o,
                        Err(e) => {
                            if e.error_type == crate::signals::CHILD_WAITING
                                && self.inner.store.is_some()
                                && let Some(child) = waiting_child
                            {
                                // The parent parks with its child; resuming it runs the state
                                // again, and the child continues from its own checkpoints.
                                let parked = Parked::for_child(child);
                                return self.park(run, current, context.clone(), parked).await;
                            }
                            current = self.route_error(run, current, e, context).await?;
                            continue;
                        }
                    };
                    let step = run.step;
                    run.emit(|| EventKind::StateExit {
                        state: state.name,
                        step,
                    })
                    .await;
                    if self.checkpoints("state_exit") {
                        self.checkpoint(
                            run,
                            "state_exit",
                            state.name,
                            context,
                            if state.is_final {
                                output.as_ref()
                            } else {
                                None
                            },
                        )
                        .await?;
                    }
                    if run.signal_ack.is_some() {
                        self.ack_signal(run).await;
                    }
                    output
                }
            };
            if run.hooks_active
                && let Err(e) = run
                    .hooks
                    .on_state_exit(state.name, context, &mut output)
                    .await
            {
                current = self.route_error(run, current, e.into(), context).await?;
                continue;
            }
            if state.is_final {
                let mut final_output = output.unwrap_or_else(|| Value::Object(Context::new()));
                if self.checkpoints("machine_end") {
                    self.checkpoint(run, "machine_end", "end", context, Some(&final_output))
                        .await?;
                }
                if run.hooks_active
                    && let Err(e) = run.hooks.on_machine_end(context, &mut final_output).await
                {
                    return Err(self.hook_error(run, e));
                }
                return Ok(RunResult {
                    status: RunStatus::Finished,
                    output: final_output,
                    execution_id: run.execution_id.clone(),
                    final_state: state.name.to_string(),
                    steps: run.step,
                    total_api_calls: run.api_calls,
                    total_cost: run.cost,
                    usage: run.usage,
                    context: std::mem::take(context),
                });
            }
            // A tool loop that left through a transition names its target.
            let chosen = super::tool_loop::take_next_state(spec, context);
            let next =
                match chosen.map_or_else(|| (spec.transition)(current, context), |n| Ok(Some(n))) {
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
                            .route_error(run, current, StateError::from(e), context)
                            .await?;
                        continue;
                    }
                };
            if !run.hooks_active {
                let to = spec.states[next].name;
                run.emit(|| EventKind::Transition {
                    from: state.name,
                    to,
                })
                .await;
                current = next;
                continue;
            }
            let to = spec.states[next].name;
            let target = match run.hooks.on_transition(state.name, to, context).await {
                Ok(t) => t,
                Err(e) => {
                    current = self.route_error(run, current, e.into(), context).await?;
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
            let to = spec.states[current].name;
            run.emit(|| EventKind::Transition {
                from: state.name,
                to,
            })
            .await;
        }
    }

    /// [`route_error_to`](Self::route_error_to), with an [`EventKind::Error`] naming the route.
    pub(super) async fn route_error(
        &self,
        run: &mut Run,
        state: usize,
        error: StateError,
        context: &mut Context,
    ) -> Result<usize, RunError> {
        let trace = self.inner.trace_store().cloned();
        if run.events.is_none() && trace.is_none() {
            return self.route_error_to(run, state, error, context).await;
        }
        let reported = error.clone();
        let routed = self.route_error_to(run, state, error, context).await;
        let spec = self.inner.spec;
        if let Some(store) = trace {
            Box::pin(self.trace_error(&store, run, state, &reported, &routed)).await;
        }
        let Some(events) = run.events.clone() else {
            return routed;
        };
        let route = match &routed {
            Ok(i) => ErrorRoute::Recover(spec.states[*i].name),
            Err(_) => ErrorRoute::Fails,
        };
        events
            .send(EventKind::Error {
                state: spec.states[state].name,
                error: reported,
                route,
            })
            .await;
        routed
    }

    /// Record the error in the context and find the recovery state: `on_error` (by type, then
    /// `default`), then the `on_error` hook. `Ok(next)` to recover, `Err` to fail the run.
    async fn route_error_to(
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
        if error.error_type == error_type::MAX_AGENT_CALLS {
            // A limit of the run tree, like `max_steps`: not routed.
            return Err(self.max_agent_calls_error(run, st.name));
        }
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

    /// `RunError::MaxAgentCalls` for `state`.
    pub(super) fn max_agent_calls_error(&self, run: &Run, state: &str) -> RunError {
        RunError::MaxAgentCalls {
            machine: self.inner.spec.name.to_string(),
            execution_id: run.execution_id.clone(),
            limit: run.budget.limit().unwrap_or(0),
            state: state.to_string(),
        }
    }

    /// Run one state's work in the reference's order. Returns the state's output.
    pub(super) async fn execute_state(
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
        if state.agent.is_some() && state.tool_loop.is_some() {
            let out = match self.inner.trace_store().cloned() {
                None => self.run_tool_loop(run, index, context).await?,
                // Boxed: the traced path stays off the stack of untraced runs.
                Some(store) => Box::pin(self.traced_tool_loop(store, run, index, context)).await?,
            };
            self.output_to_context(state, context, &out)?;
            output = Some(out);
        } else if let Some(agent) = state.agent {
            let input = self.render_state_input(state, context)?;
            let executor = self.executor(agent)?;
            let call = crate::agents::AgentCall {
                machine: self.inner.spec.name,
                state: state.name,
            };
            // Every call (each retry, sample or vote) first draws from the tree's budget.
            let budgeted = Budgeted {
                inner: executor.as_ref(),
                budget: &run.budget,
            };
            run.emit(|| EventKind::AgentCallStart {
                state: state.name,
                agent,
            })
            .await;
            let started = std::time::Instant::now();
            let trace = self.inner.trace_store().cloned();
            let work = crate::agents::execution::execute(
                state.execution.as_ref(),
                &budgeted,
                &call,
                &input,
                context,
            );
            let (outcome, traced) = match trace {
                None => (work.await, None),
                Some(store) => {
                    let started_at = crate::persistence::utc_now_isoformat();
                    let (outcome, exchanges, omitted) = Box::pin(crate::trace::collect(work)).await;
                    (outcome, Some((store, started_at, exchanges, omitted)))
                }
            };
            if let Some((store, started_at, exchanges, omitted)) = traced {
                let payload = outcome.as_ref().map(AgentResult::output_payload);
                let call = CallTrace {
                    state: state.name,
                    agent,
                    tool_loop: false,
                    started_at,
                    started,
                    input: input.clone(),
                    exchanges,
                    omitted,
                    before: TotalsMark::of(run),
                };
                let billed = match &outcome {
                    Ok(r) => r.billing(),
                    Err(e) => e.billed.as_deref().copied().unwrap_or_default(),
                };
                Box::pin(call.write_billed(
                    &store,
                    run,
                    payload.as_ref().map(Some).map_err(|e| *e),
                    billed,
                ))
                .await;
            }
            run.emit(|| crate::events::agent_call_end(state.name, agent, &outcome, started))
                .await;
            // Calls billed before the state failed (a reply that did not parse) still count.
            let result = outcome.inspect_err(|e| {
                if let Some(b) = &e.billed {
                    run.add_billed(b.api_calls, b.cost, b.usage);
                }
            })?;
            run.add_agent(&result);
            let out = result.into_output_payload();
            crate::typed::record_agent_output(self.inner.spec, state.name, &out);
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
    pub(super) fn executor(&self, agent: &str) -> Result<Arc<dyn AgentExecutor>, StateError> {
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

    pub(super) fn render_state_input(
        &self,
        state: &StateSpec,
        context: &Context,
    ) -> Result<Value, StateError> {
        match &state.input {
            Some(tv) => Ok(template::render_with(tv, &ScopeRef::for_state(context))?),
            None => Ok(Value::Object(Context::new())),
        }
    }

    pub(super) fn output_to_context(
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
}
