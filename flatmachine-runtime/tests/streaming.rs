//! Streamed replies (`stream: true`) from the built-in providers against a loopback HTTP/1.1
//! server speaking their server-sent events: deltas reach the run's event stream in order,
//! the response equals the unstreamed one for the same reply (usage counted), and a cut,
//! malformed, failing or endless stream is a clear provider error.
#![cfg(all(feature = "openai", feature = "anthropic"))]

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use flatmachine_runtime::agents::{
    AnthropicBackend, LlmBackend, LlmError, LlmErrorKind, LlmRequest, LlmResponse, Message,
    OpenAiBackend, Role,
};
use flatmachine_runtime::events::EventKind;
use flatmachine_runtime::{AgentOutput, Context, Machine, RunOptions, StateError, Value};
use futures::StreamExt;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

flatmachine_runtime::flatmachine!("tests/machines/events/one_call.yml");

/// How the server ends a streamed reply.
#[derive(Clone, Copy, PartialEq)]
enum End {
    /// Closes the connection after the events.
    Close,
    /// Keeps the connection open after the events, sending nothing more.
    Hang,
}

/// A loopback server: a request whose JSON body says `"stream": true` gets `events` as
/// `text/event-stream` (written one event at a time), any other gets `json`. Records every
/// request body.
async fn server(json: Value, events: String, end: End) -> (SocketAddr, Arc<Mutex<Vec<Value>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let (json, events, log) = (json.clone(), events.clone(), log.clone());
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                let head_end = loop {
                    if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        break i;
                    }
                    let n = socket.read(&mut chunk).await.unwrap_or(0);
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                };
                let head = String::from_utf8_lossy(&buf[..head_end]).to_lowercase();
                let length: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .and_then(|v| v.trim().parse().ok())
                    .unwrap_or(0);
                let mut body = buf[head_end + 4..].to_vec();
                while body.len() < length {
                    let n = socket.read(&mut chunk).await.unwrap_or(0);
                    if n == 0 {
                        return;
                    }
                    body.extend_from_slice(&chunk[..n]);
                }
                let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                let streamed = body["stream"] == json!(true);
                log.lock().unwrap().push(body);
                if !streamed {
                    let text = json.to_string();
                    let reply = format!(
                        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{text}",
                        text.len()
                    );
                    let _ = socket.write_all(reply.as_bytes()).await;
                    return;
                }
                let head = "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nConnection: close\r\n\r\n";
                if socket.write_all(head.as_bytes()).await.is_err() {
                    return;
                }
                for event in events.split_inclusive("\n\n") {
                    if socket.write_all(event.as_bytes()).await.is_err() {
                        return;
                    }
                    let _ = socket.flush().await;
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
                if end == End::Hang {
                    tokio::time::sleep(Duration::from_secs(30)).await;
                }
                let _ = socket.shutdown().await;
            });
        }
    });
    (addr, seen)
}

fn request(provider: &str, base: String, stream: bool) -> LlmRequest {
    let mut request = LlmRequest::new(
        "some-model",
        vec![
            Message::new(Role::System, "You are terse."),
            Message::new(Role::User, "Say hello."),
        ],
    );
    request.provider = Some(provider.to_string());
    request.base_url = Some(base);
    request.api_key_env = Some("FLATMACHINE_STREAMING_TEST_NO_KEY".into());
    request.stream = stream;
    request
}

/// Calls `backend` from an agent of a run that is streamed: the token deltas the run's
/// stream saw, and the backend's answer.
async fn call_in_a_run(
    backend: Arc<dyn LlmBackend>,
    request: LlmRequest,
) -> (Vec<String>, Result<LlmResponse, LlmError>) {
    let answer = Arc::new(Mutex::new(None));
    let slot = answer.clone();
    let machine = Machine::of::<one_call::Machine>()
        .agent("writer", move |_input: Value, _ctx: Context| {
            let (backend, request, slot) = (backend.clone(), request.clone(), slot.clone());
            async move {
                let reply = backend.complete(&request).await;
                let text = reply
                    .as_ref()
                    .map(|r| r.content.clone())
                    .unwrap_or_default();
                *slot.lock().unwrap() = Some(reply);
                Ok::<_, StateError>(AgentOutput::new(json!({"text": text})))
            }
        })
        .build()
        .unwrap();
    let mut stream = machine.stream(json!({}), RunOptions::new());
    let mut deltas = Vec::new();
    while let Some(event) = stream.next().await {
        if let EventKind::TokenDelta { text } = event.kind {
            deltas.push(text);
        }
    }
    stream.result().await.unwrap();
    let reply = answer.lock().unwrap().take().unwrap();
    (deltas, reply)
}

fn sse(events: &[Value]) -> String {
    events.iter().map(|e| format!("data: {e}\n\n")).collect()
}

fn openai_chunk(delta: Value, finish: Value) -> Value {
    json!({"id": "chatcmpl-9", "object": "chat.completion.chunk", "created": 7, "model": "gpt-test",
           "choices": [{"index": 0, "delta": delta, "finish_reason": finish}], "usage": null})
}

fn openai_usage() -> Value {
    json!({"prompt_tokens": 12, "completion_tokens": 3, "total_tokens": 15,
           "prompt_tokens_details": {"cached_tokens": 4}})
}

fn openai_unstreamed() -> Value {
    json!({"id": "chatcmpl-9", "object": "chat.completion", "created": 7, "model": "gpt-test",
           "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello there"},
                        "finish_reason": "stop"}],
           "usage": openai_usage()})
}

fn openai_events() -> Vec<Value> {
    vec![
        openai_chunk(json!({"role": "assistant", "content": ""}), Value::Null),
        openai_chunk(json!({"content": "Hel"}), Value::Null),
        openai_chunk(json!({"content": "lo"}), Value::Null),
        openai_chunk(json!({"content": " there"}), Value::Null),
        openai_chunk(json!({}), json!("stop")),
        json!({"id": "chatcmpl-9", "object": "chat.completion.chunk", "created": 7,
               "model": "gpt-test", "choices": [], "usage": openai_usage()}),
    ]
}

#[tokio::test]
async fn openai_streams_deltas_in_order_and_answers_as_unstreamed() {
    let events = sse(&openai_events()) + "data: [DONE]\n\n";
    let (addr, seen) = server(openai_unstreamed(), events, End::Close).await;
    let base = format!("http://{addr}/v1");
    let backend: Arc<dyn LlmBackend> = Arc::new(OpenAiBackend::new());
    let plain = backend
        .complete(&request("openai", base.clone(), false))
        .await
        .unwrap();
    let (deltas, streamed) = call_in_a_run(backend, request("openai", base, true)).await;
    assert_eq!(deltas, ["Hel", "lo", " there"]);
    let streamed = streamed.unwrap();
    assert_eq!(streamed, plain);
    assert_eq!(streamed.content, "Hello there");
    assert_eq!(streamed.usage.input_tokens, 12);
    assert_eq!(streamed.usage.output_tokens, 3);
    assert_eq!(streamed.usage.cached_tokens, 4);
    let bodies = seen.lock().unwrap().clone();
    assert_eq!(bodies[0].get("stream"), None);
    assert_eq!(bodies[1]["stream"], json!(true));
    assert_eq!(bodies[1]["stream_options"], json!({"include_usage": true}));
}

fn anthropic_events() -> String {
    let events = [
        (
            "message_start",
            json!({"type": "message_start", "message": {
            "id": "msg_1", "type": "message", "role": "assistant", "model": "claude-test",
            "content": [], "stop_reason": null, "stop_sequence": null,
            "usage": {"input_tokens": 20, "cache_read_input_tokens": 5, "output_tokens": 1}}}),
        ),
        (
            "content_block_start",
            json!({"type": "content_block_start", "index": 0,
            "content_block": {"type": "text", "text": ""}}),
        ),
        ("ping", json!({"type": "ping"})),
        (
            "content_block_delta",
            json!({"type": "content_block_delta", "index": 0,
            "delta": {"type": "text_delta", "text": "Hel"}}),
        ),
        (
            "content_block_delta",
            json!({"type": "content_block_delta", "index": 0,
            "delta": {"type": "text_delta", "text": "lo there"}}),
        ),
        (
            "content_block_stop",
            json!({"type": "content_block_stop", "index": 0}),
        ),
        (
            "message_delta",
            json!({"type": "message_delta",
            "delta": {"stop_reason": "end_turn", "stop_sequence": null},
            "usage": {"output_tokens": 7}}),
        ),
        ("message_stop", json!({"type": "message_stop"})),
    ];
    events
        .iter()
        .map(|(name, data)| format!("event: {name}\ndata: {data}\n\n"))
        .collect()
}

fn anthropic_unstreamed() -> Value {
    json!({"id": "msg_1", "type": "message", "role": "assistant", "model": "claude-test",
           "content": [{"type": "text", "text": "Hello there"}],
           "stop_reason": "end_turn", "stop_sequence": null,
           "usage": {"input_tokens": 20, "cache_read_input_tokens": 5, "output_tokens": 7}})
}

#[tokio::test]
async fn anthropic_streams_deltas_in_order_and_answers_as_unstreamed() {
    let (addr, seen) = server(anthropic_unstreamed(), anthropic_events(), End::Close).await;
    let base = format!("http://{addr}");
    let backend: Arc<dyn LlmBackend> = Arc::new(AnthropicBackend::new());
    let plain = backend
        .complete(&request("anthropic", base.clone(), false))
        .await
        .unwrap();
    let (deltas, streamed) = call_in_a_run(backend, request("anthropic", base, true)).await;
    assert_eq!(deltas, ["Hel", "lo there"]);
    let streamed = streamed.unwrap();
    assert_eq!(streamed, plain);
    assert_eq!(streamed.usage.input_tokens, 25);
    assert_eq!(streamed.usage.output_tokens, 7);
    assert_eq!(streamed.finish_reason.as_deref(), Some("end_turn"));
    assert_eq!(seen.lock().unwrap()[1]["stream"], json!(true));
}

/// A request offering one tool, as a `tool_loop` state's turn sends it.
fn tool_request(provider: &str, base: String, stream: bool) -> LlmRequest {
    let mut request = request(provider, base, stream);
    request.tools = vec![flatmachine_runtime::tools::ToolDefinition::new(
        "lookup",
        "Looks a word up",
        json!({"type": "object", "properties": {"word": {"type": "string"}}}),
    )];
    request
}

#[tokio::test]
async fn openai_streamed_tool_calls_answer_as_unstreamed() {
    let unstreamed = json!({"id": "chatcmpl-9", "object": "chat.completion", "created": 7,
        "model": "gpt-test",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "Looking.",
            "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "lookup", "arguments": "{\"word\":\"kettle\"}"}},
                {"id": "c2", "type": "function", "function": {"name": "lookup", "arguments": "{\"word\": "}}
            ]}, "finish_reason": "tool_calls"}],
        "usage": openai_usage()});
    let piece = |index: u64, id: Option<&str>, name: Option<&str>, args: &str| {
        let mut call = json!({"index": index, "function": {"arguments": args}});
        if let Some(id) = id {
            call["id"] = json!(id);
            call["type"] = json!("function");
        }
        if let Some(name) = name {
            call["function"]["name"] = json!(name);
        }
        openai_chunk(json!({"tool_calls": [call]}), Value::Null)
    };
    let events = sse(&[
        openai_chunk(
            json!({"role": "assistant", "content": "Looking."}),
            Value::Null,
        ),
        piece(0, Some("c1"), Some("lookup"), ""),
        piece(0, None, None, "{\"word\":"),
        piece(1, Some("c2"), Some("lookup"), "{\"word\": "),
        piece(0, None, None, "\"kettle\"}"),
        openai_chunk(json!({}), json!("tool_calls")),
        json!({"id": "chatcmpl-9", "object": "chat.completion.chunk", "created": 7,
               "model": "gpt-test", "choices": [], "usage": openai_usage()}),
    ]) + "data: [DONE]\n\n";
    let (addr, seen) = server(unstreamed, events, End::Close).await;
    let base = format!("http://{addr}/v1");
    let backend: Arc<dyn LlmBackend> = Arc::new(OpenAiBackend::new());
    let plain = backend
        .complete(&tool_request("openai", base.clone(), false))
        .await
        .unwrap();
    let (deltas, streamed) = call_in_a_run(backend, tool_request("openai", base, true)).await;
    assert_eq!(deltas, ["Looking."]);
    let streamed = streamed.unwrap();
    assert_eq!(streamed, plain);
    assert_eq!(streamed.tool_calls.len(), 2);
    assert_eq!(streamed.tool_calls[0].arguments, "{\"word\":\"kettle\"}");
    // Arguments that are not JSON arrive as the model wrote them (the loop answers the error).
    assert_eq!(streamed.tool_calls[1].arguments, "{\"word\": ");
    assert_eq!(streamed.finish_reason.as_deref(), Some("tool_calls"));
    let bodies = seen.lock().unwrap().clone();
    assert_eq!(bodies[1]["stream"], json!(true));
    assert_eq!(bodies[1]["tools"][0]["function"]["name"], "lookup");
}

#[tokio::test]
async fn anthropic_streamed_tool_use_answers_as_unstreamed() {
    let unstreamed = json!({"id": "msg_1", "type": "message", "role": "assistant",
        "model": "claude-test",
        "content": [
            {"type": "text", "text": "Looking."},
            {"type": "tool_use", "id": "toolu_1", "name": "lookup", "input": {"word": "kettle"}}
        ],
        "stop_reason": "tool_use", "stop_sequence": null,
        "usage": {"input_tokens": 20, "output_tokens": 7}});
    let events = [
        json!({"type": "message_start", "message": {"id": "msg_1", "type": "message",
            "role": "assistant", "model": "claude-test", "content": [], "stop_reason": null,
            "stop_sequence": null, "usage": {"input_tokens": 20, "output_tokens": 1}}}),
        json!({"type": "content_block_start", "index": 0,
            "content_block": {"type": "text", "text": ""}}),
        json!({"type": "content_block_delta", "index": 0,
            "delta": {"type": "text_delta", "text": "Looking."}}),
        json!({"type": "content_block_stop", "index": 0}),
        json!({"type": "content_block_start", "index": 1, "content_block":
            {"type": "tool_use", "id": "toolu_1", "name": "lookup", "input": {}}}),
        json!({"type": "content_block_delta", "index": 1,
            "delta": {"type": "input_json_delta", "partial_json": "{\"word\": "}}),
        json!({"type": "content_block_delta", "index": 1,
            "delta": {"type": "input_json_delta", "partial_json": "\"kettle\"}"}}),
        json!({"type": "content_block_stop", "index": 1}),
        json!({"type": "message_delta", "delta": {"stop_reason": "tool_use",
            "stop_sequence": null}, "usage": {"output_tokens": 7}}),
        json!({"type": "message_stop"}),
    ];
    let events: String = events
        .iter()
        .map(|e| format!("event: {}\ndata: {e}\n\n", e["type"].as_str().unwrap()))
        .collect();
    let (addr, _) = server(unstreamed, events, End::Close).await;
    let base = format!("http://{addr}");
    let backend: Arc<dyn LlmBackend> = Arc::new(AnthropicBackend::new());
    let plain = backend
        .complete(&tool_request("anthropic", base.clone(), false))
        .await
        .unwrap();
    let (deltas, streamed) = call_in_a_run(backend, tool_request("anthropic", base, true)).await;
    assert_eq!(deltas, ["Looking."]);
    let streamed = streamed.unwrap();
    assert_eq!(streamed, plain);
    assert_eq!(streamed.tool_calls.len(), 1);
    assert_eq!(streamed.tool_calls[0].name, "lookup");
    assert_eq!(
        serde_json::from_str::<Value>(&streamed.tool_calls[0].arguments).unwrap(),
        json!({"word": "kettle"})
    );
}

/// Streams `events` (then `end`) and returns the error the backend gives.
async fn stream_error(provider: &str, events: String, end: End) -> (Vec<String>, LlmError) {
    let (addr, _) = server(json!({}), events, end).await;
    let (backend, base): (Arc<dyn LlmBackend>, String) = match provider {
        "openai" => (
            Arc::new(
                OpenAiBackend::new()
                    .with_timeout(Duration::from_millis(400))
                    .with_max_retries(0),
            ),
            format!("http://{addr}/v1"),
        ),
        _ => (
            Arc::new(
                AnthropicBackend::new()
                    .with_timeout(Duration::from_millis(400))
                    .with_max_retries(0),
            ),
            format!("http://{addr}"),
        ),
    };
    let (deltas, reply) = call_in_a_run(backend, request(provider, base, true)).await;
    (deltas, reply.unwrap_err())
}

#[tokio::test]
async fn a_stream_cut_before_its_end_is_a_provider_error() {
    // OpenAI: no `[DONE]`.
    let events = sse(&openai_events()[..3]);
    let (deltas, error) = stream_error("openai", events, End::Close).await;
    assert_eq!(deltas, ["Hel", "lo"]);
    assert_eq!(error.kind, LlmErrorKind::InternalServer);
    assert!(error.message.contains("cut before its end"), "{error}");
    // Anthropic: no `message_stop`.
    let events: String = anthropic_events().split_inclusive("\n\n").take(4).collect();
    let (_, error) = stream_error("anthropic", events, End::Close).await;
    assert!(error.message.contains("cut before its end"), "{error}");
}

#[tokio::test]
async fn a_malformed_event_is_a_provider_error() {
    let events = sse(&openai_events()[..2]) + "data: {\"choices\": [\n\n";
    let (_, error) = stream_error("openai", events, End::Close).await;
    assert_eq!(error.kind, LlmErrorKind::InternalServer);
    assert!(error.message.contains("not JSON"), "{error}");
}

#[tokio::test]
async fn an_error_event_is_a_provider_error() {
    let events: String = anthropic_events()
        .split_inclusive("\n\n")
        .take(2)
        .collect::<String>()
        + "event: error\ndata: {\"type\": \"error\", \"error\": {\"type\": \"overloaded_error\", \"message\": \"Overloaded\"}}\n\n";
    let (_, error) = stream_error("anthropic", events, End::Close).await;
    assert_eq!(error.kind, LlmErrorKind::Api);
    assert!(
        error.message.contains("overloaded_error: Overloaded")
            || error.message.contains("`overloaded_error`: Overloaded"),
        "{error}"
    );
}

#[tokio::test]
async fn a_stream_that_never_ends_times_out_without_a_retry() {
    let events = sse(&openai_events()[..2]);
    let (deltas, error) = stream_error("openai", events, End::Hang).await;
    assert_eq!(deltas, ["Hel"]);
    assert_eq!(error.kind, LlmErrorKind::Timeout);
    assert!(!error.message.contains("attempts"), "{error}");
}
