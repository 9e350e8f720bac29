//! Crash harness for composition: a real process running the ticket batch (a `foreach` over six
//! tickets capped at three, each ticket a child with an approval child of its own, then
//! `machine: [summary, audit]`) is SIGKILLed at random points — right after a random
//! checkpoint write of any execution, or at a random time from outside — and resumed (the
//! resume itself sometimes killed too) until it finishes. Then:
//!
//! * the output and the totals (calls, cost) equal the uninterrupted run's;
//! * the store holds exactly the uninterrupted run's executions (no child started twice) and
//!   every one of them finished (none abandoned);
//! * per child, the agent calls and actions that ran (`ops.log`) are the uninterrupted run's
//!   plus at most one per kill: only the op in flight at the kill runs again, never a child.
//!
//! `FLATMACHINE_KILL_TRIALS` (trials per store and kill kind, default 3) and
//! `FLATMACHINE_KILL_SEED` scale it up or replay a failure.

use std::collections::BTreeMap;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use flatmachine_runtime::persistence::CheckpointStore;
use flatmachine_runtime::run_tree::{Fate, RunTree};
use serde_json::Value;

mod support;

use support::{Rng, env_u64};

const BIN: &str = env!("CARGO_BIN_EXE_compose_crash");

fn command(dir: &Path, store: &str, verb: &str, kill_after: Option<u64>) -> Command {
    let mut c = Command::new(BIN);
    c.arg(dir)
        .args([verb, "batch", "--store", store])
        .stderr(Stdio::piped())
        .stdout(Stdio::piped());
    if let Some(n) = kill_after {
        c.args(["--kill-after", &n.to_string()]);
    }
    c
}

/// Runs the command; `Some(result)` when it finished, `None` when it died by SIGKILL.
fn finish(mut c: Command) -> Option<Value> {
    let out = c.output().expect("run compose_crash");
    if out.status.signal() == Some(9) {
        return None;
    }
    assert!(
        out.status.success(),
        "compose_crash failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    Some(serde_json::from_slice(&out.stdout).expect("the result as JSON"))
}

/// How many ops each child ran (`ops.log`: `<child> <op>` per line).
fn ops(dir: &Path) -> BTreeMap<String, u64> {
    let mut counts = BTreeMap::new();
    for line in std::fs::read_to_string(dir.join("ops.log"))
        .unwrap_or_default()
        .lines()
    {
        let child = line.split(' ').next().unwrap_or_default().to_string();
        *counts.entry(child).or_default() += 1;
    }
    counts
}

fn open_store(dir: &Path, store: &str) -> CheckpointStore {
    match store {
        "sqlite" => {
            CheckpointStore::sqlite(dir.join(".checkpoints/checkpoints.sqlite")).expect("open")
        }
        _ => CheckpointStore::local(dir.join(".checkpoints")),
    }
}

/// What a finished trial is compared on.
struct Finished {
    result: Value,
    ops: BTreeMap<String, u64>,
    executions: usize,
}

async fn inspect(dir: &Path, store: &str, result: Value) -> Finished {
    let tree = RunTree::load(&open_store(dir, store)).await.unwrap();
    let unfinished: Vec<String> = tree
        .runs
        .iter()
        .filter(|r| r.fate != Fate::Finished)
        .map(|r| format!("{} ({:?})", r.execution_id, r.fate))
        .collect();
    assert!(unfinished.is_empty(), "left unfinished: {unfinished:?}");
    Finished {
        result: result_without_writes(result),
        ops: ops(dir),
        executions: tree.runs.len(),
    }
}

fn result_without_writes(mut result: Value) -> Value {
    if let Value::Object(m) = &mut result {
        m.remove("checkpoint_writes");
    }
    result
}

#[tokio::test]
async fn killed_compositions_resume_to_the_uninterrupted_result_rerunning_only_what_was_in_flight()
{
    let trials = env_u64("FLATMACHINE_KILL_TRIALS", 3);
    let seed = env_u64(
        "FLATMACHINE_KILL_SEED",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64
            | 1,
    );
    eprintln!("FLATMACHINE_KILL_SEED={seed} FLATMACHINE_KILL_TRIALS={trials}");
    let mut rng = Rng(seed);
    let root = tempfile::tempdir().unwrap();
    let mut problems = Vec::new();
    let mut kills_total = 0;
    let mut trials_total = 0;

    for store in ["sqlite", "files"] {
        let base_dir = root.path().join(format!("{store}-whole"));
        std::fs::create_dir_all(&base_dir).unwrap();
        let whole = finish(command(&base_dir, store, "run", None)).expect("the run finishes");
        let writes = whole["checkpoint_writes"].as_u64().unwrap();
        let base = inspect(&base_dir, store, whole).await;
        assert_eq!(
            base.executions, 15,
            "batch, 6 tickets, 6 approvals, summary, audit"
        );
        assert!(base.ops.values().all(|n| *n >= 1));

        for trial in 0..trials * 2 {
            trials_total += 1;
            let at_random_time = trial % 2 == 1;
            let dir = root.path().join(format!("{store}-{trial}"));
            std::fs::create_dir_all(&dir).unwrap();
            let mut kills = 0u64;
            let mut plan = Vec::new();
            // The first run: killed after a random checkpoint write, or at a random time.
            let mut result = if at_random_time {
                let wait = rng.below(500);
                plan.push(format!("run killed after {wait} ms"));
                let mut child = command(&dir, store, "run", None).spawn().unwrap();
                std::thread::sleep(Duration::from_millis(wait));
                let _ = child.kill();
                let out = child.wait_with_output().unwrap();
                if out.status.success() {
                    plan.push("(it had finished)".into());
                    Some(serde_json::from_slice(&out.stdout).unwrap())
                } else {
                    kills += 1;
                    None
                }
            } else {
                let k = 1 + rng.below(writes - 1);
                plan.push(format!("run killed after write {k}"));
                let r = finish(command(&dir, store, "run", Some(k)));
                kills += u64::from(r.is_none());
                r
            };
            // Resumes until one finishes; every other one is killed again at a random write.
            let mut resumes = 0;
            while result.is_none() {
                resumes += 1;
                assert!(resumes < 20, "no resume finished: {plan:?}");
                let kill_after = (rng.below(3) == 0).then(|| 1 + rng.below(writes / 2));
                // Killed before its first checkpoint, the run left nothing: start it again.
                let verb = match open_store(&dir, store).latest_checkpoint_key("batch").await {
                    Ok(Some(_)) => "resume",
                    _ => "run",
                };
                plan.push(match kill_after {
                    Some(k) => format!("{verb} (kill after write {k})"),
                    None => verb.into(),
                });
                result = finish(command(&dir, store, verb, kill_after));
                kills += u64::from(result.is_none());
            }
            kills_total += kills;
            let got = inspect(&dir, store, result.unwrap()).await;
            let what = format!("{store} trial {trial} ({}):", plan.join(", "));
            if got.result != base.result {
                problems.push(format!("{what} result {} != {}", got.result, base.result));
            }
            if got.executions != base.executions {
                problems.push(format!(
                    "{what} {} executions, not {}",
                    got.executions, base.executions
                ));
            }
            for (child, n) in &base.ops {
                let ran = got.ops.get(child).copied().unwrap_or(0);
                if ran < *n || ran > n + kills {
                    problems.push(format!(
                        "{what} child {child} ran {ran} ops (uninterrupted {n}, kills {kills})"
                    ));
                }
            }
            if got.ops.len() != base.ops.len() {
                problems.push(format!("{what} children {:?}", got.ops.keys()));
            }
        }
    }
    eprintln!("{trials_total} trials, {kills_total} kills");
    assert!(kills_total > 0, "nothing was killed");
    assert!(
        problems.is_empty(),
        "{} problem(s):\n{}",
        problems.len(),
        problems.join("\n")
    );
}
