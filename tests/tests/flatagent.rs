//! `flatagent!("agent.yml")`: an agent used only from Rust (the reference builds
//! `FlatAgent(config_file=…)` in hooks), compiled with its profiles into a typed, callable
//! module.

use flatmachine_runtime::agents::{LlmResponse, ScriptedBackend};
use flatmachine_runtime::flatagent;
use flatmachine_tests::loopback_llm::{LoopbackLlm, Received, openai_reply};
use serde_json::json;
use std::sync::Arc;

// Structured output (`score: int`), profile `judge` of the `profiles.yml` beside it.
flatagent!("machines/users/config/scorer.yml");
// No model (the default profile), no system, free text.
flatagent!("machines/users/config/responder.yml");

#[tokio::test]
async fn a_compiled_agent_is_typed_and_callable() {
    assert_eq!(scorer::CONFIG.name, "scorer");
    assert_eq!(scorer::CONFIG.model.name, "gpt-4o-mini");
    assert_eq!(scorer::CONFIG.model.profile, Some("judge"));
    assert_eq!(responder::CONFIG.model.profile, Some("chatty"));
    assert!(responder::CONFIG.system.is_none());

    let backend = Arc::new(ScriptedBackend::new(|req| {
        Ok(match req.agent.as_deref() {
            Some("scorer") => LlmResponse::text("{\"score\": 7}"),
            _ => LlmResponse::text("hello there"),
        })
    }));
    let score: scorer::Output = scorer::Agent::new(backend.clone())
        .call(&json!({"text": "a tagline"}))
        .await
        .unwrap();
    assert_eq!(score, scorer::agents::ScorerOutput { score: 7 });
    let text: String = responder::Agent::new(backend.clone())
        .call(&json!({"user_name": "Ada"}))
        .await
        .unwrap();
    assert_eq!(text, "hello there");
    let requests = backend.requests();
    assert_eq!(
        requests[0].message(flatmachine_runtime::agents::Role::User),
        Some("a tagline")
    );
    assert_eq!(
        requests[1].message(flatmachine_runtime::agents::Role::System),
        Some("You are a helpful assistant.")
    );
}

/// Over the wire, the profile's `json_mode` and prices apply; a reply that does not fit is an
/// error, not a panic.
#[tokio::test]
async fn a_compiled_agent_calls_a_real_provider() {
    let server = LoopbackLlm::start(|_: &Received| openai_reply("{\"score\": 9}", 10, 2)).await;
    let backend = flatmachine_runtime::agents::EndpointOverrides::new()
        .global(server.openai_base())
        .wrap(flatmachine_runtime::agents::default_backend());
    let agent = scorer::Agent::new(backend);
    let result = agent.call_result(&json!({"text": "x"})).await.unwrap();
    assert_eq!(result.output, Some(json!({"score": 9})));
    assert!((result.cost - (10.0 * 0.001 + 2.0 * 0.002)).abs() < 1e-12);
    assert_eq!(
        server.received()[0].body["response_format"],
        json!({"type": "json_object"})
    );
}
