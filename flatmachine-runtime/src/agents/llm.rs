//! The provider boundary: one chat completion request in, one reply out.
//!
//! [`LlmBackend`] is what the built-in providers (OpenAI-compatible chat completions and
//! Anthropic Messages, behind the `openai` / `anthropic` features) and the offline
//! [`ScriptedBackend`](super::ScriptedBackend) implement. Applications can implement it for any
//! other service.

use crate::Value;
use crate::tools::{ToolCall, ToolDefinition};
use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::time::Duration;

/// Who wrote a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// The system prompt.
    System,
    /// The user prompt.
    User,
    /// A previous model reply.
    Assistant,
    /// The result of a tool call (answers the assistant's call with `tool_call_id`).
    Tool,
}

/// One chat message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Message {
    /// The author.
    pub role: Role,
    /// The text.
    pub content: String,
    /// The tools an assistant message asks to call (empty otherwise).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tool_calls: Vec<ToolCall>,
    /// The call a [`Role::Tool`] message answers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_call_id: Option<String>,
    /// Whether a [`Role::Tool`] message reports an error (Anthropic's `is_error`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub is_error: bool,
}

impl Message {
    /// A message from `role`.
    pub fn new(role: Role, content: impl Into<String>) -> Self {
        Self {
            role,
            content: content.into(),
            tool_calls: Vec::new(),
            tool_call_id: None,
            is_error: false,
        }
    }

    /// An assistant reply asking for `tool_calls` (with its text, possibly empty).
    pub fn assistant_with_tools(content: impl Into<String>, tool_calls: Vec<ToolCall>) -> Self {
        Self {
            tool_calls,
            ..Self::new(Role::Assistant, content)
        }
    }

    /// The result of the tool call `tool_call_id`.
    pub fn tool_result(
        tool_call_id: impl Into<String>,
        content: impl Into<String>,
        is_error: bool,
    ) -> Self {
        Self {
            tool_call_id: Some(tool_call_id.into()),
            is_error,
            ..Self::new(Role::Tool, content)
        }
    }
}

/// Whether and how the model may call tools (sent only with tools).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum ToolChoice {
    /// The model decides (`auto`).
    #[default]
    Auto,
    /// The model must answer in text (`none`).
    None,
    /// The model must call some tool (`required`; Anthropic's `any`).
    Required,
    /// The model must call this tool.
    Tool(String),
}

/// How the reply should be shaped.
#[derive(Debug, Clone, PartialEq, Default)]
pub enum ResponseFormat {
    /// Free text.
    #[default]
    Text,
    /// A JSON object; `schema` is the JSON Schema of the agent's `output`, for providers that
    /// can enforce one (OpenAI's `json_schema` response format). Providers without schema
    /// support fall back to JSON mode or to the prompt's instruction.
    Json {
        /// Name of the schema (the agent's name, sanitised).
        name: String,
        /// JSON Schema of the expected object.
        schema: Value,
    },
}

/// How [`ResponseFormat::Json`] is asked of an OpenAI-compatible server (a profile's
/// `json_mode`, else the backend's setting).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum JsonMode {
    /// `response_format: {"type": "json_schema", "json_schema": {"name", "schema",
    /// "strict": false}}`: the server is given the agent's output schema. The default: OpenAI,
    /// vLLM, llama.cpp's server, Ollama (`/v1`), Groq, Cerebras and LM Studio accept it.
    #[default]
    JsonSchema,
    /// `response_format: {"type": "json_object"}` (plain JSON mode, what the Python reference
    /// sends), for servers that lack `json_schema`; the prompt's instruction describes the
    /// fields.
    JsonObject,
}

impl JsonMode {
    /// The mode a profile's `json_mode` names (`json_schema`, `json_object`).
    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "json_schema" => Some(JsonMode::JsonSchema),
            "json_object" => Some(JsonMode::JsonObject),
            _ => None,
        }
    }
}

/// One call to a model.
#[derive(Debug, Clone, PartialEq)]
pub struct LlmRequest {
    /// The provider (`openai`, `anthropic`, `ollama`, ...), if known.
    pub provider: Option<String>,
    /// The model name as sent on the wire (no `provider/` prefix).
    pub model: String,
    /// The conversation: `[system, user]` for a flatagent.
    pub messages: Vec<Message>,
    /// Sampling temperature (always sent).
    pub temperature: f64,
    /// Most tokens to generate (sent only when set).
    pub max_tokens: Option<u64>,
    /// Nucleus sampling (sent only when set).
    pub top_p: Option<f64>,
    /// Top-k sampling (sent only when set).
    pub top_k: Option<u64>,
    /// Frequency penalty (sent only when set).
    pub frequency_penalty: Option<f64>,
    /// Presence penalty (sent only when set).
    pub presence_penalty: Option<f64>,
    /// Sampling seed (sent only when set).
    pub seed: Option<i64>,
    /// The shape of the reply.
    pub response_format: ResponseFormat,
    /// Endpoint override (the profile's `base_url`).
    pub base_url: Option<String>,
    /// The environment variable holding the key (the profile's `api_key_env`).
    pub api_key_env: Option<String>,
    /// Per-call timeout override (the profile's `timeout`).
    pub timeout: Option<Duration>,
    /// Transport retries override (the profile's `max_retries`).
    pub max_retries: Option<u32>,
    /// Tools the model may call (none: a plain completion).
    pub tools: Vec<ToolDefinition>,
    /// Whether it must, may or must not call them (sent only with `tools`).
    pub tool_choice: ToolChoice,
    /// How JSON output is asked for (the profile's `json_mode`; `None` = the backend's choice).
    pub json_mode: Option<JsonMode>,
    /// Mark the system prompt for the provider's prompt cache (the profile's `prompt_caching`;
    /// Anthropic's `cache_control`, OpenAI caches without being asked).
    pub prompt_caching: bool,
    /// The agent making the call (its `data.name`), for backends and logs.
    pub agent: Option<String>,
    /// The state calling the agent, when a machine makes the call.
    pub state: Option<String>,
    /// The model profile the agent names (else the `default` profile), which run-time endpoint
    /// overrides are keyed by.
    pub profile: Option<String>,
    /// Stream the reply (the profile's `stream`): text deltas go to the run's event stream as
    /// they arrive; the response is the same as unstreamed.
    pub stream: bool,
}

impl LlmRequest {
    /// A request with the given model and messages, the reference's default temperature, and
    /// nothing else set.
    pub fn new(model: impl Into<String>, messages: Vec<Message>) -> Self {
        Self {
            provider: None,
            model: model.into(),
            messages,
            temperature: 0.7,
            max_tokens: None,
            top_p: None,
            top_k: None,
            frequency_penalty: None,
            presence_penalty: None,
            seed: None,
            response_format: ResponseFormat::Text,
            base_url: None,
            api_key_env: None,
            timeout: None,
            max_retries: None,
            tools: Vec::new(),
            tool_choice: ToolChoice::Auto,
            json_mode: None,
            prompt_caching: false,
            agent: None,
            state: None,
            profile: None,
            stream: false,
        }
    }

    /// The text of the first message with this role.
    pub fn message(&self, role: Role) -> Option<&str> {
        self.messages
            .iter()
            .find(|m| m.role == role)
            .map(|m| m.content.as_str())
    }
}

/// Token counts of one call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Usage {
    /// Prompt tokens (cached ones included).
    pub input_tokens: u64,
    /// Completion tokens.
    pub output_tokens: u64,
    /// Prompt tokens served from the provider's cache.
    pub cached_tokens: u64,
}

impl std::ops::AddAssign for Usage {
    fn add_assign(&mut self, other: Usage) {
        self.input_tokens += other.input_tokens;
        self.output_tokens += other.output_tokens;
        self.cached_tokens += other.cached_tokens;
    }
}

/// A model's reply.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct LlmResponse {
    /// The reply text.
    pub content: String,
    /// Token counts.
    pub usage: Usage,
    /// The model that answered, as the provider reports it.
    pub model: Option<String>,
    /// Why generation stopped (`stop`, `length`, `end_turn`, ...).
    pub finish_reason: Option<String>,
    /// Transport attempts made for this reply (1 without retries; 0 for non-HTTP backends).
    pub attempts: u32,
    /// The tools the model asks to call, in order (empty: a final answer).
    pub tool_calls: Vec<ToolCall>,
}

impl LlmResponse {
    /// A reply with this text and no usage.
    pub fn text(content: impl Into<String>) -> Self {
        Self {
            content: content.into(),
            attempts: 1,
            ..Self::default()
        }
    }

    /// A reply asking for these tool calls (no text), with the finish reason `tool_calls`.
    pub fn calling(tool_calls: Vec<ToolCall>) -> Self {
        Self {
            finish_reason: Some("tool_calls".into()),
            tool_calls,
            attempts: 1,
            ..Self::default()
        }
    }

    /// Adds one tool call (the scripted backend's way to ask for a tool):
    /// `LlmResponse::text("").with_tool_call("c1", "read_file", json!({"path": "a.md"}))`.
    pub fn with_tool_call(
        mut self,
        id: impl Into<String>,
        name: impl Into<String>,
        arguments: Value,
    ) -> Self {
        self.tool_calls.push(ToolCall::new(id, name, arguments));
        self.finish_reason = Some("tool_calls".into());
        self
    }

    /// Sets the token counts.
    pub fn with_usage(mut self, input_tokens: u64, output_tokens: u64) -> Self {
        self.usage.input_tokens = input_tokens;
        self.usage.output_tokens = output_tokens;
        self
    }
}

/// What went wrong in a provider call. The names follow the exception types of LiteLLM, the
/// library under the Python reference, so `on_error` maps written for it route the same way.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum LlmErrorKind {
    /// 400, or a request the provider rejected.
    BadRequest,
    /// 401: missing or wrong key.
    Authentication,
    /// 403.
    PermissionDenied,
    /// 404: unknown model or endpoint.
    NotFound,
    /// 422.
    UnprocessableEntity,
    /// 429.
    RateLimit,
    /// The prompt does not fit the model's context window.
    ContextWindowExceeded,
    /// The provider refused the content.
    ContentPolicyViolation,
    /// 500, 529 (Anthropic "overloaded", as LiteLLM maps it) and other 5xx without a more
    /// specific kind; also a 2xx reply that is not JSON or lacks the format's fields (as
    /// LiteLLM raises it).
    InternalServer,
    /// 503.
    ServiceUnavailable,
    /// The connection failed (refused, reset, DNS, TLS).
    ApiConnection,
    /// The call took longer than its timeout.
    Timeout,
    /// Another API error (a status no other kind covers).
    Api,
    /// The backend is not configured (no key in the environment, provider not compiled in).
    Configuration,
}

impl LlmErrorKind {
    /// The error type name written to `context.last_error_type` and matched by `on_error`.
    pub fn type_name(self) -> &'static str {
        match self {
            LlmErrorKind::BadRequest => "BadRequestError",
            LlmErrorKind::Authentication => "AuthenticationError",
            LlmErrorKind::PermissionDenied => "PermissionDeniedError",
            LlmErrorKind::NotFound => "NotFoundError",
            LlmErrorKind::UnprocessableEntity => "UnprocessableEntityError",
            LlmErrorKind::RateLimit => "RateLimitError",
            LlmErrorKind::ContextWindowExceeded => "ContextWindowExceededError",
            LlmErrorKind::ContentPolicyViolation => "ContentPolicyViolationError",
            LlmErrorKind::InternalServer => "InternalServerError",
            LlmErrorKind::ServiceUnavailable => "ServiceUnavailableError",
            LlmErrorKind::ApiConnection => "APIConnectionError",
            LlmErrorKind::Timeout => "Timeout",
            LlmErrorKind::Api => "APIError",
            LlmErrorKind::Configuration => "ConfigurationError",
        }
    }

    /// Whether the transport retries it (429 and 5xx-like failures, connection failures and
    /// timeouts).
    pub fn is_transient(self) -> bool {
        matches!(
            self,
            LlmErrorKind::RateLimit
                | LlmErrorKind::InternalServer
                | LlmErrorKind::ServiceUnavailable
                | LlmErrorKind::ApiConnection
                | LlmErrorKind::Timeout
        )
    }
}

/// A failed provider call.
#[derive(Debug, Clone, PartialEq)]
pub struct LlmError {
    /// What kind of failure.
    pub kind: LlmErrorKind,
    /// Human-readable detail (the provider's error message where it gave one; never a key).
    pub message: String,
    /// The HTTP status, if there was a response.
    pub status: Option<u16>,
    /// The provider's `retry-after`, if it sent one.
    pub retry_after: Option<Duration>,
}

impl LlmError {
    /// A new error.
    pub fn new(kind: LlmErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
            status: None,
            retry_after: None,
        }
    }

    /// Sets the HTTP status.
    pub fn with_status(mut self, status: u16) -> Self {
        self.status = Some(status);
        self
    }
}

impl fmt::Display for LlmError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.status {
            Some(s) => write!(f, "{} (HTTP {s}): {}", self.kind.type_name(), self.message),
            None => write!(f, "{}: {}", self.kind.type_name(), self.message),
        }
    }
}

impl std::error::Error for LlmError {}

impl From<LlmError> for crate::StateError {
    fn from(e: LlmError) -> Self {
        let message = match e.status {
            Some(s) => format!("HTTP {s}: {}", e.message),
            None => e.message,
        };
        crate::StateError::new(e.kind.type_name(), message)
    }
}

/// A chat model service.
#[async_trait]
pub trait LlmBackend: Send + Sync {
    /// A short name for logs and errors (`openai`, `anthropic`, `scripted`, ...).
    fn name(&self) -> &str;

    /// Sends one request and returns the reply. Transport retries, if any, happen inside.
    async fn complete(&self, request: &LlmRequest) -> Result<LlmResponse, LlmError>;
}
