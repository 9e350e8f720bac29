//! Errors raised while a state runs, with stable type names for `on_error` routing.

use std::fmt;

/// Stable error type names written to `context.last_error_type` and matched by
/// `on_error: { <TypeName>: state }` maps.
pub mod error_type {
    /// A template failed to render (undefined attribute, bad filter, ...).
    pub const TEMPLATE: &str = "TemplateError";
    /// A condition or computed expression failed (type mismatch, bad index, ...).
    pub const EXPRESSION: &str = "ExpressionError";
    /// An action handler failed (user handlers may report their own type name instead).
    pub const ACTION: &str = "ActionError";
    /// No handler accepted an `action:`.
    pub const UNHANDLED_ACTION: &str = "UnhandledActionError";
    /// An agent call failed.
    pub const AGENT: &str = "AgentError";
    /// A state or call ran past its timeout.
    pub const TIMEOUT: &str = "TimeoutError";
    /// A child machine failed.
    pub const MACHINE: &str = "MachineError";
    /// A hook failed.
    pub const HOOK: &str = "HookError";
    /// A `tool_loop` state's tools could not be set up (a missing handler, two tools with one
    /// name, an MCP server that would not start, ...). A failing tool *call* is not a state
    /// error: the model gets the error as the call's result.
    pub const TOOL: &str = "ToolError";
    /// A `tool_loop` state reached its `max_cost`.
    pub const TOOL_LOOP_LIMIT: &str = "ToolLoopLimitError";
    /// The run tree's `max_agent_calls` budget refused an agent call. A limit, like
    /// `max_steps`: `on_error` does not route it, the run fails with `RunError::MaxAgentCalls`.
    pub const MAX_AGENT_CALLS: &str = "MaxAgentCallsError";
    /// A `foreach:` yielded more items than `max_foreach_items` allows.
    pub const FOREACH_LIMIT: &str = "ForeachLimitError";
}

/// An error raised while running one state. Routed by the state's `on_error`.
#[derive(Debug, Clone, PartialEq)]
pub struct StateError {
    /// Stable type name (see [`error_type`]) or a user-chosen one; matched by `on_error` maps.
    pub error_type: String,
    /// Human-readable message; written to `context.last_error`.
    pub message: String,
    /// Provider calls the failed work was still billed for (an agent reply that arrived but did
    /// not parse or validate, the failed attempts of a `retry`): the engine adds them to the
    /// run's `total_api_calls`, `total_cost` and usage. `None` for errors that cost nothing.
    pub billed: Option<Box<crate::agents::Billing>>,
}

impl StateError {
    /// A new error with the given type name and message.
    pub fn new(error_type: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            error_type: error_type.into(),
            message: message.into(),
            billed: None,
        }
    }

    /// The error with `billing` added to what it carries (see [`billed`](Self::billed)).
    pub fn with_billing(mut self, billing: crate::agents::Billing) -> Self {
        if billing.api_calls > 0 || billing.cost != 0.0 || billing.usage != Default::default() {
            let mut total = self.billed.take().map(|b| *b).unwrap_or_default();
            total += billing;
            self.billed = Some(Box::new(total));
        }
        self
    }
}

impl fmt::Display for StateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.error_type, self.message)
    }
}

impl std::error::Error for StateError {}
