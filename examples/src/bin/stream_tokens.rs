//! Prints a model's reply token by token as it arrives, from the run's event stream.
//!
//! The teller agent's profile says `stream: true`. Offline (the default) a `ScriptedBackend`
//! streams its reply word by word, with a short pause between words — no key, no network:
//!
//! ```sh
//! cargo run -p flatmachine-examples --bin stream_tokens -- "a lighthouse keeper"
//! ```
//!
//! Online: set `OPENAI_API_KEY` (or `OPENAI_BASE_URL` for a local OpenAI-compatible server)
//! and the same events come from the provider's server-sent events.
//!
//! The tokens go to stdout as they arrive; the states entered and the call's usage go to
//! stderr.

use flatmachine_runtime::agents::{LlmBackend, LlmResponse, ScriptedBackend};
use flatmachine_runtime::events::EventKind;
use flatmachine_runtime::{Machine, RunOptions, flatmachine};
use futures::StreamExt;
use serde_json::json;
use std::io::Write;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

flatmachine!("machines/streaming/machine.yml");

#[tokio::main]
async fn main() -> ExitCode {
    let topic = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "a lighthouse keeper".into());
    let online = std::env::var_os("OPENAI_API_KEY").is_some()
        || std::env::var_os("OPENAI_BASE_URL").is_some();
    let backend: Arc<dyn LlmBackend> = if online {
        flatmachine_runtime::agents::default_backend()
    } else {
        let story = format!(
            "The keeper of {topic} counted ships every night. One night a ship counted him \
             back. He waved, and the sea kept both their secrets."
        );
        Arc::new(
            ScriptedBackend::new(move |_req| Ok(LlmResponse::text(story.clone())))
                .with_stream_delay(Duration::from_millis(40)),
        )
    };
    let machine = match Machine::of::<storyteller::Machine>()
        .llm_backend(backend)
        .build()
    {
        Ok(m) => m,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut events = machine.stream(json!({"topic": topic}), RunOptions::new());
    let mut stdout = std::io::stdout();
    while let Some(event) = events.next().await {
        match event.kind {
            EventKind::StateEnter { state, step } => eprintln!("[step {step}: {state}]"),
            EventKind::TokenDelta { text } => {
                let _ = write!(stdout, "{text}");
                let _ = stdout.flush();
            }
            EventKind::AgentCallEnd { usage, latency, .. } => eprintln!(
                "\n[{} tokens in, {} out, {latency:.2?}]",
                usage.input_tokens, usage.output_tokens
            ),
            _ => {}
        }
    }
    match events.result().await {
        Ok(result) => {
            eprintln!("[done: {}]", result.final_state);
            ExitCode::SUCCESS
        }
        Err(failure) => {
            eprintln!("error: {}", failure.error);
            ExitCode::FAILURE
        }
    }
}
