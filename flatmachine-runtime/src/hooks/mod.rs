//! Machine hooks: extension points called by the execution loop.
//!
//! A [`MachineHooks`] implementation is called at seven points of a run (see the trait). Every
//! method has a pass-through default, so an implementation overrides only what it needs.
//!
//! Built-in implementations, named after the reference (`flatmachines` 1.0.0) classes:
//!
//! * [`LoggingHooks`] — `tracing` events at a configurable level;
//! * [`MetricsHooks`] — thread-safe counters (state entries, transitions, errors);
//! * [`CompositeHooks`] — an ordered chain of hooks;
//! * `WebhookHooks` (cargo feature `webhooks`) — POSTs every event as JSON to an HTTP endpoint;
//! * [`NoopHooks`] — all defaults (the reference's bare `MachineHooks` base class).
//!
//! # Hooks from YAML
//!
//! The reference loads `hooks: {file|module, class, args}` by importing a Python class. Compiled
//! machines resolve the `class` name through a [`HooksRegistry`] that the application fills in
//! Rust instead; `file` and `module` have no meaning here. The engine renders `args` (with the
//! machine input) and calls [`HooksRegistry::build`]. A child machine gets its hooks the same way,
//! from its own YAML `hooks:` section and the registry — never the parent's hooks object
//! (reference behaviour, SEMANTICS item 20).

use async_trait::async_trait;

use crate::engine::ActionCall;
use crate::tools::{ToolCall, ToolOutput};
use crate::{Context, StateError, Value, error_type};

mod composite;
mod logging;
mod metrics;
mod registry;
#[cfg(feature = "webhooks")]
mod webhook;

pub use composite::CompositeHooks;
pub use logging::LoggingHooks;
pub use metrics::{MetricsHooks, MetricsSnapshot};
pub use registry::{HooksConstructor, HooksFor, HooksRegistry};
#[cfg(feature = "webhooks")]
pub use webhook::WebhookHooks;

/// Whether a hook's [`MachineHooks::on_action`] handled an `action:`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum ActionOutcome {
    /// The hook handled the action (it may have changed the context).
    Handled,
    /// The hook does not know this action; the context is unchanged.
    #[default]
    NotHandled,
}

impl ActionOutcome {
    /// `true` for [`ActionOutcome::Handled`].
    pub fn is_handled(self) -> bool {
        matches!(self, Self::Handled)
    }
}

/// One tool call of a model reply, as [`MachineHooks::on_tool_calls`] sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct PendingToolCall {
    /// The call; a hook may edit its `arguments` (or `name`) before it runs. The id is kept.
    pub call: ToolCall,
    /// Set to veto the call: it does not run, and the model gets this text as an error
    /// result.
    pub veto: Option<String>,
}

/// What a tool-loop hook asks of the loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ToolLoopControl {
    /// Go on (the default).
    #[default]
    Continue,
    /// Stop the loop after this point: calls not yet run are answered "not run" and the state
    /// ends with stop reason `aborted` (its transitions are taken as usual).
    Abort,
}

/// One tool call's result, as [`MachineHooks::on_tool_result`] sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct ToolResultRecord {
    /// The call that ran (with the arguments it ran with).
    pub call: ToolCall,
    /// What the model will be sent; a hook may edit it (e.g. redact a secret).
    pub output: ToolOutput,
}

/// An error raised by a hook, or by building hooks from a registry.
///
/// Converts into a [`StateError`]: [`HookError::Action`] passes its error through unchanged (so an
/// action handler can report its own type name for `on_error` routing); every other variant
/// becomes a [`error_type::HOOK`] error.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum HookError {
    /// An error with its own type name (typically from an action handler), passed through as is.
    #[error("{0}")]
    Action(StateError),
    /// A hook failed.
    #[error("hook failed: {0}")]
    Failed(String),
    /// `hooks.class` names no class registered in the [`HooksRegistry`].
    #[error(
        "unknown hooks class `{name}`{}; registered classes: {}",
        suggestion.as_ref().map(|s| format!(" (did you mean `{s}`?)")).unwrap_or_default(),
        if registered.is_empty() { "(none)".to_string() } else { registered.join(", ") }
    )]
    UnknownClass {
        /// The class name that was asked for.
        name: String,
        /// Every registered class name, sorted.
        registered: Vec<String>,
        /// The registered name closest to `name`, if any is close.
        suggestion: Option<String>,
    },
    /// The `hooks.args` given to a registered class are invalid.
    #[error("invalid args for hooks class `{class}`: {message}")]
    InvalidArgs {
        /// The class being built.
        class: String,
        /// What is wrong with the args.
        message: String,
    },
}

impl HookError {
    /// A [`HookError::Failed`] with the given message.
    pub fn failed(message: impl Into<String>) -> Self {
        Self::Failed(message.into())
    }

    /// A [`HookError::Action`] with a user-chosen error type name (matched by `on_error` maps).
    pub fn action(error_type: impl Into<String>, message: impl Into<String>) -> Self {
        Self::Action(StateError::new(error_type, message))
    }

    /// A [`HookError::InvalidArgs`] for `class`.
    pub fn invalid_args(class: impl Into<String>, message: impl Into<String>) -> Self {
        Self::InvalidArgs {
            class: class.into(),
            message: message.into(),
        }
    }
}

impl From<StateError> for HookError {
    fn from(error: StateError) -> Self {
        Self::Action(error)
    }
}

impl From<HookError> for StateError {
    fn from(error: HookError) -> Self {
        match error {
            HookError::Action(error) => error,
            other => StateError::new(error_type::HOOK, other.to_string()),
        }
    }
}

/// Extension points of a machine run. All methods have pass-through defaults.
///
/// Order within one step (reference behaviour): `on_state_enter`, the state runs (an `action:`
/// calls `on_action`), then `on_state_exit` and `on_transition`; when the state fails and its own
/// `on_error` does not route the error, `on_error` is asked for a recovery state instead.
/// After every action, whoever handled it, `on_action_done` is called (a notification).
/// `on_machine_start` runs once before the first state, `on_machine_end` once after the last
/// (not when the run fails).
#[async_trait]
pub trait MachineHooks: Send + Sync {
    /// Called once when the run starts; may change the initial context.
    async fn on_machine_start(&self, context: &mut Context) -> Result<(), HookError> {
        let _ = context;
        Ok(())
    }

    /// Called once when the run ends; may change the final output.
    async fn on_machine_end(&self, context: &Context, output: &mut Value) -> Result<(), HookError> {
        let _ = (context, output);
        Ok(())
    }

    /// Called before a state runs; may change the context.
    async fn on_state_enter(&self, state: &str, context: &mut Context) -> Result<(), HookError> {
        let _ = (state, context);
        Ok(())
    }

    /// Called after a state ran; may change the state's output (`None`: the state had none).
    async fn on_state_exit(
        &self,
        state: &str,
        context: &mut Context,
        output: &mut Option<Value>,
    ) -> Result<(), HookError> {
        let _ = (state, context, output);
        Ok(())
    }

    /// Returns the state to go to (default: `to` unchanged).
    async fn on_transition(
        &self,
        from: &str,
        to: &str,
        context: &mut Context,
    ) -> Result<String, HookError> {
        let _ = (from, context);
        Ok(to.to_string())
    }

    /// Returns Some(state) to recover into, None to propagate.
    async fn on_error(
        &self,
        state: &str,
        error: &StateError,
        context: &mut Context,
    ) -> Result<Option<String>, HookError> {
        let _ = (state, error, context);
        Ok(None)
    }

    /// Called once after every `action:`, whoever handled it (a builder closure, the typed
    /// `Actions` trait, a hook's [`on_action`](Self::on_action), the fallback handler), with
    /// the context as the action left it and the action's error, if it failed (an unhandled
    /// action is reported here too, with its `UnhandledActionError`). A notification: it
    /// cannot change the context or the outcome. `call` says which action, machine, state and
    /// execution.
    async fn on_action_done(
        &self,
        call: &ActionCall,
        context: &Context,
        error: Option<&StateError>,
    ) {
        let _ = (call, context, error);
    }

    /// Called in a `tool_loop` state once per model reply that asks for tools, before any of
    /// them runs (the reference's order). The hook may edit a call's arguments, veto single
    /// calls ([`PendingToolCall::veto`]), change the context, or return
    /// [`ToolLoopControl::Abort`] to stop the loop. A vetoed call and the calls of an aborted
    /// round are answered with an error result, so the conversation stays valid.
    async fn on_tool_calls(
        &self,
        state: &str,
        calls: &mut [PendingToolCall],
        context: &mut Context,
    ) -> Result<ToolLoopControl, HookError> {
        let _ = (state, calls, context);
        Ok(ToolLoopControl::Continue)
    }

    /// Called in a `tool_loop` state once per tool call that ran (vetoed calls excluded), in
    /// the order the model asked for them, after every call of the round finished and before
    /// the round's checkpoint. The hook may edit the result the model is sent, change the
    /// context, or return [`ToolLoopControl::Abort`] to stop the loop after this round.
    async fn on_tool_result(
        &self,
        state: &str,
        result: &mut ToolResultRecord,
        context: &mut Context,
    ) -> Result<ToolLoopControl, HookError> {
        let _ = (state, result, context);
        Ok(ToolLoopControl::Continue)
    }

    /// Whether the `execute` checkpoint of a state whose only work is `action` (as these hooks
    /// handle it in [`on_action`](Self::on_action)) may be saved with the next checkpoint
    /// instead of before the action — a round trip fewer on a networked store. Say `true` when
    /// a crash during the action needs no resume point of its own: the action is idempotent
    /// (a resume from the checkpoint before runs it again, harmlessly), or what it leaves
    /// behind is recovered another way. Default `false`.
    ///
    /// [`DistributedWorkerHooks`](crate::distributed::DistributedWorkerHooks) says `true` for
    /// the registration built-ins (`register_worker`, `deregister_worker`, `heartbeat`:
    /// idempotent) and the job built-ins (`claim_job`, `complete_job`, `fail_job`: a claimed
    /// job whose worker died goes back through the reaper, never through a resume).
    fn may_defer_checkpoint(&self, action: &str) -> bool {
        let _ = action;
        false
    }

    /// Untyped action route. Return [`ActionOutcome::Handled`] if this hook handled the action
    /// (it may have changed the context), [`ActionOutcome::NotHandled`] otherwise (default).
    async fn on_action(
        &self,
        action: &str,
        context: &mut Context,
    ) -> Result<ActionOutcome, HookError> {
        let _ = (action, context);
        Ok(ActionOutcome::NotHandled)
    }
}

/// Hooks that do nothing: every method is the pass-through default.
///
/// The reference's bare `MachineHooks` class; registered under that name in
/// [`HooksRegistry::new`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NoopHooks;

impl MachineHooks for NoopHooks {}
