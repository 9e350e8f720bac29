//! Tool calls on the wire: how tools, tool choices, assistant tool calls and tool results are
//! written for each provider, and how the tool calls of a reply are read back.
//!
//! - **OpenAI-compatible**: `tools: [{type: function, function: {name, description,
//!   parameters}}]`, `tool_choice: auto | none | required | {type: function, function:
//!   {name}}`; an assistant message carries `tool_calls: [{id, type: function, function:
//!   {name, arguments}}]` (arguments as JSON text, `content: null` when it has no text); a
//!   result is `{role: tool, tool_call_id, content}`. Replies: `choices[0].message.tool_calls`.
//! - **Anthropic Messages**: `tools: [{name, description, input_schema}]`, `tool_choice:
//!   {type: auto | none | any | tool, name}`; an assistant turn is a list of `text` and
//!   `tool_use` blocks (`input` as an object); results are `tool_result` blocks (`tool_use_id`,
//!   `content`, `is_error`) in the next user turn, with consecutive user turns merged, as the
//!   API wants strictly alternating roles. Replies: the `tool_use` blocks of `content`.
//!
//! A reply's tool calls are untrusted: at most [`MAX_TOOL_CALLS_PER_REPLY`], each with a string
//! name of at most [`MAX_TOOL_NAME`] bytes (else the reply is malformed, an
//! `InternalServerError` like any other malformed 2xx reply); the
//! arguments are kept as the model wrote them, so arguments that are not valid JSON reach the
//! tool loop, which answers the call with an error the model can fix.

use crate::Value;
use crate::agents::llm::{LlmRequest, Message, Role, ToolChoice};
use crate::tools::ToolCall;
use serde_json::{Map, json};

/// Most tool calls read from one reply.
pub const MAX_TOOL_CALLS_PER_REPLY: usize = 128;
/// Longest tool name accepted in a reply, in bytes.
pub const MAX_TOOL_NAME: usize = 256;

#[cfg(feature = "anthropic")]
/// Whether a request needs the tool-aware message format: it offers tools or its
/// conversation holds tool calls or results.
pub(crate) fn uses_tools(request: &LlmRequest) -> bool {
    !request.tools.is_empty()
        || request
            .messages
            .iter()
            .any(|m| m.role == Role::Tool || !m.tool_calls.is_empty())
}

// ----- OpenAI-compatible -----------------------------------------------------------------

#[cfg(feature = "openai")]
/// One message in the chat completions format.
pub(crate) fn openai_message(m: &Message) -> Value {
    match m.role {
        Role::Tool => json!({
            "role": "tool",
            "tool_call_id": m.tool_call_id.as_deref().unwrap_or_default(),
            "content": m.content,
        }),
        Role::Assistant if !m.tool_calls.is_empty() => {
            let calls: Vec<Value> = m
                .tool_calls
                .iter()
                .map(|c| {
                    json!({
                        "id": c.id,
                        "type": "function",
                        "function": {"name": c.name, "arguments": c.arguments},
                    })
                })
                .collect();
            let content = if m.content.is_empty() {
                Value::Null
            } else {
                Value::String(m.content.clone())
            };
            json!({"role": "assistant", "content": content, "tool_calls": calls})
        }
        _ => json!({"role": m.role, "content": m.content}),
    }
}

#[cfg(feature = "openai")]
/// Adds `tools` and `tool_choice` (only when the request offers tools).
pub(crate) fn openai_tools(request: &LlmRequest, body: &mut Map<String, Value>) {
    if request.tools.is_empty() {
        return;
    }
    body.insert(
        "tools".into(),
        Value::Array(request.tools.iter().map(|t| t.to_openai()).collect()),
    );
    let choice = match &request.tool_choice {
        ToolChoice::Auto => json!("auto"),
        ToolChoice::None => json!("none"),
        ToolChoice::Required => json!("required"),
        ToolChoice::Tool(name) => json!({"type": "function", "function": {"name": name}}),
    };
    body.insert("tool_choice".into(), choice);
}

#[cfg(feature = "openai")]
/// The tool calls of `choices[0].message` (none when it has no `tool_calls`). `Err` names
/// what is malformed.
pub(crate) fn openai_tool_calls(message: &Value) -> Result<Vec<ToolCall>, String> {
    let calls = match message.get("tool_calls") {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::Array(calls)) => calls,
        Some(_) => return Err("choices[0].message.tool_calls is not a list".into()),
    };
    if calls.len() > MAX_TOOL_CALLS_PER_REPLY {
        return Err(format!(
            "{} tool calls in one reply (at most {MAX_TOOL_CALLS_PER_REPLY} are accepted)",
            calls.len()
        ));
    }
    calls
        .iter()
        .enumerate()
        .map(|(i, call)| {
            let function = call
                .get("function")
                .filter(|f| f.is_object())
                .ok_or_else(|| format!("tool_calls[{i}] has no function"))?;
            let name = tool_name(function.get("name"), i)?;
            // Servers that send arguments as an object (not JSON text) are read all the same.
            let arguments = match function.get("arguments") {
                None | Some(Value::Null) => String::new(),
                Some(Value::String(s)) => s.clone(),
                Some(other) => other.to_string(),
            };
            Ok(ToolCall {
                id: call_id(call.get("id"), i),
                name,
                arguments,
            })
        })
        .collect()
}

// ----- Anthropic -------------------------------------------------------------------------

#[cfg(feature = "anthropic")]
/// The `messages` of a Messages API request (system messages excluded): tool calls as
/// `tool_use` blocks, results as `tool_result` blocks, consecutive same-role turns merged.
pub(crate) fn anthropic_messages(messages: &[Message]) -> Vec<Value> {
    let mut out: Vec<(&'static str, Vec<Value>)> = Vec::new();
    for m in messages {
        let (role, blocks): (&'static str, Vec<Value>) = match m.role {
            Role::System => continue,
            Role::User => ("user", text_block(&m.content).into_iter().collect()),
            Role::Tool => {
                let mut block = json!({
                    "type": "tool_result",
                    "tool_use_id": m.tool_call_id.as_deref().unwrap_or_default(),
                    "content": m.content,
                });
                if m.is_error {
                    block["is_error"] = Value::Bool(true);
                }
                ("user", vec![block])
            }
            Role::Assistant => {
                let mut blocks: Vec<Value> = text_block(&m.content).into_iter().collect();
                for c in &m.tool_calls {
                    // A call whose arguments are not an object (only possible from another
                    // provider's reply) is sent with empty input.
                    let input = match c.parsed_arguments() {
                        Ok(v) => v,
                        Err(_) => json!({}),
                    };
                    blocks.push(
                        json!({"type": "tool_use", "id": c.id, "name": c.name, "input": input}),
                    );
                }
                ("assistant", blocks)
            }
        };
        match out.last_mut() {
            Some((last, existing)) if *last == role => existing.extend(blocks),
            _ => out.push((role, blocks)),
        }
    }
    out.into_iter()
        .map(|(role, blocks)| {
            let content = if blocks.is_empty() {
                // The API refuses empty content.
                json!([{"type": "text", "text": "(empty)"}])
            } else {
                Value::Array(blocks)
            };
            json!({"role": role, "content": content})
        })
        .collect()
}

#[cfg(feature = "anthropic")]
fn text_block(text: &str) -> Option<Value> {
    (!text.is_empty()).then(|| json!({"type": "text", "text": text}))
}

#[cfg(feature = "anthropic")]
/// Adds `tools` and `tool_choice` (only when the request offers tools).
pub(crate) fn anthropic_tools(request: &LlmRequest, body: &mut Map<String, Value>) {
    if request.tools.is_empty() {
        return;
    }
    body.insert(
        "tools".into(),
        Value::Array(
            request
                .tools
                .iter()
                .map(|t| {
                    json!({
                        "name": t.name,
                        "description": t.description,
                        "input_schema": t.parameters,
                    })
                })
                .collect(),
        ),
    );
    let choice = match &request.tool_choice {
        ToolChoice::Auto => json!({"type": "auto"}),
        ToolChoice::None => json!({"type": "none"}),
        ToolChoice::Required => json!({"type": "any"}),
        ToolChoice::Tool(name) => json!({"type": "tool", "name": name}),
    };
    body.insert("tool_choice".into(), choice);
}

#[cfg(feature = "anthropic")]
/// The `tool_use` blocks of a reply's `content`, as calls.
pub(crate) fn anthropic_tool_calls(content: &[Value]) -> Result<Vec<ToolCall>, String> {
    let uses: Vec<&Value> = content
        .iter()
        .filter(|b| b.get("type").and_then(Value::as_str) == Some("tool_use"))
        .collect();
    if uses.len() > MAX_TOOL_CALLS_PER_REPLY {
        return Err(format!(
            "{} tool calls in one reply (at most {MAX_TOOL_CALLS_PER_REPLY} are accepted)",
            uses.len()
        ));
    }
    uses.iter()
        .enumerate()
        .map(|(i, block)| {
            let name = tool_name(block.get("name"), i)?;
            let arguments = match block.get("input") {
                None | Some(Value::Null) => String::new(),
                Some(input) => input.to_string(),
            };
            Ok(ToolCall {
                id: call_id(block.get("id"), i),
                name,
                arguments,
            })
        })
        .collect()
}

fn tool_name(name: Option<&Value>, i: usize) -> Result<String, String> {
    match name {
        Some(Value::String(n)) if n.len() <= MAX_TOOL_NAME => Ok(n.clone()),
        Some(Value::String(n)) => Err(format!(
            "tool call {i} has a name of {} bytes (at most {MAX_TOOL_NAME})",
            n.len()
        )),
        _ => Err(format!("tool call {i} has no name")),
    }
}

/// The call's id, else one made up from its position (some local servers send none).
fn call_id(id: Option<&Value>, i: usize) -> String {
    match id {
        Some(Value::String(s)) if !s.is_empty() => s.chars().take(256).collect(),
        _ => format!("call_{i}"),
    }
}

#[cfg(all(test, feature = "openai", feature = "anthropic"))]
mod tests {
    use super::*;

    #[test]
    fn anthropic_turns_alternate() {
        let messages = vec![
            Message::new(Role::System, "sys"),
            Message::new(Role::User, "q"),
            Message::assistant_with_tools(
                "",
                vec![
                    ToolCall::new("t1", "a", json!({"x": 1})),
                    ToolCall::new("t2", "b", json!({})),
                ],
            ),
            Message::tool_result("t1", "one", false),
            Message::tool_result("t2", "bad", true),
            Message::new(Role::User, "now answer"),
        ];
        let out = anthropic_messages(&messages);
        assert_eq!(out.len(), 3);
        assert_eq!(out[1]["content"][0]["type"], "tool_use");
        assert_eq!(out[1]["content"][0]["input"], json!({"x": 1}));
        assert_eq!(out[2]["role"], "user");
        assert_eq!(
            out[2]["content"],
            json!([
                {"type": "tool_result", "tool_use_id": "t1", "content": "one"},
                {"type": "tool_result", "tool_use_id": "t2", "content": "bad", "is_error": true},
                {"type": "text", "text": "now answer"},
            ])
        );
    }

    #[test]
    fn openai_calls_are_read_leniently_but_bounded() {
        let message = json!({"tool_calls": [
            {"id": "a", "type": "function", "function": {"name": "f", "arguments": "{\"x\": "}},
            {"function": {"name": "g", "arguments": {"y": 2}}},
        ]});
        let calls = openai_tool_calls(&message).unwrap();
        assert_eq!(calls[0].arguments, "{\"x\": ");
        assert_eq!(calls[1].id, "call_1");
        assert_eq!(calls[1].arguments, "{\"y\":2}");
        let err = openai_tool_calls(&json!({"tool_calls": [{"function": {"arguments": "{}"}}]}))
            .unwrap_err();
        assert_eq!(err, "tool call 0 has no name");
        let many: Vec<Value> = (0..200)
            .map(|_| json!({"function": {"name": "f"}}))
            .collect();
        assert!(openai_tool_calls(&json!({ "tool_calls": many })).is_err());
    }
}
