//! [`WebhookHooks`]: every hook event POSTed as JSON to an HTTP endpoint (feature `webhooks`).

use std::error::Error as _;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use reqwest::header::{AUTHORIZATION, HeaderValue, USER_AGENT};
use reqwest::{StatusCode, Url};

use super::{ActionOutcome, HookError, MachineHooks};
use crate::{Context, StateError, Value};

const CLASS: &str = "WebhookHooks";

/// Largest response body read; a longer one is treated as a failed call.
const MAX_RESPONSE_BYTES: usize = 16 * 1024 * 1024;

/// Sends every hook event to an HTTP endpoint and lets the response change the run
/// (the reference's `WebhookHooks`).
///
/// Each call POSTs a JSON object `{"event": <name>, ...payload}`:
///
/// | hook | `event` | payload keys | response key used |
/// |---|---|---|---|
/// | `on_machine_start` | `machine_start` | `context` | `context` replaces the context |
/// | `on_machine_end` | `machine_end` | `context`, `output` | `output` replaces the output |
/// | `on_state_enter` | `state_enter` | `state`, `context` | `context` replaces the context |
/// | `on_state_exit` | `state_exit` | `state`, `context`, `output` | `output` replaces the output (`null`: none) |
/// | `on_transition` | `transition` | `from`, `to`, `context` | `to_state` replaces the target |
/// | `on_error` | `error` | `state`, `error` (message), `error_type`, `context` | `recovery_state` is the recovery state |
/// | `on_action` | `action` | `action`, `context` | `context` replaces the context, and the action counts as handled |
///
/// A 2xx response whose body is a JSON object may carry those keys; a missing key, a 204, an
/// empty body or another JSON value leaves everything unchanged. A key of the wrong type
/// (a `context` that is not an object, a `to_state` that is not a string, ...) is logged and
/// ignored.
///
/// **A webhook never fails the run**: an unreachable endpoint, a non-2xx status (redirects are
/// not followed, as in the reference), a body that is not JSON, or a call running past the
/// timeout (default 5 s, the reference's) is logged with `tracing::error!` and the hook
/// returns the pass-through value.
///
/// Requests carry `User-Agent: flatmachine-runtime/<version>` and, with an API key,
/// `Authorization: Bearer <key>` (refused over plain `http://` to a host that is not
/// loopback). Logs and `Debug` show the endpoint as `scheme://host[:port]` only; a response
/// nesting deeper than [`MAX_JSON_DEPTH`](crate::agents::output::MAX_JSON_DEPTH) is ignored
/// like one that is not JSON.
///
/// TLS: `https://` endpoints use rustls with the platform's root certificates; if the process
/// has no default rustls crypto provider yet, the `ring` provider is installed as the default
/// (an application wanting another provider installs it before building the hooks). `http://`
/// endpoints touch no global state and need no certificates.
#[derive(Clone)]
pub struct WebhookHooks {
    endpoint: Url,
    /// The endpoint as logged: `scheme://host[:port]` only (paths and queries often hold
    /// tokens, e.g. Slack-style webhook URLs).
    endpoint_display: String,
    timeout: Duration,
    authorization: Option<HeaderValue>,
    user_agent: HeaderValue,
    client: reqwest::Client,
}

impl fmt::Debug for WebhookHooks {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WebhookHooks")
            .field("endpoint", &self.endpoint_display)
            .field("timeout", &self.timeout)
            .field(
                "api_key",
                &self.authorization.as_ref().map(|_| "<redacted>"),
            )
            .finish()
    }
}

impl WebhookHooks {
    /// The reference's default per-request timeout: 5 seconds.
    pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);

    /// Hooks posting to `endpoint` (an `http://` or `https://` URL), with the default timeout
    /// and no API key.
    pub fn new(endpoint: &str) -> Result<Self, HookError> {
        let endpoint = Url::parse(endpoint).map_err(|e| {
            HookError::invalid_args(CLASS, format!("endpoint `{endpoint}` is not a URL: {e}"))
        })?;
        if !matches!(endpoint.scheme(), "http" | "https") {
            return Err(HookError::invalid_args(
                CLASS,
                format!(
                    "endpoint scheme must be http or https, got `{}`",
                    endpoint.scheme()
                ),
            ));
        }
        let client = build_client(&endpoint)?;
        let user_agent =
            HeaderValue::from_static(concat!("flatmachine-runtime/", env!("CARGO_PKG_VERSION")));
        Ok(Self {
            endpoint_display: origin(&endpoint),
            endpoint,
            timeout: Self::DEFAULT_TIMEOUT,
            authorization: None,
            user_agent,
            client,
        })
    }

    /// Sets the per-request timeout (connect, send and read of the whole response).
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Sends `Authorization: Bearer <api_key>` with every request.
    ///
    /// Refused for a plain `http://` endpoint unless its host is loopback (`localhost`,
    /// `127.0.0.0/8`, `::1`): the key would cross the network in clear text.
    pub fn with_api_key(mut self, api_key: &str) -> Result<Self, HookError> {
        if self.endpoint.scheme() == "http" && !is_loopback(&self.endpoint) {
            return Err(HookError::invalid_args(
                CLASS,
                format!(
                    "`api_key` is refused for the plain http:// endpoint {}: the key would be sent in clear text; use https://, or a loopback host",
                    self.endpoint_display
                ),
            ));
        }
        let mut value = HeaderValue::from_str(&format!("Bearer {api_key}")).map_err(|_| {
            HookError::invalid_args(CLASS, "api_key contains characters not allowed in a header")
        })?;
        value.set_sensitive(true);
        self.authorization = Some(value);
        Ok(self)
    }

    /// Builds from YAML `hooks.args`: `endpoint` (the reference's name) or `url` (required,
    /// string), `timeout` (seconds, number > 0; default 5), `api_key` (string). A null value
    /// counts as absent; any other key is an error.
    pub fn from_args(args: &serde_json::Map<String, Value>) -> Result<Self, HookError> {
        let mut endpoint: Option<(&str, &str)> = None;
        let mut timeout = None;
        let mut api_key = None;
        for (key, value) in args {
            if value.is_null() {
                continue;
            }
            match key.as_str() {
                "endpoint" | "url" => {
                    let url = value.as_str().ok_or_else(|| {
                        HookError::invalid_args(CLASS, format!("`{key}` must be a string"))
                    })?;
                    if let Some((other, _)) = endpoint {
                        return Err(HookError::invalid_args(
                            CLASS,
                            format!("give either `{other}` or `{key}`, not both"),
                        ));
                    }
                    endpoint = Some((key.as_str(), url));
                }
                "timeout" => {
                    let seconds = value
                        .as_f64()
                        .filter(|s| *s > 0.0)
                        .and_then(|s| Duration::try_from_secs_f64(s).ok())
                        .ok_or_else(|| {
                            HookError::invalid_args(
                                CLASS,
                                format!(
                                    "`timeout` must be a positive number of seconds, got {value}"
                                ),
                            )
                        })?;
                    timeout = Some(seconds);
                }
                "api_key" => {
                    api_key = Some(value.as_str().ok_or_else(|| {
                        HookError::invalid_args(CLASS, "`api_key` must be a string")
                    })?);
                }
                other => {
                    return Err(HookError::invalid_args(
                        CLASS,
                        format!(
                            "unknown arg `{other}` (expected `endpoint`, `timeout`, `api_key`)"
                        ),
                    ));
                }
            }
        }
        let (_, url) = endpoint.ok_or_else(|| {
            HookError::invalid_args(CLASS, "missing `endpoint` (or `url`): the URL to POST to")
        })?;
        let mut hooks = Self::new(url)?;
        if let Some(timeout) = timeout {
            hooks = hooks.with_timeout(timeout);
        }
        if let Some(api_key) = api_key {
            hooks = hooks.with_api_key(api_key)?;
        }
        Ok(hooks)
    }

    /// The URL events are posted to.
    pub fn endpoint(&self) -> &Url {
        &self.endpoint
    }

    /// The per-request timeout.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// POSTs `{"event": event, ...payload}`; the response object, or `None` when there is none
    /// or the call failed (logged).
    async fn send(
        &self,
        event: &str,
        payload: Vec<(&str, Value)>,
    ) -> Option<serde_json::Map<String, Value>> {
        let mut body = serde_json::Map::with_capacity(payload.len() + 1);
        body.insert("event".to_string(), Value::String(event.to_string()));
        for (key, value) in payload {
            body.insert(key.to_string(), value);
        }
        let mut request = self
            .client
            .post(self.endpoint.clone())
            .timeout(self.timeout)
            .header(USER_AGENT, self.user_agent.clone())
            .json(&body);
        if let Some(authorization) = &self.authorization {
            request = request.header(AUTHORIZATION, authorization.clone());
        }
        let result = async {
            let mut response = request.send().await?;
            let status = response.status();
            if !status.is_success() {
                return Ok(Err(format!("HTTP status {status}")));
            }
            if status == StatusCode::NO_CONTENT {
                return Ok(Ok(Vec::new()));
            }
            let mut bytes = Vec::new();
            while let Some(chunk) = response.chunk().await? {
                if bytes.len() + chunk.len() > MAX_RESPONSE_BYTES {
                    return Ok(Err(format!(
                        "response body larger than {MAX_RESPONSE_BYTES} bytes"
                    )));
                }
                bytes.extend_from_slice(&chunk);
            }
            Ok::<_, reqwest::Error>(Ok(bytes))
        }
        .await;
        let bytes = match result {
            Ok(Ok(bytes)) => bytes,
            Ok(Err(message)) => {
                self.log_failure(event, &message);
                return None;
            }
            Err(error) => {
                let message = if error.is_timeout() {
                    format!("timed out after {:?}", self.timeout)
                } else {
                    describe(&error.without_url())
                };
                self.log_failure(event, &message);
                return None;
            }
        };
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return None;
        }
        let text = match std::str::from_utf8(&bytes) {
            Ok(text) => text,
            Err(_) => {
                self.log_failure(event, "response is not UTF-8 text");
                return None;
            }
        };
        match crate::agents::output::parse_bounded(text) {
            Ok(Value::Object(map)) => Some(map),
            Ok(_) => {
                tracing::debug!(
                    event,
                    endpoint = %self.endpoint_display,
                    "Webhook response is not a JSON object; ignored"
                );
                None
            }
            Err(error) => {
                self.log_failure(event, &format!("response is not JSON: {error}"));
                None
            }
        }
    }

    fn log_failure(&self, event: &str, message: &str) {
        tracing::error!(
            event,
            endpoint = %self.endpoint_display,
            "Webhook error ({event}): {message}"
        );
    }

    fn warn_ignored(&self, event: &str, key: &str, expected: &str, got: &Value) {
        let mut got = got.to_string();
        if got.len() > 200 {
            let mut cut = 200;
            while !got.is_char_boundary(cut) {
                cut -= 1;
            }
            got.truncate(cut);
            got.push_str("...");
        }
        tracing::warn!(
            event,
            endpoint = %self.endpoint_display,
            "Webhook response `{key}` must be {expected}, got {got}; ignored"
        );
    }

    /// Replaces `context` with the response's `context` object, if any; whether it did.
    fn replace_context(
        &self,
        event: &str,
        response: Option<serde_json::Map<String, Value>>,
        context: &mut Context,
    ) -> bool {
        match response.and_then(|mut r| r.remove("context")) {
            Some(Value::Object(new_context)) => {
                *context = new_context;
                true
            }
            Some(other) => {
                self.warn_ignored(event, "context", "an object", &other);
                false
            }
            None => false,
        }
    }
}

/// `scheme://host[:port]` of a URL: what logs and `Debug` show of an endpoint (no user,
/// password, path, query or fragment).
fn origin(url: &Url) -> String {
    let host = url.host_str().unwrap_or_default();
    match url.port() {
        Some(port) => format!("{}://{host}:{port}", url.scheme()),
        None => format!("{}://{host}", url.scheme()),
    }
}

/// Whether the URL's host is this machine (`localhost`, a loopback address).
fn is_loopback(url: &Url) -> bool {
    let Some(host) = url.host_str() else {
        return false;
    };
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    match bare.parse::<std::net::IpAddr>() {
        Ok(ip) => ip.is_loopback(),
        Err(_) => {
            let name = bare.to_ascii_lowercase();
            name == "localhost" || name.ends_with(".localhost")
        }
    }
}

/// A message for an error and its sources (`error sending request: ... Connection refused`).
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

/// An HTTP client that does not follow redirects. For `http://` endpoints its TLS config (never
/// used) has no roots and needs no global provider; for `https://` it uses reqwest's rustls
/// setup with the platform verifier, after making sure a process-wide provider exists.
fn build_client(endpoint: &Url) -> Result<reqwest::Client, HookError> {
    let builder = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none());
    let builder = if endpoint.scheme() == "https" {
        if rustls::crypto::CryptoProvider::get_default().is_none() {
            // Fails only if another thread installed one meanwhile, which is just as good.
            let _ = rustls::crypto::ring::default_provider().install_default();
        }
        builder
    } else {
        let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| HookError::failed(format!("webhook TLS setup failed: {e}")))?
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
        builder.tls_backend_preconfigured(tls)
    };
    builder.build().map_err(|e| {
        HookError::invalid_args(
            CLASS,
            format!("cannot build the HTTP client: {}", describe(&e)),
        )
    })
}

#[async_trait]
impl MachineHooks for WebhookHooks {
    async fn on_machine_start(&self, context: &mut Context) -> Result<(), HookError> {
        let event = "machine_start";
        let response = self
            .send(event, vec![("context", Value::Object(context.clone()))])
            .await;
        self.replace_context(event, response, context);
        Ok(())
    }

    async fn on_machine_end(&self, context: &Context, output: &mut Value) -> Result<(), HookError> {
        let event = "machine_end";
        let response = self
            .send(
                event,
                vec![
                    ("context", Value::Object(context.clone())),
                    ("output", output.clone()),
                ],
            )
            .await;
        if let Some(new_output) = response.and_then(|mut r| r.remove("output")) {
            *output = new_output;
        }
        Ok(())
    }

    async fn on_state_enter(&self, state: &str, context: &mut Context) -> Result<(), HookError> {
        let event = "state_enter";
        let response = self
            .send(
                event,
                vec![
                    ("state", Value::String(state.to_string())),
                    ("context", Value::Object(context.clone())),
                ],
            )
            .await;
        self.replace_context(event, response, context);
        Ok(())
    }

    async fn on_state_exit(
        &self,
        state: &str,
        context: &mut Context,
        output: &mut Option<Value>,
    ) -> Result<(), HookError> {
        let event = "state_exit";
        let response = self
            .send(
                event,
                vec![
                    ("state", Value::String(state.to_string())),
                    ("context", Value::Object(context.clone())),
                    ("output", output.clone().unwrap_or(Value::Null)),
                ],
            )
            .await;
        if let Some(new_output) = response.and_then(|mut r| r.remove("output")) {
            *output = match new_output {
                Value::Null => None,
                value => Some(value),
            };
        }
        Ok(())
    }

    async fn on_transition(
        &self,
        from: &str,
        to: &str,
        context: &mut Context,
    ) -> Result<String, HookError> {
        let event = "transition";
        let response = self
            .send(
                event,
                vec![
                    ("from", Value::String(from.to_string())),
                    ("to", Value::String(to.to_string())),
                    ("context", Value::Object(context.clone())),
                ],
            )
            .await;
        match response.and_then(|mut r| r.remove("to_state")) {
            Some(Value::String(target)) => Ok(target),
            Some(other) => {
                self.warn_ignored(event, "to_state", "a state name", &other);
                Ok(to.to_string())
            }
            None => Ok(to.to_string()),
        }
    }

    async fn on_error(
        &self,
        state: &str,
        error: &StateError,
        context: &mut Context,
    ) -> Result<Option<String>, HookError> {
        let event = "error";
        let response = self
            .send(
                event,
                vec![
                    ("state", Value::String(state.to_string())),
                    ("error", Value::String(error.message.clone())),
                    ("error_type", Value::String(error.error_type.clone())),
                    ("context", Value::Object(context.clone())),
                ],
            )
            .await;
        match response.and_then(|mut r| r.remove("recovery_state")) {
            Some(Value::String(recovery)) => Ok(Some(recovery)),
            Some(Value::Null) | None => Ok(None),
            Some(other) => {
                self.warn_ignored(event, "recovery_state", "a state name or null", &other);
                Ok(None)
            }
        }
    }

    async fn on_action(
        &self,
        action: &str,
        context: &mut Context,
    ) -> Result<ActionOutcome, HookError> {
        let event = "action";
        let response = self
            .send(
                event,
                vec![
                    ("action", Value::String(action.to_string())),
                    ("context", Value::Object(context.clone())),
                ],
            )
            .await;
        Ok(if self.replace_context(event, response, context) {
            ActionOutcome::Handled
        } else {
            ActionOutcome::NotHandled
        })
    }
}
