//! `flatmachine inspect`: an execution's history, or the list of executions, or run trees
//! (`--tree`), from a checkpoint directory.

use flatmachine_runtime::inspect::{InspectError, report};
use flatmachine_runtime::run_tree::{self, RunTreeError};

/// Runs the command on the store `dir` (a directory or `sqlite:PATH`); returns what to print
/// on stdout, or the error message.
pub fn run(
    dir: &str,
    execution_id: Option<&str>,
    json: bool,
    tree: bool,
) -> Result<String, String> {
    let store = crate::convert::open_store(dir, true).map_err(|e| format!("{e} (pass --dir)"))?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .map_err(|e| format!("cannot start the async runtime: {e}"))?;
    if tree {
        return runtime
            .block_on(run_tree::report(&store, execution_id, json))
            .map_err(|e| match e {
                RunTreeError::NotFound(id) => {
                    format!("execution `{id}` has no checkpoints in {dir}")
                }
                other => other.to_string(),
            });
    }
    runtime
        .block_on(report(&store, execution_id, json))
        .map_err(|e| match e {
            InspectError::NotFound(id) => {
                format!("execution `{id}` has no checkpoints in {dir}")
            }
            other => other.to_string(),
        })
}
