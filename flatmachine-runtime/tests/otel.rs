//! OpenTelemetry export (feature `otel`) against a loopback OTLP/HTTP receiver that decodes
//! the protobuf requests: the span tree of a run with an agent call and `foreach` children,
//! a tool loop's `execute_tool` spans, their GenAI and flatmachine attributes, and the
//! metrics.
#![cfg(feature = "otel")]

use std::collections::HashMap;
use std::io::{Read, Write};
use std::sync::{Arc, Mutex};

use flatmachine_runtime::agents::{LlmResponse, ScriptedBackend};
use flatmachine_runtime::otel::Telemetry;
use flatmachine_runtime::{
    ActionCall, AgentOutput, Context, Machine, RunOptions, StateError, Value,
};
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use opentelemetry_proto::tonic::metrics::v1::metric::Data;
use opentelemetry_proto::tonic::trace::v1::Span;
use opentelemetry_proto::tonic::trace::v1::status::StatusCode;
use prost::Message;
use serde_json::json;

flatmachine_runtime::flatmachine!("tests/machines/events/watched.yml");
flatmachine_runtime::flatmachine!("tests/machines/events/storyteller.yml");
flatmachine_runtime::flatmachine!("tests/machines/events/librarian.yml");

#[derive(Default)]
struct Received {
    spans: Vec<Span>,
    metrics: Vec<ExportMetricsServiceRequest>,
}

/// An OTLP/HTTP receiver on 127.0.0.1 (blocking threads: the exporter's own thread posts to
/// it while the test's runtime may be blocked in a flush).
fn receiver() -> (String, Arc<Mutex<Received>>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let received = Arc::new(Mutex::new(Received::default()));
    let log = received.clone();
    std::thread::spawn(move || {
        for socket in listener.incoming() {
            let Ok(mut socket) = socket else { return };
            let log = log.clone();
            std::thread::spawn(move || {
                // Several requests may come on one connection.
                let mut buf = Vec::new();
                let mut chunk = [0u8; 8192];
                loop {
                    let head_end = loop {
                        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            break i;
                        }
                        match socket.read(&mut chunk) {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    };
                    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
                    let path = head.split(' ').nth(1).unwrap_or("").to_string();
                    let length: usize = head
                        .lines()
                        .find_map(|l| {
                            let (n, v) = l.split_once(':')?;
                            n.eq_ignore_ascii_case("content-length")
                                .then(|| v.trim().parse().ok())?
                        })
                        .unwrap_or(0);
                    while buf.len() < head_end + 4 + length {
                        match socket.read(&mut chunk) {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    let body: Vec<u8> = buf[head_end + 4..head_end + 4 + length].to_vec();
                    buf.drain(..head_end + 4 + length);
                    {
                        let mut log = log.lock().unwrap();
                        match path.as_str() {
                            "/v1/traces" => {
                                let req = ExportTraceServiceRequest::decode(body.as_slice())
                                    .expect("a protobuf trace export");
                                for rs in req.resource_spans {
                                    for ss in rs.scope_spans {
                                        log.spans.extend(ss.spans);
                                    }
                                }
                            }
                            "/v1/metrics" => log.metrics.push(
                                ExportMetricsServiceRequest::decode(body.as_slice())
                                    .expect("a protobuf metrics export"),
                            ),
                            other => panic!("unexpected OTLP path {other}"),
                        }
                    }
                    let reply = "HTTP/1.1 200 OK\r\nContent-Type: application/x-protobuf\r\nContent-Length: 0\r\n\r\n";
                    if socket.write_all(reply.as_bytes()).is_err() {
                        return;
                    }
                }
            });
        }
    });
    (format!("http://{addr}"), received)
}

fn attr(span: &Span, key: &str) -> Option<AnyValue> {
    span.attributes
        .iter()
        .find(|a| a.key == key)
        .and_then(|a| a.value.clone())
        .and_then(|v| v.value)
}

fn text(span: &Span, key: &str) -> String {
    match attr(span, key) {
        Some(AnyValue::StringValue(s)) => s,
        other => panic!("`{key}` of `{}` is {other:?}", span.name),
    }
}

fn int(span: &Span, key: &str) -> i64 {
    match attr(span, key) {
        Some(AnyValue::IntValue(i)) => i,
        other => panic!("`{key}` of `{}` is {other:?}", span.name),
    }
}

fn double<'a>(
    ctx: &'a mut Context,
    _call: &'a ActionCall,
) -> futures::future::BoxFuture<'a, Result<(), StateError>> {
    Box::pin(async move {
        let x = ctx.get("x").and_then(Value::as_i64).unwrap_or(0);
        ctx.insert("y".into(), json!(2 * x));
        Ok(())
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_are_exported_as_a_span_tree_with_genai_attributes_and_metrics() {
    let (endpoint, received) = receiver();
    // SAFETY: the only test of this binary; nothing else reads the environment meanwhile.
    unsafe {
        std::env::set_var("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint);
        std::env::set_var("OTEL_SERVICE_NAME", "otel-test");
    }
    let telemetry = Telemetry::from_env().unwrap();

    // A flatagent call with usage and a model.
    let story = Machine::of::<storyteller::Machine>()
        .llm_backend(Arc::new(ScriptedBackend::new(|_| {
            let mut reply = LlmResponse::text("Once.").with_usage(11, 4);
            reply.model = Some("gpt-test".into());
            Ok(reply)
        })))
        .build()
        .unwrap();
    telemetry
        .run(
            &story,
            json!({"topic": "x"}),
            RunOptions::new().execution_id("story-1"),
        )
        .await
        .unwrap();
    // A tool loop: two calls of `lookup` in one reply, then the answer.
    let library = Machine::of::<librarian::Machine>()
        .llm_backend(Arc::new(ScriptedBackend::new(|req| {
            let asked = req
                .messages
                .iter()
                .any(|m| m.role == flatmachine_runtime::agents::Role::Tool);
            Ok(if asked {
                LlmResponse::text("A kettle boils water.")
            } else {
                LlmResponse::text("")
                    .with_tool_call("call-1", "lookup", json!({"word": "kettle"}))
                    .with_tool_call("call-2", "lookup", json!({}))
            })
        })))
        .tool_handler("lookup", |args: Value, _call| async move {
            Ok::<_, flatmachine_runtime::tools::ToolError>(format!("{}: a word", args["word"]))
        })
        .build()
        .unwrap();
    telemetry
        .run(
            &library,
            json!({"question": "kettle?"}),
            RunOptions::new().execution_id("library-1"),
        )
        .await
        .unwrap();
    // Children, an error routed, checkpoints.
    let watched = Machine::of::<watched::Machine>()
        .agent("writer", |_i: Value, _c: Context| async move {
            Ok(AgentOutput::new(json!({"text": "t"})))
        })
        .action_mut("double", double)
        .action_mut("explode", |_ctx, _call| {
            Box::pin(async { Err(StateError::new("Boom", "the risky state failed")) })
        })
        .build()
        .unwrap();
    telemetry
        .run(
            &watched,
            json!({"topic": "t", "items": [1, 2]}),
            RunOptions::new().execution_id("watched-1"),
        )
        .await
        .unwrap();
    watched.join_launched().await;
    tokio::task::spawn_blocking(move || telemetry.shutdown())
        .await
        .unwrap()
        .unwrap();

    let received = received.lock().unwrap();
    let spans = &received.spans;
    let named = |name: &str, execution: &str| -> &Span {
        spans
            .iter()
            .find(|s| s.name == name && text(s, "flatmachine.execution_id") == execution)
            .unwrap_or_else(|| {
                panic!(
                    "no span `{name}` of {execution}: {:?}",
                    spans.iter().map(|s| &s.name).collect::<Vec<_>>()
                )
            })
    };

    // story-1: run > state tell > invoke_agent teller, with the GenAI attributes.
    let run = named("run storyteller", "story-1");
    assert!(run.parent_span_id.is_empty());
    assert_eq!(text(run, "flatmachine.machine"), "storyteller");
    assert_eq!(int(run, "flatmachine.step"), 3);
    let tell = named("state tell", "story-1");
    assert_eq!(tell.parent_span_id, run.span_id);
    assert_eq!(tell.trace_id, run.trace_id);
    assert_eq!(
        (
            text(tell, "flatmachine.state").as_str(),
            int(tell, "flatmachine.step")
        ),
        ("tell", 2)
    );
    let call = named("invoke_agent teller", "story-1");
    assert_eq!(call.parent_span_id, tell.span_id);
    assert_eq!(text(call, "gen_ai.operation.name"), "invoke_agent");
    assert_eq!(text(call, "gen_ai.agent.name"), "teller");
    assert_eq!(text(call, "gen_ai.request.model"), "gpt-test");
    assert_eq!(int(call, "gen_ai.usage.input_tokens"), 11);
    assert_eq!(int(call, "gen_ai.usage.output_tokens"), 4);
    assert_eq!(
        (
            text(call, "flatmachine.state").as_str(),
            int(call, "flatmachine.step")
        ),
        ("tell", 2)
    );
    assert!(call.start_time_unix_nano >= tell.start_time_unix_nano);
    assert!(call.end_time_unix_nano <= tell.end_time_unix_nano);

    // library-1: one `execute_tool` span per call, under the tool-loop state's span, after the
    // turn that asked for it; a call the tool rejected (no `word`) has the error status.
    let research = named("state research", "library-1");
    let tools: Vec<&Span> = spans
        .iter()
        .filter(|s| {
            s.name == "execute_tool lookup" && text(s, "flatmachine.execution_id") == "library-1"
        })
        .collect();
    assert_eq!(
        tools.len(),
        2,
        "{:?}",
        spans.iter().map(|s| &s.name).collect::<Vec<_>>()
    );
    let turns: Vec<&Span> = spans
        .iter()
        .filter(|s| {
            s.name == "invoke_agent helper" && text(s, "flatmachine.execution_id") == "library-1"
        })
        .collect();
    assert_eq!(turns.len(), 2, "one span per model call of the loop");
    for tool in tools.iter().copied() {
        assert_eq!(tool.parent_span_id, research.span_id);
        assert_eq!(tool.trace_id, research.trace_id);
        assert_eq!(text(tool, "gen_ai.operation.name"), "execute_tool");
        assert_eq!(text(tool, "gen_ai.tool.name"), "lookup");
        assert_eq!(text(tool, "flatmachine.state"), "research");
        assert!(tool.start_time_unix_nano >= turns[0].end_time_unix_nano);
        assert!(tool.end_time_unix_nano <= turns[1].start_time_unix_nano);
    }
    let mut ids: Vec<String> = tools
        .iter()
        .map(|t| text(t, "gen_ai.tool.call.id"))
        .collect();
    ids.sort();
    assert_eq!(ids, ["call-1", "call-2"]);
    let failed = |t: &Span| t.status.as_ref().map(|s| s.code) == Some(StatusCode::Error as i32);
    let by_id = |id: &str| {
        *tools
            .iter()
            .find(|t| text(t, "gen_ai.tool.call.id") == id)
            .unwrap()
    };
    assert!(!failed(by_id("call-1")));
    assert!(
        failed(by_id("call-2")),
        "arguments missing `word` fail the schema check"
    );

    // watched-1: the foreach children are child spans of the foreach state's span.
    let root = named("run watched", "watched-1");
    let fan_out = named("state fan_out", "watched-1");
    assert_eq!(fan_out.parent_span_id, root.span_id);
    let children: Vec<&Span> = spans
        .iter()
        .filter(|s| s.name == "run child_double" && s.parent_span_id == fan_out.span_id)
        .collect();
    assert_eq!(children.len(), 2);
    for child in &children {
        assert_eq!(child.trace_id, root.trace_id);
        assert_eq!(text(child, "flatmachine.parent_execution_id"), "watched-1");
        let id = text(child, "flatmachine.execution_id");
        let start = named("state start", &id);
        assert_eq!(start.parent_span_id, child.span_id);
    }
    // The failed state carries its error.
    let risky = named("state risky", "watched-1");
    assert_eq!(
        risky.status.as_ref().unwrap().code,
        StatusCode::Error as i32
    );
    assert_eq!(text(risky, "error.type"), "Boom");
    // The launched child is a child of the launching state.
    let recovered = named("state recovered", "watched-1");
    assert!(
        spans
            .iter()
            .any(|s| s.name == "run child_double" && s.parent_span_id == recovered.span_id)
    );

    // Metrics, by name, with the tokens counted.
    let mut sums: HashMap<String, f64> = HashMap::new();
    let mut names = Vec::new();
    for req in &received.metrics {
        for rm in &req.resource_metrics {
            for sm in &rm.scope_metrics {
                for m in &sm.metrics {
                    names.push(m.name.clone());
                    if let Some(Data::Sum(sum)) = &m.data {
                        for p in &sum.data_points {
                            let input = p.attributes.iter().any(|a| {
                                a.key == "token_type"
                                    && a.value.as_ref().and_then(|v| v.value.clone())
                                        == Some(AnyValue::StringValue("input".into()))
                            });
                            let v = match p.value {
                                Some(opentelemetry_proto::tonic::metrics::v1::number_data_point::Value::AsInt(i)) => i as f64,
                                Some(opentelemetry_proto::tonic::metrics::v1::number_data_point::Value::AsDouble(d)) => d,
                                None => 0.0,
                            };
                            let key = if input {
                                format!("{}:input", m.name)
                            } else {
                                m.name.clone()
                            };
                            *sums.entry(key).or_default() += v;
                        }
                    }
                }
            }
        }
    }
    for expected in [
        "flatagents.agent.duration",
        "flatagents.agent.tokens",
        "flatagents.agent.cost",
        "flatagents.agent.executions",
        "flatmachine.state.duration",
        "flatmachine.checkpoint.duration",
        "flatmachine.run.duration",
    ] {
        assert!(
            names.iter().any(|n| n == expected),
            "no metric {expected}: {names:?}"
        );
    }
    assert_eq!(sums.get("flatagents.agent.tokens:input"), Some(&11.0));
    // The storyteller's call, the writer closure, and the tool loop's two model calls.
    assert_eq!(sums.get("flatagents.agent.executions"), Some(&4.0));
}
