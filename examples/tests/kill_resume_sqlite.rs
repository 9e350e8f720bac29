//! Crash harness on the SQLite checkpoint store: a real process running the long-run machine
//! with `SqlitePersistence` is SIGKILLed right after a checkpoint of each event kind (after
//! its one-transaction write, and between a snapshot and its pointer) and at random times from
//! outside, then resumed from the database; every resume must equal the uninterrupted run
//! (output, final context counting every hook call, step count).
//!
//! `FLATMACHINE_KILL_TRIALS` (trials per event kind, default 2), `FLATMACHINE_KILL_N` (loop
//! length, default 160) and `FLATMACHINE_KILL_SEED` scale it up or replay a failure.

use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::Command;

use flatmachine_examples::{CHECKPOINT_EVENTS, long_run_machine_on};
use flatmachine_runtime::persistence::CheckpointStore;
use serde_json::{Value, json};

mod support;

use support::{Rng, env_u64};

const BIN: &str = env!("CARGO_BIN_EXE_long_run");

fn long_run(args: &[String]) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.args(args).env("FLATMACHINE_STORE", "sqlite");
    cmd
}

async fn resume(dir: &Path, id: &str) -> Value {
    let machine = long_run_machine_on(dir, None, true).build().unwrap();
    let r = machine
        .resume(id)
        .await
        .unwrap_or_else(|e| panic!("resume of {id} failed: {e}"));
    json!({"output": r.output, "steps": r.steps, "context": Value::Object(r.context)})
}

#[tokio::test]
async fn sigkilled_runs_resume_from_sqlite_to_the_uninterrupted_result() {
    let n = env_u64("FLATMACHINE_KILL_N", 160);
    let trials = env_u64("FLATMACHINE_KILL_TRIALS", 2);
    let seed = env_u64(
        "FLATMACHINE_KILL_SEED",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64
            | 1,
    );
    eprintln!("FLATMACHINE_KILL_SEED={seed} FLATMACHINE_KILL_N={n}");
    let mut rng = Rng(seed);
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().to_str().unwrap().to_string();

    let out = long_run(&[dir.clone(), "whole".into(), n.to_string()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let whole: Value = serde_json::from_slice(&out.stdout).unwrap();
    let last_step = whole["steps"].as_u64().unwrap();
    let db = root.path().join(".checkpoints/checkpoints.sqlite");
    assert!(db.is_file(), "the run wrote its checkpoints to SQLite");
    assert!(
        !root.path().join(".checkpoints/whole").exists(),
        "and no snapshot files"
    );

    let mut differences = Vec::new();
    let mut total = 0;
    for event in CHECKPOINT_EVENTS {
        for t in 0..trials {
            let step = match event {
                "machine_start" => 0,
                "machine_end" => last_step,
                _ => 1 + rng.below(last_step),
            };
            let before_latest = t % 2 == 1;
            let id = format!("kill-{event}-{t}");
            let mut args = vec![
                dir.clone(),
                id.clone(),
                n.to_string(),
                step.to_string(),
                event.to_string(),
            ];
            if before_latest {
                args.push("before-latest".into());
            }
            let status = long_run(&args).status().unwrap();
            assert_eq!(
                status.signal(),
                Some(9),
                "{event} at step {step} should die by SIGKILL: {status}"
            );
            total += 1;
            let resumed = resume(root.path(), &id).await;
            if resumed != whole {
                differences.push(format!(
                    "{event} at step {step} (before latest: {before_latest}): {resumed}"
                ));
            }
        }
    }

    // Kills at random times, from outside (anywhere, including inside a transaction).
    for t in 0..trials {
        let id = format!("random-{t}");
        let mut child = long_run(&[dir.clone(), id.clone(), n.to_string()])
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        // Wait until the run has committed a checkpoint, then a random extra while.
        let store = CheckpointStore::sqlite(&db).unwrap();
        while store.latest_checkpoint_key(&id).await.unwrap().is_none()
            && child.try_wait().unwrap().is_none()
        {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        std::thread::sleep(std::time::Duration::from_millis(rng.below(300)));
        let _ = child.kill();
        child.wait().unwrap();
        total += 1;
        let resumed = resume(root.path(), &id).await;
        if resumed != whole {
            differences.push(format!("random kill {t}: {resumed}"));
        }
    }
    assert!(
        differences.is_empty(),
        "{} of {total} resumes differ from {whole}:\n{}",
        differences.len(),
        differences.join("\n")
    );
}
