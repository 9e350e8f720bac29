//! The librarian example: its README command offline, and its machine in this process with a
//! real MCP server process — the tools the model is offered, the rendered tool prompt, and the
//! server gone when the run ends.

use flatmachine_examples::librarian::{librarian_machine, scripted_librarian, set_server_env};
use serde_json::json;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;

const BIN: &str = env!("CARGO_BIN_EXE_librarian");

#[test]
fn the_example_runs_offline() {
    let out = Command::new(BIN)
        .env_remove("OPENAI_API_KEY")
        .env_remove("OPENAI_BASE_URL")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let result: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        result["output"],
        json!({
            "answer": "\"The Keeper\" is the book about a lighthouse keeper; it is 29 words long.",
            "tool_calls": 5,
            "turns": 4,
        })
    );
    assert_eq!(result["api_calls"], 4);
}

/// Processes whose command line mentions `needle`.
fn processes_mentioning(needle: &str) -> Vec<String> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let cmdline = entry.path().join("cmdline");
        if let Ok(bytes) = std::fs::read(&cmdline) {
            let text = String::from_utf8_lossy(&bytes).replace('\0', " ");
            if text.contains(needle) {
                found.push(format!("{}: {text}", entry.file_name().to_string_lossy()));
            }
        }
    }
    found
}

#[tokio::test]
async fn the_machine_offers_mcp_and_rust_tools_and_stops_its_server() {
    let shelf = tempfile::tempdir().unwrap();
    for book in ["the-keeper.md", "orchard.md"] {
        std::fs::copy(
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("library")
                .join(book),
            shelf.path().join(book),
        )
        .unwrap();
    }
    // SAFETY: the only test of this binary that reads these variables, set before any server
    // starts; no other thread of the test touches the environment.
    unsafe { set_server_env(Path::new(BIN), shelf.path()) };
    let backend = Arc::new(scripted_librarian());
    let machine = librarian_machine(None)
        .llm_backend(backend.clone())
        .no_persistence()
        .build()
        .unwrap();
    let result = machine
        .run(json!({"question": "Which book is about a lighthouse keeper?"}))
        .await
        .unwrap();
    assert_eq!(
        result.output["answer"],
        "\"The Keeper\" is the book about a lighthouse keeper; it is 29 words long."
    );
    assert_eq!(result.output["tool_calls"], 4, "list, two reads, one count");

    let requests = backend.requests();
    let offered: Vec<&str> = requests[0].tools.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(offered, ["word_count", "list_directory", "read_file"]);
    let system = &requests[0].messages[0].content;
    assert!(
        system.contains("Tools you can call:\n- word_count: Counts the words of a text\n- list_directory: List the entries of a directory"),
        "{system}"
    );

    let shelf_path = shelf.path().to_str().unwrap();
    let left = processes_mentioning(shelf_path);
    assert!(left.is_empty(), "MCP server still running: {left:?}");
}
