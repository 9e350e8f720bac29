//! Agents end to end: compiled flatagents calling the built-in providers over real HTTP against
//! a loopback server that speaks the providers' JSON. The corpus's writer/critic machine runs
//! too when `FLATMACHINE_CONFORMANCE_DIR` names the conformance corpus (`build.rs`).

use async_trait::async_trait;
use flatmachine_runtime::agents::{
    AgentAdapter, AgentExecutor, AgentResult, LlmBackend, LlmError, LlmRequest, LlmResponse,
    ProviderRouter, ScriptedBackend, SubprocessAdapter,
};
use flatmachine_runtime::{AgentOutput, Machine, StateError, Value, flatmachine};
use flatmachine_tests::loopback_llm::{
    AtBase, LoopbackLlm, Received, anthropic_reply, error_reply, openai_reply, providers_at,
};
use serde_json::json;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

flatmachine!("machines/agents/agent_features.yml");
flatmachine!("../examples/machines/writer_critic/machine.yml");

#[cfg(not(flatmachine_corpus))]
#[path = "../../flatmachine-build/tests/support/conformance.rs"]
mod conformance;

#[cfg(not(flatmachine_corpus))]
#[test]
fn corpus_writer_critic_needs_the_conformance_corpus() {
    assert!(conformance::corpus_dir("agents::corpus_writer_critic").is_none());
}

#[cfg(flatmachine_corpus)]
mod corpus {
    use super::*;
    include!(concat!(env!("OUT_DIR"), "/corpus/writer_critic_loop.rs"));

    /// The corpus's writer/critic loop, unchanged: four agents, retry execution, structured
    /// extraction, a conditional loop; the critic scores 6 then 9.
    #[tokio::test]
    async fn corpus_writer_critic_runs_against_the_loopback_server() {
        let reviews = Arc::new(AtomicU32::new(0));
        let r = reviews.clone();
        let server = LoopbackLlm::start(move |req: &Received| {
            let system = req.system();
            let user = req.message("user");
            if system.starts_with("You write short") {
                openai_reply("Here's one: **Brew bold. Live loud.**", 30, 10)
            } else if system.starts_with("Extract the marketing tagline") {
                openai_reply(
                    "```json\n{\"tagline\": \"Brew bold. Live loud.\"}\n```",
                    20,
                    8,
                )
            } else if system.starts_with("You critique") {
                let n = r.fetch_add(1, Ordering::SeqCst);
                let score = if n == 0 { 6 } else { 9 };
                openai_reply(&format!("Score: {score}\nFeedback: punchier please"), 25, 9)
            } else if system.starts_with("Extract the score") {
                let score = if user.contains("Score: 9") { 9 } else { 6 };
                openai_reply(
                    &format!("{{\"score\": {score}, \"feedback\": \"punchier please\"}}"),
                    22,
                    7,
                )
            } else {
                error_reply(400, &format!("unexpected prompt: {system}"))
            }
        })
        .await;
        let machine = Machine::of::<writer_critic_loop::Machine>()
            .llm_backend(providers_at(&server))
            .no_persistence()
            .build()
            .unwrap();
        let result = machine
            .run(json!({"product": "cold brew", "target_score": 8}))
            .await
            .unwrap();
        assert_eq!(
            result.output,
            json!({"tagline": "Brew bold. Live loud.", "score": 9, "rounds": 2})
        );
        let received = server.received();
        assert_eq!(received.len(), 8, "two rounds of four agents");
        assert_eq!(result.total_api_calls, 8);
        assert_eq!(result.usage.input_tokens, 2 * (30 + 20 + 25 + 22));
        assert_eq!(result.usage.output_tokens, 2 * (10 + 8 + 9 + 7));
        let expected_cost = 2.0 * ((97.0 * 0.001 + 34.0 * 0.002) / 1000.0);
        assert!(
            (result.total_cost - expected_cost).abs() < 1e-12,
            "{}",
            result.total_cost
        );
        // The wire: the profile's model without its provider prefix, the profile's temperature.
        let first = &received[0];
        assert_eq!(first.path, "/v1/chat/completions");
        assert_eq!(first.body["model"], "zai-glm-4.7");
        assert_eq!(first.body["messages"][0]["role"], "system");
        assert_eq!(first.body["messages"][1]["role"], "user");
        assert!(first.message("user").contains("cold brew"));
        // The extractor asks for JSON with a schema of its output fields.
        let extractor = &received[1];
        assert_eq!(extractor.body["temperature"], 0.1);
        assert_eq!(extractor.body["response_format"]["type"], "json_schema");
        assert_eq!(
            extractor.body["response_format"]["json_schema"]["schema"]["properties"]["tagline"]["type"],
            "string"
        );
    }
}

/// The example's writer/critic loop: retry execution, a structured critic, a conditional loop;
/// the critic scores 6 then 9. Usage is summed over the calls; the wire carries the profile's
/// model without its provider prefix, each profile's temperature and the critic's JSON schema.
#[tokio::test]
async fn example_writer_critic_loops_against_the_loopback_server() {
    let reviews = Arc::new(AtomicU32::new(0));
    let r = reviews.clone();
    let server = LoopbackLlm::start(move |req: &Received| {
        if req.system().starts_with("You write short") {
            openai_reply("Brew bold. Live loud.", 30, 10)
        } else if req.system().starts_with("You critique") {
            let score = if r.fetch_add(1, Ordering::SeqCst) == 0 {
                6
            } else {
                9
            };
            openai_reply(
                &format!("{{\"score\": {score}, \"feedback\": \"punchier please\"}}"),
                25,
                9,
            )
        } else {
            error_reply(400, &format!("unexpected prompt: {}", req.system()))
        }
    })
    .await;
    let machine = Machine::of::<writer_critic::Machine>()
        .llm_backend(providers_at(&server))
        .no_persistence()
        .build()
        .unwrap();
    let result = machine
        .run(json!({"product": "cold brew", "target_score": 8}))
        .await
        .unwrap();
    assert_eq!(
        result.output,
        json!({"tagline": "Brew bold. Live loud.", "score": 9, "rounds": 2})
    );
    let received = server.received();
    assert_eq!(received.len(), 4, "two rounds of two agents");
    assert_eq!(result.total_api_calls, 4);
    assert_eq!(result.usage.input_tokens, 2 * (30 + 25));
    assert_eq!(result.usage.output_tokens, 2 * (10 + 9));
    // The second draft sees the critic's feedback.
    assert!(received[2].message("user").contains("punchier please"));
    let (writer, critic) = (&received[0], &received[1]);
    assert_eq!(writer.path, "/v1/chat/completions");
    assert_eq!(writer.body["model"], "gpt-4o-mini");
    assert_eq!(writer.body["temperature"], 0.9);
    assert_eq!(critic.body["temperature"], 0.2);
    assert_eq!(critic.body["response_format"]["type"], "json_schema");
    assert_eq!(
        critic.body["response_format"]["json_schema"]["schema"]["properties"]["score"]["type"],
        "integer"
    );
}

/// `agent_features` for tests that stop before its `echo` and `external` states (`extras` off):
/// those agents get closures that fail if a run reaches them (`build()` wants every agent
/// served).
fn agent_features_without_extras() -> flatmachine_runtime::MachineBuilder {
    let unreached = |_input: Value, _ctx| async move {
        Err::<AgentOutput, _>(StateError::new("TestError", "this test never reaches it"))
    };
    Machine::of::<agent_features::Machine>()
        .agent("echo", unreached)
        .agent("external", unreached)
}

/// Our own machine exercising prompt rendering, instruction suffix, every sampling parameter,
/// a schema violation routed by `on_error`, and Anthropic's wire format.
#[tokio::test]
async fn prompts_parameters_and_schema_errors_on_the_wire() {
    let server = LoopbackLlm::start(|req: &Received| {
        if req.path == "/v1/messages" {
            return anthropic_reply("{\"verdict\": \"approve\", \"confidence\": 0.9}", 11, 5);
        }
        let user = req.message("user");
        if user.contains("BAD") {
            openai_reply("{\"verdict\": \"maybe\", \"confidence\": \"high\"}", 5, 5)
        } else {
            openai_reply(
                "Sure! {\"verdict\": \"reject\", \"confidence\": 0.25} Hope it helps.",
                5,
                5,
            )
        }
    })
    .await;
    let backend: Arc<dyn LlmBackend> = Arc::new(AtBase::new(
        Arc::new(ProviderRouter::new()),
        server.anthropic_base(),
    ));
    // The OpenAI-style agent's base needs `/v1`; the Anthropic one appends `/v1/messages` itself.
    struct Split {
        openai: Arc<dyn LlmBackend>,
        anthropic: Arc<dyn LlmBackend>,
    }
    #[async_trait]
    impl LlmBackend for Split {
        fn name(&self) -> &str {
            "split"
        }
        async fn complete(&self, r: &LlmRequest) -> Result<LlmResponse, LlmError> {
            if r.provider.as_deref() == Some("anthropic") {
                self.anthropic.complete(r).await
            } else {
                self.openai.complete(r).await
            }
        }
    }
    let machine = agent_features_without_extras()
        .llm_backend(Arc::new(Split {
            openai: providers_at(&server),
            anthropic: backend,
        }))
        .no_persistence()
        .build()
        .unwrap();

    let ok = machine
        .run(json!({"doc": "a short memo", "reviewer": "Ada"}))
        .await
        .unwrap();
    assert_eq!(ok.final_state, "done", "{:?}", ok.output);
    assert_eq!(ok.output["verdict"], "reject");
    assert_eq!(ok.output["second_opinion"], "approve");
    let rx = server.received();
    let openai = &rx[0];
    let body = &openai.body;
    assert_eq!(body["model"], "gpt-4o-mini");
    assert_eq!(body["temperature"], 0.3);
    assert_eq!(body["max_tokens"], 300);
    assert_eq!(body["top_p"], 0.9);
    assert_eq!(body["frequency_penalty"], 0.5);
    assert_eq!(body["presence_penalty"], 0.25);
    assert_eq!(body["seed"], 7);
    assert_eq!(
        openai.message("system"),
        "You review documents for Ada. Model: openai/gpt-4o-mini."
    );
    assert_eq!(
        openai.message("user"),
        "Review: a short memo\n\nAnswer in JSON with verdict and confidence for Ada."
    );
    let anthropic = &rx[1];
    assert_eq!(anthropic.path, "/v1/messages");
    assert_eq!(anthropic.header("anthropic-version"), Some("2023-06-01"));
    assert_eq!(anthropic.body["model"], "claude-sonnet-4-5");
    assert_eq!(anthropic.body["top_k"], 40);
    assert!(anthropic.system().contains("JSON object"));
    assert_eq!(anthropic.body["system"][0]["type"], "text");

    // A reply that violates the schema (enum and type) is an error the machine routes.
    let bad = machine
        .run(json!({"doc": "BAD memo", "reviewer": "Ada"}))
        .await
        .unwrap();
    assert_eq!(bad.final_state, "failed");
    assert_eq!(bad.output["error_type"], "OutputValidationError");
    let msg = bad.output["error"].as_str().unwrap();
    assert!(msg.contains("not one of approve, reject"), "{msg}");
    assert!(
        msg.contains("\\\"confidence\\\": \\\"high\\\""),
        "the raw reply is quoted: {msg}"
    );
}

/// Provider errors carry LiteLLM's type names, so `on_error` maps route them by type.
#[tokio::test]
async fn provider_errors_route_by_litellm_type_name() {
    let server = LoopbackLlm::start(|_| error_reply(401, "Incorrect API key provided")).await;
    let machine = agent_features_without_extras()
        .llm_backend(providers_at(&server))
        .no_persistence()
        .build()
        .unwrap();
    let r = machine
        .run(json!({"doc": "memo", "reviewer": "Ada"}))
        .await
        .unwrap();
    assert_eq!(r.final_state, "auth_failed");
    assert_eq!(r.output["error_type"], "AuthenticationError");
}

/// The offline backend sees exactly what a provider would.
#[tokio::test]
async fn scripted_backend_records_requests() {
    let backend = Arc::new(ScriptedBackend::replies([
        Ok(LlmResponse::text(
            "{\"verdict\": \"approve\", \"confidence\": 1}",
        )),
        Ok(LlmResponse::text(
            "{\"verdict\": \"approve\", \"confidence\": 1}",
        )),
    ]));
    let machine = agent_features_without_extras()
        .llm_backend(backend.clone())
        .no_persistence()
        .build()
        .unwrap();
    let r = machine
        .run(json!({"doc": "memo", "reviewer": "Grace"}))
        .await
        .unwrap();
    assert_eq!(r.output["verdict"], "approve");
    let reqs = backend.requests();
    assert_eq!(reqs.len(), 2);
    assert_eq!(reqs[0].model, "gpt-4o-mini");
    assert_eq!(reqs[1].provider.as_deref(), Some("anthropic"));
}

/// Closures, a custom adapter and the subprocess adapter all run through `AgentExecutor`.
#[tokio::test]
async fn closures_adapters_and_subprocesses_share_one_trait() {
    struct Echo;
    #[async_trait]
    impl AgentExecutor for Echo {
        async fn execute(
            &self,
            input: &Value,
            _context: &flatmachine_runtime::Context,
        ) -> Result<AgentResult, StateError> {
            Ok(AgentResult::from_output(json!({"echo": input["text"]})))
        }
    }
    struct EchoAdapter;
    impl AgentAdapter for EchoAdapter {
        fn type_name(&self) -> &str {
            "echo"
        }
        fn create_executor(
            &self,
            _agent: &'static flatmachine_runtime::machine::AgentSpec,
            _env: &flatmachine_runtime::agents::AdapterEnv,
        ) -> Result<Arc<dyn AgentExecutor>, StateError> {
            Ok(Arc::new(Echo))
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("agent.sh");
    std::fs::write(
        &script,
        "#!/bin/sh\nread -r line\necho \"{\\\"output\\\": {\\\"seen\\\": $line}, \\\"usage\\\": {\\\"api_calls\\\": 2, \\\"input_tokens\\\": 3}, \\\"cost\\\": 0.5}\"\n",
    )
    .unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let machine = Machine::of::<agent_features::Machine>()
        .agent_adapter(Arc::new(EchoAdapter))
        .agent_adapter(Arc::new(
            SubprocessAdapter::new("external").with_command([script.display().to_string()]),
        ))
        .agent("reviewer", |input: Value, _ctx| async move {
            Ok(AgentOutput::new(
                json!({"verdict": "approve", "confidence": input["doc"].as_str().map(str::len)}),
            ))
        })
        .llm_backend(Arc::new(ScriptedBackend::always(
            "{\"verdict\": \"approve\", \"confidence\": 1}",
        )))
        .no_persistence()
        .build()
        .unwrap();
    let r = machine
        .run(json!({"doc": "four", "reviewer": "Ada", "extras": true}))
        .await
        .unwrap();
    assert_eq!(r.final_state, "done", "{:?}", r.context);
    assert_eq!(r.context["echoed"], json!({"echo": "four"}));
    let seen = &r.context["external"]["seen"];
    assert_eq!(seen["input"], json!({"text": "four"}));
    assert_eq!(seen["ref"], "./tools/external-agent");
    assert_eq!(seen["config"], json!({"mode": "strict"}));
    assert_eq!(seen["context"]["doc"], "four");
    // closure (1) + second opinion (1) + echo (1) + subprocess (2)
    assert_eq!(r.total_api_calls, 5);
    assert!((r.total_cost - 0.5).abs() < 1e-12);
}

/// The serde struct generated for an agent's `output` reads its results in Rust.
#[tokio::test]
async fn typed_outputs_read_agent_results() {
    use agent_features::agents::ReviewerOutput;
    use flatmachine_runtime::agents::FlatAgentExecutor;
    let backend = Arc::new(ScriptedBackend::always(
        "{\"verdict\": \"approve\", \"confidence\": 0.75}",
    ));
    let exec = FlatAgentExecutor::new(ReviewerOutput::config(), backend);
    let result = exec
        .execute(
            &json!({"doc": "memo", "reviewer": "Ada"}),
            &flatmachine_runtime::Context::new(),
        )
        .await
        .unwrap();
    let typed: ReviewerOutput = result.parse().unwrap();
    assert_eq!(typed.confidence, 0.75);
    assert_eq!(
        serde_json::to_value(typed.verdict).unwrap(),
        json!("approve")
    );
    // The request is inspectable before anything is sent.
    let req = exec
        .request(&json!({"doc": "memo", "reviewer": "Ada"}))
        .unwrap();
    assert_eq!(req.temperature, 0.3);
    assert_eq!(req.seed, Some(7));
}

/// Agent calls and cost are totalled in every checkpoint, and no key ever reaches one.
#[tokio::test]
async fn checkpoints_carry_agent_totals_and_no_keys() {
    let server = LoopbackLlm::start(|req: &Received| {
        let text = "{\"verdict\": \"approve\", \"confidence\": 0.5}";
        if req.path == "/v1/messages" {
            anthropic_reply(text, 1000, 500)
        } else {
            openai_reply(text, 1000, 500)
        }
    })
    .await;
    let key_var = "FLATMACHINE_TEST_KEY_CHECKPOINTS";
    // SAFETY: set once, before any request reads it; the name is unique to this test.
    unsafe { std::env::set_var(key_var, "sk-secret-checkpoint-key") };
    struct WithKey {
        inner: Arc<dyn LlmBackend>,
        var: &'static str,
    }
    #[async_trait]
    impl LlmBackend for WithKey {
        fn name(&self) -> &str {
            "with-key"
        }
        async fn complete(&self, r: &LlmRequest) -> Result<LlmResponse, LlmError> {
            let mut r = r.clone();
            r.api_key_env = Some(self.var.to_string());
            self.inner.complete(&r).await
        }
    }
    let store = flatmachine_runtime::persistence::CheckpointStore::memory();
    let machine = agent_features_without_extras()
        .llm_backend(Arc::new(WithKey {
            inner: providers_at(&server),
            var: key_var,
        }))
        .persistence(store.clone())
        .build()
        .unwrap();
    let r = machine
        .run_with_id("agents-ckpt", json!({"doc": "memo", "reviewer": "Ada"}))
        .await
        .unwrap();
    assert_eq!(r.final_state, "done", "{:?}", r.output);
    assert_eq!(r.total_api_calls, 2);
    assert_eq!(
        server.received()[0].header("authorization"),
        Some("Bearer sk-secret-checkpoint-key")
    );
    let snap = store.load_latest("agents-ckpt").await.unwrap().unwrap();
    assert_eq!(snap.total_api_calls, Some(2));
    let per_call = (1000.0 * 0.001 + 500.0 * 0.002) / 1000.0;
    assert!((snap.total_cost.unwrap() - 2.0 * per_call).abs() < 1e-12);
    let text = serde_json::to_string(&snap).unwrap();
    assert!(!text.contains("sk-secret"), "a key reached a checkpoint");
}

/// The subprocess adapter's failures are clear state errors, routed by `on_error`.
#[tokio::test]
async fn subprocess_adapter_failures_route_by_type() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        (
            "not_json",
            "#!/bin/sh\ncat >/dev/null\necho 'hello, not json'\n",
            "AgentError",
            "did not print a JSON object",
        ),
        (
            "exit_code",
            "#!/bin/sh\ncat >/dev/null\necho 'disk on fire' >&2\nexit 3\n",
            "AgentError",
            "disk on fire",
        ),
        (
            "slow",
            "#!/bin/sh\ncat >/dev/null\nsleep 5\necho '{}'\n",
            "TimeoutError",
            "was killed",
        ),
        (
            "typed_error",
            "#!/bin/sh\ncat >/dev/null\necho '{\"error\": {\"type\": \"RateLimitError\", \"message\": \"slow down\"}}'\n",
            "RateLimitError",
            "slow down",
        ),
        (
            "not_object",
            "#!/bin/sh\ncat >/dev/null\necho '[1, 2]'\n",
            "AgentError",
            "not an object",
        ),
    ];
    for (name, body, error_type, needle) in cases {
        let script = dir.path().join(format!("{name}.sh"));
        std::fs::write(&script, body).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        let machine = Machine::of::<agent_features::Machine>()
            .agent("reviewer", |_input: Value, _ctx| async move {
                Ok(AgentOutput::new(
                    json!({"verdict": "approve", "confidence": 1}),
                ))
            })
            .agent("echo", |_input: Value, _ctx| async move {
                Ok(AgentOutput::new(json!({"echo": "x"})))
            })
            .agent_adapter(Arc::new(
                SubprocessAdapter::new("external")
                    .with_command([script.display().to_string()])
                    .with_timeout(std::time::Duration::from_millis(500)),
            ))
            .llm_backend(Arc::new(ScriptedBackend::always(
                "{\"verdict\": \"approve\", \"confidence\": 1}",
            )))
            .no_persistence()
            .build()
            .unwrap();
        let r = machine
            .run(json!({"doc": "d", "reviewer": "Ada", "extras": true}))
            .await
            .unwrap();
        assert_eq!(r.final_state, "failed", "{name}: {:?}", r.output);
        assert_eq!(r.output["error_type"], error_type, "{name}: {:?}", r.output);
        let msg = r.output["error"].as_str().unwrap();
        assert!(msg.contains(needle), "{name}: {msg}");
    }
}
