//! The librarian: an agent that answers a question about the books on a shelf by listing and
//! reading them through an MCP server (this crate's filesystem-style server, [`crate::mcp_fs`])
//! and counting words with a Rust tool, in one `tool_loop` state.
//!
//! [`librarian_machine`] configures the machine; [`scripted_librarian`] is the offline model,
//! a script that reads the conversation and calls the tools a model would.

use flatmachine_runtime::agents::{LlmRequest, LlmResponse, Role, ScriptedBackend};
use flatmachine_runtime::tools::{ToolError, tool_fn};
use flatmachine_runtime::{Machine, MachineBuilder};
use serde_json::json;
use std::path::{Path, PathBuf};

flatmachine_runtime::flatmachine!("machines/librarian/machine.yml", tools = [word_count]);

/// The question the example asks when none is given.
pub const DEFAULT_QUESTION: &str =
    "Which book on the shelf is about a lighthouse keeper, and how many words long is it?";

/// The shelf the example serves: `examples/library`.
pub fn default_shelf() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("library")
}

/// Arguments of the `word_count` tool.
#[derive(Debug, serde::Deserialize, schemars::JsonSchema)]
pub struct WordCountArgs {
    /// The text whose words are counted (split on whitespace).
    pub text: String,
}

/// Tells the agent's MCP section (`${LIBRARIAN_EXE} mcp-server ${LIBRARIAN_SHELF}`) which
/// program serves the shelf and where the shelf is. Call before any thread is started.
///
/// # Safety
///
/// Sets process environment variables: no other thread may read or write the environment at
/// the same time (call it first thing in `main`, before a runtime starts).
pub unsafe fn set_server_env(server_exe: &Path, shelf: &Path) {
    // SAFETY: the caller guarantees no other thread touches the environment.
    unsafe {
        std::env::set_var("LIBRARIAN_EXE", server_exe);
        std::env::set_var("LIBRARIAN_SHELF", shelf);
    }
}

/// The librarian machine with its Rust tool, `word_count`. When `tool_log` is given, every
/// `word_count` call appends a line to that file (the crash tests count executions with it).
pub fn librarian_machine(tool_log: Option<PathBuf>) -> MachineBuilder {
    Machine::of::<librarian::Machine>().tool(tool_fn(
        "word_count",
        "Counts the words of a text",
        move |args: WordCountArgs| {
            let log = tool_log.clone();
            async move {
                let count = args.text.split_whitespace().count();
                if let Some(log) = log {
                    use std::io::Write;
                    let mut f = std::fs::OpenOptions::new()
                        .create(true)
                        .append(true)
                        .open(&log)
                        .map_err(|e| ToolError::new(e.to_string()))?;
                    writeln!(f, "word_count {count}").map_err(|e| ToolError::new(e.to_string()))?;
                }
                Ok::<_, ToolError>(count.to_string())
            }
        },
    ))
}

/// The offline model: reads the conversation and asks for the tools a model would — list the
/// shelf, read every book at once (parallel calls), count the words of the one about a
/// lighthouse, then answer.
pub fn scripted_librarian() -> ScriptedBackend {
    ScriptedBackend::new(|req: &LlmRequest| Ok(librarian_turn(req)))
}

fn librarian_turn(req: &LlmRequest) -> LlmResponse {
    let replies = req
        .messages
        .iter()
        .filter(|m| m.role == Role::Assistant)
        .count();
    let results: Vec<&str> = req
        .messages
        .iter()
        .rev()
        .take_while(|m| m.role == Role::Tool)
        .map(|m| m.content.as_str())
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    let usage = |r: LlmResponse| r.with_usage(120 + 40 * replies as u64, 20);
    match replies {
        0 => usage(LlmResponse::text("").with_tool_call(
            "call_list",
            "list_directory",
            json!({"path": "."}),
        )),
        1 => {
            let books: Vec<&str> = results
                .first()
                .map(|listing| listing.lines().filter(|l| l.ends_with(".md")).collect())
                .unwrap_or_default();
            let mut reply = LlmResponse::text("Reading the books.");
            for (i, book) in books.iter().enumerate() {
                reply = reply.with_tool_call(
                    format!("call_read_{i}"),
                    "read_file",
                    json!({ "path": book }),
                );
            }
            usage(reply)
        }
        2 => {
            let book = results
                .iter()
                .find(|text| text.to_lowercase().contains("lighthouse"))
                .copied()
                .unwrap_or("");
            usage(LlmResponse::text("").with_tool_call(
                "call_count",
                "word_count",
                json!({ "text": book }),
            ))
        }
        _ => {
            let title = req
                .messages
                .iter()
                .filter(|m| m.role == Role::Tool)
                .find(|m| m.content.to_lowercase().contains("lighthouse"))
                .and_then(|m| m.content.lines().next())
                .map(|l| l.trim_start_matches("# ").to_string())
                .unwrap_or_else(|| "none".into());
            let words = results.first().copied().unwrap_or("?");
            usage(LlmResponse::text(format!(
                "\"{title}\" is the book about a lighthouse keeper; it is {words} words long."
            )))
        }
    }
}
