//! The ticket batch (`flatmachine_examples::compose`) in a process of its own, for the
//! composition crash harness (`tests/compose_resume.rs`).
//!
//! ```text
//! compose_crash <dir> run <id> [--kill-after N] [--store sqlite|files]
//! compose_crash <dir> resume <id> [--kill-after N] [--store sqlite|files]
//! ```
//!
//! `run` starts the batch over tickets 101–106; `resume` continues it. With `--kill-after N`
//! the process SIGKILLs itself right after its N-th checkpoint write. Prints
//! `{"output", "total_api_calls", "total_cost", "checkpoint_writes"}` as JSON when the run ends.

use flatmachine_examples::compose::{Store, ticket_batch_machine};
use serde_json::json;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let usage =
        "usage: compose_crash <dir> run|resume <id> [--kill-after N] [--store sqlite|files]";
    let (dir, command, id) = match &args[..] {
        [dir, command, id, ..] => (std::path::PathBuf::from(dir), command.as_str(), id.clone()),
        _ => return Err(usage.into()),
    };
    let option = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
    };
    let kill_after = option("--kill-after")
        .map(|n| n.parse::<u64>())
        .transpose()?;
    let store = match option("--store").map(String::as_str) {
        None | Some("sqlite") => Store::Sqlite,
        Some("files") => Store::Files,
        Some(other) => return Err(format!("unknown store `{other}`; {usage}").into()),
    };
    let (builder, writes) = ticket_batch_machine(&dir, store, kill_after);
    let machine = builder.build()?;
    let result = match command {
        "run" => {
            machine
                .run_with_id(id, json!({"tickets": [101, 102, 103, 104, 105, 106]}))
                .await?
        }
        "resume" => machine.resume(&id).await?,
        _ => return Err(usage.into()),
    };
    println!(
        "{}",
        json!({
            "output": result.output,
            "total_api_calls": result.total_api_calls,
            "total_cost": result.total_cost,
            "checkpoint_writes": writes.load(std::sync::atomic::Ordering::SeqCst),
        })
    );
    Ok(())
}
