//! Crash harness for tool loops: the librarian (a real process, with a real MCP server
//! process) is SIGKILLed right after the checkpoint of each tool round, and at random times,
//! then resumed by a new process; the result must equal the uninterrupted run's — answer, tool
//! calls, turns, model calls, steps. After a kill at a round's checkpoint no recorded tool runs
//! again: the Rust tool's log shows exactly one execution.
//!
//! Bounded in trials, not timed: `FLATMACHINE_KILL_TRIALS` (random kills, default 3) and
//! `FLATMACHINE_KILL_SEED` scale it up or replay a failure.

use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Command, Stdio};

use serde_json::Value;

mod support;

use support::{Rng, env_u64};

const BIN: &str = env!("CARGO_BIN_EXE_librarian");

fn run(args: &[&str]) -> std::process::Output {
    Command::new(BIN)
        .args(args)
        .env_remove("OPENAI_API_KEY")
        .env_remove("OPENAI_BASE_URL")
        .output()
        .unwrap()
}

fn result(out: &std::process::Output) -> Value {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn executions(log: &Path) -> usize {
    std::fs::read_to_string(log)
        .map(|t| t.lines().count())
        .unwrap_or(0)
}

#[test]
fn a_tool_loop_killed_at_any_round_resumes_to_the_uninterrupted_result() {
    let root = tempfile::tempdir().unwrap();
    let dir = |name: &str| root.path().join(name);
    let path = |p: &Path| p.to_str().unwrap().to_string();

    let whole_log = dir("whole.log");
    let whole = result(&run(&[
        "--checkpoints",
        &path(&dir("whole")),
        "--id",
        "whole",
        "--tool-log",
        &path(&whole_log),
    ]));
    assert_eq!(executions(&whole_log), 1);
    let rounds = whole["output"]["turns"].as_u64().unwrap() - 1;
    assert_eq!(rounds, 3, "{whole}");

    let mut differences = Vec::new();
    for round in 1..=rounds {
        let (cp, log) = (dir(&format!("r{round}")), dir(&format!("r{round}.log")));
        let out = run(&[
            "--checkpoints",
            &path(&cp),
            "--id",
            "killed",
            "--kill-after-round",
            &round.to_string(),
            "--tool-log",
            &path(&log),
        ]);
        assert_eq!(
            out.status.signal(),
            Some(9),
            "round {round}: should die by SIGKILL: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let resumed = result(&run(&[
            "--resume",
            &path(&cp),
            "--id",
            "killed",
            "--tool-log",
            &path(&log),
        ]));
        if resumed != whole {
            differences.push(format!("killed after round {round}: {resumed}"));
        }
        assert_eq!(
            executions(&log),
            1,
            "killed after round {round}: the recorded word_count call ran again"
        );
    }

    // Kills at random times, from outside (also in the middle of a round, whose calls may
    // then run again).
    let trials = env_u64("FLATMACHINE_KILL_TRIALS", 3);
    let seed = env_u64(
        "FLATMACHINE_KILL_SEED",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64
            | 1,
    );
    eprintln!("FLATMACHINE_KILL_SEED={seed}");
    let mut rng = Rng(seed);
    for t in 0..trials {
        let cp = dir(&format!("random{t}"));
        let mut child = Command::new(BIN)
            .args(["--checkpoints", &path(&cp), "--id", "random"])
            .env_remove("OPENAI_API_KEY")
            .env_remove("OPENAI_BASE_URL")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let latest = cp.join(".checkpoints").join("random").join("latest");
        while !latest.exists() && child.try_wait().unwrap().is_none() {
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
        std::thread::sleep(std::time::Duration::from_millis(rng.below(150)));
        let _ = child.kill();
        child.wait().unwrap();
        let resumed = result(&run(&["--resume", &path(&cp), "--id", "random"]));
        if resumed != whole {
            differences.push(format!("random kill {t}: {resumed}"));
        }
    }
    assert!(
        differences.is_empty(),
        "resumes differ from {whole}:\n{}",
        differences.join("\n")
    );
}
