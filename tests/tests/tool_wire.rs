//! Tool calls on the wire: a `tool_loop` machine talking to a loopback server that speaks the
//! OpenAI chat completions and Anthropic Messages JSON, with replies that ask for tools —
//! including arguments that are not JSON, an unknown tool and a malformed tool call.

use flatmachine_runtime::agents::ProviderRouter;
use flatmachine_runtime::tools::ToolError;
use flatmachine_runtime::{Machine, Value, flatmachine};
use flatmachine_tests::loopback_llm::{
    AtBase, LoopbackLlm, Received, anthropic_reply, openai_reply,
};
use serde_json::json;
use std::sync::Arc;

flatmachine!("machines/tools/wire_openai.yml");
flatmachine!("machines/tools/wire_anthropic.yml");

async fn lookup(
    args: Value,
    _call: flatmachine_runtime::tools::ToolInvocation,
) -> Result<String, ToolError> {
    Ok(format!("{}: a word", args["word"].as_str().unwrap_or("?")))
}

fn turn(req: &Received) -> usize {
    req.body["messages"]
        .as_array()
        .map(|m| m.iter().filter(|m| m["role"] == "assistant").count())
        .unwrap_or(0)
}

#[tokio::test]
async fn openai_tool_calls_round_trip() {
    let server = LoopbackLlm::start(|req: &Received| match turn(req) {
        0 => (
            200,
            json!({
                "model": "loopback-model",
                "choices": [{
                    "index": 0,
                    "message": {
                        "role": "assistant",
                        "content": null,
                        "tool_calls": [
                            {"id": "c1", "type": "function", "function": {"name": "lookup", "arguments": "{\"word\": \"kettle\"}"}},
                            {"id": "c2", "type": "function", "function": {"name": "lookup", "arguments": "{\"word\": "}},
                            {"id": "c3", "type": "function", "function": {"name": "nope", "arguments": "{}"}}
                        ]
                    },
                    "finish_reason": "tool_calls"
                }],
                "usage": {"prompt_tokens": 50, "completion_tokens": 20}
            }),
        ),
        _ => openai_reply("a kettle boils water", 80, 6),
    })
    .await;
    let backend = Arc::new(AtBase::new(
        Arc::new(ProviderRouter::new()),
        server.openai_base(),
    ));
    let result = Machine::of::<wire_openai::Machine>()
        .llm_backend(backend)
        .tool_handler("lookup", lookup)
        .no_persistence()
        .build()
        .unwrap()
        .run(json!({"question": "kettle?"}))
        .await
        .unwrap();
    assert_eq!(
        result.output,
        json!({"answer": "a kettle boils water", "calls": 3})
    );
    assert_eq!(result.total_api_calls, 2);

    let received = server.received();
    assert_eq!(received.len(), 2);
    let first = &received[0].body;
    assert_eq!(first["tool_choice"], "auto");
    assert_eq!(
        first["tools"],
        json!([{"type": "function", "function": {
            "name": "lookup",
            "description": "Looks a word up in the dictionary",
            "parameters": {"type": "object", "properties": {"word": {"type": "string"}}, "required": ["word"]}
        }}])
    );
    assert!(first.get("response_format").is_none());
    let messages = received[1].body["messages"].as_array().unwrap().clone();
    assert_eq!(messages.len(), 6);
    assert_eq!(
        messages[2],
        json!({"role": "assistant", "content": null, "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "lookup", "arguments": "{\"word\": \"kettle\"}"}},
            {"id": "c2", "type": "function", "function": {"name": "lookup", "arguments": "{\"word\": "}},
            {"id": "c3", "type": "function", "function": {"name": "nope", "arguments": "{}"}}
        ]})
    );
    assert_eq!(
        messages[3],
        json!({"role": "tool", "tool_call_id": "c1", "content": "kettle: a word"})
    );
    assert_eq!(messages[4]["role"], "tool");
    assert_eq!(messages[4]["tool_call_id"], "c2");
    let malformed = messages[4]["content"].as_str().unwrap();
    assert!(
        malformed.starts_with("Tool `lookup` was not run: the arguments are not valid JSON"),
        "{malformed}"
    );
    assert_eq!(messages[5]["tool_call_id"], "c3");
    assert_eq!(
        messages[5]["content"],
        "Unknown tool `nope`; available tools: lookup"
    );
}

#[tokio::test]
async fn a_tool_call_without_a_name_is_a_malformed_reply() {
    let server = LoopbackLlm::start(|_: &Received| {
        (
            200,
            json!({"choices": [{"message": {"role": "assistant", "content": null,
                "tool_calls": [{"id": "c1", "type": "function", "function": {"arguments": "{}"}}]},
                "finish_reason": "tool_calls"}]}),
        )
    })
    .await;
    let backend = Arc::new(AtBase::new(
        Arc::new(ProviderRouter::new()),
        server.openai_base(),
    ));
    let result = Machine::of::<wire_openai::Machine>()
        .llm_backend(backend)
        .tool_handler("lookup", lookup)
        .no_persistence()
        .build()
        .unwrap()
        .run(json!({"question": "kettle?"}))
        .await
        .unwrap();
    assert_eq!(result.final_state, "failed");
    let error = result.output["error"].as_str().unwrap();
    assert!(
        error.contains("malformed reply (tool call 0 has no name)"),
        "{error}"
    );
}

#[tokio::test]
async fn anthropic_tool_use_round_trip() {
    // A call, an unknown tool, and a call whose input is a string (malformed: not an object).
    let server = LoopbackLlm::start(|req: &Received| match turn(req) {
        0 => (
            200,
            json!({
                "id": "msg_1",
                "type": "message",
                "role": "assistant",
                "model": "loopback-model",
                "content": [
                    {"type": "text", "text": "Let me look."},
                    {"type": "tool_use", "id": "toolu_1", "name": "lookup", "input": {"word": "kettle"}},
                    {"type": "tool_use", "id": "toolu_2", "name": "nope", "input": {}},
                    {"type": "tool_use", "id": "toolu_3", "name": "lookup", "input": "{\"word\": "}
                ],
                "stop_reason": "tool_use",
                "usage": {"input_tokens": 40, "output_tokens": 12}
            }),
        ),
        _ => anthropic_reply("a kettle boils water", 70, 5),
    })
    .await;
    let backend = Arc::new(AtBase::new(
        Arc::new(ProviderRouter::new()),
        server.anthropic_base(),
    ));
    let result = Machine::of::<wire_anthropic::Machine>()
        .llm_backend(backend)
        .tool_handler("lookup", lookup)
        .no_persistence()
        .build()
        .unwrap()
        .run(json!({"question": "kettle?"}))
        .await
        .unwrap();
    assert_eq!(
        result.output,
        json!({"answer": "a kettle boils water", "calls": 3})
    );

    let received = server.received();
    assert_eq!(received.len(), 2);
    let first = &received[0].body;
    assert_eq!(first["tool_choice"], json!({"type": "auto"}));
    assert_eq!(
        first["tools"],
        json!([{
            "name": "lookup",
            "description": "Looks a word up in the dictionary",
            "input_schema": {"type": "object", "properties": {"word": {"type": "string"}}, "required": ["word"]}
        }])
    );
    let messages = received[1].body["messages"].as_array().unwrap().clone();
    assert_eq!(
        messages.len(),
        3,
        "user, assistant, user: strictly alternating"
    );
    assert_eq!(
        messages[1],
        json!({"role": "assistant", "content": [
            {"type": "text", "text": "Let me look."},
            {"type": "tool_use", "id": "toolu_1", "name": "lookup", "input": {"word": "kettle"}},
            {"type": "tool_use", "id": "toolu_2", "name": "nope", "input": {}},
            // Input that is not an object cannot go back to Anthropic as it came: sent empty.
            {"type": "tool_use", "id": "toolu_3", "name": "lookup", "input": {}}
        ]})
    );
    assert_eq!(messages[2]["role"], "user");
    let results = messages[2]["content"].as_array().unwrap();
    assert_eq!(results.len(), 3);
    assert_eq!(
        results[..2],
        [
            json!({"type": "tool_result", "tool_use_id": "toolu_1", "content": "kettle: a word"}),
            json!({"type": "tool_result", "tool_use_id": "toolu_2", "content": "Unknown tool `nope`; available tools: lookup", "is_error": true})
        ]
    );
    assert_eq!(results[2]["tool_use_id"], "toolu_3");
    assert_eq!(results[2]["is_error"], true);
    let malformed = results[2]["content"].as_str().unwrap();
    assert!(
        malformed == "Tool `lookup` was not run: the arguments must be a JSON object, got a string",
        "{malformed}"
    );
}
