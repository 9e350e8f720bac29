//! [`AnthropicBackend`]: the Anthropic Messages API (feature `anthropic`).

use std::fmt;

use async_trait::async_trait;
use flatmachine_providers::Wire;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use serde_json::{Map, json};

use super::http::{self, Auth, Post, Transport};
use super::stream::StreamFormat;
use super::tool_wire;
use crate::Value;
use crate::agents::llm::{LlmBackend, LlmError, LlmRequest, LlmResponse, Role, Usage};

/// Calls the Anthropic Messages API: `POST {base}/v1/messages` with `x-api-key`,
/// `anthropic-version: 2023-06-01` and `content-type: application/json`.
///
/// * **Endpoint**: the request's `base_url`, else `$ANTHROPIC_API_BASE` or
///   `$ANTHROPIC_BASE_URL` (LiteLLM's order), else
///   [`DEFAULT_BASE_URL`](Self::DEFAULT_BASE_URL), followed by `/v1/messages` (a base already
///   ending in `/v1` or `/v1/messages` is not doubled).
/// * **Key**: read at call time from the variable named by the request's `api_key_env`, else
///   `$ANTHROPIC_API_KEY`. A missing (or blank) key is a
///   [`Configuration`](crate::agents::LlmErrorKind::Configuration) error naming the variable
///   when calling Anthropic's own endpoint; a proxy named by `base_url` or the environment is
///   called without `x-api-key` when no key is set.
/// * **Body**: `model` (as given), `max_tokens` (the request's, else
///   [`DEFAULT_MAX_TOKENS`](Self::DEFAULT_MAX_TOKENS): the API requires it), the system
///   message(s) in the top-level `system` field as text blocks (the last one with
///   `cache_control` when the request asks for [prompt caching](LlmRequest::prompt_caching)),
///   the other messages in `messages` with their content as a text block, `temperature`
///   always, `top_p` and `top_k` when set.
///   `frequency_penalty`, `presence_penalty` and `seed` have no Messages API equivalent and
///   are not sent (the API rejects unknown fields). There is no JSON mode in this API version:
///   for [`ResponseFormat::Json`](crate::agents::ResponseFormat::Json) the backend relies on
///   the prompt's instruction (which the caller adds); no assistant prefill is used.
/// * **Tools**: with [`LlmRequest::tools`], `tools` (`name`, `description`, `input_schema`)
///   and `tool_choice`; assistant tool calls become `tool_use` blocks and results
///   `tool_result` blocks in the following user turn (consecutive user turns merged). The
///   reply's `tool_use` blocks become [`LlmResponse::tool_calls`] (their `input` as JSON text).
/// * **Reply**: the `text` of every `content` block of type `text`, concatenated;
///   `stop_reason` as the finish reason; `model`; usage — `input_tokens` reported **includes**
///   cached tokens (the API's `input_tokens` + `cache_read_input_tokens` +
///   `cache_creation_input_tokens`), `cached_tokens` is `cache_read_input_tokens`, and
///   `output_tokens` as given. A 2xx reply that is not JSON or has no `content` list is an
///   [`InternalServer`](crate::agents::LlmErrorKind::InternalServer) error.
/// * **Transport**: as described in the [`providers`](super) module; a 529 ("overloaded") is
///   retried and, if it persists, is an [`InternalServer`](LlmErrorKind::InternalServer)
///   error, as LiteLLM maps it.
///
/// The key is never stored, logged, printed by `Debug` or put into an error message.
#[derive(Clone)]
pub struct AnthropicBackend {
    transport: Transport,
}

impl fmt::Debug for AnthropicBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AnthropicBackend")
            .field("timeout", &self.transport.settings.timeout)
            .field("max_retries", &self.transport.settings.max_retries)
            .finish_non_exhaustive()
    }
}

impl Default for AnthropicBackend {
    fn default() -> Self {
        Self::new()
    }
}

impl AnthropicBackend {
    /// The endpoint used when neither the request nor the environment gives one.
    pub const DEFAULT_BASE_URL: &'static str = "https://api.anthropic.com";
    /// An environment variable overriding the default endpoint (`ANTHROPIC_API_BASE` is read
    /// first, as LiteLLM does).
    pub const BASE_URL_ENV: &'static str = "ANTHROPIC_BASE_URL";
    /// The environment variable holding the key when the request names none.
    pub const API_KEY_ENV: &'static str = "ANTHROPIC_API_KEY";
    /// The `anthropic-version` header sent.
    pub const API_VERSION: &'static str = "2023-06-01";
    /// `max_tokens` sent when the request sets none (the Messages API requires one).
    pub const DEFAULT_MAX_TOKENS: u64 = 4096;

    /// A backend with its own HTTP client and the defaults: 120 s timeout, 2 retries.
    pub fn new() -> Self {
        Self {
            transport: Transport::new(),
        }
    }

    http::transport_settings!();

    /// The JSON body sent for `request`. The system prompt and every message's content go as
    /// lists of text blocks (`[{"type": "text", "text": …}]`), as LiteLLM sends them; with
    /// the request's [`prompt_caching`](LlmRequest::prompt_caching) the system block carries
    /// `cache_control: {"type": "ephemeral"}`.
    pub fn request_body(&self, request: &LlmRequest) -> Value {
        let block = |text: &str| json!({"type": "text", "text": text});
        let mut body = Map::new();
        body.insert("model".into(), json!(request.model));
        body.insert(
            "max_tokens".into(),
            json!(request.max_tokens.unwrap_or(Self::DEFAULT_MAX_TOKENS)),
        );
        let mut system: Vec<Value> = request
            .messages
            .iter()
            .filter(|m| m.role == Role::System)
            .map(|m| block(&m.content))
            .collect();
        if request.prompt_caching
            && let Some(Value::Object(last)) = system.last_mut()
        {
            last.insert("cache_control".into(), json!({"type": "ephemeral"}));
        }
        if !system.is_empty() {
            body.insert("system".into(), Value::Array(system));
        }
        let messages = if tool_wire::uses_tools(request) {
            tool_wire::anthropic_messages(&request.messages)
        } else {
            request
                .messages
                .iter()
                .filter(|m| m.role != Role::System)
                .map(|m| json!({"role": m.role, "content": [block(&m.content)]}))
                .collect()
        };
        body.insert("messages".into(), Value::Array(messages));
        tool_wire::anthropic_tools(request, &mut body);
        body.insert("temperature".into(), json!(request.temperature));
        if let Some(top_p) = request.top_p {
            body.insert("top_p".into(), json!(top_p));
        }
        if let Some(top_k) = request.top_k {
            body.insert("top_k".into(), json!(top_k));
        }
        if request.stream {
            body.insert("stream".into(), json!(true));
        }
        Value::Object(body)
    }
}

#[async_trait]
impl LlmBackend for AnthropicBackend {
    fn name(&self) -> &str {
        "anthropic"
    }

    async fn complete(&self, request: &LlmRequest) -> Result<LlmResponse, LlmError> {
        let target = http::target(request, Wire::Anthropic, "anthropic")?;
        let mut headers = HeaderMap::new();
        headers.insert(
            HeaderName::from_static("anthropic-version"),
            HeaderValue::from_static(Self::API_VERSION),
        );
        if request.frequency_penalty.is_some()
            || request.presence_penalty.is_some()
            || request.seed.is_some()
        {
            tracing::debug!(
                model = %request.model,
                "anthropic: frequency_penalty, presence_penalty and seed are not sent \
                 (no Messages API equivalent)"
            );
        }
        let url = http::endpoint(&target.base, "/v1/messages");
        let body = self.request_body(request);
        self.transport
            .complete(
                &target,
                Post {
                    url,
                    auth: Auth::XApiKey,
                    headers,
                    body: &body,
                    stream: request.stream.then_some(StreamFormat::Anthropic),
                },
                request,
                parse_reply,
            )
            .await
    }
}

/// Reads a Messages API reply. A body without a `content` list (or an error object sent with
/// a 2xx status) is an [`InternalServer`](LlmErrorKind::InternalServer) error.
fn parse_reply(body: &Value, attempts: u32) -> Result<LlmResponse, LlmError> {
    if body.get("type").and_then(Value::as_str) == Some("error") {
        return Err(http::malformed("anthropic", "an error object", body));
    }
    let blocks = body
        .get("content")
        .and_then(Value::as_array)
        .ok_or_else(|| http::malformed("anthropic", "no content list", body))?;
    let content: String = blocks
        .iter()
        .filter(|b| b.get("type").and_then(Value::as_str) == Some("text"))
        .filter_map(|b| b.get("text").and_then(Value::as_str))
        .collect();
    let tool_calls = tool_wire::anthropic_tool_calls(blocks)
        .map_err(|e| http::malformed("anthropic", &e, body))?;
    let count = |name: &str| {
        body.get("usage")
            .and_then(|u| u.get(name))
            .and_then(Value::as_u64)
            .unwrap_or(0)
    };
    let cached = count("cache_read_input_tokens");
    let usage = Usage {
        input_tokens: count("input_tokens")
            .saturating_add(cached)
            .saturating_add(count("cache_creation_input_tokens")),
        output_tokens: count("output_tokens"),
        cached_tokens: cached,
    };
    Ok(LlmResponse {
        content,
        usage,
        model: http::text(body, "model"),
        finish_reason: http::text(body, "stop_reason"),
        attempts,
        tool_calls,
    })
}
