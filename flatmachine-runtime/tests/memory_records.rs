//! The memory store keeps checkpoints as records (parts, the context shared between
//! checkpoints) and serializes them when read: what it reads back must be, byte for byte, what
//! a file store holds for the same run.

use std::path::Path;
use std::sync::Arc;

use flatmachine_runtime::persistence::{
    CheckpointStore, LocalFileBackend, MachineSnapshot, MemoryBackend, PersistenceBackend,
};
use flatmachine_runtime::{Machine, MachineBuilder, RunOptions, Value};
use serde_json::json;

flatmachine_runtime::flatmachine!("tests/machines/records_loop.yml");
flatmachine_runtime::flatmachine!("tests/machines/parent_foreach.yml");
flatmachine_runtime::flatmachine!("tests/machines/parent_launch.yml");

/// `tick`: step 1 of every 3 moves `a` to the end of the context, step 2 flips the sign of
/// `z` (0.0 ⇄ -0.0), step 3 counts. The first two leave the context `==` to what it was.
fn with_tick(builder: MachineBuilder) -> MachineBuilder {
    builder.action_mut("tick", |ctx, call| {
        match call.step % 3 {
            1 => {
                if let Some(a) = ctx.shift_remove("a") {
                    ctx.insert("a".into(), a);
                }
            }
            2 => {
                let z = ctx.get("z").and_then(Value::as_f64).unwrap_or(0.0);
                ctx.insert("z".into(), json!(-z));
            }
            _ => {
                let i = ctx.get("i").and_then(Value::as_i64).unwrap_or(0);
                ctx.insert("i".into(), json!(i + 1));
            }
        }
        Box::pin(async { Ok(()) })
    })
}

/// `double` (child_double.yml): `y = 2x`.
fn with_double(builder: MachineBuilder) -> MachineBuilder {
    builder.action_mut("double", |ctx, _call| {
        let x = ctx.get("x").and_then(Value::as_i64).unwrap_or(0);
        ctx.insert("y".into(), json!(2 * x));
        Box::pin(async { Ok(()) })
    })
}

/// Replaces the value of `"created_at"` (the only part that differs between two runs).
fn without_timestamp(json: &str) -> String {
    let start = json
        .find("\"created_at\": \"")
        .expect("a snapshot has created_at")
        + 15;
    let end = start + json[start..].find('"').expect("a closed string");
    format!("{}<time>{}", &json[..start], &json[end..])
}

/// Every key under `prefix` in both stores, each read back as text, timestamps masked.
async fn contents(backend: &dyn PersistenceBackend, prefix: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for key in backend.list(prefix).await.unwrap() {
        // Trace records (`crate::trace`) are written to stores outside the process only.
        if key.contains("/trace/") {
            continue;
        }
        let text = backend.load_text(&key).await.unwrap().unwrap();
        let text = if key.ends_with("/latest") {
            text
        } else {
            without_timestamp(&text)
        };
        out.push((key, text));
    }
    out
}

async fn run_on_both(builder: impl Fn() -> MachineBuilder, input: Value, id: &str, dir: &Path) {
    let memory = Arc::new(MemoryBackend::new());
    let files = Arc::new(LocalFileBackend::new(dir).with_fsync(false));
    let mut outputs = Vec::new();
    for backend in [
        Arc::clone(&memory) as Arc<dyn PersistenceBackend>,
        Arc::clone(&files) as Arc<dyn PersistenceBackend>,
    ] {
        let machine = builder()
            .persistence(CheckpointStore::new(backend))
            .lock_dir(dir.join(".locks"))
            .build()
            .unwrap();
        let result = machine
            .run_with(input.clone(), RunOptions::new().execution_id(id))
            .await
            .unwrap();
        outputs.push(result.output);
    }
    assert_eq!(outputs[0], outputs[1]);
    let prefix = format!("{id}/");
    let in_memory = contents(memory.as_ref(), &prefix).await;
    assert!(in_memory.len() > 4, "{in_memory:?}");
    assert_eq!(in_memory, contents(files.as_ref(), &prefix).await);
    // Loading parses the same bytes.
    for (key, _) in in_memory.iter().filter(|(k, _)| k.ends_with(".json")) {
        let json = memory.get_json(key).unwrap();
        let snapshot = memory.load(key).await.unwrap().unwrap();
        assert_eq!(snapshot, MachineSnapshot::from_json_slice(&json).unwrap());
        assert_eq!(snapshot.to_json_vec().unwrap(), &*json, "{key}");
    }
}

#[tokio::test]
async fn changes_equal_under_eq_are_still_written() {
    let dir = tempfile::tempdir().unwrap();
    run_on_both(
        || with_tick(Machine::of::<records_loop::Machine>()),
        json!({}),
        "loop-1",
        dir.path(),
    )
    .await;
    // The flips and moves show in the checkpoints (step 1 is `start`: `tick` flips `z` at
    // step 2, moves `a` at step 4).
    let memory = Arc::new(MemoryBackend::new());
    let machine = with_tick(Machine::of::<records_loop::Machine>())
        .persistence(CheckpointStore::new(memory.clone()))
        .build()
        .unwrap();
    machine
        .run_with(json!({}), RunOptions::new().execution_id("loop-2"))
        .await
        .unwrap();
    let text = |key: &str| String::from_utf8(memory.get_json(key).unwrap().to_vec()).unwrap();
    let context = |key: &str| {
        let json = text(&format!("loop-2/step_{key}.json"));
        let start = json.find("\"context\": ").unwrap() + 11;
        json[start..start + json[start..].find('}').unwrap() + 1].to_owned()
    };
    for (checkpoint, expected) in [
        ("000002_execute", r#"{"i": 0, "a": 1, "z": 0.0}"#),
        ("000002_state_exit", r#"{"i": 0, "a": 1, "z": -0.0}"#),
        ("000003_state_exit", r#"{"i": 1, "a": 1, "z": -0.0}"#),
        ("000004_execute", r#"{"i": 1, "a": 1, "z": -0.0}"#),
        ("000004_state_exit", r#"{"i": 1, "z": -0.0, "a": 1}"#),
        ("000005_state_exit", r#"{"i": 1, "z": 0.0, "a": 1}"#),
    ] {
        assert_eq!(context(checkpoint), expected, "{checkpoint}");
    }
}

#[tokio::test]
async fn children_and_launches_read_back_as_files_hold_them() {
    let dir = tempfile::tempdir().unwrap();
    run_on_both(
        || with_double(Machine::of::<parent_foreach::Machine>()),
        json!({"items": [1, 2, 3], "fail_on": -1}),
        "fan-1",
        dir.path(),
    )
    .await;
    // The launched child waits until both runs are read back: whether its outbox entry is
    // still pending at a parent checkpoint otherwise depends on which finishes first.
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let child_gate = gate.clone();
    run_on_both(
        move || {
            let gate = child_gate.clone();
            Machine::of::<parent_launch::Machine>().action_mut("double", move |ctx, _call| {
                let gate = gate.clone();
                Box::pin(async move {
                    if let Ok(permit) = gate.acquire().await {
                        permit.forget();
                    }
                    let x = ctx.get("x").and_then(Value::as_i64).unwrap_or(0);
                    ctx.insert("y".into(), json!(2 * x));
                    Ok(())
                })
            })
        },
        json!({"x": 4}),
        "launch-1",
        dir.path(),
    )
    .await;
    gate.add_permits(2);
}

#[tokio::test]
async fn memory_keys_list_delete_and_prune_like_files() {
    let memory = Arc::new(MemoryBackend::new());
    let store = CheckpointStore::new(memory.clone()).with_keep_last(Some(2));
    let machine = with_tick(Machine::of::<records_loop::Machine>())
        .persistence(store.clone())
        .build()
        .unwrap();
    machine
        .run_with(json!({}), RunOptions::new().execution_id("p"))
        .await
        .unwrap();
    assert_eq!(
        memory.list("p/").await.unwrap(),
        vec![
            "p/latest",
            "p/step_000010_machine_end.json",
            "p/step_000010_state_exit.json"
        ]
    );
    assert_eq!(
        memory.load_text("p/latest").await.unwrap().as_deref(),
        Some("p/step_000010_machine_end.json")
    );
    // A checkpoint key can be overwritten with text and deleted like any other key.
    memory
        .save_text("p/step_000010_state_exit.json", "hello")
        .await
        .unwrap();
    assert_eq!(
        memory
            .load_text("p/step_000010_state_exit.json")
            .await
            .unwrap()
            .as_deref(),
        Some("hello")
    );
    memory
        .delete("p/step_000010_state_exit.json")
        .await
        .unwrap();
    memory.delete("p/latest").await.unwrap();
    memory.save_text("p-other", "x").await.unwrap();
    assert_eq!(
        memory.list("p").await.unwrap(),
        vec!["p-other", "p/step_000010_machine_end.json"]
    );
    assert_eq!(memory.len(), 2);
    // The run resumes from what is left (its `latest` is gone: the newest checkpoint).
    let resumed = store.load_latest("p").await.unwrap().unwrap();
    assert_eq!(resumed.event.as_deref(), Some("machine_end"));
}
