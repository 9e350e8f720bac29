//! Crash harness for exact resume: a real process running the long-run machine is SIGKILLed
//! right after writing a checkpoint of each event kind (at random steps), or at a random time,
//! then resumed once; the result must equal the uninterrupted run's — output, final context
//! (which counts every hook call) and step count.
//!
//! Bounded in trials, not timed. `FLATMACHINE_KILL_TRIALS` (trials per event kind, default 2),
//! `FLATMACHINE_KILL_N` (loop length, default 160 ≈ 194 steps; 833 gives the 1,001-step run
//! of issue 12) and `FLATMACHINE_KILL_SEED` scale it up or replay a failure.

use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::Command;

use flatmachine_examples::{CHECKPOINT_EVENTS, long_run_machine};
use serde_json::{Value, json};

mod support;

use support::{Rng, env_u64};

const BIN: &str = env!("CARGO_BIN_EXE_long_run");

fn summary(output: Value, steps: u64, context: Value) -> Value {
    json!({"output": output, "steps": steps, "context": context})
}

async fn resume(dir: &Path, id: &str) -> Value {
    let machine = long_run_machine(dir, None).build().unwrap();
    let r = machine
        .resume(id)
        .await
        .unwrap_or_else(|e| panic!("resume of {id} failed: {e}"));
    summary(r.output, r.steps, Value::Object(r.context))
}

#[tokio::test]
async fn every_checkpoint_event_resumes_to_the_uninterrupted_result() {
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

    // The uninterrupted run, in a process of its own.
    let out = Command::new(BIN)
        .args([root.path().to_str().unwrap(), "whole", &n.to_string()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let whole: Value = serde_json::from_slice(&out.stdout).unwrap();
    let last_step = whole["steps"].as_u64().unwrap();
    assert_eq!(whole["context"]["hooks"]["state_enter"], json!(last_step));

    let mut cases = Vec::new();
    for event in CHECKPOINT_EVENTS {
        for t in 0..trials {
            let step = match event {
                "machine_start" => 0,
                "machine_end" => last_step,
                _ => 1 + rng.below(last_step),
            };
            // Every other trial dies between the snapshot and its `latest` pointer.
            cases.push((step, event, t % 2 == 1));
        }
    }
    let mut differences = Vec::new();
    for (i, (step, event, before_latest)) in cases.iter().enumerate() {
        let id = format!("kill-{i}");
        let mut args = vec![
            root.path().to_str().unwrap().to_string(),
            id.clone(),
            n.to_string(),
            step.to_string(),
            event.to_string(),
        ];
        if *before_latest {
            args.push("before-latest".into());
        }
        let status = Command::new(BIN).args(&args).status().unwrap();
        assert_eq!(
            status.signal(),
            Some(9),
            "trial {i} ({event} at step {step}) should die by SIGKILL: {status}"
        );
        let resumed = resume(root.path(), &id).await;
        if resumed != whole {
            differences.push(format!(
                "{event} at step {step} (before latest: {before_latest}): {resumed}"
            ));
        }
    }

    // Kills at random times, from outside (anywhere, including inside a write).
    for t in 0..trials {
        let id = format!("random-{t}");
        let mut child = Command::new(BIN)
            .args([root.path().to_str().unwrap(), &id, &n.to_string()])
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        // Wait until the run has written something, then a random extra while.
        let dir = root.path().join(".checkpoints").join(&id);
        while !dir.join("latest").exists() && child.try_wait().unwrap().is_none() {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        std::thread::sleep(std::time::Duration::from_millis(rng.below(400)));
        let _ = child.kill();
        child.wait().unwrap();
        let resumed = resume(root.path(), &id).await;
        if resumed != whole {
            differences.push(format!("random kill {t}: {resumed}"));
        }
    }
    assert!(
        differences.is_empty(),
        "{} of {} resumes differ from {whole}:\n{}",
        differences.len(),
        cases.len() as u64 + trials,
        differences.join("\n")
    );
}
