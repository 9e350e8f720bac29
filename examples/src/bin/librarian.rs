//! The librarian: a `tool_loop` agent that answers from the books in `examples/library` by
//! listing and reading them through an MCP server and counting words with a Rust tool.
//!
//! Offline (the default): a scripted model asks for the tools — no key, no network; the MCP
//! server is this program itself (`librarian mcp-server <dir>`), started as a real process:
//!
//! ```sh
//! cargo run -p flatmachine-examples --bin librarian
//! ```
//!
//! Online: set `OPENAI_API_KEY` (and `OPENAI_BASE_URL` for any OpenAI-compatible server with
//! tool calling — vLLM, llama.cpp, Ollama, Groq, ...; `OPENAI_MODEL` replaces the profile's
//! model name):
//!
//! ```sh
//! OPENAI_BASE_URL=http://localhost:11434/v1 OPENAI_MODEL=qwen2.5 \
//!     cargo run -p flatmachine-examples --bin librarian -- "Which book is about an orchard?"
//! ```
//!
//! `librarian --checkpoints <dir> --id <id> [--kill-after-round <n>] [--tool-log <file>]`
//! checkpoints into `<dir>` (and dies by SIGKILL after the n-th tool round's checkpoint);
//! `librarian --resume <dir> --id <id>` continues such a run (the crash tests use both).

use flatmachine_examples::librarian::{
    DEFAULT_QUESTION, default_shelf, librarian_machine, scripted_librarian, set_server_env,
};
use flatmachine_runtime::agents::{LlmBackend, LlmError, LlmRequest, LlmResponse};
use flatmachine_runtime::persistence::CheckpointStore;
use serde_json::json;
use std::path::PathBuf;
use std::sync::Arc;

#[derive(Default)]
struct Options {
    question: Option<String>,
    checkpoints: Option<PathBuf>,
    resume: bool,
    id: Option<String>,
    kill_after_round: Option<u64>,
    tool_log: Option<PathBuf>,
}

fn parse(mut args: impl Iterator<Item = String>) -> Options {
    let mut o = Options::default();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--checkpoints" => o.checkpoints = args.next().map(PathBuf::from),
            "--resume" => {
                o.resume = true;
                o.checkpoints = args.next().map(PathBuf::from);
            }
            "--id" => o.id = args.next(),
            "--kill-after-round" => o.kill_after_round = args.next().and_then(|n| n.parse().ok()),
            "--tool-log" => o.tool_log = args.next().map(PathBuf::from),
            _ => o.question = Some(arg),
        }
    }
    o
}

fn main() {
    let mut args = std::env::args().skip(1).peekable();
    if args.peek().map(String::as_str) == Some("mcp-server") {
        args.next();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("tokio runtime");
        runtime.block_on(flatmachine_examples::mcp_fs::main_with_args(args));
        return;
    }
    let options = parse(args);
    let exe = std::env::current_exe().expect("the path of this program");
    // SAFETY: no other thread exists yet.
    unsafe { set_server_env(&exe, &default_shelf()) };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    std::process::exit(runtime.block_on(run(options)));
}

async fn run(options: Options) -> i32 {
    let online = std::env::var_os("OPENAI_API_KEY").is_some()
        || std::env::var_os("OPENAI_BASE_URL").is_some();
    let backend: Arc<dyn LlmBackend> = if online {
        eprintln!(
            "backend: OpenAI-compatible at {}",
            std::env::var("OPENAI_BASE_URL").unwrap_or_else(|_| "api.openai.com".into())
        );
        Arc::new(ModelOverride {
            inner: flatmachine_runtime::agents::default_backend(),
            model: std::env::var("OPENAI_MODEL").ok(),
        })
    } else {
        eprintln!(
            "backend: scripted (offline; set OPENAI_API_KEY or OPENAI_BASE_URL to call a model)"
        );
        Arc::new(scripted_librarian())
    };
    let mut builder = librarian_machine(options.tool_log.clone()).llm_backend(backend);
    builder = match &options.checkpoints {
        Some(dir) => {
            let store = flatmachine_examples::round_killing_store(dir, options.kill_after_round);
            builder
                .persistence(CheckpointStore::new(store))
                .lock_dir(dir.join(".locks"))
        }
        None => builder.no_persistence(),
    };
    let machine = match builder.build() {
        Ok(m) => m,
        Err(e) => {
            eprintln!("configuration error: {e}");
            return 2;
        }
    };
    let id = options
        .id
        .clone()
        .unwrap_or_else(|| "librarian".to_string());
    let result = if options.resume {
        machine.resume(&id).await
    } else {
        let question = options.question.as_deref().unwrap_or(DEFAULT_QUESTION);
        eprintln!("question: {question}");
        machine
            .run_with_id(id, json!({ "question": question }))
            .await
    };
    match result {
        Ok(result) => {
            println!(
                "{}",
                serde_json::to_string_pretty(&json!({
                    "output": result.output,
                    "api_calls": result.total_api_calls,
                    "steps": result.steps,
                }))
                .unwrap_or_default()
            );
            eprintln!(
                "final state: {} · model calls: {} · tokens in/out: {}/{} · cost: ${:.6}",
                result.final_state,
                result.total_api_calls,
                result.usage.input_tokens,
                result.usage.output_tokens,
                result.total_cost
            );
            0
        }
        Err(e) => {
            eprintln!("run failed: {e}");
            1
        }
    }
}

/// Replaces the model name of every request (`OPENAI_MODEL`), for servers that do not know the
/// profile's model.
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
            Some(model) => {
                let mut request = request.clone();
                request.model = model.clone();
                self.inner.complete(&request).await
            }
            None => self.inner.complete(request).await,
        }
    }
}
