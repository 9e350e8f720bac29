//! Streamed replies (`stream: true` in a model profile): the server-sent events of
//! OpenAI-compatible chat completions and of Anthropic's Messages API, read with the
//! `sse-stream` parser. Each text delta goes to the run's event stream
//! ([`emit_token_delta`](crate::events::emit_token_delta)) as it arrives; the events are put
//! back together into the body the same call would have returned unstreamed, which the
//! provider's usual reply parser then reads — so a streamed call gives the same
//! `LlmResponse` (content, tool calls, usage, model, finish reason) as an unstreamed one.
//! Tool calls arrive in pieces (OpenAI: `delta.tool_calls[]` by `index`, the arguments text
//! in fragments; Anthropic: a `tool_use` block whose input comes as `input_json_delta`
//! fragments) and are joined here; input that does not parse as JSON is kept as its text, so
//! the tool loop answers that call with an error instead of failing the whole reply.
//!
//! A stream that ends before its last event (`data: [DONE]`, `message_stop`), an event that is
//! not valid SSE or JSON, an error event, or a stream past the size cap is a provider error;
//! the time cap is the call's timeout, which covers the whole stream.

use futures::StreamExt;
use serde_json::{Map, json};
use sse_stream::SseStream;

use crate::Value;
use crate::agents::llm::{LlmError, LlmErrorKind};

/// Highest tool-call `index` + 1 accepted in a stream (the reply parser then refuses more than
/// [`MAX_TOOL_CALLS_PER_REPLY`](super::MAX_TOOL_CALLS_PER_REPLY) calls, as unstreamed).
const MAX_STREAMED_TOOL_CALLS: u64 = 1024;

/// The wire format of a streamed reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StreamFormat {
    /// OpenAI-compatible `chat.completion.chunk` events ending with `data: [DONE]`.
    #[cfg_attr(not(feature = "openai"), allow(dead_code))]
    OpenAi,
    /// Anthropic `message_start` / `content_block_*` / `message_delta` / `message_stop`.
    #[cfg_attr(not(feature = "anthropic"), allow(dead_code))]
    Anthropic,
}

/// Reads the SSE body of `response` (at most `max_bytes`) and returns the body an
/// unstreamed call would have returned.
pub(crate) async fn read(
    format: StreamFormat,
    response: reqwest::Response,
    provider: &str,
    max_bytes: usize,
) -> Result<Value, LlmError> {
    let bytes =
        futures::stream::unfold((response, 0usize), move |(mut response, seen)| async move {
            match response.chunk().await {
                Ok(Some(chunk)) => {
                    let seen = seen + chunk.len();
                    if seen > max_bytes {
                        let over = std::io::Error::other(format!(
                            "the stream is larger than {max_bytes} bytes"
                        ));
                        return Some((Err(over), (response, usize::MAX)));
                    }
                    Some((Ok(chunk), (response, seen)))
                }
                Ok(None) => None,
                Err(_) if seen == usize::MAX => None,
                Err(e) => Some((
                    Err(std::io::Error::other(e.without_url())),
                    (response, usize::MAX),
                )),
            }
        });
    let mut events = std::pin::pin!(SseStream::from_bytes_stream(bytes));
    let mut assembler = Assembler::new(format);
    let fail = |kind: LlmErrorKind, message: String| {
        LlmError::new(kind, format!("{provider}: streamed reply: {message}"))
    };
    while let Some(event) = events.next().await {
        let event = event.map_err(|e| fail(LlmErrorKind::InternalServer, e.to_string()))?;
        let Some(data) = event.data.as_deref() else {
            continue;
        };
        match assembler.event(event.event.as_deref(), data) {
            Ok(Some(delta)) => crate::events::emit_token_delta(&delta),
            Ok(None) => {}
            Err(StreamError::Provider(message)) => return Err(fail(LlmErrorKind::Api, message)),
            Err(StreamError::Malformed(message)) => {
                return Err(fail(LlmErrorKind::InternalServer, message));
            }
        }
        if assembler.done {
            break;
        }
    }
    assembler
        .finish()
        .map_err(|message| fail(LlmErrorKind::InternalServer, message))
}

/// Why an event stops the stream.
#[derive(Debug)]
enum StreamError {
    /// The provider sent an error event.
    Provider(String),
    /// The event is not what the format says.
    Malformed(String),
}

/// Puts a streamed reply back together.
#[derive(Debug)]
struct Assembler {
    format: StreamFormat,
    /// OpenAI: the chunk fields seen (`id`, `model`, `created`, ...), the content, the finish
    /// reason and the usage. Anthropic: the message from `message_start`, with its blocks.
    body: Map<String, Value>,
    content: String,
    finish_reason: Value,
    /// Anthropic: the content blocks by index (text accumulated; tool input as JSON text).
    blocks: Vec<(Value, String)>,
    /// OpenAI: the tool calls by `index` (`{id, type, function: {name, arguments}}`, the
    /// arguments text joined from its fragments).
    tool_calls: Vec<Value>,
    started: bool,
    done: bool,
}

impl Assembler {
    fn new(format: StreamFormat) -> Self {
        Self {
            format,
            body: Map::new(),
            content: String::new(),
            finish_reason: Value::Null,
            blocks: Vec::new(),
            tool_calls: Vec::new(),
            started: false,
            done: false,
        }
    }

    /// Takes one event; returns the text it adds, if any.
    fn event(&mut self, name: Option<&str>, data: &str) -> Result<Option<String>, StreamError> {
        match self.format {
            StreamFormat::OpenAi => self.openai(data),
            StreamFormat::Anthropic => self.anthropic(name, data),
        }
    }

    fn openai(&mut self, data: &str) -> Result<Option<String>, StreamError> {
        if data.trim() == "[DONE]" {
            self.done = true;
            return Ok(None);
        }
        let chunk: Value = parse(data)?;
        if let Some(error) = chunk.get("error") {
            return Err(StreamError::Provider(error_text(error)));
        }
        let Value::Object(chunk) = chunk else {
            return Err(StreamError::Malformed(
                "an event that is not an object".into(),
            ));
        };
        self.started = true;
        let mut delta_text = None;
        for (key, value) in chunk {
            match key.as_str() {
                "choices" => {
                    let Some(choice) = value.get(0) else { continue };
                    if let Some(text) = choice
                        .get("delta")
                        .and_then(|d| d.get("content"))
                        .and_then(Value::as_str)
                        .filter(|t| !t.is_empty())
                    {
                        self.content.push_str(text);
                        delta_text = Some(text.to_string());
                    }
                    if let Some(calls) = choice
                        .get("delta")
                        .and_then(|d| d.get("tool_calls"))
                        .and_then(Value::as_array)
                    {
                        for call in calls {
                            self.openai_tool_call(call)?;
                        }
                    }
                    if let Some(reason) = choice.get("finish_reason").filter(|r| !r.is_null()) {
                        self.finish_reason = reason.clone();
                    }
                }
                "usage" if value.is_null() => {}
                "object" => {}
                _ => {
                    self.body.insert(key, value);
                }
            }
        }
        Ok(delta_text)
    }

    /// Adds one `delta.tool_calls[]` piece to the call at its `index`.
    fn openai_tool_call(&mut self, piece: &Value) -> Result<(), StreamError> {
        let index = piece
            .get("index")
            .and_then(Value::as_u64)
            .filter(|i| *i < MAX_STREAMED_TOOL_CALLS)
            .ok_or_else(|| {
                StreamError::Malformed("a tool call delta without a valid index".into())
            })? as usize;
        if self.tool_calls.len() <= index {
            self.tool_calls.resize(index + 1, Value::Null);
        }
        let call = &mut self.tool_calls[index];
        if call.is_null() {
            *call =
                json!({"id": "", "type": "function", "function": {"name": "", "arguments": ""}});
        }
        let text = |v: &Value, key: &str| v.get(key).and_then(Value::as_str).map(str::to_string);
        if let Some(id) = text(piece, "id").filter(|id| !id.is_empty()) {
            call["id"] = Value::String(id);
        }
        if let Some(function) = piece.get("function") {
            // The name comes whole in one piece (some servers repeat it in every piece).
            if let Some(name) = text(function, "name").filter(|n| !n.is_empty()) {
                let known = call["function"]["name"].as_str().unwrap_or_default();
                if known != name {
                    call["function"]["name"] = Value::String(format!("{known}{name}"));
                }
            }
            match function.get("arguments") {
                Some(Value::String(fragment)) => {
                    append(&mut call["function"], "arguments", fragment)
                }
                // A server sending the arguments as an object sends them whole.
                Some(other @ Value::Object(_)) => {
                    call["function"]["arguments"] = Value::String(other.to_string());
                }
                _ => {}
            }
        }
        Ok(())
    }

    fn anthropic(&mut self, name: Option<&str>, data: &str) -> Result<Option<String>, StreamError> {
        let event: Value = parse(data)?;
        let kind = event
            .get("type")
            .and_then(Value::as_str)
            .or(name)
            .unwrap_or("");
        match kind {
            "message_start" => {
                let Some(Value::Object(message)) = event.get("message") else {
                    return Err(StreamError::Malformed(
                        "message_start without a message".into(),
                    ));
                };
                self.body = message.clone();
                self.started = true;
            }
            "content_block_start" => {
                let index = block_index(&event)?;
                let block = event.get("content_block").cloned().unwrap_or(json!({}));
                if self.blocks.len() <= index {
                    self.blocks.resize(index + 1, (Value::Null, String::new()));
                }
                self.blocks[index] = (block, String::new());
            }
            "content_block_delta" => {
                let index = block_index(&event)?;
                let Some((block, partial_json)) = self.blocks.get_mut(index) else {
                    return Err(StreamError::Malformed(format!(
                        "a delta for content block {index}, which did not start"
                    )));
                };
                let delta = event.get("delta").cloned().unwrap_or(Value::Null);
                let field = |name: &str| delta.get(name).and_then(Value::as_str).unwrap_or("");
                match delta.get("type").and_then(Value::as_str) {
                    Some("text_delta") => {
                        let text = field("text");
                        append(block, "text", text);
                        return Ok((!text.is_empty()).then(|| text.to_string()));
                    }
                    Some("thinking_delta") => append(block, "thinking", field("thinking")),
                    Some("signature_delta") => append(block, "signature", field("signature")),
                    Some("input_json_delta") => partial_json.push_str(field("partial_json")),
                    _ => {}
                }
            }
            "content_block_stop" => {
                let index = block_index(&event)?;
                if let Some((block, partial_json)) = self.blocks.get_mut(index)
                    && !partial_json.is_empty()
                {
                    // Input that is not JSON stays text: the tool loop answers that call with
                    // an error, the rest of the reply is kept.
                    let input = serde_json::from_str(partial_json)
                        .unwrap_or_else(|_| Value::String(partial_json.clone()));
                    if let Value::Object(b) = block {
                        b.insert("input".into(), input);
                    }
                    partial_json.clear();
                }
            }
            "message_delta" => {
                if let Some(Value::Object(delta)) = event.get("delta") {
                    for (key, value) in delta {
                        self.body.insert(key.clone(), value.clone());
                    }
                }
                if let Some(Value::Object(usage)) = event.get("usage") {
                    let total = self
                        .body
                        .entry("usage")
                        .or_insert_with(|| Value::Object(Map::new()));
                    if let Value::Object(total) = total {
                        for (key, value) in usage {
                            total.insert(key.clone(), value.clone());
                        }
                    }
                }
            }
            "message_stop" => self.done = true,
            "error" => {
                let error = event.get("error").unwrap_or(&Value::Null);
                return Err(StreamError::Provider(error_text(error)));
            }
            // `ping` and event types added later are skipped, as the API asks.
            _ => {}
        }
        Ok(None)
    }

    /// The unstreamed body, once the stream reached its end.
    fn finish(mut self) -> Result<Value, String> {
        if !self.done {
            return Err(if self.started {
                "the stream was cut before its end".to_string()
            } else {
                "the stream ended without any event".to_string()
            });
        }
        match self.format {
            StreamFormat::OpenAi => {
                self.body.insert("object".into(), json!("chat.completion"));
                let mut message = json!({"role": "assistant", "content": self.content});
                let calls: Vec<Value> = self
                    .tool_calls
                    .into_iter()
                    .filter(|c| !c.is_null())
                    .collect();
                if !calls.is_empty() {
                    message["tool_calls"] = Value::Array(calls);
                }
                self.body.insert(
                    "choices".into(),
                    json!([{
                        "index": 0,
                        "message": message,
                        "finish_reason": self.finish_reason,
                    }]),
                );
            }
            StreamFormat::Anthropic => {
                let blocks = self
                    .blocks
                    .into_iter()
                    .map(|(b, _)| b)
                    .filter(|b| !b.is_null());
                self.body
                    .insert("content".into(), Value::Array(blocks.collect()));
            }
        }
        Ok(Value::Object(self.body))
    }
}

fn parse(data: &str) -> Result<Value, StreamError> {
    serde_json::from_str(data).map_err(|e| {
        StreamError::Malformed(format!(
            "an event that is not JSON ({e}, {} bytes)",
            data.len()
        ))
    })
}

fn block_index(event: &Value) -> Result<usize, StreamError> {
    event
        .get("index")
        .and_then(Value::as_u64)
        .filter(|i| *i < 1024)
        .map(|i| i as usize)
        .ok_or_else(|| StreamError::Malformed("a content block event without a valid index".into()))
}

fn append(block: &mut Value, field: &str, text: &str) {
    if let Value::Object(b) = block {
        let entry = b.entry(field).or_insert_with(|| json!(""));
        if let Value::String(s) = entry {
            s.push_str(text);
        } else {
            *entry = json!(text);
        }
    }
}

fn error_text(error: &Value) -> String {
    let message = error
        .get("message")
        .and_then(Value::as_str)
        .unwrap_or("no message");
    match error.get("type").and_then(Value::as_str) {
        Some(kind) => format!("error event `{kind}`: {message}"),
        None => format!("error event: {message}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed(
        format: StreamFormat,
        events: &[(Option<&str>, &str)],
    ) -> (Vec<String>, Result<Value, String>) {
        let mut a = Assembler::new(format);
        let mut deltas = Vec::new();
        for (name, data) in events {
            match a.event(*name, data) {
                Ok(Some(d)) => deltas.push(d),
                Ok(None) => {}
                Err(e) => return (deltas, Err(format!("{e:?}"))),
            }
        }
        (deltas, a.finish())
    }

    #[test]
    fn anthropic_tool_input_is_joined_and_parsed() {
        let (_, body) = feed(
            StreamFormat::Anthropic,
            &[
                (
                    None,
                    r#"{"type":"message_start","message":{"model":"m","content":[],"usage":{"input_tokens":3}}}"#,
                ),
                (
                    None,
                    r#"{"type":"content_block_start","index":0,"content_block":{"type":"tool_use","id":"t1","name":"f","input":{}}}"#,
                ),
                (
                    None,
                    r#"{"type":"content_block_delta","index":0,"delta":{"type":"input_json_delta","partial_json":"{\"a\":"}}"#,
                ),
                (
                    None,
                    r#"{"type":"content_block_delta","index":0,"delta":{"type":"input_json_delta","partial_json":"1}"}}"#,
                ),
                (None, r#"{"type":"content_block_stop","index":0}"#),
                (None, r#"{"type":"message_stop"}"#),
            ],
        );
        assert_eq!(body.unwrap()["content"][0]["input"], json!({"a": 1}));
    }

    #[test]
    fn openai_tool_call_pieces_are_joined_by_index() {
        let (deltas, body) = feed(
            StreamFormat::OpenAi,
            &[
                (
                    None,
                    r#"{"model":"m","choices":[{"index":0,"delta":{"role":"assistant","content":"Let me see."}}]}"#,
                ),
                (
                    None,
                    r#"{"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"id":"c1","type":"function","function":{"name":"lookup","arguments":"{\"wo"}}]}}]}"#,
                ),
                (
                    None,
                    r#"{"choices":[{"index":0,"delta":{"tool_calls":[{"index":1,"id":"c2","function":{"name":"count","arguments":"{}"}},{"index":0,"function":{"arguments":"rd\":\"x\"}"}}]}}]}"#,
                ),
                (
                    None,
                    r#"{"choices":[{"index":0,"delta":{},"finish_reason":"tool_calls"}]}"#,
                ),
                (None, "[DONE]"),
            ],
        );
        assert_eq!(deltas, vec!["Let me see.".to_string()]);
        let body = body.unwrap();
        let message = &body["choices"][0]["message"];
        assert_eq!(message["content"], "Let me see.");
        assert_eq!(
            message["tool_calls"],
            json!([
                {"id": "c1", "type": "function", "function": {"name": "lookup", "arguments": "{\"word\":\"x\"}"}},
                {"id": "c2", "type": "function", "function": {"name": "count", "arguments": "{}"}},
            ])
        );
        assert_eq!(body["choices"][0]["finish_reason"], "tool_calls");
        let (_, bad) = feed(
            StreamFormat::OpenAi,
            &[(
                None,
                r#"{"choices":[{"index":0,"delta":{"tool_calls":[{"function":{"name":"f"}}]}}]}"#,
            )],
        );
        assert!(bad.unwrap_err().contains("valid index"));
    }

    #[test]
    fn anthropic_tool_input_that_is_not_json_is_kept_as_text() {
        let (_, body) = feed(
            StreamFormat::Anthropic,
            &[
                (
                    None,
                    r#"{"type":"message_start","message":{"model":"m","content":[]}}"#,
                ),
                (
                    None,
                    r#"{"type":"content_block_start","index":0,"content_block":{"type":"tool_use","id":"t1","name":"f","input":{}}}"#,
                ),
                (
                    None,
                    r#"{"type":"content_block_delta","index":0,"delta":{"type":"input_json_delta","partial_json":"{\"a\":"}}"#,
                ),
                (None, r#"{"type":"content_block_stop","index":0}"#),
                (None, r#"{"type":"message_stop"}"#),
            ],
        );
        assert_eq!(body.unwrap()["content"][0]["input"], json!("{\"a\":"));
    }

    #[test]
    fn a_delta_for_a_block_that_never_started_is_malformed() {
        let (_, body) = feed(
            StreamFormat::Anthropic,
            &[(
                None,
                r#"{"type":"content_block_delta","index":3,"delta":{"type":"text_delta","text":"x"}}"#,
            )],
        );
        assert!(body.unwrap_err().contains("did not start"));
    }
}
