//! User-supplied handlers: actions (`action: name`) and agents (`agent: name`) as async closures.

use crate::{Context, StateError, Value};
use futures::future::BoxFuture;
use std::sync::Arc;

/// An action handler: takes the context, returns the updated context.
pub type ActionFn =
    Arc<dyn Fn(Context) -> BoxFuture<'static, Result<Context, StateError>> + Send + Sync>;

/// What an agent returns.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AgentOutput {
    /// The structured output (read by `output_to_context` as `output`).
    pub output: Value,
    /// API calls made (added to the run's `total_api_calls`; 1 if you leave it at 0... no: as given).
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
