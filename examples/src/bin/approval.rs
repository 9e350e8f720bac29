//! The approval flow of `machines/approval/machine.yml` as an application binary with the
//! flatmachine command line (`cli::main`): an agent drafts a post, the run waits for a
//! person's decision (a signal), then publishes the post or revises it.
//!
//! ```text
//! approval run --input '{"post_id": "launch-42", "topic": "our 2.0 release"}'
//! approval waiting
//! approval signal send review/launch-42 --data '{"decision": "revise", "feedback": "shorter", "by": "ana"}'
//! approval dispatch --once
//! ```
//!
//! Offline by default: the writer answers from a `ScriptedBackend` (no key, no network). With
//! `OPENAI_API_KEY` or `OPENAI_BASE_URL` set it calls the model instead. Checkpoints and
//! signals go to `approval.sqlite` in the working directory (the machine's
//! `settings.backends.sqlite_path`), so every command — and `flatmachine signal send` — sees
//! the same runs. `publish` writes the post to `published/<post_id>.md`.

use std::process::ExitCode;
use std::sync::Arc;

use flatmachine_runtime::agents::{LlmBackend, LlmRequest, LlmResponse, Role, ScriptedBackend};
use flatmachine_runtime::{Machine, StateError, Value, flatmachine};
use serde_json::json;

flatmachine!("machines/approval/machine.yml");

fn main() -> ExitCode {
    let online = std::env::var_os("OPENAI_API_KEY").is_some()
        || std::env::var_os("OPENAI_BASE_URL").is_some();
    let backend: Arc<dyn LlmBackend> = if online {
        flatmachine_runtime::agents::default_backend()
    } else {
        Arc::new(scripted_writer())
    };
    let builder = Machine::of::<approval_flow::Machine>()
        .llm_backend(backend)
        .action_mut("count_revision", |ctx, _call| {
            Box::pin(async move {
                let n = ctx.get("revisions").and_then(Value::as_i64).unwrap_or(0);
                ctx.insert("revisions".into(), json!(n + 1));
                Ok(())
            })
        })
        .action_mut("publish", |ctx, _call| {
            Box::pin(async move {
                let id = ctx.get("post_id").and_then(Value::as_str).unwrap_or("");
                // The id comes from the run's input: it must not name a path.
                if id.is_empty()
                    || id.len() > 100
                    || !id
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
                {
                    return Err(StateError::new(
                        "PublishError",
                        "post_id must be 1-100 letters, digits, `-` or `_`",
                    ));
                }
                let title = ctx.get("title").and_then(Value::as_str).unwrap_or("");
                let body = ctx.get("body").and_then(Value::as_str).unwrap_or("");
                let io = |e: std::io::Error| StateError::new("PublishError", e.to_string());
                std::fs::create_dir_all("published").map_err(io)?;
                let path = format!("published/{id}.md");
                std::fs::write(&path, format!("# {title}\n\n{body}\n")).map_err(io)?;
                ctx.insert("url".into(), json!(path));
                Ok(())
            })
        });
    flatmachine_runtime::cli::main(builder)
}

/// The writer, offline: a first draft, and a shorter one once the reviewer has asked for
/// changes (as JSON, like a model in JSON mode).
fn scripted_writer() -> ScriptedBackend {
    ScriptedBackend::new(|req: &LlmRequest| {
        let user = req.message(Role::User).unwrap_or_default();
        let topic = user
            .lines()
            .find_map(|l| l.strip_prefix("Topic: "))
            .unwrap_or("our news")
            .trim()
            .to_string();
        let reply = if user.contains("asked for changes") {
            json!({
                "title": format!("{topic}: out now"),
                "body": format!("{topic} is here. Try it today."),
            })
        } else {
            json!({
                "title": format!("Announcing {topic}"),
                "body": format!(
                    "After months of work we are proud to announce {topic}, with many improvements. \
                     Read on for everything that changed and how to upgrade."
                ),
            })
        };
        Ok(LlmResponse::text(reply.to_string()).with_usage(60, 40))
    })
}
