//! `flatmachine convert`: copy executions between checkpoint stores (the reference's file
//! layout and SQLite), and the `DIR | sqlite:PATH` store syntax `inspect` shares.

use std::path::Path;

use flatmachine_runtime::persistence::{CheckpointStore, copy_executions};

/// A store named on the command line: `sqlite:PATH` (a `SqlitePersistence` database) or a
/// directory in the reference's file layout. `read_only`: a store to read from — it must
/// exist, and a database is opened read-only and refused without the checkpoint table (so an
/// unrelated file is left byte for byte as it was); otherwise it is created if needed.
pub fn open_store(spec: &str, read_only: bool) -> Result<CheckpointStore, String> {
    if let Some(path) = spec.strip_prefix("sqlite:") {
        if path.is_empty() {
            return Err("`sqlite:` needs a file path (sqlite:PATH)".to_string());
        }
        if read_only {
            if !Path::new(path).is_file() {
                return Err(format!("checkpoint database {path} not found"));
            }
            return CheckpointStore::sqlite_read_only(path).map_err(|e| e.to_string());
        }
        return CheckpointStore::sqlite(path).map_err(|e| e.to_string());
    }
    let must_exist = read_only;
    if must_exist && !Path::new(spec).is_dir() {
        return Err(format!("checkpoint directory {spec} not found"));
    }
    Ok(CheckpointStore::local(spec))
}

/// Runs the command; returns the summary to print, or the error message.
pub fn run(from: &str, to: &str, executions: &[String]) -> Result<String, String> {
    if from == to {
        return Err("--from and --to name the same store".to_string());
    }
    let source = open_store(from, true)?;
    let target = open_store(to, false)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .map_err(|e| format!("cannot start the async runtime: {e}"))?;
    let only = (!executions.is_empty()).then_some(executions);
    let report = runtime
        .block_on(copy_executions(&source, &target, only))
        .map_err(|e| e.to_string())?;
    Ok(format!(
        "copied {} execution(s), {} checkpoint(s), {} latest pointer(s) from {from} to {to}\n",
        report.executions.len(),
        report.checkpoints,
        report.pointers
    ))
}
