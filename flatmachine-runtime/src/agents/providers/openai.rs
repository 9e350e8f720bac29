//! [`OpenAiBackend`]: OpenAI-compatible chat completions (feature `openai`).

use std::fmt;
use std::time::Duration;

use async_trait::async_trait;
use reqwest::header::{AUTHORIZATION, HeaderMap};
use serde_json::{Map, json};

use super::http::{self, Call, Transport};
use super::tool_wire;
use crate::Value;
use crate::agents::llm::{
    LlmBackend, LlmError, LlmErrorKind, LlmRequest, LlmResponse, ResponseFormat, Usage,
};

/// How [`ResponseFormat::Json`] is asked of an OpenAI-compatible server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum JsonMode {
    /// `response_format: {"type": "json_schema", "json_schema": {"name", "schema",
    /// "strict": false}}`: the server is given the agent's output schema. The default: OpenAI,
    /// vLLM, llama.cpp's server, Ollama (`/v1`), Groq, Cerebras and LM Studio accept it.
    #[default]
    JsonSchema,
    /// `response_format: {"type": "json_object"}` (plain JSON mode), for servers that lack
    /// `json_schema`; the prompt's instruction describes the fields.
    JsonObject,
}

/// Calls an OpenAI-compatible chat completions endpoint: `POST {base}/chat/completions`.
///
/// * **Endpoint**: the request's `base_url`, else `$OPENAI_BASE_URL`, else
///   [`DEFAULT_BASE_URL`](Self::DEFAULT_BASE_URL), followed by `/chat/completions` (unless it
///   already ends so).
/// * **Key**: read at call time from the variable named by the request's `api_key_env`, else
///   `$OPENAI_API_KEY`, and sent as `Authorization: Bearer <key>`. A missing (or blank) key is a
///   [`Configuration`](LlmErrorKind::Configuration) error naming the variable — unless the
///   request has a `base_url` (local servers such as Ollama, llama.cpp or vLLM need no key):
///   then no `Authorization` header is sent.
/// * **Body**: `model` (as given), `messages`, `temperature` always; `max_tokens`, `top_p`,
///   `top_k`, `frequency_penalty`, `presence_penalty` and `seed` only when set (`top_k` is not
///   an OpenAI parameter: api.openai.com rejects it, vLLM/llama.cpp/Ollama accept it).
///   [`ResponseFormat::Json`] becomes a `response_format` per [`JsonMode`] (default
///   `json_schema`).
/// * **Tools**: with [`LlmRequest::tools`], `tools` (function format) and `tool_choice`;
///   assistant messages carry `tool_calls`, results go as `role: tool` messages with their
///   `tool_call_id`. A reply's `choices[0].message.tool_calls` become
///   [`LlmResponse::tool_calls`] (arguments kept as the model wrote them; at most 128 calls).
/// * **Reply**: `choices[0].message.content` (a `null` content is an empty reply),
///   `choices[0].finish_reason`, `model`, and `usage.prompt_tokens` / `completion_tokens` /
///   `prompt_tokens_details.cached_tokens`. A reply without `choices[0].message` is an
///   [`Api`](LlmErrorKind::Api) error.
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
            let format = match self.json_mode {
                JsonMode::JsonSchema => json!({
                    "type": "json_schema",
                    "json_schema": {"name": name, "schema": schema, "strict": false},
                }),
                JsonMode::JsonObject => json!({"type": "json_object"}),
            };
            body.insert("response_format".into(), format);
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
        let key_env = request.api_key_env.as_deref().unwrap_or(Self::API_KEY_ENV);
        let key = http::read_key(key_env);
        let mut headers = HeaderMap::new();
        match &key {
            Some(key) => {
                let value = http::secret_header(&format!("Bearer {key}")).ok_or_else(|| {
                    LlmError::new(
                        LlmErrorKind::Configuration,
                        format!(
                            "openai: the key in `{key_env}` has characters not allowed in an \
                             HTTP header"
                        ),
                    )
                })?;
                headers.insert(AUTHORIZATION, value);
            }
            None if http::has_base_url(request) => {
                tracing::debug!(
                    key_env,
                    "openai: no key set; calling the request's base_url without authorization"
                );
            }
            None => {
                return Err(LlmError::new(
                    LlmErrorKind::Configuration,
                    format!(
                        "openai: no API key: set the environment variable `{key_env}` (or give \
                         the model a base_url for a local server that needs no key)"
                    ),
                ));
            }
        }
        let base = http::base_url(request, Self::BASE_URL_ENV, Self::DEFAULT_BASE_URL);
        let body = self.request_body(request);
        let reply = self
            .transport
            .post_json(
                Call {
                    provider: "openai",
                    url: http::endpoint(&base, "/chat/completions"),
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

/// Reads a chat completion.
fn parse_reply(body: &Value, attempts: u32) -> Result<LlmResponse, LlmError> {
    let malformed = |what: &str| {
        LlmError::new(
            LlmErrorKind::Api,
            format!(
                "openai: malformed reply ({what}): {}",
                http::truncate(&body.to_string())
            ),
        )
        .with_status(200)
    };
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
        model: body
            .get("model")
            .and_then(Value::as_str)
            .map(str::to_string),
        finish_reason: choice
            .get("finish_reason")
            .and_then(Value::as_str)
            .map(str::to_string),
        attempts,
        tool_calls,
    })
}
