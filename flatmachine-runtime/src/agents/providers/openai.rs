//! [`OpenAiBackend`]: OpenAI-compatible chat completions (feature `openai`).

use std::fmt;

use async_trait::async_trait;
use flatmachine_providers::Wire;
use reqwest::header::HeaderMap;
use serde_json::{Map, json};

use super::http::{self, Auth, Post, Transport};
use super::stream::StreamFormat;
use super::tool_wire;
use crate::Value;
pub use crate::agents::llm::JsonMode;
use crate::agents::llm::{LlmBackend, LlmError, LlmRequest, LlmResponse, ResponseFormat, Usage};

/// Calls an OpenAI-compatible chat completions endpoint: `POST {base}/chat/completions`.
///
/// The request's `provider` (default `openai`) picks an entry of the provider table
/// (`flatmachine_providers`: openai, cerebras, groq, together_ai, fireworks_ai, mistral,
/// deepseek, openrouter, xai, ollama, with LiteLLM's endpoints and key variables).
///
/// * **Endpoint**: the request's `base_url`, else the provider's environment variable
///   (`$OPENAI_BASE_URL` / `$OPENAI_API_BASE`, `$CEREBRAS_API_BASE`, `$OLLAMA_API_BASE`, ...),
///   else the provider's public endpoint, followed by `/chat/completions` (unless it already
///   ends so). An unknown provider without `base_url` is a
///   [`Configuration`](crate::agents::LlmErrorKind::Configuration) error: its prompts are never
///   sent to another vendor.
/// * **Key**: read at call time from the variable named by the request's `api_key_env`, else
///   the provider's (`$OPENAI_API_KEY`, `$CEREBRAS_API_KEY`, ...), and sent as
///   `Authorization: Bearer <key>`. A missing (or blank) key is a `Configuration` error naming
///   the variable only when calling the provider's public endpoint: a server named by
///   `base_url` or the environment (vLLM, llama.cpp, Ollama) is called without
///   `Authorization` when no key is set. An unknown provider reads a key only from
///   `api_key_env`.
/// * **Body**: `model` (as given), `messages`, `temperature` always; `max_tokens`, `top_p`,
///   `top_k`, `frequency_penalty`, `presence_penalty` and `seed` only when set (`top_k` is not
///   an OpenAI parameter: api.openai.com rejects it, vLLM/llama.cpp/Ollama accept it).
///   [`ResponseFormat::Json`] becomes a `response_format` per the request's
///   [`json_mode`](LlmRequest::json_mode) (the profile's `json_mode`), else the backend's
///   [`JsonMode`] (default `json_schema`).
/// * **Tools**: with [`LlmRequest::tools`], `tools` (function format) and `tool_choice`;
///   assistant messages carry `tool_calls`, results go as `role: tool` messages with their
///   `tool_call_id`. A reply's `choices[0].message.tool_calls` become
///   [`LlmResponse::tool_calls`] (arguments kept as the model wrote them; at most 128 calls);
///   a streamed reply's `tool_calls` deltas are joined into the same calls.
/// * **Reply**: `choices[0].message.content` (a `null` content is an empty reply),
///   `choices[0].finish_reason`, `model`, and `usage.prompt_tokens` / `completion_tokens` /
///   `prompt_tokens_details.cached_tokens`. A 2xx reply that is not JSON or has no
///   `choices[0].message` is an [`InternalServer`](crate::agents::LlmErrorKind::InternalServer)
///   error (as LiteLLM raises it).
/// * **Transport**: per-call timeout (default 120 s), transport retries of 429/5xx/529,
///   connection failures and timeouts (default 2, honouring `retry-after`), errors mapped to
///   LiteLLM's types; see the [`providers`](super) module.
///
/// The key is never stored, logged, printed by `Debug` or put into an error message.
#[derive(Clone)]
pub struct OpenAiBackend {
    transport: Transport,
    json_mode: JsonMode,
}

impl fmt::Debug for OpenAiBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OpenAiBackend")
            .field("timeout", &self.transport.settings.timeout)
            .field("max_retries", &self.transport.settings.max_retries)
            .field("json_mode", &self.json_mode)
            .finish_non_exhaustive()
    }
}

impl Default for OpenAiBackend {
    fn default() -> Self {
        Self::new()
    }
}

impl OpenAiBackend {
    /// The endpoint used when neither the request nor the environment gives one.
    pub const DEFAULT_BASE_URL: &'static str = "https://api.openai.com/v1";
    /// The environment variable overriding the default endpoint.
    pub const BASE_URL_ENV: &'static str = "OPENAI_BASE_URL";
    /// The environment variable holding the key when the request names none.
    pub const API_KEY_ENV: &'static str = "OPENAI_API_KEY";

    /// A backend with its own HTTP client and the defaults: 120 s timeout, 2 retries,
    /// [`JsonMode::JsonSchema`].
    pub fn new() -> Self {
        Self {
            transport: Transport::new(),
            json_mode: JsonMode::default(),
        }
    }

    /// A backend using plain JSON mode (`{"type": "json_object"}`), for OpenAI-compatible
    /// servers without `json_schema` support.
    pub fn json_object_mode() -> Self {
        Self::new().with_json_mode(JsonMode::JsonObject)
    }

    /// Sets how JSON output is requested.
    pub fn with_json_mode(mut self, mode: JsonMode) -> Self {
        self.json_mode = mode;
        self
    }

    http::transport_settings!();

    /// The JSON body sent for `request`.
    pub fn request_body(&self, request: &LlmRequest) -> Value {
        let mut body = Map::new();
        body.insert("model".into(), json!(request.model));
        body.insert(
            "messages".into(),
            Value::Array(
                request
                    .messages
                    .iter()
                    .map(tool_wire::openai_message)
                    .collect(),
            ),
        );
        body.insert("temperature".into(), json!(request.temperature));
        let optional = [
            ("max_tokens", request.max_tokens.map(|v| json!(v))),
            ("top_p", request.top_p.map(|v| json!(v))),
            ("top_k", request.top_k.map(|v| json!(v))),
            (
                "frequency_penalty",
                request.frequency_penalty.map(|v| json!(v)),
            ),
            (
                "presence_penalty",
                request.presence_penalty.map(|v| json!(v)),
            ),
            ("seed", request.seed.map(|v| json!(v))),
        ];
        for (name, value) in optional {
            if let Some(value) = value {
                body.insert(name.into(), value);
            }
        }
        tool_wire::openai_tools(request, &mut body);
        if let ResponseFormat::Json { name, schema } = &request.response_format {
            let format = match request.json_mode.unwrap_or(self.json_mode) {
                JsonMode::JsonSchema => json!({
                    "type": "json_schema",
                    "json_schema": {"name": name, "schema": schema, "strict": false},
                }),
                JsonMode::JsonObject => json!({"type": "json_object"}),
            };
            body.insert("response_format".into(), format);
        }
        if request.stream {
            body.insert("stream".into(), json!(true));
            // Usage (and so cost) comes in a last chunk only when asked for.
            body.insert("stream_options".into(), json!({"include_usage": true}));
        }
        Value::Object(body)
    }
}

#[async_trait]
impl LlmBackend for OpenAiBackend {
    fn name(&self) -> &str {
        "openai"
    }

    async fn complete(&self, request: &LlmRequest) -> Result<LlmResponse, LlmError> {
        let target = http::target(request, Wire::OpenAi, "openai")?;
        let url = match target.known {
            Some(p) => p.openai_endpoint(&target.base),
            None => http::endpoint(&target.base, "/chat/completions"),
        };
        let body = self.request_body(request);
        self.transport
            .complete(
                &target,
                Post {
                    url,
                    auth: Auth::Bearer,
                    headers: HeaderMap::new(),
                    body: &body,
                    stream: request.stream.then_some(StreamFormat::OpenAi),
                },
                request,
                parse_reply,
            )
            .await
    }
}

/// Reads a chat completion. A body without `choices[0].message` is an
/// [`InternalServer`](LlmErrorKind::InternalServer) error, as LiteLLM raises it; the message
/// names what is missing and the body's top-level keys, not its values.
fn parse_reply(body: &Value, attempts: u32) -> Result<LlmResponse, LlmError> {
    let malformed = |what: &str| http::malformed("openai", what, body);
    let choice = body
        .get("choices")
        .and_then(|c| c.get(0))
        .ok_or_else(|| malformed("no choices[0]"))?;
    let message = choice
        .get("message")
        .filter(|m| m.is_object())
        .ok_or_else(|| malformed("no choices[0].message"))?;
    let content = match message.get("content") {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(s)) => s.clone(),
        Some(_) => return Err(malformed("choices[0].message.content is not text")),
    };
    let tool_calls = tool_wire::openai_tool_calls(message).map_err(|e| malformed(&e))?;
    let count = |v: Option<&Value>| v.and_then(Value::as_u64).unwrap_or(0);
    let usage = body.get("usage");
    let usage = Usage {
        input_tokens: count(usage.and_then(|u| u.get("prompt_tokens"))),
        output_tokens: count(usage.and_then(|u| u.get("completion_tokens"))),
        cached_tokens: count(
            usage
                .and_then(|u| u.get("prompt_tokens_details"))
                .and_then(|d| d.get("cached_tokens")),
        ),
    };
    Ok(LlmResponse {
        content,
        usage,
        model: http::text(body, "model"),
        finish_reason: http::text(choice, "finish_reason"),
        attempts,
        tool_calls,
    })
}
