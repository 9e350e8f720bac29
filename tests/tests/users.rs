//! Agents as users meet them (issue 18): a machine written for the reference — an agent with no
//! `model` and no `system`, `profiles: ./config/profiles.yml`, a provider named without a
//! `base_url`, `messages: "{{ context.messages | tojson }}"` — run through the public API against
//! the loopback server speaking the providers' JSON.
//!
//! Every test but `endpoints_from_the_environment` sends its calls with
//! `MachineBuilder::base_url`, which beats the environment variables that test sets.

use flatmachine_runtime::agents::{LlmResponse, ScriptedBackend};
use flatmachine_runtime::{Machine, flatmachine};
use flatmachine_tests::loopback_llm::{LoopbackLlm, Received, openai_reply};
use serde_json::{Value, json};
use std::sync::Arc;

flatmachine!("machines/users/chat.yml");

/// Answers the responder with `reply` and the scorer with `{"score": 8}`.
async fn server(reply: &'static str) -> LoopbackLlm {
    LoopbackLlm::start(move |req: &Received| {
        if req.body["model"] == "gpt-4o-mini" {
            openai_reply("{\"score\": 8}", 100, 10)
        } else {
            openai_reply(reply, 20, 5)
        }
    })
    .await
}

fn conversation() -> Value {
    json!({
        "messages": [
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": "hello"}
        ],
        "user_name": "Ada"
    })
}

fn machine_at(base: &str) -> Machine {
    Machine::of::<chat::Machine>()
        .base_url(base)
        .no_persistence()
        .build()
        .unwrap()
}

/// Items 1 and 12: no `model` → the default profile, no `system` → "You are a helpful
/// assistant."; the `tojson` list is a list, sent as real chat turns before the user prompt,
/// and hidden from the prompt (as the reference's `call(messages=…)` does); the judge's
/// profile asks for `json_object`.
#[tokio::test]
async fn a_reference_machine_runs_as_the_reference_runs_it() {
    let server = server("Nice to see you").await;
    let result = machine_at(&server.openai_base())
        .run(conversation())
        .await
        .unwrap();
    assert_eq!(
        result.output,
        json!({"reply": "Nice to see you", "score": 8}),
        "{}",
        result.final_state
    );
    let received = server.received();
    assert_eq!(received.len(), 2);
    let responder = &received[0];
    assert_eq!(responder.path, "/v1/chat/completions");
    assert_eq!(responder.body["model"], "llama-3.3-70b");
    assert_eq!(responder.body["temperature"], 0.6);
    let turns: Vec<(String, String)> = responder.messages();
    assert_eq!(
        turns,
        [
            ("system", "You are a helpful assistant."),
            ("user", "hi"),
            ("assistant", "hello"),
            ("user", "Ada asks again."),
        ]
        .map(|(r, t)| (r.to_string(), t.to_string()))
    );
    assert_eq!(
        received[1].body["response_format"],
        json!({"type": "json_object"})
    );
    assert_eq!(result.total_api_calls, 2);
}

/// Item 11: a scripted backend sees which agent, state and profile each request is for.
#[tokio::test]
async fn scripted_backends_see_the_agent_and_the_state() {
    let backend = Arc::new(ScriptedBackend::new(|req| {
        Ok(match req.agent.as_deref() {
            Some("scorer") => LlmResponse::text("{\"score\": 3}"),
            _ => LlmResponse::text("hey"),
        })
    }));
    let machine = Machine::of::<chat::Machine>()
        .llm_backend(backend.clone())
        .no_persistence()
        .build()
        .unwrap();
    let result = machine.run(conversation()).await.unwrap();
    assert_eq!(result.output, json!({"reply": "hey", "score": 3}));
    let seen: Vec<(Option<String>, Option<String>, Option<String>)> = backend
        .requests()
        .into_iter()
        .map(|r| (r.agent, r.state, r.profile))
        .collect();
    let some = |s: &str| Some(s.to_string());
    assert_eq!(
        seen,
        [
            (some("responder"), some("start"), some("chatty")),
            (some("scorer"), some("score"), some("judge")),
        ]
    );
}

/// Item 4: a 200 that is not JSON is `InternalServerError`, so a reference `on_error` map
/// keyed by it routes.
#[tokio::test]
async fn an_unreadable_200_routes_as_internal_server_error() {
    let server = LoopbackLlm::start(|_| (200, json!("<html>bad gateway</html>"))).await;
    // A JSON string body is readable JSON but has no `choices`.
    let result = machine_at(&server.openai_base())
        .run(conversation())
        .await
        .unwrap();
    assert_eq!(result.output["route"], "unreadable", "{}", result.output);
    assert_eq!(result.output["error_type"], "InternalServerError");
}

/// Item 5: a reply the provider billed but that does not parse counts as a call, with its
/// usage and cost, although the state fails.
#[tokio::test]
async fn a_rejected_reply_still_counts_its_call_and_cost() {
    let server = LoopbackLlm::start(|req: &Received| {
        if req.body["model"] == "gpt-4o-mini" {
            openai_reply("eight out of ten", 100, 10)
        } else {
            openai_reply("hello", 20, 5)
        }
    })
    .await;
    let result = machine_at(&server.openai_base())
        .run(conversation())
        .await
        .unwrap();
    assert_eq!(result.output["route"], "failed");
    assert_eq!(result.output["error_type"], "OutputParseError");
    assert_eq!(result.total_api_calls, 2);
    assert_eq!(result.usage.input_tokens, 120);
    assert_eq!(result.usage.output_tokens, 15);
    // The responder's default estimate plus the judge's per-token prices.
    let expected = (20.0 * 0.001 + 5.0 * 0.002) / 1000.0 + (100.0 * 0.001 + 10.0 * 0.002);
    assert!(
        (result.total_cost - expected).abs() < 1e-12,
        "{}",
        result.total_cost
    );
}

/// Item 12: a `messages` input that is not a list of `{role, content}` is a clear error.
#[tokio::test]
async fn a_malformed_conversation_is_a_clear_error() {
    let server = server("unused").await;
    let machine = machine_at(&server.openai_base());
    let result = machine
        .run(json!({"messages": "hi there", "user_name": "Ada"}))
        .await
        .unwrap();
    assert_eq!(result.output["route"], "failed");
    assert_eq!(result.output["error_type"], "AgentError");
    let error = result.output["error"].as_str().unwrap();
    assert!(error.contains("a string"), "{error}");
    assert!(error.contains("tojson"), "{error}");
    let result = machine
        .run(json!({"messages": [{"role": "wizard", "content": "x"}], "user_name": "Ada"}))
        .await
        .unwrap();
    let error = result.output["error"].as_str().unwrap();
    assert!(error.contains("item 0 has role `wizard`"), "{error}");
    let result = machine
        .run(json!({"messages": [{"role": "user", "content": 5}], "user_name": "Ada"}))
        .await
        .unwrap();
    let error = result.output["error"].as_str().unwrap();
    assert!(error.contains("not text"), "{error}");
    assert!(server.received().is_empty(), "nothing was sent");
}

/// Item 6: endpoints chosen at run time. The judge's profile compiles in a dead `base_url`;
/// `$FLATMACHINE_BASE_URL` moves every agent, `$FLATMACHINE_BASE_URL_JUDGE` the judge's
/// agents, and the builder beats both.
#[tokio::test]
async fn endpoints_from_the_environment_and_the_builder() {
    let everyone = server("from the global variable").await;
    let judge = server("unused").await;
    let builder_judge = server("unused").await;
    // SAFETY: only this test reads these variables without a builder override.
    unsafe {
        std::env::set_var("FLATMACHINE_BASE_URL", everyone.openai_base());
        std::env::set_var("FLATMACHINE_BASE_URL_JUDGE", judge.openai_base());
    }
    let machine = Machine::of::<chat::Machine>()
        .no_persistence()
        .build()
        .unwrap();
    let result = machine.run(conversation()).await.unwrap();
    assert_eq!(result.output["score"], 8, "{}", result.output);
    assert_eq!(everyone.received().len(), 1);
    assert_eq!(everyone.received()[0].body["model"], "llama-3.3-70b");
    assert_eq!(judge.received().len(), 1);
    assert_eq!(judge.received()[0].body["model"], "gpt-4o-mini");

    let machine = Machine::of::<chat::Machine>()
        .profile_base_url("judge", builder_judge.openai_base())
        .no_persistence()
        .build()
        .unwrap();
    machine.run(conversation()).await.unwrap();
    assert_eq!(everyone.received().len(), 2);
    assert_eq!(judge.received().len(), 1);
    assert_eq!(builder_judge.received().len(), 1);
}
