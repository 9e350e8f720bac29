//! The HTTP transport shared by the built-in providers: one `reqwest` client, a per-call
//! timeout, transport retries with `retry-after` / exponential backoff, and the mapping of
//! HTTP statuses and transport failures to [`LlmErrorKind`] (as LiteLLM maps them).

use std::error::Error as _;
use std::fmt;
use std::hash::{BuildHasher, Hasher};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use flatmachine_providers::{Provider, Wire};
use reqwest::header::{AUTHORIZATION, HeaderMap, HeaderName, HeaderValue};

use super::stream::StreamFormat;
use crate::Value;
use crate::agents::llm::{LlmError, LlmErrorKind, LlmRequest, LlmResponse};

/// Default per-call timeout of the built-in providers: 120 seconds (connect, send, and reading
/// the whole reply; each attempt gets the full timeout).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(120);

/// Default transport retries of the built-in providers: 2, so at most 3 attempts. The OpenAI
/// Python SDK under the reference retries twice silently; the built-in providers do the same,
/// but log each retry with `tracing::warn!` and report the attempts in
/// [`LlmResponse::attempts`](crate::agents::LlmResponse::attempts).
pub const DEFAULT_MAX_RETRIES: u32 = 2;

/// Default first backoff delay between attempts when the provider sends no `retry-after`
/// (doubled after each attempt, up to [`DEFAULT_MAX_BACKOFF`], minus up to 25 % jitter; the
/// OpenAI SDK's values).
pub const DEFAULT_INITIAL_BACKOFF: Duration = Duration::from_millis(500);

/// Default cap of the exponential backoff delay.
pub const DEFAULT_MAX_BACKOFF: Duration = Duration::from_secs(8);

/// Longest wait honoured from a provider's `retry-after`; a longer one is cut to this.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(60);

/// Longest provider error message kept in an [`LlmError`] (in characters).
const MAX_MESSAGE_CHARS: usize = 500;

/// Largest reply body read; a longer one fails the call.
const MAX_BODY_BYTES: usize = 32 * 1024 * 1024;

/// Statuses retried by the transport.
const RETRY_STATUSES: [u16; 6] = [429, 500, 502, 503, 504, 529];

/// The `with_timeout`, `with_max_retries` and `with_retry_backoff` builder methods of a backend
/// holding a `transport: Transport` (written once for every built-in provider).
macro_rules! transport_settings {
    () => {
        /// Sets the per-call timeout (each attempt; a request's `timeout` overrides it).
        pub fn with_timeout(mut self, timeout: std::time::Duration) -> Self {
            self.transport.settings.timeout = timeout;
            self
        }

        /// Sets the transport retries (a request's `max_retries` overrides it).
        pub fn with_max_retries(mut self, max_retries: u32) -> Self {
            self.transport.settings.max_retries = max_retries;
            self
        }

        /// Sets the exponential backoff used when the provider sends no `retry-after`: the
        /// first delay, doubled per attempt up to `max` (defaults 500 ms and 8 s).
        pub fn with_retry_backoff(
            mut self,
            initial: std::time::Duration,
            max: std::time::Duration,
        ) -> Self {
            self.transport.settings.initial_backoff = initial;
            self.transport.settings.max_backoff = max;
            self
        }
    };
}
pub(crate) use transport_settings;

/// Timeout, retry and backoff settings of a backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Settings {
    pub timeout: Duration,
    pub max_retries: u32,
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            timeout: DEFAULT_TIMEOUT,
            max_retries: DEFAULT_MAX_RETRIES,
            initial_backoff: DEFAULT_INITIAL_BACKOFF,
            max_backoff: DEFAULT_MAX_BACKOFF,
        }
    }
}

/// One HTTP client plus the backend's settings.
#[derive(Clone)]
pub(crate) struct Transport {
    /// The client, or why it could not be built (reported on every call).
    client: Result<reqwest::Client, Arc<str>>,
    pub settings: Settings,
}

impl fmt::Debug for Transport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Transport")
            .field("client_ready", &self.client.is_ok())
            .field("settings", &self.settings)
            .finish()
    }
}

/// A successful reply: its JSON body and the attempts made.
pub(crate) struct Reply {
    pub body: Value,
    pub attempts: u32,
}

/// What one call sends.
pub(crate) struct Call<'a> {
    /// The provider name for messages and logs (`openai`, `cerebras`, `anthropic`, ...).
    pub provider: &'a str,
    /// The full endpoint URL.
    pub url: String,
    /// Extra headers (auth, versions); secret ones marked sensitive.
    pub headers: HeaderMap,
    /// The JSON body.
    pub body: &'a Value,
    /// The key sent, if any: scrubbed from every error message.
    pub secret: Option<&'a str>,
    /// Read a 2xx reply as this stream of server-sent events (`stream: true`).
    pub stream: Option<StreamFormat>,
}

/// What one provider call POSTs: where, how the key is sent, extra headers and the JSON body.
pub(crate) struct Post<'a> {
    /// The endpoint.
    pub(crate) url: String,
    /// How the key goes in the headers.
    pub(crate) auth: Auth,
    /// Headers beside the key's.
    pub(crate) headers: HeaderMap,
    /// The request body.
    pub(crate) body: &'a Value,
    /// Read a 2xx reply as this stream of server-sent events (`stream: true`).
    pub(crate) stream: Option<StreamFormat>,
}

/// How a backend sends its key.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Auth {
    /// `Authorization: Bearer <key>` (OpenAI-compatible servers).
    Bearer,
    /// `x-api-key: <key>` (Anthropic).
    #[cfg_attr(not(feature = "anthropic"), allow(dead_code))]
    XApiKey,
}

/// Where one call goes and with which key, after the provider table and the environment.
pub(crate) struct Target {
    /// The provider's name for messages and logs.
    pub provider: &'static str,
    /// The endpoint's base URL (no trailing slash).
    pub base: String,
    /// The provider entry, when the provider is a known one.
    pub known: Option<&'static Provider>,
    /// The key, when one is set.
    pub key: Option<String>,
}

/// Resolves where `request` goes: the provider named by the request (else `default`), its
/// endpoint — the request's `base_url`, else the provider's environment variables (LiteLLM's
/// names: `OPENAI_BASE_URL`, `CEREBRAS_API_BASE`, ...), else its public endpoint — and its key —
/// from the request's `api_key_env`, else the provider's key variables.
///
/// A key is required only for the provider's public endpoint: a server named by `base_url` or
/// the environment (a local vLLM, llama.cpp or Ollama) is called without one when none is set.
/// An unknown provider needs a `base_url`, and gets a key only from `api_key_env`.
pub(crate) fn target(
    request: &LlmRequest,
    wire: Wire,
    default: &'static str,
) -> Result<Target, LlmError> {
    let name = request.provider.as_deref().unwrap_or(default);
    // A backend called directly speaks its own API: a provider of the other wire format gets
    // this backend's own entry (`ProviderRouter` never sends one here).
    let known = match flatmachine_providers::find(name) {
        Some(p) if p.wire != wire => flatmachine_providers::find(default),
        found => found,
    };
    let label: &'static str = known.map_or(
        match wire {
            Wire::OpenAi => "openai-compatible",
            Wire::Anthropic => "anthropic",
        },
        |p| p.name,
    );
    let nonblank = |s: String| Some(s).filter(|s| !s.trim().is_empty());
    let from_request = request.base_url.clone().and_then(nonblank);
    let from_env = || {
        known
            .into_iter()
            .flat_map(|p| p.base_url_env.iter())
            .find_map(|var| std::env::var(var).ok().and_then(nonblank))
    };
    let (base, custom) = match from_request.or_else(from_env) {
        Some(base) => (base, true),
        None => match known {
            Some(p) => (p.base_url.to_string(), false),
            None => {
                return Err(LlmError::new(
                    LlmErrorKind::Configuration,
                    format!(
                        "unknown provider `{name}` and no base_url: give the model a `base_url` \
                         (known providers: {})",
                        flatmachine_providers::names()
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                ));
            }
        },
    };
    let key_vars: Vec<&str> = match (&request.api_key_env, known) {
        (Some(var), _) => vec![var.as_str()],
        (None, Some(p)) => p.api_key_env.to_vec(),
        (None, None) => Vec::new(),
    };
    let key = key_vars.iter().find_map(|var| read_key(var));
    if key.is_none() && !custom && known.is_some_and(Provider::needs_key) {
        return Err(LlmError::new(
            LlmErrorKind::Configuration,
            format!(
                "{label}: no API key: set the environment variable `{}` (or give the model a \
                 base_url for a local server that needs no key)",
                key_vars.join("` or `")
            ),
        ));
    }
    Ok(Target {
        provider: label,
        base: base.trim().trim_end_matches('/').to_string(),
        known,
        key,
    })
}

impl Transport {
    /// A transport with a fresh client. HTTPS uses rustls with the platform's root certificates;
    /// if the process has no default rustls crypto provider yet, `ring` is installed as the
    /// default (as `WebhookHooks` does).
    pub fn new() -> Self {
        if rustls::crypto::CryptoProvider::get_default().is_none() {
            // Fails only if another thread installed one meanwhile, which is just as good.
            let _ = rustls::crypto::ring::default_provider().install_default();
        }
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("flatmachine-runtime/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| Arc::from(format!("cannot build the HTTP client: {}", describe(&e))));
        Self {
            client,
            settings: Settings::default(),
        }
    }

    /// One provider call: the key header for `target`, `extra` headers, `body` POSTed to `url`,
    /// the 2xx body read by `parse`. Every error leaves here with the key scrubbed from its
    /// message before the message is cut to length.
    pub async fn complete(
        &self,
        target: &Target,
        post: Post<'_>,
        request: &LlmRequest,
        parse: fn(&Value, u32) -> Result<LlmResponse, LlmError>,
    ) -> Result<LlmResponse, LlmError> {
        let Post {
            url,
            auth,
            mut headers,
            body,
            stream,
        } = post;
        let provider = target.provider;
        if let Some(key) = &target.key {
            let (name, value) = match auth {
                Auth::Bearer => (AUTHORIZATION, secret_header(&format!("Bearer {key}"))),
                Auth::XApiKey => (HeaderName::from_static("x-api-key"), secret_header(key)),
            };
            let value = value.ok_or_else(|| {
                LlmError::new(
                    LlmErrorKind::Configuration,
                    format!("{provider}: the API key has characters not allowed in an HTTP header"),
                )
            })?;
            headers.insert(name, value);
        } else {
            tracing::debug!(provider, "no key set; calling the endpoint without one");
        }
        let secret = target.key.as_deref();
        let call = Call {
            provider,
            url,
            headers,
            body,
            secret,
            stream,
        };
        let reply = self.post_json(call, request).await?;
        parse(&reply.body, reply.attempts).map_err(|e| seal(e, secret))
    }

    /// POSTs `call.body` as JSON, retrying transient failures, and returns the parsed 2xx body.
    pub async fn post_json(&self, call: Call<'_>, request: &LlmRequest) -> Result<Reply, LlmError> {
        let client = self.client.as_ref().map_err(|e| {
            LlmError::new(
                LlmErrorKind::Configuration,
                format!("{}: {e}", call.provider),
            )
        })?;
        let timeout = request.timeout.unwrap_or(self.settings.timeout);
        let max_retries = request.max_retries.unwrap_or(self.settings.max_retries);
        let body = serde_json::to_vec(call.body).map_err(|e| {
            LlmError::new(
                LlmErrorKind::BadRequest,
                format!("{}: cannot encode the request: {e}", call.provider),
            )
        })?;
        let mut attempt: u32 = 0;
        loop {
            attempt += 1;
            let started = Instant::now();
            let outcome = self.attempt(client, &call, &body, timeout).await;
            let error = match outcome {
                Ok(body) => {
                    return Ok(Reply {
                        body,
                        attempts: attempt,
                    });
                }
                Err(e) => e,
            };
            let error = Failure {
                error: seal(error.error, call.secret),
                retryable: error.retryable,
            };
            if !error.retryable || attempt > max_retries {
                let mut error = error.error;
                if attempt > 1 {
                    error.message = format!("{} (after {attempt} attempts)", error.message);
                }
                return Err(error);
            }
            let delay = match error.error.retry_after {
                Some(d) => d,
                None => backoff(&self.settings, attempt),
            };
            tracing::warn!(
                provider = call.provider,
                model = %request.model,
                attempt,
                max_retries,
                status = error.error.status,
                error_type = error.error.kind.type_name(),
                elapsed_ms = started.elapsed().as_millis() as u64,
                delay_ms = delay.as_millis() as u64,
                "LLM call failed, retrying: {}",
                error.error.message
            );
            tokio::time::sleep(delay).await;
        }
    }

    /// One attempt: send, read the whole body, classify.
    async fn attempt(
        &self,
        client: &reqwest::Client,
        call: &Call<'_>,
        body: &[u8],
        timeout: Duration,
    ) -> Result<Value, Failure> {
        let provider = call.provider;
        let send = async {
            let mut response = client
                .post(&call.url)
                .headers(call.headers.clone())
                .header(
                    reqwest::header::CONTENT_TYPE,
                    HeaderValue::from_static("application/json"),
                )
                .body(body.to_vec())
                .send()
                .await?;
            let status = response.status();
            let headers = response.headers().clone();
            if let Some(format) = call.stream.filter(|_| status.is_success()) {
                let streamed = super::stream::read(format, response, provider, MAX_BODY_BYTES);
                return Ok((status, headers, Body::Streamed(streamed.await)));
            }
            let mut bytes = Vec::new();
            while let Some(chunk) = response.chunk().await? {
                if bytes.len() + chunk.len() > MAX_BODY_BYTES {
                    return Ok((status, headers, Body::Read(None)));
                }
                bytes.extend_from_slice(&chunk);
            }
            Ok::<_, reqwest::Error>((status, headers, Body::Read(Some(bytes))))
        };
        let (status, headers, body) = match tokio::time::timeout(timeout, send).await {
            Err(_) => {
                let error = LlmError::new(
                    LlmErrorKind::Timeout,
                    format!("{provider}: no complete reply within {timeout:?}"),
                );
                // Part of a streamed reply may have been shown already: not sent again.
                return Err(match call.stream {
                    Some(_) => Failure::fatal(error),
                    None => Failure::retry(error),
                });
            }
            Ok(Err(e)) => return Err(transport_failure(provider, e, timeout)),
            Ok(Ok(parts)) => parts,
        };
        let bytes = match body {
            Body::Streamed(Ok(value)) => return Ok(value),
            Body::Streamed(Err(e)) => return Err(Failure::fatal(e.with_status(status.as_u16()))),
            Body::Read(bytes) => bytes,
        };
        let Some(bytes) = bytes else {
            return Err(Failure::fatal(
                LlmError::new(
                    LlmErrorKind::Api,
                    format!("{provider}: reply body larger than {MAX_BODY_BYTES} bytes"),
                )
                .with_status(status.as_u16()),
            ));
        };
        let parsed: Option<Value> = serde_json::from_slice(&bytes).ok();
        if status.is_success() {
            // LiteLLM raises InternalServerError for a 2xx body it cannot read; only the start
            // of the body is quoted (a proxy's error page says enough there).
            return match parsed {
                Some(value) => Ok(value),
                None => Err(Failure::fatal(
                    LlmError::new(
                        LlmErrorKind::InternalServer,
                        format!(
                            "{provider}: reply is not JSON ({} bytes): {}",
                            bytes.len(),
                            excerpt(&String::from_utf8_lossy(&bytes))
                        ),
                    )
                    .with_status(status.as_u16()),
                )),
            };
        }
        let code = status.as_u16();
        let message = match parsed.as_ref().and_then(error_message) {
            Some(m) => m,
            None if bytes.is_empty() => status.canonical_reason().unwrap_or("no body").to_string(),
            None => String::from_utf8_lossy(&bytes).into_owned(),
        };
        let kind = kind_for_status(code, &message);
        let mut error = LlmError::new(kind, format!("{provider}: {message}")).with_status(code);
        let retryable = RETRY_STATUSES.contains(&code);
        if retryable {
            error.retry_after = retry_after(&headers);
        }
        Err(Failure { error, retryable })
    }
}

/// A reply body: read whole (`None` past the size cap), or a streamed reply put back together.
enum Body {
    Read(Option<Vec<u8>>),
    Streamed(Result<Value, LlmError>),
}

/// A failed attempt and whether the transport may retry it.
struct Failure {
    error: LlmError,
    retryable: bool,
}

impl Failure {
    fn retry(error: LlmError) -> Self {
        Self {
            error,
            retryable: true,
        }
    }

    fn fatal(error: LlmError) -> Self {
        Self {
            error,
            retryable: false,
        }
    }
}

/// A `reqwest` failure before a status arrived: connection errors and timeouts are retried.
fn transport_failure(provider: &str, error: reqwest::Error, timeout: Duration) -> Failure {
    if error.is_timeout() {
        return Failure::retry(LlmError::new(
            LlmErrorKind::Timeout,
            format!("{provider}: no complete reply within {timeout:?}"),
        ));
    }
    let detail = describe(&error.without_url());
    Failure::retry(LlmError::new(
        LlmErrorKind::ApiConnection,
        format!("{provider}: connection failed: {detail}"),
    ))
}

/// The error as it leaves a provider call: the key removed from the message (should a server
/// have echoed it), then the message cut to [`MAX_MESSAGE_CHARS`]. Scrubbing first means a cut
/// cannot split a key and leave its prefix; a prefix of the key at the very end (a server that
/// echoed part of it) is removed too.
pub(crate) fn seal(mut error: LlmError, secret: Option<&str>) -> LlmError {
    if let Some(secret) = secret {
        error.message = redact(&error.message, secret);
    }
    error.message = truncate(&error.message);
    if let Some(secret) = secret {
        error.message = redact(&error.message, secret);
    }
    error
}

/// `text` without `secret`: every occurrence replaced, and a trailing prefix of it (eight
/// characters or more, or the whole key when shorter) removed. Keys under four characters are
/// not looked for (every short word would match).
fn redact(text: &str, secret: &str) -> String {
    const REDACTED: &str = "[redacted]";
    if secret.len() < 4 {
        return text.to_string();
    }
    let mut out = text.replace(secret, REDACTED);
    let body = out.trim_end_matches('…');
    let min = secret.len().min(8);
    for len in (min..secret.len()).rev() {
        if secret.is_char_boundary(len) && body.ends_with(&secret[..len]) {
            let cut = body.len() - len;
            let rest = out[body.len()..].to_string();
            out.truncate(cut);
            out.push_str(REDACTED);
            out.push_str(&rest);
            break;
        }
    }
    out
}

/// The error kind for a non-2xx status, as LiteLLM's `exception_type` maps it
/// (`litellm/litellm_core_utils/exception_mapping_utils.py`): the status first, refined by the
/// provider's message for context-window and content-policy failures.
pub(crate) fn kind_for_status(status: u16, message: &str) -> LlmErrorKind {
    match status {
        400 | 413 | 422 if is_context_window_exceeded(message) => {
            LlmErrorKind::ContextWindowExceeded
        }
        400 if is_content_policy_violation(message) => LlmErrorKind::ContentPolicyViolation,
        400 | 413 => LlmErrorKind::BadRequest,
        401 => LlmErrorKind::Authentication,
        403 => LlmErrorKind::PermissionDenied,
        404 => LlmErrorKind::NotFound,
        408 | 504 => LlmErrorKind::Timeout,
        422 => LlmErrorKind::UnprocessableEntity,
        429 => LlmErrorKind::RateLimit,
        503 => LlmErrorKind::ServiceUnavailable,
        // 500, 529 (Anthropic "overloaded": LiteLLM raises InternalServerError) and other 5xx.
        500..=599 => LlmErrorKind::InternalServer,
        _ => LlmErrorKind::Api,
    }
}

/// Provider messages meaning the prompt does not fit (LiteLLM's
/// `ExceptionCheckers.is_error_str_context_window_exceeded` plus Anthropic's wording).
fn is_context_window_exceeded(message: &str) -> bool {
    let lower = message.to_lowercase();
    if lower.contains("string_above_max_length")
        || (lower.contains("invalid 'user'") && lower.contains("string too long"))
    {
        return false;
    }
    const KNOWN: [&str; 12] = [
        "exceed context limit",
        "this model's maximum context length is",
        "maximum context length",
        "model's maximum context limit",
        "is longer than the model's context length",
        "input tokens exceed the configured limit",
        "`inputs` tokens + `max_new_tokens` must be",
        "exceeds the available context size",
        "exceeds the maximum number of tokens allowed",
        "context_length_exceeded",
        "prompt is too long",
        "prompt: length",
    ];
    KNOWN.iter().any(|k| lower.contains(k))
        || (lower.contains("current length is") && lower.contains("while limit is"))
}

/// Provider messages meaning the content was refused.
fn is_content_policy_violation(message: &str) -> bool {
    let lower = message.to_lowercase();
    [
        "content_policy_violation",
        "content filtering policy",
        "content_filter",
    ]
    .iter()
    .any(|k| lower.contains(k))
}

/// The provider's error message in a JSON error body: `error.message` (OpenAI, Anthropic),
/// `error` as a string (Ollama), `message` or `detail` (other servers).
fn error_message(body: &Value) -> Option<String> {
    let text = |v: &Value| v.as_str().map(str::to_string);
    body.get("error")
        .and_then(|e| e.get("message").and_then(text).or_else(|| text(e)))
        .or_else(|| body.get("message").and_then(text))
        .or_else(|| body.get("detail").and_then(text))
        .filter(|m| !m.trim().is_empty())
}

/// `retry-after-ms` (milliseconds, the OpenAI SDK honours it) or `retry-after` (seconds or an
/// HTTP date), capped at [`MAX_RETRY_AFTER`].
fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let header = |name: &str| {
        headers
            .get(HeaderName::from_bytes(name.as_bytes()).ok()?)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
    };
    let delay = header("retry-after-ms")
        .and_then(|v| v.parse::<f64>().ok())
        .filter(|ms| ms.is_finite() && *ms >= 0.0)
        .map(|ms| Duration::from_secs_f64(ms.min(1e9) / 1000.0))
        .or_else(|| {
            let value = header("retry-after")?;
            match value.parse::<f64>() {
                Ok(secs) if secs.is_finite() && secs >= 0.0 => {
                    Some(Duration::from_secs_f64(secs.min(1e9)))
                }
                Ok(_) => None,
                Err(_) => {
                    let at = parse_http_date(value)?;
                    Some(
                        at.duration_since(SystemTime::now())
                            .unwrap_or(Duration::ZERO),
                    )
                }
            }
        })?;
    Some(delay.min(MAX_RETRY_AFTER))
}

/// Parses an IMF-fixdate (`Sun, 06 Nov 1994 08:49:37 GMT`), the HTTP date format.
fn parse_http_date(value: &str) -> Option<SystemTime> {
    let mut parts = value.split_whitespace();
    let _weekday = parts.next()?;
    let day: u32 = parts.next()?.parse().ok()?;
    let month = match parts.next()? {
        "Jan" => 1,
        "Feb" => 2,
        "Mar" => 3,
        "Apr" => 4,
        "May" => 5,
        "Jun" => 6,
        "Jul" => 7,
        "Aug" => 8,
        "Sep" => 9,
        "Oct" => 10,
        "Nov" => 11,
        "Dec" => 12,
        _ => return None,
    };
    let year: i64 = parts.next()?.parse().ok()?;
    let mut hms = parts.next()?.split(':');
    let hour: u64 = hms.next()?.parse().ok()?;
    let minute: u64 = hms.next()?.parse().ok()?;
    let second: u64 = hms.next()?.parse().ok()?;
    if parts.next()? != "GMT" || !(1..=31).contains(&day) || hour > 23 || minute > 59 || second > 60
    {
        return None;
    }
    // Days since 1970-01-01 (Howard Hinnant's days_from_civil).
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = i64::from(month);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = u64::try_from(days).ok()? * 86_400 + hour * 3600 + minute * 60 + second;
    UNIX_EPOCH.checked_add(Duration::from_secs(secs))
}

/// The exponential backoff before retry number `attempt` (1-based), with up to 25 % jitter off.
fn backoff(settings: &Settings, attempt: u32) -> Duration {
    let factor = 2u32.saturating_pow(attempt.saturating_sub(1).min(16));
    let base = settings
        .initial_backoff
        .saturating_mul(factor)
        .min(settings.max_backoff);
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u32(attempt);
    let jitter = (hasher.finish() % 1000) as f64 / 1000.0 * 0.25;
    base.mul_f64(1.0 - jitter)
}

/// A 2xx reply without what the provider's format promises: an
/// [`InternalServer`](LlmErrorKind::InternalServer) error (LiteLLM's type for it) naming what is
/// missing and the body's top-level keys, or the body's own `error.message` when it has one
/// (gateways answer errors with 200 too); the body's other values are not quoted.
pub(crate) fn malformed(provider: &str, what: &str, body: &Value) -> LlmError {
    let detail = match (error_message(body), body.as_object()) {
        (Some(message), _) => format!("the body says: {message}"),
        (None, Some(map)) => {
            let keys: Vec<String> = map.keys().take(10).map(|k| excerpt(k)).collect();
            format!("a JSON object with keys [{}]", keys.join(", "))
        }
        (None, None) => format!("a JSON {}", json_type(body)),
    };
    LlmError::new(
        LlmErrorKind::InternalServer,
        format!("{provider}: malformed reply ({what}): {detail}"),
    )
    .with_status(200)
}

fn json_type(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "list",
        Value::Object(_) => "object",
    }
}

/// The string at `key` of a JSON object.
pub(crate) fn text(value: &Value, key: &str) -> Option<String> {
    value.get(key).and_then(Value::as_str).map(str::to_string)
}

/// The first 100 characters of a body that is not what was expected, on one line.
pub(crate) fn excerpt(body: &str) -> String {
    let flat: String = body
        .trim()
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    match flat.char_indices().nth(100) {
        Some((at, _)) => format!("{}…", &flat[..at]),
        None => flat,
    }
}

/// Cuts a message to [`MAX_MESSAGE_CHARS`] characters.
pub(crate) fn truncate(message: &str) -> String {
    let message = message.trim();
    match message.char_indices().nth(MAX_MESSAGE_CHARS) {
        Some((at, _)) => format!("{}…", &message[..at]),
        None => message.to_string(),
    }
}

/// An error with its chain of causes.
fn describe(error: &reqwest::Error) -> String {
    let mut message = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        message.push_str(": ");
        message.push_str(&cause.to_string());
        source = cause.source();
    }
    message
}

/// A header value holding a secret, marked sensitive; `None` if the key has characters a
/// header cannot carry.
pub(crate) fn secret_header(value: &str) -> Option<HeaderValue> {
    let mut value = HeaderValue::from_str(value).ok()?;
    value.set_sensitive(true);
    Some(value)
}

/// The key in environment variable `name`, if set and not blank.
pub(crate) fn read_key(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|k| !k.trim().is_empty())
}

/// `base` followed by `path` (`/v1/messages`), unless `base` already ends with `path`; a base
/// ending in `/v1` is not given a second one.
pub(crate) fn endpoint(base: &str, path: &str) -> String {
    if base.ends_with(path) {
        return base.to_string();
    }
    match path.strip_prefix("/v1/") {
        Some(rest) if base.ends_with("/v1") => format!("{base}/{rest}"),
        _ => format!("{base}{path}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_dates_parse() {
        let t = parse_http_date("Sun, 06 Nov 1994 08:49:37 GMT").unwrap();
        assert_eq!(t.duration_since(UNIX_EPOCH).unwrap().as_secs(), 784_111_777);
        assert!(parse_http_date("Sun, 06 Foo 1994 08:49:37 GMT").is_none());
        assert!(parse_http_date("garbage").is_none());
    }

    #[test]
    fn retry_after_forms() {
        let mut h = HeaderMap::new();
        h.insert("retry-after", HeaderValue::from_static("2"));
        assert_eq!(retry_after(&h), Some(Duration::from_secs(2)));
        h.insert("retry-after", HeaderValue::from_static("3600"));
        assert_eq!(retry_after(&h), Some(MAX_RETRY_AFTER));
        h.insert(
            "retry-after",
            HeaderValue::from_static("Thu, 01 Jan 1970 00:00:00 GMT"),
        );
        assert_eq!(retry_after(&h), Some(Duration::ZERO));
        h.insert("retry-after-ms", HeaderValue::from_static("250"));
        assert_eq!(retry_after(&h), Some(Duration::from_millis(250)));
        assert_eq!(retry_after(&HeaderMap::new()), None);
    }

    #[test]
    fn statuses_map_like_litellm() {
        assert_eq!(kind_for_status(400, "bad"), LlmErrorKind::BadRequest);
        assert_eq!(
            kind_for_status(400, "This model's maximum context length is 8192 tokens"),
            LlmErrorKind::ContextWindowExceeded
        );
        assert_eq!(
            kind_for_status(400, "prompt is too long: 300000 tokens > 200000 maximum"),
            LlmErrorKind::ContextWindowExceeded
        );
        assert_eq!(
            kind_for_status(529, "Overloaded"),
            LlmErrorKind::InternalServer
        );
        assert_eq!(kind_for_status(502, ""), LlmErrorKind::InternalServer);
        assert_eq!(kind_for_status(504, ""), LlmErrorKind::Timeout);
        assert_eq!(kind_for_status(418, ""), LlmErrorKind::Api);
    }

    #[test]
    fn endpoints_join() {
        assert_eq!(
            endpoint("http://h/v1", "/chat/completions"),
            "http://h/v1/chat/completions"
        );
        assert_eq!(
            endpoint("http://h/v1/chat/completions", "/chat/completions"),
            "http://h/v1/chat/completions"
        );
        assert_eq!(
            endpoint("https://a.com", "/v1/messages"),
            "https://a.com/v1/messages"
        );
        assert_eq!(
            endpoint("https://a.com/v1", "/v1/messages"),
            "https://a.com/v1/messages"
        );
        assert_eq!(
            endpoint("https://a.com/v1/messages", "/v1/messages"),
            "https://a.com/v1/messages"
        );
    }

    #[test]
    fn backoff_grows_and_caps() {
        let s = Settings::default();
        assert!(backoff(&s, 1) <= Duration::from_millis(500));
        assert!(backoff(&s, 1) >= Duration::from_millis(375));
        assert!(backoff(&s, 10) <= DEFAULT_MAX_BACKOFF);
    }

    #[test]
    fn keys_are_scrubbed_before_the_cut_and_a_trailing_prefix_goes_too() {
        let key = "sk-test-0123456789abcdef";
        // The key straddles the 500-character cut.
        let text = format!("{}{key} tail", "x".repeat(490));
        let sealed = seal(LlmError::new(LlmErrorKind::Api, text), Some(key));
        assert!(!sealed.message.contains("sk-test-01"), "{}", sealed.message);
        assert!(sealed.message.contains("[redacted]"));
        // A server that echoed only the start of the key.
        let sealed = seal(
            LlmError::new(LlmErrorKind::Api, "echo: Bearer sk-test-0123"),
            Some(key),
        );
        assert_eq!(sealed.message, "echo: Bearer [redacted]");
        // Short keys are not looked for.
        assert_eq!(redact("abc abc", "abc"), "abc abc");
    }

    #[test]
    fn truncates_on_char_boundaries() {
        let long = "é".repeat(600);
        assert_eq!(truncate(&long).chars().count(), MAX_MESSAGE_CHARS + 1);
    }
}
