//! Runs the order-approval machine end to end with no network: a first process is killed in the
//! middle of the run, then the run is resumed from its disk checkpoints.
//!
//! `cargo run -p flatmachine-examples --bin order_approval`
//!
//! Checkpoints go below `$FLATMACHINE_EXAMPLE_DIR` (default: `<temp dir>/flatmachine-order-example`).

use flatmachine_examples::order_machine;
use serde_json::json;
use std::process::Command;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    // Checkpoints and locks go below this directory (`FLATMACHINE_EXAMPLE_DIR` overrides it).
    let dir = std::env::var_os("FLATMACHINE_EXAMPLE_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::env::temp_dir().join("flatmachine-order-example"));
    match args.get(1).map(String::as_str) {
        // Child process: start the run and crash inside `charge_card`.
        // Child process for tests: start the run and hang inside `charge_card` until killed.
        Some("--hang") => {
            let id = args
                .get(2)
                .ok_or("usage: order_approval --hang <execution id>")?;
            let machine = order_machine(false, &dir)
                .action_mut("charge_card", |_ctx, _call| {
                    Box::pin(async {
                        eprintln!("charge_card: hanging until the process is killed");
                        std::future::pending::<Result<(), flatmachine_runtime::StateError>>().await
                    })
                })
                .build()?;
            machine
                .run_with_id(id.clone(), json!({"order_id": "A-1001", "amount": 1250}))
                .await?;
            Err("charge_card never returns".into())
        }
        Some("--crash") => {
            let id = args
                .get(2)
                .ok_or("usage: order_approval --crash <execution id>")?;
            let machine = order_machine(true, &dir).build()?;
            machine
                .run_with_id(id.clone(), json!({"order_id": "A-1001", "amount": 1250}))
                .await?;
            unreachable!("the charge_card action exits the process");
        }
        _ => {
            std::fs::create_dir_all(&dir)?;
            let id = uuid_like();
            println!(
                "1. starting order A-1001 (execution {id}) in a child process that crashes mid-run"
            );
            let status = Command::new(std::env::current_exe()?)
                .args(["--crash", &id])
                .status()?;
            println!("   child exited with {status}");
            let machine = order_machine(false, &dir).build()?;
            let store = machine
                .store()
                .expect("local persistence is configured in the YAML");
            let keys = store.checkpoint_keys(&id).await?;
            let latest = store.latest_checkpoint_key(&id).await?.unwrap_or_default();
            println!("2. {} checkpoints on disk; latest: {latest}", keys.len());
            let result = machine.resume(&id).await?;
            println!(
                "3. resumed and finished in `{}` after {} steps",
                result.final_state, result.steps
            );
            println!("{}", serde_json::to_string_pretty(&result.output)?);
            Ok(())
        }
    }
}

fn uuid_like() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("order-{nanos:x}")
}
