//! [`AnthropicBackend`]: the Anthropic Messages API (feature `anthropic`).

use std::fmt;
use std::time::Duration;

use async_trait::async_trait;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use serde_json::{Map, json};

use super::http::{self, Call, Transport};
use super::tool_wire;
use crate::Value;
use crate::agents::llm::{
    LlmBackend, LlmError, LlmErrorKind, LlmRequest, LlmResponse, Role, Usage,
};

/// Calls the Anthropic Messages API: `POST {base}/v1/messages` with `x-api-key`,
/// `anthropic-version: 2023-06-01` and `content-type: application/json`.
///
/// * **Endpoint**: the request's `base_url`, else `$ANTHROPIC_BASE_URL`, else
///   [`DEFAULT_BASE_URL`](Self::DEFAULT_BASE_URL), followed by `/v1/messages` (a base already
///   ending in `/v1` or `/v1/messages` is not doubled).
/// * **Key**: read at call time from the variable named by the request's `api_key_env`, else
///   `$ANTHROPIC_API_KEY`. A missing (or blank) key is a
///   [`Configuration`](LlmErrorKind::Configuration) error naming the variable — unless the
///   request has a `base_url` (a proxy or local server): then no `x-api-key` is sent.
/// * **Body**: `model` (as given), `max_tokens` (the request's, else
///   [`DEFAULT_MAX_TOKENS`](Self::DEFAULT_MAX_TOKENS): the API requires it), the system
///   message(s) in the top-level `system` field (several are joined by a blank line), the
///   other messages in `messages`, `temperature` always, `top_p` and `top_k` when set.
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
///   `output_tokens` as given. A reply without a `content` array is an
///   [`Api`](LlmErrorKind::Api) error.
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
    /// The environment variable overriding the default endpoint.
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

    /// Sets the per-call timeout (each attempt; a request's `timeout` overrides it).
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.transport.settings.timeout = timeout;
        self
    }

    /// Sets the transport retries (a request's `max_retries` overrides it).
    pub fn with_max_retries(mut self, max_retries: u32) -> Self {
        self.transport.settings.max_retries = max_retries;
        self
    }

    /// Sets the exponential backoff used when the provider sends no `retry-after`: the first
    /// delay, doubled per attempt up to `max` (defaults 500 ms and 8 s).
    pub fn with_retry_backoff(mut self, initial: Duration, max: Duration) -> Self {
        self.transport.settings.initial_backoff = initial;
        self.transport.settings.max_backoff = max;
        self
    }

    /// The JSON body sent for `request`.
    pub fn request_body(&self, request: &LlmRequest) -> Value {
        let mut body = Map::new();
        body.insert("model".into(), json!(request.model));
        body.insert(
            "max_tokens".into(),
            json!(request.max_tokens.unwrap_or(Self::DEFAULT_MAX_TOKENS)),
        );
        let system: Vec<&str> = request
            .messages
            .iter()
            .filter(|m| m.role == Role::System)
            .map(|m| m.content.as_str())
            .collect();
        if !system.is_empty() {
            body.insert("system".into(), json!(system.join("\n\n")));
        }
        let messages = if tool_wire::uses_tools(request) {
            tool_wire::anthropic_messages(&request.messages)
        } else {
            request
                .messages
                .iter()
                .filter(|m| m.role != Role::System)
                .map(|m| json!({"role": m.role, "content": m.content}))
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
        Value::Object(body)
    }
}

#[async_trait]
impl LlmBackend for AnthropicBackend {
    fn name(&self) -> &str {
        "anthropic"
    }

    async fn complete(&self, request: &LlmRequest) -> Result<LlmResponse, LlmError> {
        let key_env = request.api_key_env.as_deref().unwrap_or(Self::API_KEY_ENV);
        let key = http::read_key(key_env);
        let mut headers = HeaderMap::new();
        headers.insert(
            HeaderName::from_static("anthropic-version"),
            HeaderValue::from_static(Self::API_VERSION),
        );
        match &key {
            Some(key) => {
                let value = http::secret_header(key).ok_or_else(|| {
                    LlmError::new(
                        LlmErrorKind::Configuration,
                        format!(
                            "anthropic: the key in `{key_env}` has characters not allowed in an \
                             HTTP header"
                        ),
                    )
                })?;
                headers.insert(HeaderName::from_static("x-api-key"), value);
            }
            None if http::has_base_url(request) => {
                tracing::debug!(
                    key_env,
                    "anthropic: no key set; calling the request's base_url without x-api-key"
                );
            }
            None => {
                return Err(LlmError::new(
                    LlmErrorKind::Configuration,
                    format!("anthropic: no API key: set the environment variable `{key_env}`"),
                ));
            }
        }
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
        let base = http::base_url(request, Self::BASE_URL_ENV, Self::DEFAULT_BASE_URL);
        let body = self.request_body(request);
        let reply = self
            .transport
            .post_json(
                Call {
                    provider: "anthropic",
                    url: http::endpoint(&base, "/v1/messages"),
                    headers,
                    body: &body,
                    secret: key.as_deref(),
                },
                request,
            )
            .await?;
        parse_reply(&reply.body, reply.attempts)
    }
}

/// Reads a Messages API reply.
fn parse_reply(body: &Value, attempts: u32) -> Result<LlmResponse, LlmError> {
    let malformed = |what: &str| {
        LlmError::new(
            LlmErrorKind::Api,
            format!(
                "anthropic: malformed reply ({what}): {}",
                http::truncate(&body.to_string())
            ),
        )
        .with_status(200)
    };
    if body.get("type").and_then(Value::as_str) == Some("error") {
        let message = body
            .get("error")
            .and_then(|e| e.get("message"))
            .and_then(Value::as_str)
            .unwrap_or("error reply");
        return Err(LlmError::new(
            LlmErrorKind::Api,
            format!("anthropic: {}", http::truncate(message)),
        )
        .with_status(200));
    }
    let blocks = body
        .get("content")
        .and_then(Value::as_array)
        .ok_or_else(|| malformed("no content array"))?;
    let content: String = blocks
        .iter()
        .filter(|b| b.get("type").and_then(Value::as_str) == Some("text"))
        .filter_map(|b| b.get("text").and_then(Value::as_str))
        .collect();
    let tool_calls = tool_wire::anthropic_tool_calls(blocks).map_err(|e| malformed(&e))?;
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
        model: body
            .get("model")
            .and_then(Value::as_str)
            .map(str::to_string),
        finish_reason: body
            .get("stop_reason")
            .and_then(Value::as_str)
            .map(str::to_string),
        attempts,
        tool_calls,
    })
}
