//! Writer/critic loop with real agents.
//!
//! Offline (the default): the agents answer from a `ScriptedBackend` — no key, no network —
//! so the whole machine (prompts, structured output, the loop) runs as it would against a model:
//!
//! ```sh
//! cargo run -p flatmachine-examples --bin writer_critic
//! ```
//!
//! Online: set `OPENAI_API_KEY` for OpenAI, or `OPENAI_BASE_URL` alone for a local
//! OpenAI-compatible server that needs no key (vLLM, llama.cpp, Ollama: the runtime then sends
//! no `Authorization` header). `OPENAI_MODEL` is this example's own setting, not the
//! runtime's: its wrapper below replaces the profiles' model name with it (in an application,
//! change the profile, or set `FLATMACHINE_BASE_URL` to move every agent at run time).
//!
//! ```sh
//! OPENAI_BASE_URL=http://localhost:11434/v1 OPENAI_MODEL=llama3.2 \
//!     cargo run -p flatmachine-examples --bin writer_critic -- "a solar-powered kettle"
//! ```
//!
//! The run's output is printed as JSON; a run that ends in the machine's `failed` state (an
//! agent error routed by `on_error`) or does not finish exits with status 1.

use flatmachine_runtime::agents::{
    LlmBackend, LlmError, LlmRequest, LlmResponse, Role, ScriptedBackend,
};
use flatmachine_runtime::{Machine, flatmachine};
use serde_json::json;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

flatmachine!("machines/writer_critic/machine.yml");

#[tokio::main]
async fn main() {
    let product = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "a reusable coffee cup that keeps drinks hot for 12 hours".into());
    let online = std::env::var_os("OPENAI_API_KEY").is_some()
        || std::env::var_os("OPENAI_BASE_URL").is_some();
    let backend: Arc<dyn LlmBackend> = if online {
        let model = std::env::var("OPENAI_MODEL").ok();
        eprintln!(
            "backend: OpenAI-compatible at {}{}",
            std::env::var("OPENAI_BASE_URL").unwrap_or_else(|_| "api.openai.com".into()),
            match &model {
                Some(m) => format!(" · model {m} (OPENAI_MODEL, read by this example)"),
                None => String::new(),
            }
        );
        Arc::new(ModelOverride {
            inner: flatmachine_runtime::agents::default_backend(),
            model,
        })
    } else {
        eprintln!(
            "backend: scripted (offline; set OPENAI_API_KEY or OPENAI_BASE_URL to call a model)"
        );
        Arc::new(scripted())
    };

    let machine = Machine::of::<writer_critic::Machine>()
        .llm_backend(backend)
        .no_persistence()
        .build()
        .expect("machine configuration");
    match machine.run(json!({ "product": product })).await {
        Ok(result) => {
            println!(
                "{}",
                serde_json::to_string_pretty(&result.output).unwrap_or_default()
            );
            if result.final_state == "failed" {
                eprintln!(
                    "run failed in state `failed`: {} · agent calls: {}",
                    result.output["error_type"].as_str().unwrap_or("error"),
                    result.total_api_calls
                );
                std::process::exit(1);
            }
            eprintln!(
                "final state: {} · steps: {} · agent calls: {} · tokens in/out: {}/{} · cost: ${:.6}",
                result.final_state,
                result.steps,
                result.total_api_calls,
                result.usage.input_tokens,
                result.usage.output_tokens,
                result.total_cost
            );
        }
        Err(e) => {
            eprintln!("run failed: {e}");
            std::process::exit(1);
        }
    }
}

/// Deterministic stand-ins for the two agents: the writer improves its tagline each round and
/// the critic scores the first draft 6 and the second 9 (as JSON, like a model in JSON mode).
fn scripted() -> ScriptedBackend {
    let drafts = AtomicU32::new(0);
    ScriptedBackend::new(move |req: &LlmRequest| {
        let system = req.message(Role::System).unwrap_or_default();
        let user = req.message(Role::User).unwrap_or_default();
        let reply = if system.contains("You write") {
            match drafts.fetch_add(1, Ordering::SeqCst) {
                0 => "Hot coffee, all day.".to_string(),
                _ => "Sunrise to sunset, still steaming.".to_string(),
            }
        } else if user.contains("still steaming") {
            json!({"score": 9, "feedback": "Vivid and concrete; keep it."}).to_string()
        } else {
            json!({"score": 6, "feedback": "Clear but generic: show the 12 hours."}).to_string()
        };
        Ok(LlmResponse::text(reply).with_usage(40, 12))
    })
}

/// Sends every request to `inner`, with the model name replaced when `OPENAI_MODEL` is set
/// (this example's setting: the runtime itself does not read `OPENAI_MODEL`).
struct ModelOverride {
    inner: Arc<dyn LlmBackend>,
    model: Option<String>,
}

#[async_trait::async_trait]
impl LlmBackend for ModelOverride {
    fn name(&self) -> &str {
        self.inner.name()
    }

    async fn complete(&self, request: &LlmRequest) -> Result<LlmResponse, LlmError> {
        match &self.model {
            Some(m) => {
                let mut r = request.clone();
                r.model = m.clone();
                self.inner.complete(&r).await
            }
            None => self.inner.complete(request).await,
        }
    }
}
