//! An application binary with the flatmachine command line (`flatmachine_runtime::cli::main`),
//! the equivalent of `python -m flatmachines.run`:
//!
//! ```text
//! fm_app run --input '{"job": "report"}' [--execution-id ID] [--parent-id ID] [--machine worker]
//! fm_app resume ID
//! ```
//!
//! It hosts the `launcher` machine. With `FM_SUBPROCESS=1` its children run as separate
//! processes of this same binary (`SubprocessInvoker`). The `work` action appends this
//! process's id to `$FLATMACHINE_EXAMPLE_DIR/work.pids`. Checkpoints go to
//! `$FLATMACHINE_EXAMPLE_DIR/.checkpoints` (default: the current directory).

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use flatmachine_examples::launcher;
use flatmachine_runtime::Machine;
use flatmachine_runtime::cli::SubprocessInvoker;
use flatmachine_runtime::hooks::{HooksRegistry, MachineHooks, NoopHooks};

fn main() -> ExitCode {
    let dir = std::env::var_os("FLATMACHINE_EXAMPLE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."));
    let mut registry = HooksRegistry::new();
    registry.register_instance("RunCounter", Arc::new(NoopHooks) as Arc<dyn MachineHooks>);
    let pids = dir.join("work.pids");
    let mut builder = Machine::of::<launcher::Machine>()
        .hooks_registry(registry)
        .checkpoint_dir(dir.join(".checkpoints"))
        .lock_dir(dir.join(".locks"))
        .action_mut("work", move |_ctx, _call| {
            let pids = pids.clone();
            Box::pin(async move {
                if let Ok(mut f) = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&pids)
                {
                    let _ = writeln!(f, "{}", std::process::id());
                }
                Ok(())
            })
        });
    if std::env::var_os("FM_SUBPROCESS").is_some() {
        match std::env::current_exe() {
            Ok(exe) => builder = builder.invoker(Arc::new(SubprocessInvoker::new(exe))),
            Err(e) => {
                eprintln!("error: cannot find this executable: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    flatmachine_runtime::cli::main(builder)
}
