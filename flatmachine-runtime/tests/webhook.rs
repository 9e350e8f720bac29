//! `WebhookHooks` against a loopback HTTP/1.1 server started by each test.
//!
//! Run with `cargo test -p flatmachine-runtime --features webhooks --test webhook`.
#![cfg(feature = "webhooks")]

mod common;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use flatmachine_runtime::hooks::{
    ActionOutcome, HookError, HooksRegistry, MachineHooks, WebhookHooks,
};
use flatmachine_runtime::{Context, StateError, Value};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// What the test server answers.
#[derive(Clone)]
enum Reply {
    /// Status and raw body (sent as `application/json`).
    Body(u16, String),
    /// Status, no body.
    Empty(u16),
    /// Waits, then answers.
    Slow(Duration, Box<Reply>),
}

fn json_reply(value: Value) -> Reply {
    Reply::Body(200, value.to_string())
}

/// One request the server received.
#[derive(Debug, Clone)]
struct Received {
    method: String,
    path: String,
    headers: Vec<(String, String)>,
    body: Value,
}

impl Received {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

type Responder = Arc<dyn Fn(&Value) -> Reply + Send + Sync>;

/// A tiny HTTP/1.1 server on 127.0.0.1: one request per connection, then `Connection: close`.
struct Server {
    addr: SocketAddr,
    received: Arc<Mutex<Vec<Received>>>,
}

impl Server {
    async fn start(responder: impl Fn(&Value) -> Reply + Send + Sync + 'static) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let received = Arc::new(Mutex::new(Vec::new()));
        let responder: Responder = Arc::new(responder);
        let log = Arc::clone(&received);
        tokio::spawn(async move {
            // Bounded: a test never sends more than a few dozen requests.
            for _ in 0..200 {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let responder = Arc::clone(&responder);
                let log = Arc::clone(&log);
                tokio::spawn(async move {
                    let _ = serve(stream, responder, log).await;
                });
            }
        });
        Self { addr, received }
    }

    fn url(&self) -> String {
        format!("http://{}/hook", self.addr)
    }

    fn received(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }

    fn events(&self) -> Vec<String> {
        self.received()
            .iter()
            .map(|r| r.body["event"].as_str().unwrap_or("?").to_string())
            .collect()
    }
}

async fn serve(
    mut stream: TcpStream,
    responder: Responder,
    log: Arc<Mutex<Vec<Received>>>,
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
    let mut reply = responder(&body);
    log.lock().unwrap().push(Received {
        method,
        path,
        headers,
        body,
    });
    let (status, body) = loop {
        match reply {
            Reply::Body(status, body) => break (status, body),
            Reply::Empty(status) => break (status, String::new()),
            Reply::Slow(delay, next) => {
                tokio::time::sleep(delay).await;
                reply = *next;
            }
        }
    };
    let response = format!(
        "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(response.as_bytes()).await?;
    stream.shutdown().await
}

fn ctx(value: Value) -> Context {
    match value {
        Value::Object(map) => map,
        other => panic!("not an object: {other}"),
    }
}

/// Calls every hook once with fixed inputs; returns what each returned.
#[derive(Debug, PartialEq)]
struct Results {
    start_context: Context,
    enter_context: Context,
    exit_output: Option<Value>,
    transition: String,
    recovery: Option<String>,
    action: ActionOutcome,
    action_context: Context,
    end_output: Value,
}

fn base_context() -> Context {
    ctx(json!({"n": 1, "items": ["a", "b"]}))
}

async fn call_all(hooks: &dyn MachineHooks) -> Results {
    let mut start_context = base_context();
    hooks.on_machine_start(&mut start_context).await.unwrap();
    let mut enter_context = base_context();
    hooks
        .on_state_enter("work", &mut enter_context)
        .await
        .unwrap();
    let mut exit_output = Some(json!({"y": 2}));
    hooks
        .on_state_exit("work", &mut base_context(), &mut exit_output)
        .await
        .unwrap();
    let transition = hooks
        .on_transition("work", "done", &mut base_context())
        .await
        .unwrap();
    let error = StateError::new("AgentError", "model unavailable");
    let recovery = hooks
        .on_error("work", &error, &mut base_context())
        .await
        .unwrap();
    let mut action_context = base_context();
    let action = hooks
        .on_action("double", &mut action_context)
        .await
        .unwrap();
    let mut end_output = json!({"result": 3});
    hooks
        .on_machine_end(&base_context(), &mut end_output)
        .await
        .unwrap();
    Results {
        start_context,
        enter_context,
        exit_output,
        transition,
        recovery,
        action,
        action_context,
        end_output,
    }
}

fn pass_through() -> Results {
    Results {
        start_context: base_context(),
        enter_context: base_context(),
        exit_output: Some(json!({"y": 2})),
        transition: "done".into(),
        recovery: None,
        action: ActionOutcome::NotHandled,
        action_context: base_context(),
        end_output: json!({"result": 3}),
    }
}

#[tokio::test]
async fn posts_every_event_with_reference_payloads() {
    let server = Server::start(|_| Reply::Empty(204)).await;
    let hooks = WebhookHooks::new(&server.url())
        .unwrap()
        .with_api_key("s3cret")
        .unwrap();
    assert!(!format!("{hooks:?}").contains("s3cret"));
    assert_eq!(call_all(&hooks).await, pass_through());

    let received = server.received();
    let context = Value::Object(base_context());
    let bodies: Vec<Value> = received.iter().map(|r| r.body.clone()).collect();
    assert_eq!(
        bodies,
        vec![
            json!({"event": "machine_start", "context": context}),
            json!({"event": "state_enter", "state": "work", "context": context}),
            json!({"event": "state_exit", "state": "work", "context": context, "output": {"y": 2}}),
            json!({"event": "transition", "from": "work", "to": "done", "context": context}),
            json!({
                "event": "error",
                "state": "work",
                "error": "model unavailable",
                "error_type": "AgentError",
                "context": context,
            }),
            json!({"event": "action", "action": "double", "context": context}),
            json!({"event": "machine_end", "context": context, "output": {"result": 3}}),
        ]
    );
    // `event` comes first, then the payload keys in the reference's order.
    let keys: Vec<&str> = match &received[4].body {
        Value::Object(map) => map.keys().map(String::as_str).collect(),
        _ => Vec::new(),
    };
    assert_eq!(keys, ["event", "state", "error", "error_type", "context"]);
    for request in &received {
        assert_eq!(request.method, "POST");
        assert_eq!(request.path, "/hook");
        assert_eq!(request.header("content-type"), Some("application/json"));
        assert_eq!(request.header("authorization"), Some("Bearer s3cret"));
        assert!(
            request
                .header("user-agent")
                .is_some_and(|ua| ua.starts_with("flatmachine-runtime/")),
            "{:?}",
            request.headers
        );
    }

    // A state without output is sent as `"output": null`.
    hooks
        .on_state_exit("idle", &mut Context::new(), &mut None)
        .await
        .unwrap();
    let last = server.received().pop().unwrap();
    assert_eq!(
        last.body,
        json!({"event": "state_exit", "state": "idle", "context": {}, "output": null})
    );
    assert_eq!(last.header("authorization"), Some("Bearer s3cret"));
}

#[tokio::test]
async fn responses_replace_context_output_and_next_state() {
    let server = Server::start(|body| {
        let replaced = json!({"replaced_by": body["event"]});
        match body["event"].as_str() {
            Some("machine_start" | "state_enter" | "action") => {
                json_reply(json!({"context": replaced}))
            }
            Some("state_exit") => json_reply(json!({"output": {"rewritten": true}})),
            Some("transition") => json_reply(json!({"to_state": "review"})),
            Some("error") => json_reply(json!({"recovery_state": "fallback"})),
            Some("machine_end") => json_reply(json!({"output": "final!", "context": {"x": 1}})),
            _ => Reply::Empty(204),
        }
    })
    .await;
    let hooks = WebhookHooks::new(&server.url()).unwrap();
    let results = call_all(&hooks).await;
    assert_eq!(
        results,
        Results {
            start_context: ctx(json!({"replaced_by": "machine_start"})),
            enter_context: ctx(json!({"replaced_by": "state_enter"})),
            exit_output: Some(json!({"rewritten": true})),
            transition: "review".into(),
            recovery: Some("fallback".into()),
            action: ActionOutcome::Handled,
            action_context: ctx(json!({"replaced_by": "action"})),
            end_output: json!("final!"),
        }
    );
    assert_eq!(server.events().len(), 7);
}

#[tokio::test]
async fn keys_for_other_events_and_null_values() {
    // Keys the reference does not read for an event are ignored; `output: null` clears
    // a state's output; `recovery_state: null` propagates.
    let server = Server::start(|body| match body["event"].as_str() {
        Some("state_exit") => json_reply(json!({"output": null, "context": {"no": 1}})),
        Some("error") => json_reply(json!({"recovery_state": null})),
        _ => json_reply(json!({"output": 1, "to_state": "x", "recovery_state": "y"})),
    })
    .await;
    let hooks = WebhookHooks::new(&server.url()).unwrap();
    let results = call_all(&hooks).await;
    assert_eq!(
        results,
        Results {
            exit_output: None,
            // machine_end reads `output`.
            end_output: json!(1),
            // transition reads `to_state`.
            transition: "x".into(),
            ..pass_through()
        }
    );
}

#[tokio::test]
async fn wrongly_typed_or_non_object_responses_pass_through() {
    let server = Server::start(|body| match body["event"].as_str() {
        Some("machine_start") => json_reply(json!({"context": [1, 2]})),
        Some("state_enter") => json_reply(json!(["context"])),
        Some("transition") => json_reply(json!({"to_state": 7})),
        Some("error") => json_reply(json!({"recovery_state": {"a": 1}})),
        Some("action") => json_reply(json!({"context": "nope"})),
        Some("state_exit") => json_reply(json!("just a string")),
        _ => json_reply(json!({})),
    })
    .await;
    let hooks = WebhookHooks::new(&server.url()).unwrap();
    assert_eq!(call_all(&hooks).await, pass_through());
    assert_eq!(server.events().len(), 7);
}

#[tokio::test]
async fn server_error_is_pass_through() {
    // The body would replace everything, but a 500 is a failed call.
    let server = Server::start(|_| {
        Reply::Body(
            500,
            json!({"context": {"bad": 1}, "output": 0, "to_state": "bad", "recovery_state": "bad"})
                .to_string(),
        )
    })
    .await;
    let hooks = WebhookHooks::new(&server.url()).unwrap();
    assert_eq!(call_all(&hooks).await, pass_through());
    assert_eq!(server.events().len(), 7);
}

#[tokio::test]
async fn redirect_and_garbage_bodies_are_pass_through() {
    for reply in [
        Reply::Empty(302),
        Reply::Body(404, "{}".into()),
        Reply::Body(200, "this is not json".into()),
        Reply::Body(200, "   ".into()),
        Reply::Empty(200),
    ] {
        let reply = Arc::new(reply);
        let server = Server::start(move |_| (*reply).clone()).await;
        let hooks = WebhookHooks::new(&server.url()).unwrap();
        assert_eq!(call_all(&hooks).await, pass_through());
        assert_eq!(server.events().len(), 7);
    }
}

async fn closed_port() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    addr
}

#[tokio::test]
async fn unreachable_endpoint_is_pass_through() {
    let addr = closed_port().await;
    let started = Instant::now();
    for url in [
        format!("http://{addr}/hook"),
        format!("https://{addr}/hook"),
    ] {
        let hooks = WebhookHooks::new(&url).unwrap();
        assert_eq!(call_all(&hooks).await, pass_through());
    }
    assert!(started.elapsed() < Duration::from_secs(10));
}

#[tokio::test]
async fn slow_endpoint_times_out_and_passes_through() {
    let server = Server::start(|_| {
        Reply::Slow(
            Duration::from_secs(5),
            Box::new(json_reply(
                json!({"context": {"late": true}, "to_state": "late"}),
            )),
        )
    })
    .await;
    let hooks = WebhookHooks::new(&server.url())
        .unwrap()
        .with_timeout(Duration::from_millis(200));
    assert_eq!(hooks.timeout(), Duration::from_millis(200));
    let started = Instant::now();
    let mut context = base_context();
    hooks.on_state_enter("work", &mut context).await.unwrap();
    let target = hooks
        .on_transition("work", "done", &mut context)
        .await
        .unwrap();
    let elapsed = started.elapsed();
    assert_eq!(context, base_context());
    assert_eq!(target, "done");
    assert!(elapsed >= Duration::from_millis(400), "{elapsed:?}");
    assert!(elapsed < Duration::from_secs(4), "{elapsed:?}");
    // Both requests did reach the server.
    assert_eq!(server.events(), ["state_enter", "transition"]);
}

#[test]
fn construction_and_args() {
    let hooks = WebhookHooks::new("http://127.0.0.1:9/x").unwrap();
    assert_eq!(hooks.timeout(), WebhookHooks::DEFAULT_TIMEOUT);
    assert_eq!(WebhookHooks::DEFAULT_TIMEOUT, Duration::from_secs(5));
    assert_eq!(hooks.endpoint().as_str(), "http://127.0.0.1:9/x");
    assert!(WebhookHooks::new("https://example.invalid/hook").is_ok());

    let shown = format!(
        "{:?}",
        WebhookHooks::new("http://u:pw@127.0.0.1/x").unwrap()
    );
    assert!(!shown.contains("pw"), "{shown}");

    for bad in ["not a url", "ftp://127.0.0.1/x", ""] {
        let error = WebhookHooks::new(bad).unwrap_err();
        assert!(
            matches!(error, HookError::InvalidArgs { .. }),
            "{bad}: {error}"
        );
    }
    assert!(
        WebhookHooks::new("http://127.0.0.1/x")
            .unwrap()
            .with_api_key("bad\nkey")
            .is_err()
    );

    let args = |v: Value| ctx(v);
    let hooks = WebhookHooks::from_args(&args(
        json!({"url": "http://127.0.0.1:1/a", "timeout": 0.5}),
    ))
    .unwrap();
    assert_eq!(hooks.timeout(), Duration::from_millis(500));
    let hooks = WebhookHooks::from_args(&args(
        json!({"endpoint": "http://127.0.0.1:1/b", "timeout": null, "api_key": null}),
    ))
    .unwrap();
    assert_eq!(hooks.endpoint().path(), "/b");
    assert_eq!(hooks.timeout(), Duration::from_secs(5));

    for (bad, needle) in [
        (json!({}), "missing `endpoint`"),
        (json!({"url": null}), "missing `endpoint`"),
        (json!({"url": 5}), "`url` must be a string"),
        (
            json!({"url": "http://a/", "endpoint": "http://b/"}),
            "not both",
        ),
        (json!({"url": "http://a/", "timeout": 0}), "positive"),
        (json!({"url": "http://a/", "timeout": -1}), "positive"),
        (json!({"url": "http://a/", "timeout": "5"}), "positive"),
        (json!({"url": "http://a/", "timeout": 1e300}), "positive"),
        (json!({"url": "http://a/", "api_key": 1}), "api_key"),
        (
            json!({"url": "http://a/", "retries": 3}),
            "unknown arg `retries`",
        ),
    ] {
        let error = WebhookHooks::from_args(&args(bad.clone())).unwrap_err();
        let message = error.to_string();
        assert!(message.contains("WebhookHooks"), "{bad}: {message}");
        assert!(message.contains(needle), "{bad}: {message}");
    }
}

#[tokio::test]
async fn registry_builds_webhook_hooks() {
    let server = Server::start(|body| match body["event"].as_str() {
        Some("transition") => json_reply(json!({"to_state": "elsewhere"})),
        _ => Reply::Empty(204),
    })
    .await;
    let registry = HooksRegistry::new();
    let hooks = registry
        .build(
            "WebhookHooks",
            &ctx(json!({"url": server.url(), "timeout": 2, "api_key": "k"})),
        )
        .unwrap();
    let target = hooks
        .on_transition("a", "b", &mut Context::new())
        .await
        .unwrap();
    assert_eq!(target, "elsewhere");
    let received = server.received();
    assert_eq!(received.len(), 1);
    assert_eq!(received[0].header("authorization"), Some("Bearer k"));
    assert!(
        registry
            .build("WebhookHooks", &Context::new())
            .err()
            .is_some_and(|e| e.to_string().contains("missing `endpoint`"))
    );
}

use common::Recorder;

#[test]
fn failures_are_logged() {
    let recorder = Arc::new(Recorder::default());
    let dispatch = tracing::Dispatch::from(Arc::clone(&recorder));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    tracing::dispatcher::with_default(&dispatch, || {
        runtime.block_on(async {
            let server = Server::start(|body| match body["event"].as_str() {
                Some("state_enter") => Reply::Empty(500),
                Some("transition") => json_reply(json!({"to_state": false})),
                _ => Reply::Body(200, "<html>".into()),
            })
            .await;
            let hooks = WebhookHooks::new(&server.url()).unwrap();
            let mut context = base_context();
            hooks.on_state_enter("s", &mut context).await.unwrap();
            hooks.on_transition("s", "t", &mut context).await.unwrap();
            hooks.on_action("a", &mut context).await.unwrap();
            let down = WebhookHooks::new(&format!("http://{}/x", closed_port().await)).unwrap();
            hooks.on_machine_start(&mut context).await.unwrap();
            down.on_machine_start(&mut context).await.unwrap();
            assert_eq!(context, base_context());
        })
    });
    let events = recorder.events.lock().unwrap().clone();
    let find = |needle: &str| {
        events
            .iter()
            .find(|(_, m)| m.contains(needle))
            .unwrap_or_else(|| panic!("no event with {needle:?} in {events:#?}"))
            .0
    };
    assert_eq!(
        find("Webhook error (state_enter): HTTP status 500"),
        tracing::Level::ERROR
    );
    assert_eq!(
        find("Webhook response `to_state` must be a state name, got false"),
        tracing::Level::WARN
    );
    assert_eq!(
        find("Webhook error (action): response is not JSON"),
        tracing::Level::ERROR
    );
    let refused = events
        .iter()
        .filter(|(level, m)| {
            *level == tracing::Level::ERROR && m.contains("Webhook error (machine_start)")
        })
        .map(|(_, m)| m.clone())
        .collect::<Vec<_>>();
    assert_eq!(refused.len(), 2, "{events:#?}");
    assert!(
        refused.iter().any(|m| m.to_lowercase().contains("refused")),
        "{refused:?}"
    );
}

#[tokio::test]
async fn huge_timeout_is_fine() {
    let server = Server::start(|_| json_reply(json!({"to_state": "z"}))).await;
    let hooks = WebhookHooks::new(&server.url())
        .unwrap()
        .with_timeout(Duration::MAX);
    let target = hooks
        .on_transition("a", "b", &mut Context::new())
        .await
        .unwrap();
    assert_eq!(target, "z");
    let hooks =
        WebhookHooks::from_args(&ctx(json!({"url": server.url(), "timeout": 1e15}))).unwrap();
    let target = hooks
        .on_transition("a", "b", &mut Context::new())
        .await
        .unwrap();
    assert_eq!(target, "z");
}
