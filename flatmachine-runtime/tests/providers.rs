//! The built-in LLM providers against a loopback HTTP/1.1 server speaking their JSON.
//!
//! Run with `cargo test -p flatmachine-runtime --features openai,anthropic --test providers`.
//! Keys are passed through uniquely named environment variables (one per test, named by the
//! request's `api_key_env`) so parallel tests do not race.
#![cfg(all(feature = "openai", feature = "anthropic"))]

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use flatmachine_runtime::Value;
use flatmachine_runtime::agents::{
    AnthropicBackend, JsonMode, LlmBackend, LlmError, LlmErrorKind, LlmRequest, LlmResponse,
    Message, OpenAiBackend, ProviderRouter, ResponseFormat, Role, default_backend_for,
};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// What the test server answers.
#[derive(Clone)]
enum Reply {
    /// Status, extra headers, raw body.
    Body(u16, Vec<(&'static str, String)>, String),
    /// Waits, then answers.
    Slow(Duration, Box<Reply>),
}

fn ok(value: Value) -> Reply {
    Reply::Body(200, vec![], value.to_string())
}

fn status(code: u16, value: Value) -> Reply {
    Reply::Body(code, vec![], value.to_string())
}

/// One request the server received.
#[derive(Debug, Clone)]
struct Received {
    method: String,
    path: String,
    headers: Vec<(String, String)>,
    body: Value,
    at: Instant,
}

impl Received {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

type Responder = Arc<dyn Fn(usize, &Value) -> Reply + Send + Sync>;

/// A tiny HTTP/1.1 server on 127.0.0.1: one request per connection, then `Connection: close`.
/// The responder gets the request's index (0-based) and JSON body.
struct Server {
    addr: SocketAddr,
    received: Arc<Mutex<Vec<Received>>>,
}

impl Server {
    async fn start(responder: impl Fn(usize, &Value) -> Reply + Send + Sync + 'static) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let received = Arc::new(Mutex::new(Vec::new()));
        let responder: Responder = Arc::new(responder);
        let log = Arc::clone(&received);
        let count = Arc::new(AtomicUsize::new(0));
        tokio::spawn(async move {
            for _ in 0..100 {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let responder = Arc::clone(&responder);
                let log = Arc::clone(&log);
                let count = Arc::clone(&count);
                tokio::spawn(async move {
                    let _ = serve(stream, responder, log, count).await;
                });
            }
        });
        Self { addr, received }
    }

    /// The base URL for OpenAI-compatible requests (`.../v1`).
    fn openai_base(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    /// The base URL for Anthropic requests (the backend appends `/v1/messages`).
    fn anthropic_base(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn received(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }

    fn only(&self) -> Received {
        let received = self.received();
        assert_eq!(received.len(), 1, "expected one request: {received:#?}");
        received.into_iter().next().unwrap()
    }
}

async fn serve(
    mut stream: TcpStream,
    responder: Responder,
    log: Arc<Mutex<Vec<Received>>>,
    count: Arc<AtomicUsize>,
) -> std::io::Result<()> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i;
        }
        let n = stream.read(&mut chunk).await?;
        if n == 0 || buf.len() > 1 << 20 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let at = Instant::now();
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    let mut lines = head.split("\r\n");
    let mut request_line = lines.next().unwrap_or("").split(' ');
    let method = request_line.next().unwrap_or("").to_string();
    let path = request_line.next().unwrap_or("").to_string();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_string(), v.trim().to_string()))
        .collect();
    let length: usize = headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    let mut body = buf[head_end + 4..].to_vec();
    while body.len() < length {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Ok(());
        }
        body.extend_from_slice(&chunk[..n]);
    }
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let index = count.fetch_add(1, Ordering::SeqCst);
    let mut reply = responder(index, &body);
    log.lock().unwrap().push(Received {
        method,
        path,
        headers,
        body,
        at,
    });
    let (code, extra, body) = loop {
        match reply {
            Reply::Body(code, extra, body) => break (code, extra, body),
            Reply::Slow(delay, next) => {
                tokio::time::sleep(delay).await;
                reply = *next;
            }
        }
    };
    let mut response = format!(
        "HTTP/1.1 {code} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
         Connection: close\r\n",
        body.len()
    );
    for (name, value) in extra {
        response.push_str(&format!("{name}: {value}\r\n"));
    }
    response.push_str("\r\n");
    response.push_str(&body);
    stream.write_all(response.as_bytes()).await?;
    stream.shutdown().await
}

/// Sets a uniquely named key variable for this test and returns its name.
fn key_var(test: &str, key: &str) -> String {
    let name = format!("FLATMACHINE_PROVIDERS_TEST_KEY_{}", test.to_uppercase());
    // SAFETY: each test uses its own variable name; nothing else reads or writes it.
    unsafe { std::env::set_var(&name, key) };
    name
}

/// A variable name no test sets.
fn unset_var(test: &str) -> String {
    format!("FLATMACHINE_PROVIDERS_TEST_UNSET_{}", test.to_uppercase())
}

fn messages() -> Vec<Message> {
    vec![
        Message::new(Role::System, "You are terse."),
        Message::new(Role::User, "Say hi."),
    ]
}

fn request(provider: &str, base: &str, key_env: &str) -> LlmRequest {
    let mut request = LlmRequest::new("some-model", messages());
    request.provider = Some(provider.to_string());
    request.base_url = Some(base.to_string());
    request.api_key_env = Some(key_env.to_string());
    request
}

fn openai_reply() -> Value {
    json!({
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "model": "gpt-test-2025",
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": "hi"},
            "finish_reason": "stop"
        }],
        "usage": {
            "prompt_tokens": 12,
            "completion_tokens": 3,
            "total_tokens": 15,
            "prompt_tokens_details": {"cached_tokens": 8}
        }
    })
}

fn anthropic_reply() -> Value {
    json!({
        "id": "msg_1",
        "type": "message",
        "role": "assistant",
        "model": "claude-test",
        "content": [
            {"type": "thinking", "thinking": "hmm", "signature": "x"},
            {"type": "text", "text": "hel"},
            {"type": "tool_use", "id": "t", "name": "f", "input": {}},
            {"type": "text", "text": "lo"}
        ],
        "stop_reason": "end_turn",
        "stop_sequence": null,
        "usage": {
            "input_tokens": 5,
            "output_tokens": 7,
            "cache_read_input_tokens": 20,
            "cache_creation_input_tokens": 2
        }
    })
}

fn openai_error(message: &str) -> Value {
    json!({"error": {"message": message, "type": "invalid_request_error", "param": null, "code": null}})
}

fn anthropic_error(kind: &str, message: &str) -> Value {
    json!({"type": "error", "error": {"type": kind, "message": message}})
}

fn fast_openai() -> OpenAiBackend {
    OpenAiBackend::new().with_retry_backoff(Duration::from_millis(10), Duration::from_millis(20))
}

fn fast_anthropic() -> AnthropicBackend {
    AnthropicBackend::new().with_retry_backoff(Duration::from_millis(10), Duration::from_millis(20))
}

// ---------------------------------------------------------------------------------------------
// Request bodies and headers

#[tokio::test]
async fn openai_minimal_body_and_headers() {
    let server = Server::start(|_, _| ok(openai_reply())).await;
    let env = key_var("openai_minimal", "sk-minimal-123");
    let request = request("openai", &server.openai_base(), &env);
    let reply = OpenAiBackend::new().complete(&request).await.unwrap();
    assert_eq!(reply.content, "hi");
    let got = server.only();
    assert_eq!(got.method, "POST");
    assert_eq!(got.path, "/v1/chat/completions");
    assert_eq!(got.header("authorization"), Some("Bearer sk-minimal-123"));
    assert_eq!(got.header("content-type"), Some("application/json"));
    assert_eq!(
        got.body,
        json!({
            "model": "some-model",
            "messages": [
                {"role": "system", "content": "You are terse."},
                {"role": "user", "content": "Say hi."}
            ],
            "temperature": 0.7
        })
    );
}

#[tokio::test]
async fn openai_full_body_with_json_schema() {
    let server = Server::start(|_, _| ok(openai_reply())).await;
    let env = key_var("openai_full", "sk-full");
    let mut request = request("openai", &format!("{}/", server.openai_base()), &env);
    request.model = "org/model-name".into();
    request.temperature = 0.0;
    request.max_tokens = Some(256);
    request.top_p = Some(0.9);
    request.top_k = Some(40);
    request.frequency_penalty = Some(0.5);
    request.presence_penalty = Some(-0.5);
    request.seed = Some(7);
    let schema = json!({"type": "object", "properties": {"x": {"type": "string"}}});
    request.response_format = ResponseFormat::Json {
        name: "extractor".into(),
        schema: schema.clone(),
    };
    OpenAiBackend::new().complete(&request).await.unwrap();
    let got = server.only();
    assert_eq!(got.path, "/v1/chat/completions", "trailing slash trimmed");
    assert_eq!(
        got.body,
        json!({
            "model": "org/model-name",
            "messages": [
                {"role": "system", "content": "You are terse."},
                {"role": "user", "content": "Say hi."}
            ],
            "temperature": 0.0,
            "max_tokens": 256,
            "top_p": 0.9,
            "top_k": 40,
            "frequency_penalty": 0.5,
            "presence_penalty": -0.5,
            "seed": 7,
            "response_format": {
                "type": "json_schema",
                "json_schema": {"name": "extractor", "schema": schema, "strict": false}
            }
        })
    );
}

#[tokio::test]
async fn openai_json_object_mode() {
    let server = Server::start(|_, _| ok(openai_reply())).await;
    let env = key_var("openai_json_object", "sk-jo");
    let mut request = request("ollama", &server.openai_base(), &env);
    request.response_format = ResponseFormat::Json {
        name: "x".into(),
        schema: json!({"type": "object"}),
    };
    OpenAiBackend::json_object_mode()
        .complete(&request)
        .await
        .unwrap();
    assert_eq!(
        server.only().body["response_format"],
        json!({"type": "json_object"})
    );
    assert_eq!(
        OpenAiBackend::new()
            .with_json_mode(JsonMode::JsonObject)
            .request_body(&request)["response_format"],
        json!({"type": "json_object"})
    );
    assert_eq!(JsonMode::default(), JsonMode::JsonSchema);
}

#[tokio::test]
async fn anthropic_minimal_body_and_headers() {
    let server = Server::start(|_, _| ok(anthropic_reply())).await;
    let env = key_var("anthropic_minimal", "sk-ant-minimal");
    let mut request = request("anthropic", &server.anthropic_base(), &env);
    // No Messages API equivalent: never sent.
    request.frequency_penalty = Some(0.1);
    request.presence_penalty = Some(0.2);
    request.seed = Some(3);
    AnthropicBackend::new().complete(&request).await.unwrap();
    let got = server.only();
    assert_eq!(got.method, "POST");
    assert_eq!(got.path, "/v1/messages");
    assert_eq!(got.header("x-api-key"), Some("sk-ant-minimal"));
    assert_eq!(got.header("anthropic-version"), Some("2023-06-01"));
    assert_eq!(got.header("content-type"), Some("application/json"));
    assert_eq!(got.header("authorization"), None);
    assert_eq!(
        got.body,
        json!({
            "model": "some-model",
            "max_tokens": AnthropicBackend::DEFAULT_MAX_TOKENS,
            "system": [{"type": "text", "text": "You are terse."}],
            "messages": [{"role": "user", "content": [{"type": "text", "text": "Say hi."}]}],
            "temperature": 0.7
        })
    );
    assert_eq!(AnthropicBackend::DEFAULT_MAX_TOKENS, 4096);
}

#[tokio::test]
async fn anthropic_prompt_caching_marks_the_system_block() {
    let server = Server::start(|_, _| ok(anthropic_reply())).await;
    let env = key_var("anthropic_cache", "sk-ant-cache");
    let mut request = request("anthropic", &server.anthropic_base(), &env);
    request.prompt_caching = true;
    AnthropicBackend::new().complete(&request).await.unwrap();
    assert_eq!(
        server.only().body["system"],
        json!([{"type": "text", "text": "You are terse.", "cache_control": {"type": "ephemeral"}}])
    );
}

#[tokio::test]
async fn anthropic_full_body() {
    let server = Server::start(|_, _| ok(anthropic_reply())).await;
    let env = key_var("anthropic_full", "sk-ant-full");
    let mut request = request("anthropic", &server.anthropic_base(), &env);
    request.messages = vec![
        Message::new(Role::User, "a"),
        Message::new(Role::Assistant, "b"),
        Message::new(Role::User, "c"),
    ];
    request.temperature = 1.0;
    request.max_tokens = Some(100);
    request.top_p = Some(0.5);
    request.top_k = Some(10);
    request.response_format = ResponseFormat::Json {
        name: "x".into(),
        schema: json!({"type": "object"}),
    };
    AnthropicBackend::new().complete(&request).await.unwrap();
    assert_eq!(
        server.only().body,
        json!({
            "model": "some-model",
            "max_tokens": 100,
            "messages": [
                {"role": "user", "content": [{"type": "text", "text": "a"}]},
                {"role": "assistant", "content": [{"type": "text", "text": "b"}]},
                {"role": "user", "content": [{"type": "text", "text": "c"}]}
            ],
            "temperature": 1.0,
            "top_p": 0.5,
            "top_k": 10
        })
    );
}

// ---------------------------------------------------------------------------------------------
// Replies

#[tokio::test]
async fn openai_reply_is_parsed() {
    let server = Server::start(|_, _| ok(openai_reply())).await;
    let env = key_var("openai_reply", "sk-r");
    let reply = OpenAiBackend::new()
        .complete(&request("openai", &server.openai_base(), &env))
        .await
        .unwrap();
    assert_eq!(
        reply,
        LlmResponse {
            content: "hi".into(),
            usage: flatmachine_runtime::agents::Usage {
                input_tokens: 12,
                output_tokens: 3,
                cached_tokens: 8,
            },
            model: Some("gpt-test-2025".into()),
            finish_reason: Some("stop".into()),
            attempts: 1,
            tool_calls: Vec::new(),
        }
    );
}

#[tokio::test]
async fn openai_null_content_and_no_usage() {
    let server = Server::start(|_, _| {
        ok(json!({"choices": [{"message": {"role": "assistant", "content": null}}]}))
    })
    .await;
    let env = key_var("openai_null", "sk-n");
    let reply = OpenAiBackend::new()
        .complete(&request("vllm", &server.openai_base(), &env))
        .await
        .unwrap();
    assert_eq!(reply.content, "");
    assert_eq!(reply.usage, Default::default());
    assert_eq!(reply.finish_reason, None);
    assert_eq!(reply.model, None);
}

#[tokio::test]
async fn anthropic_reply_is_parsed() {
    let server = Server::start(|_, _| ok(anthropic_reply())).await;
    let env = key_var("anthropic_reply", "sk-ant-r");
    let reply = AnthropicBackend::new()
        .complete(&request("anthropic", &server.anthropic_base(), &env))
        .await
        .unwrap();
    assert_eq!(reply.content, "hello");
    assert_eq!(reply.finish_reason.as_deref(), Some("end_turn"));
    assert_eq!(reply.model.as_deref(), Some("claude-test"));
    assert_eq!(
        reply.usage.input_tokens,
        5 + 20 + 2,
        "cached tokens included"
    );
    assert_eq!(reply.usage.cached_tokens, 20);
    assert_eq!(reply.usage.output_tokens, 7);
    assert_eq!(reply.attempts, 1);
}

// ---------------------------------------------------------------------------------------------
// Errors

async fn openai_failure(test: &str, reply: Reply) -> (LlmError, usize) {
    let server = Server::start(move |_, _| reply.clone()).await;
    let env = key_var(test, "sk-err");
    let error = fast_openai()
        .complete(&request("openai", &server.openai_base(), &env))
        .await
        .unwrap_err();
    (error, server.received().len())
}

async fn anthropic_failure(test: &str, reply: Reply) -> (LlmError, usize) {
    let server = Server::start(move |_, _| reply.clone()).await;
    let env = key_var(test, "sk-ant-err");
    let error = fast_anthropic()
        .complete(&request("anthropic", &server.anthropic_base(), &env))
        .await
        .unwrap_err();
    (error, server.received().len())
}

#[tokio::test]
async fn client_errors_map_to_kinds_with_the_provider_message() {
    let cases = [
        (
            400,
            "Invalid 'temperature': decimal above maximum value.",
            LlmErrorKind::BadRequest,
        ),
        (
            400,
            "This model's maximum context length is 8192 tokens. However, you requested 9000.",
            LlmErrorKind::ContextWindowExceeded,
        ),
        (
            401,
            "Incorrect API key provided.",
            LlmErrorKind::Authentication,
        ),
        (
            403,
            "Project does not have access.",
            LlmErrorKind::PermissionDenied,
        ),
        (
            404,
            "The model `nope` does not exist.",
            LlmErrorKind::NotFound,
        ),
        (422, "Unprocessable.", LlmErrorKind::UnprocessableEntity),
    ];
    for (i, (code, message, kind)) in cases.into_iter().enumerate() {
        let (error, requests) = openai_failure(
            &format!("openai_client_{i}"),
            status(code, openai_error(message)),
        )
        .await;
        assert_eq!(error.kind, kind, "{code} {message}");
        assert_eq!(error.status, Some(code));
        assert!(error.message.contains(message), "{error}");
        assert_eq!(requests, 1, "{code} is not retried");
    }
}

#[tokio::test]
async fn anthropic_client_errors_map_to_kinds() {
    let cases = [
        (
            400,
            "invalid_request_error",
            "messages: field required",
            LlmErrorKind::BadRequest,
        ),
        (
            400,
            "invalid_request_error",
            "prompt is too long: 210000 tokens > 200000 maximum",
            LlmErrorKind::ContextWindowExceeded,
        ),
        (
            401,
            "authentication_error",
            "invalid x-api-key",
            LlmErrorKind::Authentication,
        ),
        (
            404,
            "not_found_error",
            "model: claude-nope",
            LlmErrorKind::NotFound,
        ),
    ];
    for (i, (code, kind_name, message, kind)) in cases.into_iter().enumerate() {
        let (error, requests) = anthropic_failure(
            &format!("anthropic_client_{i}"),
            status(code, anthropic_error(kind_name, message)),
        )
        .await;
        assert_eq!(error.kind, kind, "{code} {message}");
        assert_eq!(error.status, Some(code));
        assert!(error.message.contains(message), "{error}");
        assert_eq!(requests, 1);
    }
}

#[tokio::test]
async fn long_messages_are_truncated() {
    let long = "x".repeat(5000);
    let (error, _) = openai_failure("truncated", status(400, openai_error(&long))).await;
    assert!(error.message.len() < 700, "{}", error.message.len());
}

#[tokio::test]
async fn rate_limit_with_retry_after_is_retried_then_succeeds() {
    let server = Server::start(|i, _| {
        if i == 0 {
            Reply::Body(
                429,
                vec![("retry-after", "1".into())],
                openai_error("Rate limit reached").to_string(),
            )
        } else {
            ok(openai_reply())
        }
    })
    .await;
    let env = key_var("rate_limit", "sk-rl");
    let started = Instant::now();
    let reply = fast_openai()
        .complete(&request("openai", &server.openai_base(), &env))
        .await
        .unwrap();
    assert_eq!(reply.attempts, 2);
    assert_eq!(reply.content, "hi");
    let received = server.received();
    assert_eq!(received.len(), 2);
    let waited = received[1].at - received[0].at;
    assert!(waited >= Duration::from_millis(900), "waited {waited:?}");
    assert!(started.elapsed() < Duration::from_secs(10));
}

#[tokio::test]
async fn rate_limit_without_retries_reports_retry_after() {
    let server = Server::start(|_, _| {
        Reply::Body(
            429,
            vec![("retry-after", "7".into())],
            openai_error("slow down").to_string(),
        )
    })
    .await;
    let env = key_var("rate_limit_final", "sk-rl2");
    let error = OpenAiBackend::new()
        .with_max_retries(0)
        .complete(&request("openai", &server.openai_base(), &env))
        .await
        .unwrap_err();
    assert_eq!(error.kind, LlmErrorKind::RateLimit);
    assert_eq!(error.retry_after, Some(Duration::from_secs(7)));
    assert!(error.message.contains("slow down"));
    assert_eq!(server.received().len(), 1);
}

#[tokio::test]
async fn server_errors_are_retried_then_fail() {
    let (error, requests) = openai_failure(
        "openai_500",
        status(500, openai_error("The server had an error")),
    )
    .await;
    assert_eq!(error.kind, LlmErrorKind::InternalServer);
    assert_eq!(requests, 3, "default: 2 retries");
    assert!(error.message.contains("The server had an error"), "{error}");
    assert!(error.message.contains("3 attempts"), "{error}");

    let (error, requests) = openai_failure(
        "openai_503",
        status(503, openai_error("Service unavailable")),
    )
    .await;
    assert_eq!(error.kind, LlmErrorKind::ServiceUnavailable);
    assert_eq!(requests, 3);

    let (error, requests) = anthropic_failure(
        "anthropic_529",
        status(529, anthropic_error("overloaded_error", "Overloaded")),
    )
    .await;
    assert_eq!(
        error.kind,
        LlmErrorKind::InternalServer,
        "LiteLLM's mapping"
    );
    assert_eq!(error.status, Some(529));
    assert!(error.message.contains("Overloaded"));
    assert_eq!(requests, 3);

    let (error, requests) = openai_failure("openai_502", status(502, json!({}))).await;
    assert_eq!(error.kind, LlmErrorKind::InternalServer);
    assert_eq!(requests, 3);
}

#[tokio::test]
async fn retries_follow_the_request_then_the_backend() {
    let server = Server::start(|_, _| status(500, openai_error("boom"))).await;
    let env = key_var("retry_override", "sk-ro");
    let mut request = request("openai", &server.openai_base(), &env);
    request.max_retries = Some(1);
    let backend = fast_openai().with_max_retries(4);
    backend.complete(&request).await.unwrap_err();
    assert_eq!(server.received().len(), 2, "request's max_retries wins");
    request.max_retries = None;
    backend.complete(&request).await.unwrap_err();
    assert_eq!(server.received().len(), 2 + 5, "backend's max_retries");
}

/// Uses a process-wide subscriber (a scoped one can miss events whose callsite another test
/// thread registers at the same moment); only this test installs one, and it looks only at
/// events carrying its own marker.
#[tokio::test]
async fn retries_are_logged_without_the_key() {
    let recorder = Arc::new(common::Recorder::default());
    tracing::subscriber::set_global_default(Arc::clone(&recorder)).unwrap();
    let key = "sk-logged-secret-4242";
    let marker = "logged-test-marker";
    let server =
        Server::start(move |_, _| status(503, openai_error(&format!("{marker}: bad key {key}"))))
            .await;
    let env = key_var("logged", key);
    let error = fast_openai()
        .complete(&request("openai", &server.openai_base(), &env))
        .await
        .unwrap_err();
    assert!(!error.message.contains(key), "{error}");
    let events = recorder.events.lock().unwrap().clone();
    let warnings: Vec<_> = events
        .iter()
        .filter(|(level, m)| *level == tracing::Level::WARN && m.contains(marker))
        .collect();
    assert_eq!(warnings.len(), 2, "{events:#?}");
    assert!(warnings.iter().all(|(_, m)| m.contains("retrying")));
    assert!(events.iter().all(|(_, m)| !m.contains(key)), "{events:#?}");
}

#[tokio::test]
async fn slow_reply_times_out() {
    let server =
        Server::start(|_, _| Reply::Slow(Duration::from_secs(3), Box::new(ok(openai_reply()))))
            .await;
    let env = key_var("timeout", "sk-t");
    let mut request = request("openai", &server.openai_base(), &env);
    request.timeout = Some(Duration::from_millis(200));
    request.max_retries = Some(0);
    let started = Instant::now();
    let error = OpenAiBackend::new().complete(&request).await.unwrap_err();
    assert_eq!(error.kind, LlmErrorKind::Timeout, "{error}");
    assert!(started.elapsed() < Duration::from_secs(2));

    // The backend's timeout applies when the request has none; timeouts are retried.
    request.timeout = None;
    request.max_retries = Some(1);
    let error = fast_anthropic()
        .with_timeout(Duration::from_millis(200))
        .complete(&LlmRequest {
            base_url: Some(server.anthropic_base()),
            ..request.clone()
        })
        .await
        .unwrap_err();
    assert_eq!(error.kind, LlmErrorKind::Timeout);
    assert_eq!(server.received().len(), 1 + 2);
}

/// A 2xx reply that cannot be read is an `InternalServerError`, as LiteLLM raises it, so
/// `on_error` maps written for the reference route it; the body's values are not quoted.
#[tokio::test]
async fn malformed_replies_are_internal_server_errors() {
    let (error, requests) = openai_failure(
        "not_json",
        Reply::Body(200, vec![], "<html>oops</html>".into()),
    )
    .await;
    assert_eq!(error.kind, LlmErrorKind::InternalServer, "{error}");
    assert_eq!(error.kind.type_name(), "InternalServerError");
    assert_eq!(requests, 1);
    assert!(error.message.contains("<html>oops"));

    // Only the start of a long non-JSON body is quoted.
    let (error, _) = openai_failure(
        "long_not_json",
        Reply::Body(200, vec![], format!("<html>{}</html>", "x".repeat(5000))),
    )
    .await;
    assert!(error.message.len() < 300, "{error}");

    let (error, _) = openai_failure(
        "no_choices",
        ok(json!({"object": "list", "secret_value": "do-not-quote"})),
    )
    .await;
    assert_eq!(error.kind, LlmErrorKind::InternalServer, "{error}");
    assert!(error.message.contains("choices"));
    assert!(error.message.contains("secret_value"), "{error}");
    assert!(!error.message.contains("do-not-quote"), "{error}");

    let (error, _) = openai_failure("empty_choices", ok(json!({"choices": []}))).await;
    assert_eq!(error.kind, LlmErrorKind::InternalServer);

    let (error, _) = openai_failure(
        "bad_content",
        ok(json!({"choices": [{"message": {"content": 5}}]})),
    )
    .await;
    assert_eq!(error.kind, LlmErrorKind::InternalServer);

    // A gateway's error object sent with 200: its message is the detail.
    let (error, _) = openai_failure("error_200", ok(openai_error("upstream model crashed"))).await;
    assert_eq!(error.kind, LlmErrorKind::InternalServer);
    assert!(error.message.contains("upstream model crashed"), "{error}");

    let (error, _) = anthropic_failure("no_content", ok(json!({"type": "message"}))).await;
    assert_eq!(error.kind, LlmErrorKind::InternalServer, "{error}");

    let (error, _) =
        anthropic_failure("not_json_ant", Reply::Body(200, vec![], String::new())).await;
    assert_eq!(error.kind, LlmErrorKind::InternalServer);

    // An error status whose body is not JSON keeps the status's kind and shows the body.
    let (error, _) = openai_failure(
        "html_404",
        Reply::Body(404, vec![], "<h1>no route</h1>".into()),
    )
    .await;
    assert_eq!(error.kind, LlmErrorKind::NotFound);
    assert!(error.message.contains("no route"));
}

/// Issue 17 #1: a 200 reply echoing the `Authorization` header (in a readable body, an
/// unreadable one, and with the key straddling the 500-character cut) never shows the key.
#[tokio::test]
async fn a_key_echoed_in_a_2xx_reply_is_scrubbed_before_the_cut() {
    let key = "sk-echoed-0123456789abcdefghij";
    let server = Server::start(move |i, _| match i {
        0 => ok(json!({"echo": {"authorization": format!("Bearer {key}")}})),
        1 => ok(openai_error(&format!("{}Bearer {key}", "x".repeat(485)))),
        _ => Reply::Body(200, vec![], format!("Authorization: Bearer {key}")),
    })
    .await;
    let env = key_var("echo_200", key);
    for _ in 0..3 {
        let error = OpenAiBackend::new()
            .complete(&request("openai", &server.openai_base(), &env))
            .await
            .unwrap_err();
        for shown in [error.to_string(), format!("{error:?}")] {
            assert!(!shown.contains("sk-echoed-0"), "{shown}");
        }
    }
}

async fn closed_port() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    addr
}

#[tokio::test]
async fn connection_refused_is_api_connection() {
    let addr = closed_port().await;
    let env = key_var("refused", "sk-refused");
    let mut request = request("openai", &format!("http://{addr}/v1"), &env);
    request.max_retries = Some(1);
    let error = fast_openai().complete(&request).await.unwrap_err();
    assert_eq!(error.kind, LlmErrorKind::ApiConnection, "{error}");
    assert_eq!(error.status, None);
    assert!(error.message.contains("2 attempts"), "{error}");
    let error = fast_anthropic()
        .complete(&LlmRequest {
            base_url: Some(format!("http://{addr}")),
            ..request
        })
        .await
        .unwrap_err();
    assert_eq!(error.kind, LlmErrorKind::ApiConnection, "{error}");
}

// ---------------------------------------------------------------------------------------------
// Keys

#[tokio::test]
async fn missing_key_is_a_configuration_error_naming_the_variable() {
    let env = unset_var("missing");
    let mut request = LlmRequest::new("m", messages());
    request.api_key_env = Some(env.clone());
    for backend in [
        Arc::new(OpenAiBackend::new()) as Arc<dyn LlmBackend>,
        Arc::new(AnthropicBackend::new()),
    ] {
        let error = backend.complete(&request).await.unwrap_err();
        assert_eq!(error.kind, LlmErrorKind::Configuration, "{error}");
        assert!(error.message.contains(&env), "{error}");
    }
    // A blank key counts as missing.
    let blank = key_var("blank", "  ");
    request.api_key_env = Some(blank.clone());
    let error = OpenAiBackend::new().complete(&request).await.unwrap_err();
    assert_eq!(error.kind, LlmErrorKind::Configuration);
    assert!(error.message.contains(&blank));
}

#[tokio::test]
async fn no_auth_header_with_base_url_and_no_key() {
    let openai = Server::start(|_, _| ok(openai_reply())).await;
    let env = unset_var("no_auth");
    OpenAiBackend::new()
        .complete(&request("ollama", &openai.openai_base(), &env))
        .await
        .unwrap();
    assert_eq!(openai.only().header("authorization"), None);

    let anthropic = Server::start(|_, _| ok(anthropic_reply())).await;
    AnthropicBackend::new()
        .complete(&request("anthropic", &anthropic.anthropic_base(), &env))
        .await
        .unwrap();
    let got = anthropic.only();
    assert_eq!(got.header("x-api-key"), None);
    assert_eq!(got.header("anthropic-version"), Some("2023-06-01"));
}

#[tokio::test]
async fn keys_never_appear_in_errors_or_debug() {
    let key = "sk-very-secret-0123456789";
    let server = Server::start(move |i, _| match i % 3 {
        0 => status(
            401,
            openai_error(&format!("Incorrect API key provided: {key}")),
        ),
        1 => status(
            401,
            anthropic_error("authentication_error", &format!("bad {key}")),
        ),
        _ => Reply::Body(200, vec![], format!("not json {key}")),
    })
    .await;
    let env = key_var("secret", key);
    let openai = OpenAiBackend::new();
    let anthropic = AnthropicBackend::new();
    let router = ProviderRouter::new();
    let mut errors = Vec::new();
    errors.push(
        openai
            .complete(&request("openai", &server.openai_base(), &env))
            .await
            .unwrap_err(),
    );
    errors.push(
        anthropic
            .complete(&request("anthropic", &server.anthropic_base(), &env))
            .await
            .unwrap_err(),
    );
    errors.push(
        openai
            .complete(&request("openai", &server.openai_base(), &env))
            .await
            .unwrap_err(),
    );
    assert_eq!(errors[0].kind, LlmErrorKind::Authentication);
    assert_eq!(errors[1].kind, LlmErrorKind::Authentication);
    assert_eq!(errors[2].kind, LlmErrorKind::InternalServer);
    for error in &errors {
        for shown in [
            error.to_string(),
            format!("{error:?}"),
            error.message.clone(),
        ] {
            assert!(!shown.contains(key), "{shown}");
        }
        assert!(error.message.contains("[redacted]"), "{error}");
        let state_error: flatmachine_runtime::StateError = error.clone().into();
        assert!(!format!("{state_error:?}").contains(key));
    }
    for shown in [
        format!("{openai:?}"),
        format!("{anthropic:?}"),
        format!("{router:?}"),
        format!("{openai:#?}"),
    ] {
        assert!(!shown.contains(key), "{shown}");
    }
}

// ---------------------------------------------------------------------------------------------
// Routing

/// A backend answering with its own name.
struct Named(&'static str);

#[async_trait]
impl LlmBackend for Named {
    fn name(&self) -> &str {
        self.0
    }

    async fn complete(&self, _: &LlmRequest) -> Result<LlmResponse, LlmError> {
        Ok(LlmResponse::text(self.0))
    }
}

#[tokio::test]
async fn router_dispatches_on_provider() {
    let server = Server::start(|_, body| {
        if body.get("max_tokens").is_some() && body.get("system").is_some() {
            ok(anthropic_reply())
        } else {
            ok(openai_reply())
        }
    })
    .await;
    let env = key_var("router", "sk-router");
    let router = ProviderRouter::new();
    let reply = router
        .complete(&request("Anthropic", &server.anthropic_base(), &env))
        .await
        .unwrap();
    assert_eq!(reply.content, "hello");
    for provider in ["openai", "ollama", "groq", "cerebras", "vllm"] {
        let reply = router
            .complete(&request(provider, &server.openai_base(), &env))
            .await
            .unwrap();
        assert_eq!(reply.content, "hi", "{provider}");
    }
    let mut no_provider = request("x", &server.openai_base(), &env);
    no_provider.provider = None;
    assert_eq!(router.complete(&no_provider).await.unwrap().content, "hi");
    let paths: Vec<String> = server.received().into_iter().map(|r| r.path).collect();
    assert_eq!(paths[0], "/v1/messages");
    assert!(paths[1..].iter().all(|p| p == "/v1/chat/completions"));

    // Overrides and additions.
    let router = ProviderRouter::new()
        .with("groq", Arc::new(Named("groq-custom")))
        .with("ANTHROPIC", Arc::new(Named("claude-custom")));
    let reply = router
        .complete(&request("groq", "http://unused.invalid", &env))
        .await
        .unwrap();
    assert_eq!(reply.content, "groq-custom");
    let reply = router
        .complete(&request("anthropic", "http://unused.invalid", &env))
        .await
        .unwrap();
    assert_eq!(reply.content, "claude-custom");
    assert_eq!(router.backend_for(Some("openai")).unwrap().name(), "openai");

    // An empty router has nothing to offer.
    let error = ProviderRouter::empty()
        .complete(&request("openai", "http://unused.invalid", &env))
        .await
        .unwrap_err();
    assert_eq!(error.kind, LlmErrorKind::Configuration);
    let error = ProviderRouter::empty()
        .with_default(Arc::new(Named("fallback")))
        .complete(&request("mistral", "http://unused.invalid", &env))
        .await
        .unwrap();
    assert_eq!(error.content, "fallback");
}

#[test]
fn default_backends_by_provider() {
    assert_eq!(default_backend_for(Some("anthropic")).name(), "anthropic");
    assert_eq!(default_backend_for(Some("ANTHROPIC")).name(), "anthropic");
    for provider in [Some("openai"), Some("ollama"), Some("groq"), None] {
        assert_eq!(default_backend_for(provider).name(), "openai");
    }
}

#[tokio::test]
async fn full_endpoint_urls_are_not_doubled() {
    let server = Server::start(|_, body| {
        if body.get("system").is_some() {
            ok(anthropic_reply())
        } else {
            ok(openai_reply())
        }
    })
    .await;
    let env = key_var("endpoints", "sk-e");
    let bases = [
        format!("{}/v1", server.anthropic_base()),
        format!("{}/v1/messages", server.anthropic_base()),
    ];
    for base in bases {
        AnthropicBackend::new()
            .complete(&request("anthropic", &base, &env))
            .await
            .unwrap();
    }
    let mut request = request(
        "openai",
        &format!("{}/chat/completions", server.openai_base()),
        &env,
    );
    request.messages = vec![Message::new(Role::User, "hi")];
    OpenAiBackend::new().complete(&request).await.unwrap();
    let paths: Vec<String> = server.received().into_iter().map(|r| r.path).collect();
    assert_eq!(
        paths,
        ["/v1/messages", "/v1/messages", "/v1/chat/completions"]
    );
}

/// Issue 18 #12: a provider of the table goes to its endpoint (here moved to the loopback
/// server by its LiteLLM variable) with its own key variable, never to OpenAI; Ollama needs no
/// key and gets `/v1` added to a bare server root; an unknown provider without `base_url` is
/// refused before anything is sent.
#[tokio::test]
async fn known_providers_use_their_endpoint_and_key_variables() {
    let server = Server::start(|_, _| ok(openai_reply())).await;
    // SAFETY: these variables are read by this test only (no other test names cerebras or
    // ollama without a base_url).
    unsafe {
        std::env::set_var("CEREBRAS_API_BASE", server.openai_base());
        std::env::set_var("CEREBRAS_API_KEY", "csk-cerebras-key");
        std::env::set_var("OLLAMA_API_BASE", format!("http://{}", server.addr));
    }
    let router = ProviderRouter::new();
    let mut cerebras = LlmRequest::new("llama-3.3-70b", messages());
    cerebras.provider = Some("cerebras".into());
    router.complete(&cerebras).await.unwrap();
    let mut ollama = LlmRequest::new("llama3", messages());
    ollama.provider = Some("ollama".into());
    router.complete(&ollama).await.unwrap();
    let received = server.received();
    assert_eq!(received.len(), 2);
    assert_eq!(received[0].path, "/v1/chat/completions");
    assert_eq!(
        received[0].header("authorization"),
        Some("Bearer csk-cerebras-key")
    );
    assert_eq!(received[1].path, "/v1/chat/completions");
    assert_eq!(received[1].header("authorization"), None);

    let mut unknown = LlmRequest::new("m", messages());
    unknown.provider = Some("acme".into());
    let error = router.complete(&unknown).await.unwrap_err();
    assert_eq!(error.kind, LlmErrorKind::Configuration, "{error}");
    assert!(error.message.contains("unknown provider `acme`"), "{error}");
    assert_eq!(server.received().len(), 2);
}
