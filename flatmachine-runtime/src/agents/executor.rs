//! What runs an `agent:` state: the [`AgentExecutor`] trait and its result.

use super::llm::Usage;
use crate::tools::ToolCall;
use crate::{Context, StateError, Value};
use async_trait::async_trait;

/// What one agent execution produced (the spec's `AgentResult`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AgentResult {
    /// The structured output (an object), when the agent has an `output` schema or the
    /// executor returns one.
    pub output: Option<Value>,
    /// The reply text.
    pub content: Option<String>,
    /// Provider-specific detail (never holds a key).
    pub raw: Option<Value>,
    /// Token counts over every call made.
    pub usage: Usage,
    /// Model calls made.
    pub api_calls: u64,
    /// Cost of those calls.
    pub cost: f64,
    /// The agent's metadata.
    pub metadata: Option<Value>,
    /// The tools the model asked to call in its last reply (empty: a final answer).
    pub tool_calls: Vec<ToolCall>,
    /// Why the model stopped (`stop`, `tool_calls`, `length`, `end_turn`, `tool_use`, ...), as
    /// the provider said it.
    pub finish_reason: Option<String>,
}

impl AgentResult {
    /// A result holding a structured output (one call, no cost).
    pub fn from_output(output: Value) -> Self {
        Self {
            output: Some(output),
            api_calls: 1,
            ..Self::default()
        }
    }

    /// A result holding reply text (one call, no cost).
    pub fn from_content(content: impl Into<String>) -> Self {
        Self {
            content: Some(content.into()),
            api_calls: 1,
            ..Self::default()
        }
    }

    /// What `output_to_context` sees as `output`: the structured output, else
    /// `{"content": <text>}`, else `{}` (the reference's `output_payload`).
    pub fn output_payload(&self) -> Value {
        if let Some(o) = &self.output {
            return o.clone();
        }
        let mut m = Context::new();
        if let Some(c) = &self.content {
            m.insert("content".into(), Value::String(c.clone()));
        }
        Value::Object(m)
    }

    /// [`output_payload`](Self::output_payload), taking the output instead of copying it.
    pub fn into_output_payload(self) -> Value {
        match self.output {
            Some(o) => o,
            None => {
                let mut m = Context::new();
                if let Some(c) = self.content {
                    m.insert("content".into(), Value::String(c));
                }
                Value::Object(m)
            }
        }
    }

    /// The payload read as a typed value, e.g. the serde struct the compiler generates for an
    /// agent's `output` schema (`my_machine::agents::CriticOutput`).
    pub fn parse<T: serde::de::DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        serde_json::from_value(self.output_payload())
    }

    /// Whether the payload is empty (no output, no text, or an empty object): what `retry`
    /// with `retry_on_empty` retries.
    pub fn is_empty(&self) -> bool {
        match &self.output {
            Some(Value::Object(m)) => m.is_empty(),
            Some(Value::Null) | None => self.content.as_deref().is_none_or(str::is_empty),
            Some(_) => false,
        }
    }
}

/// Runs one agent call (the spec's `AgentExecutor`). Built by an
/// [`AgentAdapter`](super::AgentAdapter) for each `agents:` entry; execution types
/// ([`execution`](super::execution)) call it once or many times per state.
#[async_trait]
pub trait AgentExecutor: Send + Sync {
    /// One execution with the state's rendered `input` and the machine context.
    async fn execute(&self, input: &Value, context: &Context) -> Result<AgentResult, StateError>;

    /// The agent's metadata (read by `mdap_voting` for red-flag settings).
    fn metadata(&self) -> Option<&Value> {
        None
    }

    /// This executor as an agent that can drive a `tool_loop` state (flatagents can; `None`:
    /// a `tool_loop` state calling it fails with an `AgentError`).
    fn tool_agent(&self) -> Option<&dyn super::ToolAgent> {
        None
    }
}
