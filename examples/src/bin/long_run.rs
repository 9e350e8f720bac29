//! The long-run machine in a process of its own, for crash tests (`tests/kill_every_event.rs`).
//!
//! ```text
//! long_run <dir> <execution id> <n> [<step> <event> [before-latest]]
//! ```
//!
//! Runs `long_run` with input `{"n": n}`, checkpoints below `<dir>`; with a kill point the
//! process SIGKILLs itself right after writing that checkpoint. Prints the result as JSON.
//! With `FLATMACHINE_STORE=sqlite` the checkpoints go to `<dir>/.checkpoints/checkpoints.sqlite`
//! instead of files.

use flatmachine_examples::{KillPoint, long_run_machine_on};
use serde_json::json;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let usage = "usage: long_run <dir> <execution id> <n> [<step> <event> [before-latest]]";
    let (dir, id, n) = match &args[..] {
        [dir, id, n, ..] => (std::path::PathBuf::from(dir), id.clone(), n.parse::<u64>()?),
        _ => return Err(usage.into()),
    };
    let kill = match &args[3..] {
        [] => None,
        [step, event, rest @ ..] => Some(KillPoint {
            step: step.parse()?,
            event: event.clone(),
            before_latest: rest.first().map(String::as_str) == Some("before-latest"),
        }),
        _ => return Err(usage.into()),
    };
    let sqlite = std::env::var("FLATMACHINE_STORE").is_ok_and(|s| s == "sqlite");
    let machine = long_run_machine_on(&dir, kill, sqlite).build()?;
    let result = machine.run_with_id(id, json!({ "n": n })).await?;
    println!(
        "{}",
        json!({"output": result.output, "steps": result.steps, "context": result.context})
    );
    Ok(())
}
