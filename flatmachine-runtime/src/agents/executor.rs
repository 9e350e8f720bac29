//! What runs an `agent:` state: the [`AgentExecutor`] trait and its result.

use super::llm::Usage;
use crate::tools::ToolCall;
use crate::{Context, StateError, Value};
use async_trait::async_trait;

/// What provider calls were billed: calls, tokens and money. An [`AgentResult`] carries it for
/// the calls that made it; a [`StateError`] carries it in [`billed`](StateError::billed) for
/// calls that were billed although the state failed.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Billing {
    /// Model calls that returned a reply.
    pub api_calls: u64,
    /// Token counts over those calls.
    pub usage: Usage,
    /// Their cost.
    pub cost: f64,
}

impl std::ops::AddAssign for Billing {
    fn add_assign(&mut self, other: Billing) {
        self.api_calls += other.api_calls;
        self.usage += other.usage;
        self.cost = crate::cost::add(self.cost, other.cost);
    }
}

/// Where an agent call comes from: the machine and state running it. Executors may use it
/// (the flatagent executor puts the state on the [`LlmRequest`](super::LlmRequest), so a
/// scripted backend can answer by state).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AgentCall<'a> {
    /// The machine's name.
    pub machine: &'a str,
    /// The state calling the agent.
    pub state: &'a str,
}

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

    /// The calls, usage and cost this result carries.
    pub fn billing(&self) -> Billing {
        Billing {
            api_calls: self.api_calls,
            usage: self.usage,
            cost: self.cost,
        }
    }

    /// Replaces the calls, usage and cost this result carries.
    pub fn set_billing(&mut self, billing: Billing) {
        self.api_calls = billing.api_calls;
        self.usage = billing.usage;
        self.cost = billing.cost;
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

    /// One execution on behalf of a state: what the engine calls. The default ignores `call`
    /// and runs [`execute`](Self::execute).
    async fn execute_for(
        &self,
        call: &AgentCall<'_>,
        input: &Value,
        context: &Context,
    ) -> Result<AgentResult, StateError> {
        let _ = call;
        self.execute(input, context).await
    }

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
