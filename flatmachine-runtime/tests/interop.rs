//! Checkpoint interop with the Python reference, `flatmachines==1.0.0`.
//!
//! The same machine (`tests/fixtures/interop/interop.yml`) runs in both runtimes with the same
//! actions (`reference.py`'s `InteropHooks.on_action` and [`interop_machine`] here). A run that
//! dies in one runtime is resumed from its disk checkpoints by the other, and must finish with
//! the output an uninterrupted run gives; an uninterrupted run writes the same checkpoint files,
//! byte for byte, in both.
//!
//! Needs `python3` (or `$FLATMACHINE_PYTHON`) with `flatmachines==1.0.0` installed
//! (`pip install flatmachines==1.0.0`); without it every test prints `SKIP` and passes.

// The by-value `MachineBuilder::action` form is deprecated but must keep working: these tests pin it.
#![allow(deprecated)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

use flatmachine_runtime::{Context, Machine, RunError, StateError, Value};
use serde_json::json;

flatmachine_runtime::flatmachine!("tests/fixtures/interop/interop.yml");

/// Exit status of the reference script when it kills itself (`os._exit(3)`).
const CRASH_STATUS: i32 = 3;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/interop")
        .join(name)
}

/// The Python interpreter with `flatmachines` importable, or `None` (after printing why).
fn python() -> Option<&'static str> {
    static PYTHON: OnceLock<Option<String>> = OnceLock::new();
    PYTHON
        .get_or_init(|| {
            let python =
                std::env::var("FLATMACHINE_PYTHON").unwrap_or_else(|_| "python3".to_string());
            let check = Command::new(&python)
                .args([
                    "-c",
                    "import flatmachines, importlib.metadata as m; print(m.version('flatmachines'))",
                ])
                .output();
            match check {
                Ok(out) if out.status.success() => {
                    let version = String::from_utf8_lossy(&out.stdout).trim().to_string();
                    if version != "1.0.0" {
                        eprintln!("note: interop runs against flatmachines {version}, not 1.0.0");
                    }
                    Some(python)
                }
                Ok(out) => {
                    eprintln!(
                        "SKIP: `{python} -c 'import flatmachines'` failed ({}); install the reference with `pip install flatmachines==1.0.0` to run the interop tests.\n{}",
                        out.status,
                        String::from_utf8_lossy(&out.stderr).trim()
                    );
                    None
                }
                Err(e) => {
                    eprintln!(
                        "SKIP: cannot run `{python}` ({e}); install Python 3 and `pip install flatmachines==1.0.0` to run the interop tests."
                    );
                    None
                }
            }
        })
        .as_deref()
}

macro_rules! require_python {
    () => {
        match python() {
            Some(p) => p,
            None => {
                println!("SKIP: the Python reference (flatmachines) is not installed");
                return;
            }
        }
    };
}

/// Runs `reference.py` with `args`, in `dir`.
fn reference(python: &str, mode: &str, dir: &Path, id: &str, extra: &[&str]) -> Output {
    let out = Command::new(python)
        .arg(fixture("reference.py"))
        .arg(mode)
        .arg("--config")
        .arg(fixture("interop.yml"))
        .arg("--dir")
        .arg(dir)
        .args(["--id", id])
        .args(extra)
        .output()
        .expect("run reference.py");
    eprintln!(
        "reference.py {mode} ({}):\n--- stdout\n{}--- stderr\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// The `RESULT:` line of a successful reference run.
fn reference_result(out: &Output) -> Value {
    assert!(out.status.success(), "reference.py failed: {}", out.status);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout
        .lines()
        .rev()
        .find_map(|l| l.strip_prefix("RESULT: "))
        .expect("reference.py prints a RESULT line");
    serde_json::from_str(line).expect("RESULT is JSON")
}

/// The interop machine with the same actions as `reference.py`, checkpointing below `dir`.
/// `crash_point` fails (with no `on_error`, so the run stops) while `fail` is set.
fn interop_machine(dir: &Path, fail: Arc<AtomicBool>) -> flatmachine_runtime::MachineBuilder {
    fn int(ctx: &Context, key: &str) -> i64 {
        ctx.get(key).and_then(Value::as_i64).unwrap_or(0)
    }
    fn trail(ctx: &mut Context, what: &str) {
        if let Some(Value::Array(t)) = ctx.get_mut("trail") {
            t.push(json!(what));
        }
    }
    Machine::of::<interop::Machine>()
        // flatmachines 1.0.0 refuses snapshots with fields it does not know (`config_hash`):
        // interop with it means checkpoints without the fingerprint.
        .write_config_hash(false)
        .checkpoint_dir(dir.join(".checkpoints"))
        .lock_dir(dir.join(".locks"))
        .action("prepare", |mut ctx: Context| async move {
            trail(&mut ctx, "prepare");
            Ok(ctx)
        })
        .action("add", |mut ctx: Context| async move {
            let total = int(&ctx, "total") + int(&ctx, "n");
            ctx.insert("total".into(), json!(total));
            trail(&mut ctx, "add");
            Ok(ctx)
        })
        .action("crash_point", move |mut ctx: Context| {
            let fail = fail.load(Ordering::SeqCst);
            async move {
                if fail {
                    return Err(StateError::new("Interrupted", "stopped at crash_point"));
                }
                trail(&mut ctx, "crash_point");
                Ok(ctx)
            }
        })
        .action("finish", |mut ctx: Context| async move {
            let result = format!("total={}", int(&ctx, "total"));
            ctx.insert("result".into(), json!(result));
            Ok(ctx)
        })
}

fn input() -> Value {
    json!({"n": 4})
}

fn expected_output() -> Value {
    json!({
        "total": 12,
        "trail": ["prepare", "add", "add", "add", "crash_point"],
        "result": "total=12",
    })
}

/// The output of an uninterrupted Rust run (in its own directory).
async fn uninterrupted_rust_output() -> Value {
    let dir = tempfile::tempdir().unwrap();
    let machine = interop_machine(dir.path(), Arc::default()).build().unwrap();
    let result = machine.run(input()).await.unwrap();
    assert_eq!(result.steps, 7);
    result.output
}

fn latest(dir: &Path, id: &str) -> String {
    std::fs::read_to_string(dir.join(".checkpoints").join(id).join("latest")).unwrap()
}

// -------------------------------------------------------------------------------------------
// Python → Rust
// -------------------------------------------------------------------------------------------

#[tokio::test]
async fn a_run_killed_in_the_reference_resumes_in_rust() {
    let python = require_python!();
    let dir = tempfile::tempdir().unwrap();
    let id = "py-crash-action";
    let out = reference(
        python,
        "run",
        dir.path(),
        id,
        &["--input", &input().to_string(), "--crash-in", "crash_point"],
    );
    assert_eq!(
        out.status.code(),
        Some(CRASH_STATUS),
        "the reference run should die"
    );
    // The reference wrote `execute` for crash_point (step 5) just before the action killed it.
    assert_eq!(
        latest(dir.path(), id),
        format!("{id}/step_000005_execute.json")
    );

    let machine = interop_machine(dir.path(), Arc::default()).build().unwrap();
    let resumed = machine.resume(id).await.unwrap();
    assert_eq!(resumed.output, expected_output());
    assert_eq!(resumed.output, uninterrupted_rust_output().await);
    assert_eq!(resumed.final_state, "done");
    // crash_point runs again under its own step 5 (the reference would spend step 6 on it);
    // finish 6; done 7, as in the uninterrupted run.
    assert_eq!(resumed.steps, 7);
    assert_eq!(
        latest(dir.path(), id),
        format!("{id}/step_000007_machine_end.json")
    );

    // The finished execution now reads back in the reference too.
    let again = reference(python, "resume", dir.path(), id, &[]);
    assert_eq!(reference_result(&again), expected_output());
}

#[tokio::test]
async fn a_reference_machine_start_checkpoint_resumes_at_the_real_initial_state() {
    // The reference writes `current_state: "start"` for machine_start, although the initial
    // state is `begin`; the engine resumes such a checkpoint at the initial state.
    let python = require_python!();
    let dir = tempfile::tempdir().unwrap();
    let id = "py-crash-start";
    let out = reference(
        python,
        "run",
        dir.path(),
        id,
        &[
            "--input",
            &input().to_string(),
            "--crash-in",
            "on_machine_start",
        ],
    );
    assert_eq!(out.status.code(), Some(CRASH_STATUS));
    let key = latest(dir.path(), id);
    assert_eq!(key, format!("{id}/step_000000_machine_start.json"));
    let snapshot: Value =
        serde_json::from_slice(&std::fs::read(dir.path().join(".checkpoints").join(&key)).unwrap())
            .unwrap();
    assert_eq!(snapshot["current_state"], "start");

    let machine = interop_machine(dir.path(), Arc::default()).build().unwrap();
    let resumed = machine.resume(id).await.unwrap();
    assert_eq!(resumed.output, expected_output());
    assert_eq!(resumed.steps, 7);
}

// -------------------------------------------------------------------------------------------
// Rust → Python
// -------------------------------------------------------------------------------------------

#[tokio::test]
async fn a_run_stopped_in_rust_resumes_in_the_reference() {
    let python = require_python!();
    let dir = tempfile::tempdir().unwrap();
    let id = "rs-stopped";
    let machine = interop_machine(dir.path(), Arc::new(AtomicBool::new(true)))
        .build()
        .unwrap();
    match machine.run_with_id(id, input()).await.unwrap_err() {
        RunError::State { state, error, .. } => {
            assert_eq!(state, "crash_point");
            assert_eq!(error.error_type, "Interrupted");
        }
        other => panic!("expected a state error, got {other:?}"),
    }
    // The lock was released when the run failed, so the reference can take it.
    assert_eq!(
        latest(dir.path(), id),
        format!("{id}/step_000005_execute.json")
    );

    let out = reference(python, "resume", dir.path(), id, &[]);
    assert_eq!(reference_result(&out), expected_output());
    assert_eq!(reference_result(&out), uninterrupted_rust_output().await);
    assert_eq!(
        latest(dir.path(), id),
        format!("{id}/step_000008_machine_end.json")
    );

    // And the execution the reference finished reads back in Rust.
    let done = machine.resume(id).await.unwrap();
    assert_eq!(done.output, expected_output());
}

#[tokio::test]
async fn a_max_steps_checkpoint_resumes_the_same_in_both_runtimes() {
    // Stopped by max_steps, the latest checkpoint is a `state_exit`; both runtimes resume by
    // running that state again (the reference's behaviour), with the same result.
    let python = require_python!();
    let dir = tempfile::tempdir().unwrap();
    let id = "rs-max-steps";
    let machine = interop_machine(dir.path(), Arc::default())
        .max_steps(3)
        .build()
        .unwrap();
    let err = machine.run_with_id(id, input()).await.unwrap_err();
    assert!(
        matches!(err, RunError::MaxSteps { limit: 3, .. }),
        "{err:?}"
    );
    assert_eq!(
        latest(dir.path(), id),
        format!("{id}/step_000003_state_exit.json")
    );

    let copy = tempfile::tempdir().unwrap();
    copy_dir(
        &dir.path().join(".checkpoints"),
        &copy.path().join(".checkpoints"),
    );

    let py = reference_result(&reference(python, "resume", dir.path(), id, &[]));
    let rs = interop_machine(copy.path(), Arc::default())
        .build()
        .unwrap()
        .resume(id)
        .await
        .unwrap();
    assert_eq!(py, rs.output);
    assert_eq!(rs.output, expected_output());
    assert_eq!(
        latest(dir.path(), id),
        latest(copy.path(), id),
        "both runtimes end at the same checkpoint"
    );
}

// -------------------------------------------------------------------------------------------
// Same files
// -------------------------------------------------------------------------------------------

/// A checkpoint file with `created_at` blanked, and (for machine_start) `current_state`, which
/// differs on purpose (SEMANTICS #16: the reference writes `"start"`).
fn normalized(bytes: &[u8]) -> String {
    let text = String::from_utf8(bytes.to_vec()).expect("UTF-8");
    let text = blank_string_field(&text, "created_at");
    if text.contains(r#""event": "machine_start""#) {
        blank_string_field(&text, "current_state")
    } else {
        text
    }
}

fn blank_string_field(text: &str, field: &str) -> String {
    let marker = format!("\"{field}\": \"");
    let Some(start) = text.find(&marker).map(|i| i + marker.len()) else {
        return text.to_string();
    };
    let end = start + text[start..].find('"').expect("closing quote");
    format!("{}{}", &text[..start], &text[end..])
}

fn files(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    names
}

#[tokio::test]
async fn both_runtimes_write_the_same_checkpoint_files() {
    let python = require_python!();
    let id = "same-files";
    let py_dir = tempfile::tempdir().unwrap();
    let py = reference_result(&reference(
        python,
        "run",
        py_dir.path(),
        id,
        &["--input", &input().to_string()],
    ));
    let rs_dir = tempfile::tempdir().unwrap();
    let rs = interop_machine(rs_dir.path(), Arc::default())
        .build()
        .unwrap()
        .run_with_id(id, input())
        .await
        .unwrap();
    assert_eq!(py, rs.output);

    let py_files = py_dir.path().join(".checkpoints").join(id);
    let rs_files = rs_dir.path().join(".checkpoints").join(id);
    // Beside each snapshot we also write its checksum file `<name>.crc32`, and the console's
    // `trace/` directory, which the reference neither writes nor reads; everything else is the
    // same set of files.
    let (sums, rs_names): (Vec<String>, Vec<String>) = files(&rs_files)
        .into_iter()
        .filter(|name| name != "trace")
        .partition(|name| name.ends_with(".json.crc32"));
    assert_eq!(files(&py_files), rs_names);
    assert_eq!(
        sums,
        rs_names
            .iter()
            .filter(|name| name.ends_with(".json"))
            .map(|name| format!("{name}.crc32"))
            .collect::<Vec<_>>()
    );
    assert_eq!(rs_names.len(), 3 * 7 + 2 + 1, "checkpoints + latest");
    for name in files(&py_files) {
        let a = std::fs::read(py_files.join(&name)).unwrap();
        let b = std::fs::read(rs_files.join(&name)).unwrap();
        assert_eq!(normalized(&a), normalized(&b), "{name} differs");
    }
    let start = std::fs::read_to_string(rs_files.join("step_000000_machine_start.json")).unwrap();
    assert!(start.contains(r#""current_state": "begin""#), "{start}");
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}
