//! The ticket-batch machines (`machines/compose/`), for the composition crash harness
//! (`tests/compose_resume.rs`, binary `compose_crash`): a parent with a `foreach` over tickets
//! (cap 3 in its YAML), each ticket a child that runs an approval child of its own, then a
//! `machine: [summary, audit]` pair. Every agent call and action appends `<child> <op>` to
//! `ops.log`, so a test can count what ran per child across processes; every op waits a few
//! milliseconds, so a kill at a random time often lands inside one.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;
use flatmachine_runtime::lock::LocalFileLock;
use flatmachine_runtime::persistence::{
    CheckpointStore, EncodedCheckpoint, LocalFileBackend, MachineSnapshot, PersistenceBackend,
    PersistenceError, SqlitePersistence,
};
use flatmachine_runtime::{AgentOutput, Context, Machine, MachineBuilder, StateError, Value};
use serde_json::json;

flatmachine_runtime::flatmachine!("machines/compose/ticket_batch.yml");

/// Where the checkpoints go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Store {
    /// `<dir>/.checkpoints/checkpoints.sqlite`.
    Sqlite,
    /// Files below `<dir>/.checkpoints` (fsync off).
    Files,
}

/// Appends `<child> <op>` lines to a log file (one `write` per line, `O_APPEND`).
#[derive(Clone)]
struct Ops(Arc<PathBuf>);

impl Ops {
    /// Logs the op, then waits a little (how long depends on the op).
    async fn run(&self, child: &str, op: &str) {
        let line = format!("{child} {op}\n");
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.0.as_path())
        {
            let _ = f.write_all(line.as_bytes());
        }
        let wait = line
            .bytes()
            .fold(7u64, |h, b| h.wrapping_mul(31) ^ u64::from(b))
            % 12
            + 3;
        tokio::time::sleep(std::time::Duration::from_millis(wait)).await;
    }
}

fn int(ctx: &Context, key: &str) -> i64 {
    ctx.get(key).and_then(Value::as_i64).unwrap_or(0)
}

fn text(ctx: &Context, key: &str) -> String {
    ctx.get(key)
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string()
}

/// A reply from an agent: one call, cost 0.25 (exact in binary, so sums do not depend on the
/// order children finish in).
fn reply(output: Value) -> Result<AgentOutput, StateError> {
    let mut out = AgentOutput::new(output);
    out.cost = 0.25;
    Ok(out)
}

/// The ticket batch with its agents and actions, checkpointing into `store` below `dir`
/// (file lock in `<dir>/.locks`). With `kill_after`, the process SIGKILLs itself right after
/// its `kill_after`-th checkpoint write (counting the writes of every execution).
pub fn ticket_batch_machine(
    dir: &Path,
    store: Store,
    kill_after: Option<u64>,
) -> (MachineBuilder, Arc<AtomicU64>) {
    let inner: Arc<dyn PersistenceBackend> = match store {
        Store::Sqlite => Arc::new(
            SqlitePersistence::open(dir.join(".checkpoints").join("checkpoints.sqlite"))
                .expect("open the checkpoint database"),
        ),
        Store::Files => Arc::new(LocalFileBackend::new(dir.join(".checkpoints")).with_fsync(false)),
    };
    let writes = Arc::new(AtomicU64::new(0));
    let backend = Arc::new(CountingBackend {
        inner,
        writes: writes.clone(),
        kill_after,
    });
    let ops = Ops(Arc::new(dir.join("ops.log")));
    let (o1, o2, o3, o4, o5, o6, o7, o8, o9) = (
        ops.clone(),
        ops.clone(),
        ops.clone(),
        ops.clone(),
        ops.clone(),
        ops.clone(),
        ops.clone(),
        ops.clone(),
        ops,
    );
    let builder = Machine::of::<ticket_batch::Machine>()
        .persistence(CheckpointStore::new(backend))
        .lock(Arc::new(LocalFileLock::new(dir.join(".locks"))))
        .action_mut("intake", move |ctx, _call| {
            let ops = o1.clone();
            let received = ctx
                .get("tickets")
                .and_then(Value::as_array)
                .map_or(0, Vec::len);
            ctx.insert("received".into(), json!(received));
            Box::pin(async move {
                ops.run("batch", "intake").await;
                Ok(())
            })
        })
        .agent("classifier", move |input: Value, _ctx: Context| {
            let ops = o2.clone();
            async move {
                let id = input["id"].as_i64().unwrap_or(0);
                ops.run(&format!("ticket:{id}"), "classifier").await;
                let category = ["billing", "bug", "question"][id.rem_euclid(3) as usize];
                reply(json!({"category": category}))
            }
        })
        .agent("writer", move |input: Value, _ctx: Context| {
            let ops = o3.clone();
            async move {
                let id = input["id"].as_i64().unwrap_or(0);
                ops.run(&format!("ticket:{id}"), "writer").await;
                let category = input["category"].as_str().unwrap_or("?");
                reply(json!({"text": format!("re #{id} ({category}): handled")}))
            }
        })
        .action_mut("check_policy", move |ctx, _call| {
            let ops = o4.clone();
            let id = int(ctx, "id");
            let policy = if text(ctx, "category") == "billing" {
                "manual"
            } else {
                "auto"
            };
            ctx.insert("policy".into(), json!(policy));
            Box::pin(async move {
                ops.run(&format!("approval:{id}"), "check_policy").await;
                Ok(())
            })
        })
        .action_mut("approve", move |ctx, _call| {
            let ops = o5.clone();
            let id = int(ctx, "id");
            let approved = text(ctx, "policy") == "auto" || id % 2 == 0;
            ctx.insert("approved".into(), json!(approved));
            Box::pin(async move {
                ops.run(&format!("approval:{id}"), "approve").await;
                Ok(())
            })
        })
        .agent("summarizer", move |input: Value, _ctx: Context| {
            let ops = o6.clone();
            async move {
                ops.run("summary", "summarizer").await;
                let triaged = input["triaged"].as_array().cloned().unwrap_or_default();
                let approved = triaged
                    .iter()
                    .filter(|t| t["approval"]["approved"] == json!(true))
                    .count();
                reply(json!({"text": format!("{} tickets, {approved} approved", triaged.len())}))
            }
        })
        .action_mut("publish", move |ctx, _call| {
            let ops = o7.clone();
            ctx.insert("published".into(), json!(true));
            Box::pin(async move {
                ops.run("summary", "publish").await;
                Ok(())
            })
        })
        .action_mut("audit_log", move |ctx, _call| {
            let ops = o8.clone();
            let logged = ctx
                .get("triaged")
                .and_then(Value::as_array)
                .map_or(0, Vec::len);
            ctx.insert("logged".into(), json!(logged));
            Box::pin(async move {
                ops.run("audit", "audit_log").await;
                Ok(())
            })
        })
        .agent("auditor", move |input: Value, _ctx: Context| {
            let ops = o9.clone();
            async move {
                ops.run("audit", "auditor").await;
                reply(json!({"verdict": format!("ok: {} logged", input["logged"])}))
            }
        });
    (builder, writes)
}

/// Passes every call through, counting checkpoint writes; SIGKILLs the process right after
/// the `kill_after`-th.
struct CountingBackend {
    inner: Arc<dyn PersistenceBackend>,
    writes: Arc<AtomicU64>,
    kill_after: Option<u64>,
}

impl CountingBackend {
    fn written(&self) {
        let n = self.writes.fetch_add(1, Ordering::SeqCst) + 1;
        if self.kill_after == Some(n) {
            // SIGKILL from outside: no destructor, no flush, no unwinding.
            let pid = std::process::id().to_string();
            let _ = std::process::Command::new("kill")
                .args(["-KILL", &pid])
                .status();
            loop {
                std::thread::sleep(std::time::Duration::from_secs(1));
            }
        }
    }
}

#[async_trait]
impl PersistenceBackend for CountingBackend {
    async fn save(&self, key: &str, snapshot: &MachineSnapshot) -> Result<(), PersistenceError> {
        self.inner.save(key, snapshot).await
    }

    async fn save_checkpoint(
        &self,
        key: &str,
        latest_key: &str,
        snapshot: Arc<MachineSnapshot>,
    ) -> Result<(), PersistenceError> {
        self.inner
            .save_checkpoint(key, latest_key, snapshot)
            .await?;
        self.written();
        Ok(())
    }

    async fn save_encoded(&self, checkpoint: EncodedCheckpoint) -> Result<(), PersistenceError> {
        self.inner.save_encoded(checkpoint).await?;
        self.written();
        Ok(())
    }

    async fn load(&self, key: &str) -> Result<Option<MachineSnapshot>, PersistenceError> {
        self.inner.load(key).await
    }

    async fn save_text(&self, key: &str, text: &str) -> Result<(), PersistenceError> {
        self.inner.save_text(key, text).await
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

    async fn remove_temporaries(&self, execution_id: &str) -> Result<(), PersistenceError> {
        self.inner.remove_temporaries(execution_id).await
    }

    fn file_path(&self, key: &str) -> Option<PathBuf> {
        self.inner.file_path(key)
    }
}
