//! The `cli::main` contract (`fm_app`), and `SubprocessInvoker` running a launched child as a
//! separate process of the same binary.

use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_fm_app");

fn fm(dir: &std::path::Path, subprocess: bool, args: &[&str]) -> std::process::Output {
    let mut c = Command::new(BIN);
    c.args(args).env("FLATMACHINE_EXAMPLE_DIR", dir);
    if subprocess {
        c.env("FM_SUBPROCESS", "1");
    }
    c.output().expect("run fm_app")
}

#[test]
fn run_prints_the_output_as_json_and_resume_returns_it_again() {
    let dir = tempfile::tempdir().unwrap();
    let out = fm(
        dir.path(),
        false,
        &[
            "run",
            "--input",
            r#"{"job": "a"}"#,
            "--execution-id",
            "cli-1",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let output: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(output, serde_json::json!({"launched": "a"}));
    let again = fm(dir.path(), false, &["resume", "cli-1"]);
    assert!(again.status.success());
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&again.stdout).unwrap(),
        output
    );
}

#[test]
fn errors_go_to_stderr_with_a_non_zero_exit() {
    let dir = tempfile::tempdir().unwrap();
    let bad = fm(dir.path(), false, &["run", "--input", "not json"]);
    assert_eq!(bad.status.code(), Some(1));
    assert!(bad.stdout.is_empty());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("error: the input is not valid JSON"));
    let unknown = fm(dir.path(), false, &["resume", "nope"]);
    assert_eq!(unknown.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&unknown.stderr).contains("no checkpoint for execution `nope`")
    );
    let usage = fm(dir.path(), false, &["frobnicate"]);
    assert_eq!(usage.status.code(), Some(2));
}

#[test]
fn the_subprocess_invoker_runs_the_child_in_another_process() {
    let dir = tempfile::tempdir().unwrap();
    let child = Command::new(BIN)
        .args([
            "run",
            "--input",
            r#"{"job": "b"}"#,
            "--execution-id",
            "cli-sub",
        ])
        .env("FLATMACHINE_EXAMPLE_DIR", dir.path())
        .env("FM_SUBPROCESS", "1")
        .spawn()
        .unwrap();
    let parent_pid = child.id();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let pids = std::fs::read_to_string(dir.path().join("work.pids")).unwrap();
    let pids: Vec<u32> = pids.lines().map(|l| l.parse().unwrap()).collect();
    assert_eq!(pids.len(), 1, "the worker ran once");
    assert_ne!(pids[0], parent_pid, "the worker ran in its own process");
    // The worker process checkpointed with the parent's id as its lineage.
    let checkpoints = dir.path().join(".checkpoints");
    let lineage = std::fs::read_dir(&checkpoints)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name() != "cli-sub")
        .any(|e| {
            let latest = std::fs::read_to_string(e.path().join("latest")).unwrap_or_default();
            std::fs::read_to_string(checkpoints.join(latest.trim()))
                .is_ok_and(|s| s.contains(r#""parent_execution_id": "cli-sub""#))
        });
    assert!(lineage, "the child's checkpoints name its parent");
}

#[test]
fn inspect_prints_the_history_from_the_configured_store() {
    let dir = tempfile::tempdir().unwrap();
    let run = fm(
        dir.path(),
        false,
        &["run", "--input", r#"{"job": "b"}"#, "-e", "cli-inspect"],
    );
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );

    let table = fm(dir.path(), false, &["inspect", "cli-inspect"]);
    assert!(
        table.status.success(),
        "{}",
        String::from_utf8_lossy(&table.stderr)
    );
    let table = String::from_utf8(table.stdout).unwrap();
    assert!(
        table.starts_with("execution cli-inspect  machine launcher"),
        "{table}"
    );
    assert!(table.contains("machine_end"), "{table}");
    assert!(table.contains("launch worker ("), "{table}");

    let json = fm(dir.path(), false, &["inspect", "cli-inspect", "--json"]);
    let history: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    let checkpoints = history["checkpoints"].as_array().unwrap();
    assert_eq!(checkpoints.first().unwrap()["event"], "machine_start");
    assert_eq!(checkpoints.last().unwrap()["event"], "machine_end");
    let child = checkpoints
        .iter()
        .find_map(|c| c["pending_launches"].as_array().and_then(|l| l.first()))
        .expect("the launch is in the outbox")["execution_id"]
        .as_str()
        .unwrap()
        .to_owned();

    // Without an id: every execution in the store, the launched child included.
    let list = fm(dir.path(), false, &["inspect"]);
    let list = String::from_utf8(list.stdout).unwrap();
    assert!(list.contains("cli-inspect  launcher"), "{list}");
    assert!(list.contains(&format!("{child}  worker")), "{list}");
    let child_history = fm(dir.path(), false, &["inspect", &child, "--json"]);
    let child_history: serde_json::Value = serde_json::from_slice(&child_history.stdout).unwrap();
    assert_eq!(child_history["parent_execution_id"], "cli-inspect");
}

#[test]
fn resume_of_a_child_id_runs_it_as_that_child_or_names_the_machine() {
    let dir = tempfile::tempdir().unwrap();
    let run = fm(
        dir.path(),
        false,
        &["run", "--input", r#"{"job": "c"}"#, "-e", "cli-child"],
    );
    assert!(run.status.success());
    let checkpoints = dir.path().join(".checkpoints");
    let child = std::fs::read_dir(&checkpoints)
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .find(|name| name != "cli-child")
        .expect("the worker's checkpoints");
    // The id names a `worker` run: the app's root machine hands it to its child machine.
    let resumed = fm(dir.path(), false, &["resume", &child]);
    assert!(
        resumed.status.success(),
        "{}",
        String::from_utf8_lossy(&resumed.stderr)
    );
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&resumed.stdout).unwrap(),
        serde_json::json!({"job": "c", "done": true})
    );

    // A run of a machine the app does not have: the error says which one, and how.
    let stray = checkpoints.join("stray");
    std::fs::create_dir_all(&stray).unwrap();
    let mut snapshot = flatmachine_runtime::persistence::MachineSnapshot::new(
        "stray",
        "triage",
        "1.0.0",
        "approve",
        Default::default(),
        4,
    );
    snapshot.event = Some("execute".into());
    snapshot.parent_execution_id = Some("batch-7".into());
    std::fs::write(
        stray.join("step_000004_execute.json"),
        snapshot.to_json_vec().unwrap(),
    )
    .unwrap();
    std::fs::write(stray.join("latest"), "stray/step_000004_execute.json").unwrap();
    let refused = fm(dir.path(), false, &["resume", "stray"]);
    assert_eq!(refused.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains("execution `stray` is a run of machine `triage` (a child of execution `batch-7`), not of `launcher`"),
        "{stderr}"
    );
    assert!(stderr.contains("app resume stray --machine"), "{stderr}");
    assert!(!stderr.contains("corrupt"), "{stderr}");

    // The run tree shows the child under its parent, finished.
    let tree = fm(dir.path(), false, &["inspect", "--tree"]);
    let tree = String::from_utf8(tree.stdout).unwrap();
    assert!(tree.contains("cli-child  launcher  finished"), "{tree}");
    assert!(
        tree.contains(&format!("  └ {child}  worker  finished")),
        "{tree}"
    );
    assert!(
        tree.contains("stray  triage  step 4 execute approve — orphan"),
        "{tree}"
    );
}
