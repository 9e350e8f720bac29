//! Built-in LLM providers (features `openai`, `anthropic`; `llm` enables both).
//!
//! - `OpenAiBackend` (feature `openai`): OpenAI-compatible chat completions — OpenAI and any
//!   server speaking its API (Ollama, llama.cpp, vLLM, Groq, Cerebras, LM Studio, ...).
//! - `AnthropicBackend` (feature `anthropic`): the Anthropic Messages API.
//! - [`ProviderRouter`]: one [`LlmBackend`] dispatching on [`LlmRequest::provider`]:
//!   `anthropic` to Anthropic, everything else to the OpenAI-compatible backend.
//!
//! # Providers
//!
//! The provider names the reference's LiteLLM knows, with its endpoints and key variables, are
//! in one table (`flatmachine_providers::PROVIDERS`): `openai`, `anthropic`, `cerebras`, `groq`,
//! `together_ai` (`together`), `fireworks_ai` (`fireworks`), `mistral`, `deepseek`,
//! `openrouter`, `xai`, `ollama` (no key). A request for a known provider goes to the
//! request's `base_url`, else the provider's endpoint variable (`$CEREBRAS_API_BASE`, ...),
//! else its public endpoint, with the key from `api_key_env`, else the provider's variable
//! (`$CEREBRAS_API_KEY`, ...). A key is required only for the public endpoint. An unknown
//! provider needs a `base_url` (the compiler says so; at run time it is a `ConfigurationError`).
//!
//! # Transport
//!
//! Each backend owns one `reqwest` client (rustls; the `ring` crypto provider is installed as
//! the process default if none is). Redirects are not followed.
//!
//! - **Timeout**: [`DEFAULT_TIMEOUT`] (120 s) per attempt, covering connect, send and reading
//!   the whole reply; set with `with_timeout` on a backend, overridden by the request's
//!   `timeout`. Running out is a [`Timeout`](LlmErrorKind::Timeout) error.
//! - **Retries**: [`DEFAULT_MAX_RETRIES`] (2, so at most 3 attempts — the OpenAI SDK under the
//!   Python reference retries twice silently; we do the same but log each retry with
//!   `tracing::warn!` and report [`LlmResponse::attempts`](super::LlmResponse::attempts)); set
//!   with `with_max_retries`, overridden by the request's `max_retries`. Retried: HTTP 429,
//!   500, 502, 503, 504 and 529, connection failures and timeouts. The wait is the reply's
//!   `retry-after-ms` or `retry-after` (seconds or an HTTP date), capped at
//!   [`MAX_RETRY_AFTER`] (60 s); without one, exponential backoff from 500 ms doubling up to
//!   8 s, minus up to 25 % jitter (`with_retry_backoff`). An error after retries says how many
//!   attempts were made.
//!
//! # Errors
//!
//! Statuses map to [`LlmErrorKind`] as LiteLLM's `exception_type` maps them
//! (`litellm/litellm_core_utils/exception_mapping_utils.py`):
//!
//! | status | kind |
//! |---|---|
//! | 400, 413 | `BadRequest` — `ContextWindowExceeded` when the message says the prompt is too long, `ContentPolicyViolation` when it names a content policy |
//! | 401 | `Authentication` |
//! | 403 | `PermissionDenied` |
//! | 404 | `NotFound` |
//! | 408, 504 | `Timeout` |
//! | 422 | `UnprocessableEntity` (or `ContextWindowExceeded`) |
//! | 429 | `RateLimit` (with `retry_after` when sent) |
//! | 503 | `ServiceUnavailable` |
//! | 500, 529 (Anthropic "overloaded"), other 5xx | `InternalServer` |
//! | other | `Api` |
//!
//! A refused or reset connection is [`ApiConnection`](LlmErrorKind::ApiConnection); a 2xx reply
//! that is not JSON or lacks the expected fields is
//! [`InternalServer`](LlmErrorKind::InternalServer) (LiteLLM's type for it; the message names
//! what is missing and quotes at most the first 100 characters of a non-JSON body); a missing
//! key is [`Configuration`](LlmErrorKind::Configuration), naming the variable. Messages carry
//! the provider's `error.message` when the body has one (else the body), cut to 500
//! characters. Keys are read from the environment at each call, never stored, never logged,
//! never shown by `Debug`; every error leaves a provider call with the key scrubbed from its
//! message *before* the message is cut (so a cut cannot leave a key's prefix), whether a
//! server echoed it in an error body or in a 2xx reply.

#[cfg(feature = "anthropic")]
mod anthropic;
mod http;
#[cfg(feature = "openai")]
mod openai;
mod stream;
#[cfg(any(feature = "openai", feature = "anthropic"))]
mod tool_wire;

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;

use super::llm::{LlmBackend, LlmError, LlmErrorKind, LlmRequest, LlmResponse};

#[cfg(feature = "anthropic")]
pub use anthropic::AnthropicBackend;
pub use http::{
    DEFAULT_INITIAL_BACKOFF, DEFAULT_MAX_BACKOFF, DEFAULT_MAX_RETRIES, DEFAULT_TIMEOUT,
    MAX_RETRY_AFTER,
};
#[cfg(feature = "openai")]
pub use openai::OpenAiBackend;
#[cfg(any(feature = "openai", feature = "anthropic"))]
pub use tool_wire::{MAX_TOOL_CALLS_PER_REPLY, MAX_TOOL_NAME};

/// Whether `provider` speaks the Anthropic Messages API (per the provider table).
fn is_anthropic(provider: Option<&str>) -> bool {
    provider
        .and_then(flatmachine_providers::find)
        .is_some_and(|p| p.wire == flatmachine_providers::Wire::Anthropic)
}

/// The built-in backend for `provider`: `anthropic` (any case) gets an `AnthropicBackend`,
/// every other provider (`openai`, `cerebras`, `groq`, `ollama`, a custom one with a
/// `base_url`, none, ...) an `OpenAiBackend`, which picks the provider's endpoint and key from
/// the provider table. When the needed feature is not compiled in, the backend returned fails
/// every call with a [`Configuration`](LlmErrorKind::Configuration) error naming the feature.
pub fn default_backend_for(provider: Option<&str>) -> Arc<dyn LlmBackend> {
    if is_anthropic(provider) {
        #[cfg(feature = "anthropic")]
        return Arc::new(AnthropicBackend::new());
        #[cfg(not(feature = "anthropic"))]
        return Arc::new(Unavailable {
            feature: "anthropic",
        });
    }
    #[cfg(feature = "openai")]
    return Arc::new(OpenAiBackend::new());
    #[cfg(not(feature = "openai"))]
    return Arc::new(Unavailable { feature: "openai" });
}

/// A backend for a provider whose feature is not compiled in.
#[derive(Debug)]
#[cfg_attr(feature = "anthropic", allow(dead_code))]
struct Unavailable {
    feature: &'static str,
}

#[async_trait]
impl LlmBackend for Unavailable {
    fn name(&self) -> &str {
        self.feature
    }

    async fn complete(&self, request: &LlmRequest) -> Result<LlmResponse, LlmError> {
        Err(unavailable(request.provider.as_deref(), self.feature))
    }
}

fn unavailable(provider: Option<&str>, feature: &str) -> LlmError {
    LlmError::new(
        LlmErrorKind::Configuration,
        format!(
            "no LLM backend for provider `{}`: build flatmachine-runtime with the `{feature}` \
             feature or register a backend",
            provider.unwrap_or("(none)")
        ),
    )
}

/// An [`LlmBackend`] that sends each request to the backend registered for its
/// [`provider`](LlmRequest::provider) (matched case-insensitively), else to the default backend.
///
/// [`ProviderRouter::new`] registers the built-ins: `anthropic` → `AnthropicBackend`
/// (feature `anthropic`) and, as the default for every other provider (`openai`, `ollama`,
/// `groq`, `cerebras`, `vllm`, none, ...), `OpenAiBackend` (feature `openai`).
/// Without the `anthropic` feature, `anthropic` requests fail with a
/// [`Configuration`](LlmErrorKind::Configuration) error rather than reaching the
/// OpenAI-compatible default. [`with`](Self::with) adds or overrides a provider, [`with_default`](Self::with_default) the
/// fallback. A request no backend serves fails with a
/// [`Configuration`](LlmErrorKind::Configuration) error.
#[derive(Clone)]
pub struct ProviderRouter {
    routes: HashMap<String, Arc<dyn LlmBackend>>,
    default: Option<Arc<dyn LlmBackend>>,
}

impl fmt::Debug for ProviderRouter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut routes: Vec<(&str, &str)> = self
            .routes
            .iter()
            .map(|(p, b)| (p.as_str(), b.name()))
            .collect();
        routes.sort_unstable();
        f.debug_struct("ProviderRouter")
            .field("routes", &routes)
            .field("default", &self.default.as_ref().map(|b| b.name()))
            .finish()
    }
}

impl Default for ProviderRouter {
    fn default() -> Self {
        Self::new()
    }
}

impl ProviderRouter {
    /// A router with the built-in backends compiled in (see the type's documentation).
    pub fn new() -> Self {
        #[allow(unused_mut)]
        let mut router = Self::empty();
        #[cfg(feature = "anthropic")]
        {
            router = router.with("anthropic", Arc::new(AnthropicBackend::new()));
        }
        #[cfg(not(feature = "anthropic"))]
        {
            // Not to the OpenAI-compatible default: fail with a clear message instead.
            router = router.with(
                "anthropic",
                Arc::new(Unavailable {
                    feature: "anthropic",
                }),
            );
        }
        #[cfg(feature = "openai")]
        {
            router = router.with_default(Arc::new(OpenAiBackend::new()));
        }
        router
    }

    /// A router with no backends.
    pub fn empty() -> Self {
        Self {
            routes: HashMap::new(),
            default: None,
        }
    }

    /// Sends requests for `provider` (any case) to `backend`, replacing any earlier one.
    pub fn with(mut self, provider: &str, backend: Arc<dyn LlmBackend>) -> Self {
        self.routes.insert(provider.to_ascii_lowercase(), backend);
        self
    }

    /// Sends requests for unregistered providers (and requests with none) to `backend`.
    pub fn with_default(mut self, backend: Arc<dyn LlmBackend>) -> Self {
        self.default = Some(backend);
        self
    }

    /// The backend serving `provider`, if any.
    pub fn backend_for(&self, provider: Option<&str>) -> Option<&Arc<dyn LlmBackend>> {
        provider
            .and_then(|p| self.routes.get(&p.to_ascii_lowercase()))
            .or(self.default.as_ref())
    }
}

#[async_trait]
impl LlmBackend for ProviderRouter {
    fn name(&self) -> &str {
        "router"
    }

    async fn complete(&self, request: &LlmRequest) -> Result<LlmResponse, LlmError> {
        let provider = request.provider.as_deref();
        match self.backend_for(provider) {
            Some(backend) => backend.complete(request).await,
            None => {
                let feature = if is_anthropic(provider) {
                    "anthropic"
                } else {
                    "openai"
                };
                Err(unavailable(provider, feature))
            }
        }
    }
}
