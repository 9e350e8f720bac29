//! Host for the launch-outbox crash tests (`tests/launch_resume.rs`): runs the `launcher`
//! machine, whose `launch: worker` goes through the outbox, and can hang at a chosen point so
//! the test can SIGKILL the process there.
//!
//! ```text
//! launch_crash run <id> [--hang-at recorded|started]
//! launch_crash resume <id>
//! ```
//!
//! `FLATMACHINE_EXAMPLE_DIR` holds `.checkpoints`, `.locks`, the marker files (`recorded`,
//! `started`) and `runs.log`, where the worker's hooks append `start <id>` when a worker run
//! starts and `end <id>` when it ends (a resumed worker does not start again).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use async_trait::async_trait;
use flatmachine_examples::launcher;
use flatmachine_runtime::hooks::{HookError, HooksFor, HooksRegistry, MachineHooks};
use flatmachine_runtime::persistence::{
    CheckpointStore, LocalFileBackend, MachineSnapshot, PersistenceBackend, PersistenceError,
};
use flatmachine_runtime::{Context, Machine, Value};

/// Appends `start`/`end` lines for each worker run to `runs.log`.
struct RunCounter {
    log: PathBuf,
    execution_id: String,
}

impl RunCounter {
    fn append(&self, what: &str) {
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
        {
            let _ = writeln!(f, "{what} {}", self.execution_id);
            let _ = f.sync_all();
        }
    }
}

#[async_trait]
impl MachineHooks for RunCounter {
    async fn on_machine_start(&self, _context: &mut Context) -> Result<(), HookError> {
        self.append("start");
        Ok(())
    }

    async fn on_machine_end(
        &self,
        _context: &Context,
        _output: &mut Value,
    ) -> Result<(), HookError> {
        self.append("end");
        Ok(())
    }
}

/// Local files, hanging (until killed) right after the first checkpoint that records a launch
/// not yet started has been made `latest`.
struct HangAfterRecording {
    inner: LocalFileBackend,
    marker: PathBuf,
    armed: bool,
    recorded: AtomicBool,
}

#[async_trait]
impl PersistenceBackend for HangAfterRecording {
    async fn save(&self, key: &str, snapshot: &MachineSnapshot) -> Result<(), PersistenceError> {
        self.inner.save(key, snapshot).await?;
        let unlaunched = snapshot
            .pending_launches
            .as_ref()
            .is_some_and(|p| p.iter().any(|i| !i.launched));
        self.recorded.store(unlaunched, Ordering::SeqCst);
        Ok(())
    }

    async fn load(&self, key: &str) -> Result<Option<MachineSnapshot>, PersistenceError> {
        self.inner.load(key).await
    }

    async fn save_text(&self, key: &str, text: &str) -> Result<(), PersistenceError> {
        self.inner.save_text(key, text).await?;
        if self.armed && self.recorded.load(Ordering::SeqCst) {
            let _ = std::fs::write(&self.marker, text);
            eprintln!("launch recorded, not started: hanging until killed");
            std::future::pending::<()>().await;
        }
        Ok(())
    }

    async fn load_text(&self, key: &str) -> Result<Option<String>, PersistenceError> {
        self.inner.load_text(key).await
    }

    async fn delete(&self, key: &str) -> Result<(), PersistenceError> {
        self.inner.delete(key).await
    }

    async fn list(&self, prefix: &str) -> Result<Vec<String>, PersistenceError> {
        self.inner.list(prefix).await
    }

    fn file_path(&self, key: &str) -> Option<PathBuf> {
        self.inner.file_path(key)
    }
}

fn machine(dir: &Path, hang_at: Option<&str>) -> Result<Machine, Box<dyn std::error::Error>> {
    let log = dir.join("runs.log");
    let mut registry = HooksRegistry::new();
    registry.register_for("RunCounter", move |target: &HooksFor, _args| {
        Ok(Arc::new(RunCounter {
            log: log.clone(),
            execution_id: target.execution_id.clone(),
        }) as Arc<dyn MachineHooks>)
    });
    let backend = HangAfterRecording {
        inner: LocalFileBackend::new(dir.join(".checkpoints")),
        marker: dir.join("recorded"),
        armed: hang_at == Some("recorded"),
        recorded: AtomicBool::new(false),
    };
    let started_marker = dir.join("started");
    let hang_in_work = hang_at == Some("started");
    Ok(Machine::of::<launcher::Machine>()
        .hooks_registry(registry)
        .persistence(CheckpointStore::new(Arc::new(backend)))
        .lock(Arc::new(flatmachine_runtime::lock::LocalFileLock::new(
            dir.join(".locks"),
        )))
        .action_mut("work", move |_ctx, _call| {
            let marker = started_marker.clone();
            Box::pin(async move {
                if hang_in_work {
                    let _ = std::fs::write(&marker, "started");
                    eprintln!("worker started: hanging until killed");
                    std::future::pending::<()>().await;
                }
                Ok(())
            })
        })
        .build()?)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = PathBuf::from(
        std::env::var_os("FLATMACHINE_EXAMPLE_DIR").ok_or("set FLATMACHINE_EXAMPLE_DIR")?,
    );
    let args: Vec<String> = std::env::args().skip(1).collect();
    let hang_at = args
        .iter()
        .position(|a| a == "--hang-at")
        .and_then(|i| args.get(i + 1))
        .map(String::as_str);
    let (command, id) = match (args.first(), args.get(1)) {
        (Some(c), Some(id)) => (c.as_str(), id.as_str()),
        _ => return Err("usage: launch_crash run|resume <id> [--hang-at recorded|started]".into()),
    };
    let machine = machine(&dir, hang_at)?;
    let result = match command {
        "run" => {
            machine
                .run_with_id(id, serde_json::json!({"job": "report"}))
                .await?
        }
        "resume" => machine.resume(id).await?,
        other => return Err(format!("unknown command `{other}`").into()),
    };
    let launched = machine.join_launched().await;
    println!("{}", serde_json::to_string(&result.output)?);
    for l in launched {
        println!(
            "launched {} {}",
            l.execution_id,
            serde_json::to_string(&l.result.map_err(|e| e.to_string()))?
        );
    }
    Ok(())
}
