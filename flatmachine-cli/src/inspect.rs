//! `flatmachine inspect`: an execution's history, or the list of executions, or run trees
//! (`--tree`), from a checkpoint store.
//!
//! Without `--dir` the command looks where a run keeps its checkpoints by default:
//! `.checkpoints/` (`persistence: {backend: local}`) and `.checkpoints/checkpoints.sqlite`
//! (`backend: sqlite`), and says which stores it read — or, when there are none, where it looked.

use std::path::Path;

use flatmachine_runtime::inspect::{InspectError, report};
use flatmachine_runtime::persistence::CheckpointStore;
use flatmachine_runtime::run_tree::{self, RunTreeError};

/// Where a run keeps its checkpoints unless told otherwise (`MachineBuilder::checkpoint_dir`).
const DEFAULT_DIR: &str = ".checkpoints";
/// The SQLite store of `backend: sqlite` without `settings.backends.sqlite_path`.
const DEFAULT_SQLITE: &str = ".checkpoints/checkpoints.sqlite";

/// What to print: `stdout` for the report, `notes` (stderr) for what was looked at.
#[derive(Debug, Default, PartialEq)]
pub struct Output {
    /// The report.
    pub stdout: String,
    /// Which stores were read, or what was looked at.
    pub notes: String,
}

/// Runs the command on the store `dir` (a directory, `sqlite:PATH` or `redis://…` with its key
/// `prefix`), or on the default stores
/// when `dir` is `None`; returns what to print, or the error message.
pub fn run(
    dir: Option<&str>,
    execution_id: Option<&str>,
    json: bool,
    tree: bool,
    prefix: Option<&str>,
) -> Result<Output, String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the async runtime: {e}"))?;
    if tree {
        let dir = dir.unwrap_or(DEFAULT_DIR);
        let store = open(dir, prefix)?;
        let stdout = runtime
            .block_on(run_tree::report(&store, execution_id, json))
            .map_err(|e| match e {
                RunTreeError::NotFound(id) => {
                    format!("execution `{id}` has no checkpoints in {dir}")
                }
                other => other.to_string(),
            })?;
        return Ok(Output {
            stdout,
            notes: String::new(),
        });
    }
    let Some(dir) = dir else {
        return runtime.block_on(run_on_defaults(execution_id, json));
    };
    let store = open(dir, prefix)?;
    let stdout = runtime
        .block_on(report(&store, execution_id, json))
        .map_err(|e| describe(e, dir))?;
    Ok(Output {
        stdout,
        notes: String::new(),
    })
}

fn describe(e: InspectError, store: &str) -> String {
    match e {
        InspectError::NotFound(id) => format!("execution `{id}` has no checkpoints in {store}"),
        other => other.to_string(),
    }
}

/// The default stores that exist, by name: `.checkpoints` when the directory exists, and
/// `sqlite:.checkpoints/checkpoints.sqlite` when that file does.
fn default_stores() -> Result<Vec<(String, CheckpointStore)>, String> {
    let mut stores = Vec::new();
    if Path::new(DEFAULT_DIR).is_dir() {
        stores.push((DEFAULT_DIR.to_string(), CheckpointStore::local(DEFAULT_DIR)));
    }
    if Path::new(DEFAULT_SQLITE).is_file() {
        let name = format!("sqlite:{DEFAULT_SQLITE}");
        stores.push((name.clone(), crate::convert::open_store(&name, true)?));
    }
    Ok(stores)
}

async fn run_on_defaults(execution_id: Option<&str>, json: bool) -> Result<Output, String> {
    let looked = format!(
        "looked at {DEFAULT_DIR}/ (persistence backend `local`) and {DEFAULT_SQLITE} (backend `sqlite`)"
    );
    let stores = default_stores()?;
    if stores.is_empty() {
        return Err(format!(
            "no checkpoint store here: {looked}; pass --dir DIR or --dir sqlite:PATH"
        ));
    }
    let mut out = Output::default();
    match execution_id {
        // The first store that has the execution.
        Some(id) => {
            for (name, store) in &stores {
                match report(store, Some(id), json).await {
                    Ok(text) => {
                        out.stdout = text;
                        out.notes = format!("checkpoints of `{id}` from {name}\n");
                        return Ok(out);
                    }
                    Err(InspectError::NotFound(_)) => continue,
                    Err(e) => return Err(format!("{name}: {}", describe(e, name))),
                }
            }
            let names: Vec<&str> = stores.iter().map(|(n, _)| n.as_str()).collect();
            Err(format!(
                "execution `{id}` has no checkpoints in {} ({looked})",
                names.join(" or ")
            ))
        }
        // Every store, each under its name (in JSON: one object keyed by store when several
        // have executions).
        None => {
            let mut found: Vec<(&str, String)> = Vec::new();
            for (name, store) in &stores {
                let text = report(store, None, json)
                    .await
                    .map_err(|e| format!("{name}: {}", describe(e, name)))?;
                let empty = if json {
                    text.trim() == "[]"
                } else {
                    text.trim().is_empty()
                };
                if empty {
                    out.notes.push_str(&format!("{name}: no executions\n"));
                } else {
                    out.notes.push_str(&format!("executions from {name}\n"));
                    found.push((name, text));
                }
            }
            match found.as_slice() {
                [] => out
                    .notes
                    .push_str(&format!("no executions found ({looked})\n")),
                [(_, text)] => out.stdout = text.clone(),
                several if json => {
                    let mut all = serde_json::Map::new();
                    for (name, text) in several {
                        let list: serde_json::Value =
                            serde_json::from_str(text).map_err(|e| format!("{name}: {e}"))?;
                        all.insert(name.to_string(), list);
                    }
                    out.stdout = format!(
                        "{}\n",
                        serde_json::to_string_pretty(&all).map_err(|e| e.to_string())?
                    );
                }
                several => {
                    for (name, text) in several {
                        out.stdout.push_str(&format!("== {name}\n{text}"));
                    }
                }
            }
            Ok(out)
        }
    }
}

/// The checkpoints of a Redis server (`RedisPersistence`), keys under `prefix`.
/// The store `dir` names: a directory, `sqlite:PATH`, or `redis://…` with its key `prefix`.
pub fn open(dir: &str, prefix: Option<&str>) -> Result<CheckpointStore, String> {
    if dir.starts_with("redis://") || dir.starts_with("rediss://") {
        redis_store(dir, prefix)
    } else {
        crate::convert::open_store(dir, true).map_err(|e| format!("{e} (pass --dir)"))
    }
}

fn redis_store(
    url: &str,
    prefix: Option<&str>,
) -> Result<flatmachine_runtime::persistence::CheckpointStore, String> {
    flatmachine_runtime::distributed::admin::open_checkpoints(url, prefix)
}
