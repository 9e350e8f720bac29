//! `tool_loop` states through the public API: a compiled machine whose agent has an inline tool
//! and two Rust tools, answered by a scripted model that asks for tools.

use async_trait::async_trait;
use flatmachine_runtime::agents::{LlmRequest, LlmResponse, Role, ScriptedBackend, ToolChoice};
use flatmachine_runtime::hooks::{
    HookError, MachineHooks, PendingToolCall, ToolLoopControl, ToolResultRecord,
};
use flatmachine_runtime::tools::{ToolCall, ToolError, tool_fn};
use flatmachine_runtime::{Context, Machine, MachineBuilder, RunResult, Value, flatmachine};
use serde_json::json;
use std::sync::{Arc, Mutex};
use std::time::Duration;

flatmachine!("machines/tools/loop.yml", tools = [add, secret, slow, meet]);

/// Two `meet` calls pass only together: run one after the other, the first would wait for
/// the second until the state's `tool_timeout` (1 s) cut it off.
fn meeting_point() -> &'static tokio::sync::Barrier {
    static BARRIER: std::sync::OnceLock<tokio::sync::Barrier> = std::sync::OnceLock::new();
    BARRIER.get_or_init(|| tokio::sync::Barrier::new(2))
}

#[derive(serde::Deserialize, schemars::JsonSchema)]
struct AddArgs {
    a: i64,
    b: i64,
}

#[derive(serde::Deserialize, schemars::JsonSchema)]
struct NoArgs {}

fn machine(backend: Arc<ScriptedBackend>) -> MachineBuilder {
    Machine::of::<tool_loop::Machine>()
        .llm_backend(backend)
        .tool_handler("lookup", |args: Value, _call| async move {
            match args["word"].as_str() {
                Some("missing") => Err(ToolError::new("no such word")),
                Some(w) => Ok(format!("{w}: a word")),
                None => Err(ToolError::new("no word")),
            }
        })
        .tool(tool_fn(
            "add",
            "Adds two numbers",
            |a: AddArgs| async move { Ok::<_, ToolError>((a.a + a.b).to_string()) },
        ))
        .tool(tool_fn("secret", "Never offered", |_: NoArgs| async move {
            Ok::<_, ToolError>("the secret")
        }))
        .tool(tool_fn("slow", "Takes too long", |_: NoArgs| async move {
            tokio::time::sleep(Duration::from_secs(30)).await;
            Ok::<_, ToolError>("late")
        }))
        .tool(tool_fn(
            "meet",
            "Waits for a second caller",
            |_: NoArgs| async move {
                meeting_point().wait().await;
                Ok::<_, ToolError>("met")
            },
        ))
}

fn input(question: &str) -> Value {
    json!({"question": question, "max_calls": 0, "max_cost": 0, "stop_after": 1000, "repeat": 1, "total_timeout": 0})
}

/// Tool results of the request's last round (the tool messages after the last assistant one).
fn last_results(req: &LlmRequest) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = req
        .messages
        .iter()
        .rev()
        .take_while(|m| m.role == Role::Tool)
        .map(|m| {
            (
                m.tool_call_id.clone().unwrap_or_default(),
                m.content.clone(),
            )
        })
        .collect();
    out.reverse();
    out
}

fn turns(req: &LlmRequest) -> usize {
    req.messages
        .iter()
        .filter(|m| m.role == Role::Assistant)
        .count()
}

fn call(id: &str, name: &str, args: &str) -> ToolCall {
    ToolCall {
        id: id.into(),
        name: name.into(),
        arguments: args.into(),
    }
}

async fn run(backend: Arc<ScriptedBackend>, input: Value) -> RunResult {
    machine(backend).build().unwrap().run(input).await.unwrap()
}

#[tokio::test]
async fn the_model_calls_tools_until_it_answers() {
    let backend = Arc::new(ScriptedBackend::new(|req| {
        Ok(match turns(req) {
            0 => LlmResponse::text("")
                .with_tool_call("c1", "lookup", json!({"word": "kettle"}))
                .with_tool_call("c2", "add", json!({"a": 2, "b": 3}))
                .with_usage(100, 10),
            _ => {
                let results: Vec<String> = last_results(req).into_iter().map(|(_, c)| c).collect();
                LlmResponse::text(format!("answer: {}", results.join(" / "))).with_usage(150, 5)
            }
        })
    }));
    let result = run(backend.clone(), input("what is a kettle?")).await;
    assert_eq!(
        result.output,
        json!({"answer": "answer: kettle: a word / 5", "calls": 2, "turns": 2, "stop": "complete"})
    );
    assert_eq!(result.total_api_calls, 2);
    assert_eq!(result.usage.input_tokens, 250);
    assert!((result.total_cost - (250.0 * 0.001 + 15.0 * 0.002)).abs() < 1e-9);

    let requests = backend.requests();
    assert_eq!(requests.len(), 2);
    // Denied tools are not offered; the inline tool comes first, then the Rust tools.
    let offered: Vec<&str> = requests[0].tools.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(offered, ["lookup", "add", "slow", "meet"]);
    assert_eq!(requests[0].tool_choice, ToolChoice::Auto);
    assert_eq!(
        requests[0].tools[1].parameters["required"],
        json!(["a", "b"]),
        "the Rust tool's schema comes from schemars"
    );
    // The opening messages were rendered once, with the offered tools in the prompt.
    assert_eq!(
        requests[0].messages[0].content,
        "You answer with tools. Tools: lookup add slow meet "
    );
    assert_eq!(
        requests[0].messages[1].content,
        "Question: what is a kettle? (visit 1)"
    );
    // The second turn sends the whole conversation: the reply and one result per call.
    let second = &requests[1].messages;
    assert_eq!(second.len(), 5);
    assert_eq!(second[0], requests[0].messages[0]);
    assert_eq!(second[2].role, Role::Assistant);
    assert_eq!(
        second[2].tool_calls,
        [
            call("c1", "lookup", r#"{"word":"kettle"}"#),
            call("c2", "add", r#"{"a":2,"b":3}"#)
        ]
    );
    assert_eq!(
        last_results(&requests[1]),
        [
            ("c1".to_string(), "kettle: a word".to_string()),
            ("c2".to_string(), "5".to_string())
        ]
    );
}

#[tokio::test]
async fn bad_calls_come_back_to_the_model_as_tool_errors() {
    let backend = Arc::new(ScriptedBackend::new(|req| {
        Ok(match turns(req) {
            0 => LlmResponse {
                tool_calls: vec![
                    call("u", "nope", "{}"),
                    call("m", "lookup", r#"{"word": "#),
                    call("s", "add", r#"{"a": "two", "b": 3}"#),
                    call("d", "secret", "{}"),
                    call("e", "lookup", r#"{"word": "missing"}"#),
                    call("t", "slow", ""),
                ],
                ..LlmResponse::text("")
            },
            _ => LlmResponse::text(
                last_results(req)
                    .into_iter()
                    .map(|(id, c)| format!("{id}={c}"))
                    .collect::<Vec<_>>()
                    .join("\n"),
            ),
        })
    }));
    let result = run(backend, input("q")).await;
    let answer = result.output["answer"].as_str().unwrap().to_string();
    let lines: Vec<&str> = answer.lines().collect();
    assert_eq!(lines.len(), 6, "{answer}");
    assert!(
        lines[0].starts_with("u=Unknown tool `nope`; available tools: lookup, add, slow, meet"),
        "{answer}"
    );
    assert!(
        lines[1].starts_with("m=Tool `lookup` was not run: the arguments are not valid JSON"),
        "{answer}"
    );
    assert!(
        lines[2]
            .starts_with("s=Tool `add` was not run: the arguments do not fit the tool's schema")
            && lines[2].contains("at `/a`"),
        "{answer}"
    );
    assert!(
        lines[3].starts_with("d=Tool `secret` is not allowed here"),
        "{answer}"
    );
    assert_eq!(lines[4], "e=Error: no such word");
    assert_eq!(lines[5], "t=Tool `slow` timed out after 1s");
    assert_eq!(result.output["stop"], "complete");
    assert_eq!(result.output["calls"], 6);
}

#[tokio::test]
async fn a_tool_call_limit_answers_every_call_and_asks_for_a_final_answer() {
    let backend = Arc::new(ScriptedBackend::new(|req| {
        Ok(match req.tool_choice {
            ToolChoice::None => LlmResponse::text("final, from what I have"),
            _ => LlmResponse::text("")
                .with_tool_call(format!("a{}", turns(req)), "add", json!({"a": 1, "b": 1}))
                .with_tool_call(format!("b{}", turns(req)), "add", json!({"a": 2, "b": 2})),
        })
    }));
    let mut inp = input("q");
    inp["max_calls"] = json!(3);
    let result = run(backend.clone(), inp).await;
    assert_eq!(result.output["stop"], "max_tool_calls");
    assert_eq!(
        result.output["calls"], 2,
        "the second round would pass the limit"
    );
    assert_eq!(result.output["answer"], "final, from what I have");
    let requests = backend.requests();
    assert_eq!(requests.len(), 3);
    let last = &requests[2];
    assert_eq!(last.tool_choice, ToolChoice::None);
    // Every call of the cut round has a result, so the conversation stays valid.
    let n = last.messages.len();
    assert_eq!(last.messages[n - 1].role, Role::User);
    assert!(last.messages[n - 1].content.contains("tool-use limit"));
    assert_eq!(last.messages[n - 2].tool_call_id.as_deref(), Some("b1"));
    assert!(
        last.messages[n - 2]
            .content
            .starts_with("Not run: the limit of 3")
    );
    assert_eq!(last.messages[n - 3].tool_call_id.as_deref(), Some("a1"));
}

#[tokio::test]
async fn a_turn_limit_stops_a_model_that_never_stops_asking() {
    let backend = Arc::new(ScriptedBackend::new(|req| {
        Ok(match req.tool_choice {
            ToolChoice::None => LlmResponse::text("gave up"),
            _ => LlmResponse::text("").with_tool_call(
                format!("c{}", turns(req)),
                "lookup",
                json!({"word": "again"}),
            ),
        })
    }));
    let result = run(backend.clone(), input("q")).await;
    assert_eq!(
        result.output,
        json!({"answer": "gave up", "calls": 4, "turns": 5, "stop": "max_turns"})
    );
    assert_eq!(result.total_api_calls, 5);
}

#[tokio::test]
async fn a_cost_limit_fails_the_state_through_on_error() {
    let backend = Arc::new(ScriptedBackend::new(|req| {
        Ok(LlmResponse::text("")
            .with_tool_call(format!("c{}", turns(req)), "add", json!({"a": 1, "b": 1}))
            .with_usage(1000, 0))
    }));
    let mut inp = input("q");
    inp["max_cost"] = json!(1.5);
    let result = run(backend.clone(), inp).await;
    assert_eq!(result.final_state, "failed");
    assert_eq!(result.output["error_type"], "ToolLoopLimitError");
    assert!(
        result.output["error"]
            .as_str()
            .unwrap()
            .contains("reached `max_cost` (1.5) after 2 turn(s)"),
        "{}",
        result.output
    );
    assert_eq!(
        backend.requests().len(),
        2,
        "no call after the budget is spent"
    );
    assert!(
        !result.context.contains_key("_tool_loop"),
        "a failed loop leaves no record behind"
    );
}

#[tokio::test]
async fn a_condition_that_holds_mid_loop_leaves_the_state() {
    let backend = Arc::new(ScriptedBackend::new(|req| {
        Ok(LlmResponse::text("still working")
            .with_tool_call(format!("a{}", turns(req)), "add", json!({"a": 1, "b": 1}))
            .with_tool_call(format!("b{}", turns(req)), "add", json!({"a": 1, "b": 2})))
    }));
    let mut inp = input("q");
    inp["stop_after"] = json!(3);
    let result = run(backend.clone(), inp).await;
    assert_eq!(result.final_state, "cut_short");
    assert_eq!(
        result.output,
        json!({"answer": "still working", "calls": 4, "stop": "transition"})
    );
    assert_eq!(backend.requests().len(), 2);
}

#[tokio::test]
async fn a_second_visit_starts_a_new_conversation_with_its_own_input() {
    let backend = Arc::new(ScriptedBackend::new(|req| {
        Ok(match turns(req) {
            0 => LlmResponse::text("").with_tool_call("c", "add", json!({"a": 1, "b": 1})),
            _ => LlmResponse::text("done"),
        })
    }));
    let mut inp = input("q");
    inp["repeat"] = json!(2);
    let result = run(backend.clone(), inp).await;
    assert_eq!(result.final_state, "done");
    let requests = backend.requests();
    assert_eq!(requests.len(), 4, "two visits of two turns");
    assert_eq!(requests[2].messages.len(), 2, "a fresh conversation");
    assert_eq!(requests[2].messages[1].content, "Question: q (visit 2)");
    assert_eq!(result.output["stop"], "complete");
    assert_eq!(result.context["visits"], 2);
    assert!(!result.context.contains_key("_tool_loop"));
}

/// Vetoes `lookup`, doubles `add`'s first argument, redacts results, aborts on request.
struct Policy {
    abort_after_results: bool,
    seen: Mutex<Vec<String>>,
}

#[async_trait]
impl MachineHooks for Policy {
    async fn on_tool_calls(
        &self,
        state: &str,
        calls: &mut [PendingToolCall],
        context: &mut Context,
    ) -> Result<ToolLoopControl, HookError> {
        context.insert("hook_state".into(), json!(state));
        for p in calls.iter_mut() {
            self.seen
                .lock()
                .unwrap()
                .push(format!("calls:{}", p.call.name));
            match p.call.name.as_str() {
                "lookup" => p.veto = Some("lookups are off today".into()),
                "add" => {
                    let mut args = p.call.parsed_arguments().unwrap();
                    args["a"] = json!(args["a"].as_i64().unwrap() * 2);
                    p.call.arguments = args.to_string();
                }
                _ => {}
            }
        }
        Ok(ToolLoopControl::Continue)
    }

    async fn on_tool_result(
        &self,
        _state: &str,
        result: &mut ToolResultRecord,
        _context: &mut Context,
    ) -> Result<ToolLoopControl, HookError> {
        self.seen.lock().unwrap().push(format!(
            "result:{}={}",
            result.call.name, result.output.content
        ));
        result.output.content = format!("[checked] {}", result.output.content);
        Ok(if self.abort_after_results {
            ToolLoopControl::Abort
        } else {
            ToolLoopControl::Continue
        })
    }
}

#[tokio::test]
async fn hooks_veto_edit_and_redact_calls() {
    let backend = Arc::new(ScriptedBackend::new(|req| {
        Ok(match turns(req) {
            0 => LlmResponse::text("")
                .with_tool_call("l", "lookup", json!({"word": "x"}))
                .with_tool_call("a", "add", json!({"a": 5, "b": 1})),
            _ => LlmResponse::text(
                last_results(req)
                    .into_iter()
                    .map(|(id, c)| format!("{id}={c}"))
                    .collect::<Vec<_>>()
                    .join("; "),
            ),
        })
    }));
    let hooks = Arc::new(Policy {
        abort_after_results: false,
        seen: Mutex::new(Vec::new()),
    });
    let result = machine(backend.clone())
        .hooks(hooks.clone())
        .build()
        .unwrap()
        .run(input("q"))
        .await
        .unwrap();
    assert_eq!(
        result.output["answer"],
        "l=Not run: lookups are off today; a=[checked] 11"
    );
    assert_eq!(result.output["calls"], 1, "the vetoed call did not run");
    assert_eq!(result.context["hook_state"], "research");
    assert_eq!(
        *hooks.seen.lock().unwrap(),
        ["calls:lookup", "calls:add", "result:add=11"]
    );
    // The conversation records the call as it ran.
    let second = &backend.requests()[1];
    assert_eq!(
        second.messages[2].tool_calls[1].arguments,
        r#"{"a":10,"b":1}"#
    );
}

#[tokio::test]
async fn a_hook_can_abort_the_loop() {
    let backend = Arc::new(ScriptedBackend::new(|req| {
        Ok(LlmResponse::text("working").with_tool_call(
            format!("a{}", turns(req)),
            "add",
            json!({"a": 1, "b": 1}),
        ))
    }));
    let hooks = Arc::new(Policy {
        abort_after_results: true,
        seen: Mutex::new(Vec::new()),
    });
    let result = machine(backend.clone())
        .hooks(hooks)
        .build()
        .unwrap()
        .run(input("q"))
        .await
        .unwrap();
    assert_eq!(result.output["stop"], "aborted");
    assert_eq!(result.output["calls"], 1);
    assert_eq!(backend.requests().len(), 1);
}

#[test]
fn registered_tools_must_match_the_declared_ones() {
    let backend = Arc::new(ScriptedBackend::always("x"));
    let err = Machine::of::<tool_loop::Machine>()
        .llm_backend(backend.clone())
        .tool(tool_fn("add", "Adds", |a: AddArgs| async move {
            Ok::<_, ToolError>((a.a + a.b).to_string())
        }))
        .build()
        .unwrap_err();
    assert!(
        err.to_string().contains(
            "Rust tool `secret` is declared in `flatmachine!(.., tools = [..])` but not registered"
        ),
        "{err}"
    );
    let err = machine(backend.clone())
        .tool(tool_fn("extra", "Undeclared", |_: NoArgs| async move {
            Ok::<_, ToolError>("x")
        }))
        .build()
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("Rust tool `extra` is registered but not declared"),
        "{err}"
    );
    let err = machine(backend)
        .tool_handler("lokup", |_args: Value, _call| async move {
            Ok::<_, ToolError>("x")
        })
        .build()
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("`tool_handler(\"lokup\", ..)` names no inline tool of the machine's agents (inline tools: lookup)"),
        "{err}"
    );
}

#[tokio::test]
async fn an_inline_tool_without_a_handler_fails_the_state() {
    let backend = Arc::new(ScriptedBackend::always("x"));
    let result = Machine::of::<tool_loop::Machine>()
        .llm_backend(backend)
        .tool(tool_fn("add", "Adds", |a: AddArgs| async move {
            Ok::<_, ToolError>((a.a + a.b).to_string())
        }))
        .tool(tool_fn("secret", "s", |_: NoArgs| async move {
            Ok::<_, ToolError>("x")
        }))
        .tool(tool_fn("slow", "s", |_: NoArgs| async move {
            Ok::<_, ToolError>("x")
        }))
        .tool(tool_fn("meet", "s", |_: NoArgs| async move {
            Ok::<_, ToolError>("x")
        }))
        .build()
        .unwrap()
        .run(input("q"))
        .await
        .unwrap();
    assert_eq!(result.output["error_type"], "ToolError");
    assert!(
        result.output["error"]
            .as_str()
            .unwrap()
            .contains("inline tool `lookup` of agent `researcher` has no handler"),
        "{}",
        result.output
    );
}

#[tokio::test]
async fn the_calls_of_one_reply_run_concurrently() {
    let backend = Arc::new(ScriptedBackend::new(|req| {
        Ok(match turns(req) {
            0 => LlmResponse::text("")
                .with_tool_call("m1", "meet", json!({}))
                .with_tool_call("m2", "meet", json!({})),
            _ => LlmResponse::text(
                last_results(req)
                    .into_iter()
                    .map(|(_, c)| c)
                    .collect::<Vec<_>>()
                    .join(","),
            ),
        })
    }));
    let result = run(backend, input("q")).await;
    assert_eq!(result.output["answer"], "met,met");
}

#[tokio::test]
async fn a_total_timeout_fails_the_state_through_on_error() {
    let backend = Arc::new(ScriptedBackend::new(|req| {
        Ok(LlmResponse::text("").with_tool_call(format!("s{}", turns(req)), "slow", json!({})))
    }));
    let mut inp = input("q");
    inp["total_timeout"] = json!(0.2);
    let result = run(backend, inp).await;
    assert_eq!(result.final_state, "failed");
    assert_eq!(result.output["error_type"], "TimeoutError");
    assert!(
        result.output["error"]
            .as_str()
            .unwrap()
            .contains("ran past its `total_timeout` of 0.2s"),
        "{}",
        result.output
    );
}

/// The run's event stream carries one `ToolCall` per call the model asked for and one
/// `ToolResult` per result, in order, between the turn's `AgentCallStart` / `AgentCallEnd`
/// pairs.
#[tokio::test]
async fn a_tool_loop_run_streams_its_tool_calls_and_results_in_order() {
    use flatmachine_runtime::RunOptions;
    use flatmachine_runtime::events::EventKind;
    use futures::StreamExt;

    let backend = Arc::new(ScriptedBackend::new(|req| {
        Ok(match turns(req) {
            0 => LlmResponse::text("")
                .with_tool_call("c1", "lookup", json!({"word": "kettle"}))
                .with_tool_call("c2", "add", json!({"a": 2, "b": 3}))
                .with_tool_call("c3", "lookup", json!({"word": "missing"})),
            1 => LlmResponse::text("").with_tool_call("c4", "secret", json!({})),
            _ => LlmResponse::text("done"),
        })
    }));
    let machine = machine(backend).build().unwrap();
    let mut stream = machine.stream(input("q"), RunOptions::new());
    let mut seen: Vec<String> = Vec::new();
    while let Some(event) = stream.next().await {
        match event.kind {
            EventKind::AgentCallStart { state, agent } => {
                seen.push(format!("start {state} {agent}"))
            }
            EventKind::AgentCallEnd {
                api_calls, error, ..
            } => seen.push(format!("end {api_calls} {}", error.is_none())),
            EventKind::ToolCall {
                id,
                name,
                arguments,
            } => seen.push(format!("call {id} {name} {arguments}")),
            EventKind::ToolResult { id, name, is_error } => {
                seen.push(format!("result {id} {name} {is_error}"))
            }
            _ => {}
        }
    }
    let result = stream.result().await.unwrap();
    assert_eq!(result.output["stop"], "complete");
    assert_eq!(
        seen,
        [
            "start research researcher",
            "end 1 true",
            r#"call c1 lookup {"word":"kettle"}"#,
            r#"call c2 add {"a":2,"b":3}"#,
            r#"call c3 lookup {"word":"missing"}"#,
            "result c1 lookup false",
            "result c2 add false",
            "result c3 lookup true",
            "start research researcher",
            "end 1 true",
            "call c4 secret {}",
            // Denied: not offered, answered "not allowed" (an error result).
            "result c4 secret true",
            "start research researcher",
            "end 1 true",
        ]
    );
}

/// Every model call of a loop draws from the run tree's `max_agent_calls` budget: a loop that
/// would go on is stopped when the budget is spent, and the run fails with `MaxAgentCalls`
/// (a limit, not routed by `on_error`), its calls counted.
#[tokio::test]
async fn tool_loop_turns_draw_from_the_max_agent_calls_budget() {
    use flatmachine_runtime::{RunError, RunOptions};

    let backend = Arc::new(ScriptedBackend::new(|req| {
        Ok(LlmResponse::text("").with_tool_call(
            format!("c{}", turns(req)),
            "add",
            json!({"a": 1, "b": 1}),
        ))
    }));
    let machine = machine(backend.clone()).build().unwrap();
    let failure = machine
        .execute(input("q"), RunOptions::new().max_agent_calls(2))
        .await
        .unwrap_err();
    assert!(
        matches!(failure.error, RunError::MaxAgentCalls { limit: 2, ref state, .. } if state == "research"),
        "{}",
        failure.error
    );
    assert_eq!(backend.requests().len(), 2, "no call past the budget");
    assert_eq!(failure.totals.api_calls, 2);

    // Within the budget the same loop runs to its own `max_turns` (4) and the final answer.
    let machine = machine_with_answer_after(3).build().unwrap();
    let result = machine
        .execute(input("q"), RunOptions::new().max_agent_calls(3))
        .await
        .unwrap();
    assert_eq!(result.total_api_calls, 3);
    assert_eq!(result.output["stop"], "complete");
}

/// A machine whose model asks for `add` on its first `n - 1` turns, then answers.
fn machine_with_answer_after(n: usize) -> MachineBuilder {
    machine(Arc::new(ScriptedBackend::new(move |req| {
        Ok(if turns(req) + 1 < n {
            LlmResponse::text("").with_tool_call(
                format!("c{}", turns(req)),
                "add",
                json!({"a": 1, "b": 1}),
            )
        } else {
            LlmResponse::text("two")
        })
    })))
}

mod typed {
    flatmachine_runtime::flatmachine!("machines/tools/typed_loop.yml");
    pub use typed_loop::*;
}

/// A final answer that fits the agent's `output` schema is the state's typed agent output in a
/// typed run, and hooks read the state's output (with the loop's own keys) as that struct.
#[tokio::test]
async fn a_typed_run_reads_the_loops_final_answer_as_its_agent_output() {
    use typed::agents::{AnyOutput, DefinerOutput};

    let backend = Arc::new(ScriptedBackend::new(|req| {
        Ok(match turns(req) {
            0 => LlmResponse::text("").with_tool_call("c1", "lookup", json!({"word": "kettle"})),
            _ => LlmResponse::text(r#"{"meaning": "a pot for boiling water", "letters": 6}"#),
        })
    }));
    let machine = Machine::of::<typed::Machine>()
        .llm_backend(backend)
        .tool_handler("lookup", |args: Value, _call| async move {
            Ok::<_, ToolError>(format!("{}: a pot", args["word"]))
        })
        .no_persistence()
        .build_typed::<typed::Machine>()
        .unwrap();
    let run = machine.run(&json!({"word": "kettle"})).await.unwrap();
    assert_eq!(run.output["meaning"], "a pot for boiling water");
    assert_eq!(
        run.agent_outputs,
        vec![(
            typed::State::Start,
            AnyOutput::Definer(DefinerOutput {
                meaning: "a pot for boiling water".into(),
                letters: 6
            })
        )]
    );
    assert_eq!(run.result.total_api_calls, 2);
}
