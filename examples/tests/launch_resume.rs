//! `launch:` goes through an outbox: a parent process SIGKILLed between recording a launch and
//! starting the child, or after starting it, resumes in a new process and every launched child
//! runs exactly once (one `start` and one `end` in `runs.log`, with the recorded id).

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use flatmachine_runtime::persistence::MachineSnapshot;

const BIN: &str = env!("CARGO_BIN_EXE_launch_crash");

/// Starts `launch_crash run <id> --hang-at <point>`, waits for its marker file, SIGKILLs it.
fn run_and_kill(dir: &Path, id: &str, point: &str) {
    let mut child = Command::new(BIN)
        .args(["run", id, "--hang-at", point])
        .env("FLATMACHINE_EXAMPLE_DIR", dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn launch_crash");
    let marker = dir.join(point);
    let started = Instant::now();
    while !marker.exists() {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "never reached {point}"
        );
        if let Some(status) = child.try_wait().unwrap() {
            panic!("launch_crash exited early: {status}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().expect("SIGKILL");
    child.wait().unwrap();
}

fn resume(dir: &Path, id: &str) -> String {
    let out = Command::new(BIN)
        .args(["resume", id])
        .env("FLATMACHINE_EXAMPLE_DIR", dir)
        .output()
        .expect("run launch_crash resume");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "resume failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

fn latest(dir: &Path, id: &str) -> MachineSnapshot {
    let checkpoints = dir.join(".checkpoints");
    let pointer = std::fs::read_to_string(checkpoints.join(id).join("latest")).unwrap();
    MachineSnapshot::from_json_slice(&std::fs::read(checkpoints.join(pointer.trim())).unwrap())
        .unwrap()
}

fn runs(dir: &Path) -> Vec<String> {
    std::fs::read_to_string(dir.join("runs.log"))
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

#[test]
fn killed_between_recording_and_starting_the_child_runs_once_after_resume() {
    let dir = tempfile::tempdir().unwrap();
    run_and_kill(dir.path(), "parent-recorded", "recorded");
    let snap = latest(dir.path(), "parent-recorded");
    let intents = snap.pending_launches.expect("the launch is in the outbox");
    assert_eq!(intents.len(), 1);
    assert!(!intents[0].launched);
    let child = intents[0].execution_id.clone();
    assert!(runs(dir.path()).is_empty(), "the child had not started");

    let out = resume(dir.path(), "parent-recorded");
    assert!(out.contains(r#"{"launched":"report"}"#), "{out}");
    assert!(out.contains(&format!("launched {child} ")), "{out}");
    assert_eq!(
        runs(dir.path()),
        [format!("start {child}"), format!("end {child}")]
    );

    // Resuming the finished parent again starts nothing.
    resume(dir.path(), "parent-recorded");
    assert_eq!(runs(dir.path()).len(), 2);
}

#[test]
fn killed_after_starting_the_child_resumes_it_instead_of_starting_another() {
    let dir = tempfile::tempdir().unwrap();
    run_and_kill(dir.path(), "parent-started", "started");
    let snap = latest(dir.path(), "parent-started");
    let intents = snap.pending_launches.expect("the launch is still pending");
    assert!(intents[0].launched);
    let child = intents[0].execution_id.clone();
    assert_eq!(runs(dir.path()), [format!("start {child}")]);

    let out = resume(dir.path(), "parent-started");
    assert!(out.contains(&format!("launched {child} ")), "{out}");
    // The child was resumed from its checkpoint: no second start.
    assert_eq!(
        runs(dir.path()),
        [format!("start {child}"), format!("end {child}")]
    );
    let child_end = latest(dir.path(), &child);
    assert_eq!(child_end.event.as_deref(), Some("machine_end"));
    assert_eq!(
        child_end.parent_execution_id.as_deref(),
        Some("parent-started")
    );
}
