//! `flatmachine inspect`: an execution's history, or the list of executions, from a checkpoint
//! directory.

use std::path::Path;

use flatmachine_runtime::inspect::{InspectError, report};
use flatmachine_runtime::persistence::CheckpointStore;

/// Runs the command; returns what to print on stdout, or the error message.
pub fn run(dir: &Path, execution_id: Option<&str>, json: bool) -> Result<String, String> {
    if !dir.is_dir() {
        return Err(format!(
            "checkpoint directory {} not found (pass --dir)",
            dir.display()
        ));
    }
    let store = CheckpointStore::local(dir);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .map_err(|e| format!("cannot start the async runtime: {e}"))?;
    runtime
        .block_on(report(&store, execution_id, json))
        .map_err(|e| match e {
            InspectError::NotFound(id) => {
                format!("execution `{id}` has no checkpoints in {}", dir.display())
            }
            other => other.to_string(),
        })
}
