//! Example machines for flatmachine, compiled with `flatmachine!`.

use flatmachine_runtime::{Context, Machine, MachineBuilder, StateError, Value};

pub mod compose;
pub mod librarian;
pub mod mcp_fs;

flatmachine_runtime::flatmachine!("machines/order.yml");
flatmachine_runtime::flatmachine!("machines/launcher.yml");
flatmachine_runtime::flatmachine!("machines/review_pipeline.yml");

/// The order-approval machine with its action handlers. `crash_in_charge` makes the first card
/// charge kill the process (to show resuming from disk checkpoints).
pub fn order_machine(crash_in_charge: bool, checkpoint_dir: &std::path::Path) -> MachineBuilder {
    Machine::of::<order_approval::Machine>()
        .checkpoint_dir(checkpoint_dir.join(".checkpoints"))
        .lock_dir(checkpoint_dir.join(".locks"))
        .action_mut("validate_order", |ctx, _call| {
            Box::pin(async move {
                match ctx.get("amount").and_then(Value::as_f64) {
                    Some(a) if a > 0.0 => Ok(()),
                    _ => Err(StateError::new(
                        "InvalidOrder",
                        "amount must be a positive number",
                    )),
                }
            })
        })
        .action_mut("request_review", |ctx, _call| {
            Box::pin(async move {
                // A real system would ask a human; approve anything under 5000.
                let amount = ctx.get("amount").and_then(Value::as_f64).unwrap_or(0.0);
                ctx.insert("approved".into(), Value::Bool(amount < 5000.0));
                Ok(())
            })
        })
        .action_mut("charge_card", move |ctx: &mut Context, _call| {
            Box::pin(async move {
                let attempts = ctx.get("attempts").and_then(Value::as_i64).unwrap_or(0);
                if crash_in_charge {
                    eprintln!("charge_card: simulating a crash (the process exits now)");
                    std::process::exit(137);
                }
                if attempts < 1 {
                    // The payment provider is flaky: the first try times out.
                    return Err(StateError::new(
                        "PaymentTimeout",
                        "payment provider timed out",
                    ));
                }
                let id = ctx
                    .get("order_id")
                    .and_then(Value::as_str)
                    .unwrap_or("?")
                    .to_string();
                ctx.insert(
                    "receipt".into(),
                    Value::String(format!("rcpt-{id}-{attempts}")),
                );
                Ok(())
            })
        })
        .action_mut("back_off", |ctx, _call| {
            Box::pin(async move {
                let attempts = ctx.get("attempts").and_then(Value::as_i64).unwrap_or(0) + 1;
                ctx.insert("attempts".into(), attempts.into());
                tokio::time::sleep(std::time::Duration::from_millis(10 * attempts as u64)).await;
                Ok(())
            })
        })
}

flatmachine_runtime::flatmachine!("machines/long_run.yml");

/// The checkpoint events, in run order (as in checkpoint keys).
pub const CHECKPOINT_EVENTS: [&str; 5] = [
    "machine_start",
    "state_enter",
    "execute",
    "state_exit",
    "machine_end",
];

/// Where [`long_run_machine`] kills its own process with SIGKILL (for crash tests).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KillPoint {
    /// The step of the checkpoint.
    pub step: u64,
    /// Its event (one of [`CHECKPOINT_EVENTS`]).
    pub event: String,
    /// Kill after the snapshot is written but before `latest` points to it (else after).
    pub before_latest: bool,
}

/// The long-run machine: checkpoints in files below `dir` (fsync off, passed as an explicit
/// store, so the builder's file lock is used), hooks that count every hook call into the
/// context, actions that fold each step into `acc`. With `kill`, the process SIGKILLs itself
/// right after writing that checkpoint.
pub fn long_run_machine(dir: &std::path::Path, kill: Option<KillPoint>) -> MachineBuilder {
    long_run_machine_on(dir, kill, false)
}

/// [`long_run_machine`] with its checkpoints in `<dir>/.checkpoints/checkpoints.sqlite`
/// (`SqlitePersistence`, `synchronous=NORMAL`) when `sqlite` is set, else in files.
pub fn long_run_machine_on(
    dir: &std::path::Path,
    kill: Option<KillPoint>,
    sqlite: bool,
) -> MachineBuilder {
    use flatmachine_runtime::persistence::{
        CheckpointStore, LocalFileBackend, PersistenceBackend, SqlitePersistence,
    };
    use std::sync::Arc;
    let backend: Arc<dyn PersistenceBackend> = if sqlite {
        Arc::new(
            SqlitePersistence::open(dir.join(".checkpoints").join("checkpoints.sqlite"))
                .expect("open the checkpoint database"),
        )
    } else {
        Arc::new(LocalFileBackend::new(dir.join(".checkpoints")).with_fsync(false))
    };
    let backend: Arc<dyn PersistenceBackend> = match kill {
        Some(point) => Arc::new(killing::KillingBackend {
            inner: backend,
            point,
        }),
        None => backend,
    };
    Machine::of::<long_run::Machine>()
        .persistence(CheckpointStore::new(backend))
        .lock_dir(dir.join(".locks"))
        .hooks(std::sync::Arc::new(killing::CountingHooks))
        .action_mut("tick", |ctx: &mut Context, _call| {
            let i = int(ctx, "i") + 1;
            ctx.insert("i".into(), i.into());
            fold(ctx, i);
            let branch = if i % 5 == 0 { "side" } else { "tick" };
            ctx.insert("branch".into(), branch.into());
            Box::pin(async { Ok(()) })
        })
        .action_mut("side", |ctx: &mut Context, _call| {
            let trips = int(ctx, "side_trips") + 1;
            ctx.insert("side_trips".into(), trips.into());
            fold(ctx, 1000 + trips);
            ctx.insert("branch".into(), "tick".into());
            Box::pin(async { Ok(()) })
        })
}

fn int(ctx: &Context, key: &str) -> i64 {
    ctx.get(key).and_then(Value::as_i64).unwrap_or(0)
}

/// `acc = (acc * 31 + x) mod 1_000_003`: order-sensitive, so a repeated or skipped step shows.
fn fold(ctx: &mut Context, x: i64) {
    let acc = (int(ctx, "acc") * 31 + x) % 1_000_003;
    ctx.insert("acc".into(), acc.into());
}

mod killing {
    use flatmachine_runtime::hooks::{HookError, MachineHooks};
    use flatmachine_runtime::persistence::{
        MachineSnapshot, PersistenceBackend, PersistenceError, snapshot_key,
    };
    use flatmachine_runtime::{Context, Value};
    use std::sync::Arc;

    use super::KillPoint;

    /// Counts every hook call into the context (`hooks.<name>`), so a hook run twice or
    /// skipped by a resume changes the final context.
    pub(super) struct CountingHooks;

    fn count(ctx: &mut Context, name: &str) {
        let hooks = ctx
            .entry("hooks")
            .or_insert_with(|| Value::Object(Context::new()));
        if let Value::Object(map) = hooks {
            let n = map.get(name).and_then(Value::as_i64).unwrap_or(0) + 1;
            map.insert(name.into(), n.into());
        }
    }

    #[async_trait::async_trait]
    impl MachineHooks for CountingHooks {
        async fn on_machine_start(&self, context: &mut Context) -> Result<(), HookError> {
            count(context, "machine_start");
            Ok(())
        }

        async fn on_state_enter(&self, _: &str, context: &mut Context) -> Result<(), HookError> {
            count(context, "state_enter");
            Ok(())
        }

        async fn on_state_exit(
            &self,
            _: &str,
            context: &mut Context,
            _: &mut Option<Value>,
        ) -> Result<(), HookError> {
            count(context, "state_exit");
            Ok(())
        }

        async fn on_transition(
            &self,
            _: &str,
            to: &str,
            context: &mut Context,
        ) -> Result<String, HookError> {
            count(context, "transition");
            Ok(to.to_string())
        }
    }

    /// A backend that SIGKILLs its process once the checkpoint of its [`KillPoint`] is
    /// written (before or after the `latest` pointer names it).
    pub(super) struct KillingBackend {
        pub(super) inner: Arc<dyn PersistenceBackend>,
        pub(super) point: KillPoint,
    }

    impl KillingBackend {
        fn target(&self, execution_id: &str) -> String {
            snapshot_key(execution_id, self.point.step, &self.point.event)
        }
    }

    /// A backend that SIGKILLs its process after the n-th `tool_call` checkpoint.
    pub(super) struct RoundKiller {
        pub(super) inner: Arc<dyn PersistenceBackend>,
        pub(super) rounds_left: std::sync::atomic::AtomicU64,
    }

    #[async_trait::async_trait]
    impl PersistenceBackend for RoundKiller {
        async fn save(
            &self,
            key: &str,
            snapshot: &MachineSnapshot,
        ) -> Result<(), PersistenceError> {
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
            if key.ends_with("_tool_call.json")
                && self
                    .rounds_left
                    .fetch_sub(1, std::sync::atomic::Ordering::SeqCst)
                    == 1
            {
                die();
            }
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

        fn file_path(&self, key: &str) -> Option<std::path::PathBuf> {
            self.inner.file_path(key)
        }
    }

    /// SIGKILL, from outside (`kill -KILL <pid>`): no destructor, no flush, no unwinding.
    fn die() -> ! {
        let pid = std::process::id().to_string();
        let _ = std::process::Command::new("kill")
            .args(["-KILL", &pid])
            .status();
        loop {
            std::thread::sleep(std::time::Duration::from_secs(1));
        }
    }

    #[async_trait::async_trait]
    impl PersistenceBackend for KillingBackend {
        async fn save(
            &self,
            key: &str,
            snapshot: &MachineSnapshot,
        ) -> Result<(), PersistenceError> {
            self.inner.save(key, snapshot).await?;
            if self.point.before_latest && key == self.target(&snapshot.execution_id) {
                die();
            }
            Ok(())
        }

        /// After the snapshot (`before_latest`): the snapshot and the pointer one by one
        /// through this wrapper, so the kill falls between them. After the pointer: the inner
        /// backend's own checkpoint write (one transaction on SQLite), then the kill.
        async fn save_checkpoint(
            &self,
            key: &str,
            latest_key: &str,
            snapshot: Arc<MachineSnapshot>,
        ) -> Result<(), PersistenceError> {
            if self.point.before_latest {
                self.save(key, &snapshot).await?;
                return self.save_text(latest_key, key).await;
            }
            let target = self.target(&snapshot.execution_id);
            self.inner
                .save_checkpoint(key, latest_key, snapshot)
                .await?;
            if key == target {
                die();
            }
            Ok(())
        }

        async fn load(&self, key: &str) -> Result<Option<MachineSnapshot>, PersistenceError> {
            self.inner.load(key).await
        }

        async fn save_text(&self, key: &str, text: &str) -> Result<(), PersistenceError> {
            self.inner.save_text(key, text).await?;
            if !self.point.before_latest
                && let Some(id) = key.strip_suffix("/latest")
                && text == self.target(id)
            {
                die();
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

        async fn remove_temporaries(&self, execution_id: &str) -> Result<(), PersistenceError> {
            self.inner.remove_temporaries(execution_id).await
        }

        fn file_path(&self, key: &str) -> Option<std::path::PathBuf> {
            self.inner.file_path(key)
        }
    }
}

/// Checkpoints in files below `<dir>/.checkpoints` (fsync off); with `kill_after_round`, the
/// process SIGKILLs itself right after the n-th `tool_call` checkpoint (the n-th tool round)
/// is written and `latest` names it.
pub fn round_killing_store(
    dir: &std::path::Path,
    kill_after_round: Option<u64>,
) -> std::sync::Arc<dyn flatmachine_runtime::persistence::PersistenceBackend> {
    use flatmachine_runtime::persistence::LocalFileBackend;
    let files =
        std::sync::Arc::new(LocalFileBackend::new(dir.join(".checkpoints")).with_fsync(false));
    match kill_after_round {
        Some(n) => std::sync::Arc::new(killing::RoundKiller {
            inner: files,
            rounds_left: std::sync::atomic::AtomicU64::new(n),
        }),
        None => files,
    }
}
