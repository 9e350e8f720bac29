//! Tools: what a model can call from a `tool_loop` state.
//!
//! Every tool, however it is defined, runs through one trait, [`Tool`]: a [`ToolDefinition`]
//! (name, description, JSON Schema of the arguments, in the OpenAI function format) and an
//! async `call`. Three sources feed it:
//!
//! - **Inline tools** written in the agent YAML (`tools:`, the OpenAI function format). The
//!   compiler checks each `parameters` schema; the implementation is a Rust closure registered
//!   with `MachineBuilder::tool_handler(name, ..)`.
//! - **Rust tools** registered with `MachineBuilder::tool(..)`: [`tool_fn`] (a closure over a
//!   serde argument type whose schema comes from `schemars`, so the model sees exactly what Rust
//!   accepts), a [`TypedTool`] implementation, or any [`Tool`].
//! - **MCP servers** from the agent's `mcp:` section (cargo feature `mcp`): see [`mcp`].
//!
//! Arguments from the model are untrusted: [`ToolSet::call`] parses them, checks them against
//! the tool's schema and only then runs the tool; a violation, an unknown tool, a timeout or a
//! tool's own error comes back to the model as an error result ([`ToolOutput::is_error`]),
//! never as a panic or a failed run. `docs/tools.md` describes the whole loop.

mod filter;
#[cfg(feature = "mcp")]
pub mod mcp;
mod run_tools;
mod rust;
mod schema;
mod spec;
mod toolset;

pub use filter::{ToolFilter, matches_pattern};
pub(crate) use run_tools::RunTools;
pub use rust::{FnTool, HandlerFn, InlineTool, Typed, TypedTool, tool_fn};
pub use schema::{ArgumentValidator, check_parameters_schema};
pub use spec::{InlineToolSpec, McpServerSpec, McpSpec};
pub use toolset::{ToolSet, ToolSource};

use crate::Value;
use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use std::fmt;

/// The most bytes of one tool result kept for the model; longer output is cut (at a character
/// boundary) and marked, so one tool cannot flood the conversation or the checkpoints.
pub const MAX_RESULT_BYTES: usize = 256 * 1024;

/// What the model is told about a tool (the OpenAI function format's `function` object).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToolDefinition {
    /// The name the model calls it by.
    pub name: String,
    /// What it does (shown to the model).
    #[serde(default)]
    pub description: String,
    /// JSON Schema of the arguments object.
    #[serde(default = "empty_object_schema")]
    pub parameters: Value,
}

/// `{"type": "object", "properties": {}}`: the schema of a tool without arguments.
pub fn empty_object_schema() -> Value {
    serde_json::json!({"type": "object", "properties": {}})
}

impl ToolDefinition {
    /// A definition with these parts.
    pub fn new(name: impl Into<String>, description: impl Into<String>, parameters: Value) -> Self {
        Self {
            name: name.into(),
            description: description.into(),
            parameters,
        }
    }

    /// The OpenAI function-calling form: `{"type": "function", "function": {name,
    /// description, parameters}}`.
    pub fn to_openai(&self) -> Value {
        serde_json::json!({
            "type": "function",
            "function": {
                "name": self.name,
                "description": self.description,
                "parameters": self.parameters,
            }
        })
    }
}

/// One tool call asked for by the model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToolCall {
    /// The provider's id for the call (answered by the result with the same id).
    pub id: String,
    /// The tool's name, as the model wrote it (not necessarily a known tool).
    pub name: String,
    /// The arguments as the model wrote them: JSON text (not necessarily valid).
    pub arguments: String,
}

impl ToolCall {
    /// A call with these parts; `arguments` is serialized to JSON text.
    pub fn new(id: impl Into<String>, name: impl Into<String>, arguments: Value) -> Self {
        Self {
            id: id.into(),
            name: name.into(),
            arguments: arguments.to_string(),
        }
    }

    /// The arguments parsed: an object, or why they are not one. Empty text reads as `{}`
    /// (some servers send `""` for a call without arguments).
    pub fn parsed_arguments(&self) -> Result<Value, String> {
        let text = self.arguments.trim();
        if text.is_empty() {
            return Ok(Value::Object(serde_json::Map::new()));
        }
        // Untrusted: nesting is bounded before parsing, as for every value entering a run.
        match crate::agents::output::parse_bounded(text) {
            Ok(v @ Value::Object(_)) => Ok(v),
            Ok(other) => Err(format!(
                "the arguments must be a JSON object, got {}",
                json_kind(&other)
            )),
            Err(crate::agents::output::BoundedJsonError::Syntax(e)) => {
                Err(format!("the arguments are not valid JSON ({e})"))
            }
            Err(e) => Err(format!("the arguments are refused: {e}")),
        }
    }

    /// The arguments as a JSON value for display: the parsed object, else the text as a string.
    pub fn arguments_value(&self) -> Value {
        self.parsed_arguments()
            .unwrap_or_else(|_| Value::String(self.arguments.clone()))
    }
}

fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// What a tool returned to the model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToolOutput {
    /// The text the model sees.
    pub content: String,
    /// Whether it is an error report (the model sees it either way).
    #[serde(default)]
    pub is_error: bool,
}

impl ToolOutput {
    /// A successful result.
    pub fn text(content: impl Into<String>) -> Self {
        Self {
            content: content.into(),
            is_error: false,
        }
    }

    /// An error result.
    pub fn error(content: impl Into<String>) -> Self {
        Self {
            content: content.into(),
            is_error: true,
        }
    }

    /// The content cut to [`MAX_RESULT_BYTES`].
    pub(crate) fn bounded(mut self) -> Self {
        if self.content.len() > MAX_RESULT_BYTES {
            let total = self.content.len();
            let mut end = MAX_RESULT_BYTES;
            while !self.content.is_char_boundary(end) {
                end -= 1;
            }
            self.content.truncate(end);
            self.content
                .push_str(&format!("\n[… output cut at {end} of {total} bytes]"));
        }
        self
    }
}

impl From<String> for ToolOutput {
    fn from(s: String) -> Self {
        Self::text(s)
    }
}

impl From<&str> for ToolOutput {
    fn from(s: &str) -> Self {
        Self::text(s)
    }
}

impl From<Value> for ToolOutput {
    /// A JSON value: strings as they are, anything else as JSON text.
    fn from(v: Value) -> Self {
        match v {
            Value::String(s) => Self::text(s),
            other => Self::text(other.to_string()),
        }
    }
}

/// A tool's failure. It is not a run failure: the loop sends it to the model as an error
/// result (`"Error: <message>"`) and carries on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToolError {
    /// What went wrong, for the model.
    pub message: String,
}

impl ToolError {
    /// An error with this message.
    pub fn new(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
        }
    }
}

impl fmt::Display for ToolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for ToolError {}

impl From<String> for ToolError {
    fn from(message: String) -> Self {
        Self { message }
    }
}

impl From<&str> for ToolError {
    fn from(message: &str) -> Self {
        Self::new(message)
    }
}

/// Who is calling a tool: the call and the run it belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ToolInvocation {
    /// The provider's id of the call.
    pub call_id: String,
    /// The tool's name.
    pub tool: String,
    /// The machine's `data.name`.
    pub machine: &'static str,
    /// The `tool_loop` state.
    pub state: &'static str,
    /// The execution running the loop.
    pub execution_id: String,
}

impl ToolInvocation {
    /// An invocation of `tool` for call `call_id` (machine, state and execution left empty):
    /// for calling a tool outside a machine, e.g. in a test.
    pub fn new(call_id: impl Into<String>, tool: impl Into<String>) -> Self {
        Self {
            call_id: call_id.into(),
            tool: tool.into(),
            machine: "",
            state: "",
            execution_id: String::new(),
        }
    }

    pub(crate) fn for_run(
        call: &ToolCall,
        machine: &'static str,
        state: &'static str,
        execution_id: &str,
    ) -> Self {
        Self {
            call_id: call.id.clone(),
            tool: call.name.clone(),
            machine,
            state,
            execution_id: execution_id.to_string(),
        }
    }
}

/// Something a model can call. Implemented by inline (YAML) tools with their handler, by Rust
/// tools ([`tool_fn`], [`TypedTool`]) and by MCP tools.
///
/// The loop validates the arguments against [`definition`](Self::definition)`.parameters`
/// before calling: `call` gets an object that fits the schema.
#[async_trait]
pub trait Tool: Send + Sync {
    /// The tool as the model sees it.
    fn definition(&self) -> &ToolDefinition;

    /// Runs the tool. An `Err` is sent to the model as an error result.
    async fn call(
        &self,
        arguments: Value,
        invocation: &ToolInvocation,
    ) -> Result<ToolOutput, ToolError>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arguments_nested_past_the_run_limit_are_refused_before_parsing() {
        let depth = crate::agents::output::MAX_JSON_DEPTH;
        let nested = |levels: usize| {
            format!(
                "{{\"a\":{}1{}}}",
                "[".repeat(levels - 1),
                "]".repeat(levels - 1)
            )
        };
        let ok = ToolCall {
            id: "c".into(),
            name: "t".into(),
            arguments: nested(depth),
        };
        assert!(ok.parsed_arguments().is_ok());
        let deep = ToolCall {
            arguments: nested(depth + 1),
            ..ok
        };
        let err = deep.parsed_arguments().unwrap_err();
        assert!(err.contains("levels deep"), "{err}");
        // Shown as text in events, never parsed.
        assert!(deep.arguments_value().is_string());
        let bad = ToolCall {
            arguments: "{\"a\": ".into(),
            ..deep
        };
        assert!(
            bad.parsed_arguments()
                .unwrap_err()
                .contains("not valid JSON")
        );
    }
}
