//! User-supplied handlers: actions (`action: name`) and agents (`agent: name`) as async closures,
//! and [`ActionCall`], which tells an action handler who called it.

use crate::hooks::ActionOutcome;
use crate::{Context, StateError, Value};
use futures::future::BoxFuture;
use std::sync::Arc;

/// An action handler: changes the context in place.
///
/// Whatever the handler did to the context stays, **also when it then fails** (the error route
/// adds `last_error` / `last_error_type` on top). This is the reference's behaviour (a Python
/// hook mutates the context dict in place before raising) and the same for every way to write
/// an action: [`MachineBuilder::action_mut`](super::MachineBuilder::action_mut), the generated
/// typed `Actions` trait, [`MachineHooks::on_action`](crate::hooks::MachineHooks::on_action)
/// and [`MachineBuilder::fallback_action`](super::MachineBuilder::fallback_action).
pub type ActionFn = Arc<
    dyn for<'a> Fn(&'a mut Context, &'a ActionCall) -> BoxFuture<'a, Result<(), StateError>>
        + Send
        + Sync,
>;

/// A catch-all action handler (see
/// [`MachineBuilder::fallback_action`](super::MachineBuilder::fallback_action)): gets every
/// action no named handler and no hook handled, and says whether it handled it.
pub type FallbackActionFn = Arc<
    dyn for<'a> Fn(
            &'a ActionCall,
            &'a mut Context,
        ) -> BoxFuture<'a, Result<ActionOutcome, StateError>>
        + Send
        + Sync,
>;

/// Which action runs, and for which machine, state and execution.
///
/// Handlers receive it as an argument ([`ActionFn`], [`FallbackActionFn`]) and can read it with
/// [`ActionCall::current`] anywhere inside the action (the typed `Actions` trait methods and
/// [`MachineHooks::on_action`](crate::hooks::MachineHooks::on_action) have no argument for it).
/// Child machines run with their parent's handlers, so one handler serves a parent and its
/// children: `machine` / `execution_id` / `parent_execution_id` tell them apart.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ActionCall {
    /// The action name (`action:` in the YAML).
    pub action: &'static str,
    /// The machine's `data.name`.
    pub machine: &'static str,
    /// The state running the action.
    pub state: &'static str,
    /// The execution running the action.
    pub execution_id: String,
    /// The execution that started this one, for a child machine.
    pub parent_execution_id: Option<String>,
    /// The step (state visit) number, 1 for the first state.
    pub step: u64,
}

tokio::task_local! {
    // Shared with the run, which reuses one call for all its actions (no copy per action).
    static CURRENT_ACTION: Arc<ActionCall>;
}

impl ActionCall {
    /// The action being run by the current task, if any: set while an action handler (closure,
    /// typed `Actions` method, `on_action` hook, fallback) runs.
    pub fn current() -> Option<ActionCall> {
        CURRENT_ACTION.try_with(|call| ActionCall::clone(call)).ok()
    }

    /// Runs `fut` with `call` as [`ActionCall::current`].
    pub(crate) fn scope<F: std::future::Future>(
        call: Arc<ActionCall>,
        fut: F,
    ) -> impl std::future::Future<Output = F::Output> {
        CURRENT_ACTION.scope(call, fut)
    }
}

/// What an agent returns.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AgentOutput {
    /// The structured output (read by `output_to_context` as `output`).
    pub output: Value,
    /// API calls made (added to the run's `total_api_calls` as given).
    pub api_calls: u64,
    /// Cost (added to the run's `total_cost`).
    pub cost: f64,
}

impl AgentOutput {
    /// One call with this output and no cost.
    pub fn new(output: Value) -> Self {
        Self {
            output,
            api_calls: 1,
            cost: 0.0,
        }
    }
}

/// An agent: takes the rendered `input` and the context, returns its output.
pub type AgentFn = Arc<
    dyn Fn(Value, Context) -> BoxFuture<'static, Result<AgentOutput, StateError>> + Send + Sync,
>;
