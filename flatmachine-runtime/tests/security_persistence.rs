//! Hostile replies and hostile disks (issue 17, items 5, 9, 12): model output nested to make a
//! run unresumable, `latest` pointers replaced by symlinks or huge files, and who may read
//! the files a run writes.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use flatmachine_runtime::agents::ScriptedBackend;
use flatmachine_runtime::persistence::CheckpointStore;
use flatmachine_runtime::{Machine, StateError, Value};
use serde_json::json;

flatmachine_runtime::flatmachine!("tests/machines/security/deep_reply.yml");
flatmachine_runtime::flatmachine!("tests/machines/security/grow.yml");

/// The documented depth limit of values entering a run.
const LIMIT: usize = 64;

/// `{"tree": [[…[]…]]}` nesting `depth` levels in all (the object counts as one).
fn reply_of_depth(depth: usize) -> String {
    let arrays = depth - 1;
    format!("{{\"tree\": {}{}}}", "[".repeat(arrays), "]".repeat(arrays))
}

/// The `deep_reply` machine answering `reply`, checkpointing below `dir`; its `gate` action
/// fails while `open` is false.
fn deep_reply_machine(dir: &Path, reply: &str, open: Arc<AtomicBool>) -> Machine {
    Machine::of::<deep_reply::Machine>()
        .llm_backend(Arc::new(ScriptedBackend::always(reply)))
        .action_mut("gate", move |_ctx, _call| {
            let open = open.load(Ordering::SeqCst);
            Box::pin(async move {
                if open {
                    Ok(())
                } else {
                    Err(StateError::new("Closed", "the gate is closed"))
                }
            })
        })
        .checkpoint_dir(dir.join("checkpoints"))
        .lock_dir(dir.join("locks"))
        .build()
        .unwrap()
}

/// Item 5: a reply nested 127 deep (what the JSON parser accepts) would be stored, and the
/// checkpoint holding it could not be loaded again. It is refused at the call, with an
/// `OutputParseError` naming the limit.
#[tokio::test]
async fn reply_nested_too_deep_for_a_checkpoint_is_refused_at_the_call() {
    let dir = tempfile::tempdir().unwrap();
    let open = Arc::new(AtomicBool::new(true));
    let m = deep_reply_machine(dir.path(), &reply_of_depth(127), open);
    let error = m.run_with_id("deep-1", json!({})).await.unwrap_err();
    let state_error = error.to_state_error();
    assert_eq!(state_error.error_type, "OutputParseError", "{error}");
    assert!(
        state_error
            .message
            .contains(&format!("more than {LIMIT} levels")),
        "{error}"
    );
    // Whatever the run left behind loads.
    let store = CheckpointStore::local(dir.path().join("checkpoints"));
    store.load_latest("deep-1").await.unwrap().unwrap();
}

/// Item 5, at the boundary: the deepest reply accepted goes into the context, through a
/// checkpoint on disk, and a resume from that checkpoint finishes with it intact. One level
/// more is refused.
#[tokio::test]
async fn deepest_accepted_reply_survives_checkpoint_and_resume() {
    let dir = tempfile::tempdir().unwrap();
    let open = Arc::new(AtomicBool::new(false));
    let reply = reply_of_depth(LIMIT);
    let m = deep_reply_machine(dir.path(), &reply, open.clone());
    let error = m.run_with_id("edge-1", json!({})).await.unwrap_err();
    assert_eq!(error.to_state_error().error_type, "Closed", "{error}");
    open.store(true, Ordering::SeqCst);
    let m = deep_reply_machine(dir.path(), &reply, open.clone());
    let result = m.resume("edge-1").await.unwrap();
    let expected: Value = serde_json::from_str(&reply).unwrap();
    assert_eq!(result.output["tree"], expected["tree"]);

    let m = deep_reply_machine(dir.path(), &reply_of_depth(LIMIT + 1), open);
    let error = m.run_with_id("edge-2", json!({})).await.unwrap_err();
    assert_eq!(error.to_state_error().error_type, "OutputParseError");
}

/// Item 5: a run input nested too deep is refused before the run starts.
#[tokio::test]
async fn run_input_nested_too_deep_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let m = deep_reply_machine(dir.path(), "{}", Arc::new(AtomicBool::new(true)));
    let input: Value = serde_json::from_str(&format!(
        "{{\"x\": {}{}}}",
        "[".repeat(120),
        "]".repeat(120)
    ))
    .unwrap();
    let error = m.run_with_id("input-1", input).await.unwrap_err();
    assert!(
        error
            .to_string()
            .contains(&format!("more than {LIMIT} levels")),
        "{error}"
    );
}

/// Item 5: whatever the context grows to, the writer never leaves a checkpoint that cannot be
/// loaded: the checkpoint that would be too deep fails the run (naming the limit), and the
/// execution's latest checkpoint still loads.
#[tokio::test]
async fn context_grown_too_deep_fails_the_write_not_the_resume() {
    let dir = tempfile::tempdir().unwrap();
    let m = Machine::of::<grow::Machine>()
        .action_mut("wrap", |ctx, _call| {
            Box::pin(async move {
                let tree = ctx.remove("tree").unwrap_or(Value::Null);
                ctx.insert("tree".into(), json!([tree]));
                let n = ctx["n"].as_u64().unwrap_or(0) + 1;
                ctx.insert("n".into(), json!(n));
                Ok(())
            })
        })
        .checkpoint_dir(dir.path().join("checkpoints"))
        .lock_dir(dir.path().join("locks"))
        .build()
        .unwrap();
    let error = m
        .run_with_id("grow-1", json!({"levels": 200}))
        .await
        .unwrap_err();
    assert!(error.to_string().contains("126 levels"), "{error}");
    let store = CheckpointStore::local(dir.path().join("checkpoints"));
    let latest = store.load_latest("grow-1").await.unwrap().unwrap();
    assert!(
        latest.context["n"].as_u64().unwrap() > 100,
        "{:?}",
        latest.context["n"]
    );
}

/// Item 9: a `latest` pointer replaced by a symlink is not followed, and the file it points
/// to is never quoted.
#[cfg(unix)]
#[tokio::test]
async fn symlinked_latest_pointer_is_refused_without_quoting_its_target() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("checkpoints");
    std::fs::create_dir_all(root.join("exec-1")).unwrap();
    let secret = dir.path().join("secret.txt");
    std::fs::write(&secret, "TOPSECRET-token-1234").unwrap();
    std::os::unix::fs::symlink(&secret, root.join("exec-1/latest")).unwrap();
    let store = CheckpointStore::local(&root);
    let error = store.load_latest("exec-1").await.unwrap_err().to_string();
    assert!(!error.contains("TOPSECRET"), "{error}");
    assert!(error.contains("symbolic link"), "{error}");
    assert!(error.contains("exec-1/latest"), "{error}");
}

/// Item 9: a `latest` pointer that is a huge file is refused by its size, and the message
/// stays short.
#[tokio::test]
async fn huge_latest_pointer_is_refused_by_size() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("checkpoints");
    std::fs::create_dir_all(root.join("exec-1")).unwrap();
    std::fs::write(root.join("exec-1/latest"), vec![b'a'; 4 << 20]).unwrap();
    let store = CheckpointStore::local(&root);
    let error = store.load_latest("exec-1").await.unwrap_err().to_string();
    assert!(error.len() < 1000, "{} bytes of error", error.len());
    assert!(error.contains("4096 bytes"), "{error}");
    // A pointer that is not a checkpoint key is never quoted either.
    std::fs::write(root.join("exec-1/latest"), "hunter2-password").unwrap();
    let error = store.load_latest("exec-1").await.unwrap_err().to_string();
    assert!(!error.contains("hunter2"), "{error}");
}

/// Item 9: a pointer linked to `/dev/zero` (endless) is refused at once.
#[cfg(unix)]
#[tokio::test]
async fn latest_pointer_linked_to_dev_zero_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("checkpoints");
    std::fs::create_dir_all(root.join("exec-1")).unwrap();
    std::os::unix::fs::symlink("/dev/zero", root.join("exec-1/latest")).unwrap();
    let store = CheckpointStore::local(&root);
    let error = store.load_latest("exec-1").await.unwrap_err().to_string();
    assert!(error.contains("symbolic link"), "{error}");
}

/// Item 9: snapshot files have a size cap too; the error names the file.
#[tokio::test]
async fn snapshot_file_larger_than_the_cap_is_refused() {
    use flatmachine_runtime::persistence::{LocalFileBackend, PersistenceBackend};
    let dir = tempfile::tempdir().unwrap();
    let m = deep_reply_machine(dir.path(), "{\"tree\": 1}", Arc::new(AtomicBool::new(true)));
    m.run_with_id("big-1", json!({})).await.unwrap();
    let backend = LocalFileBackend::new(dir.path().join("checkpoints")).with_max_snapshot_bytes(64);
    let store = CheckpointStore::new(Arc::new(backend.clone()));
    let key = store.latest_checkpoint_key("big-1").await.unwrap().unwrap();
    let error = backend.load(&key).await.unwrap_err().to_string();
    assert!(error.contains(&key), "{error}");
    assert!(error.contains("more than the 64 bytes"), "{error}");
}

/// Item 12: checkpoints, checksum files, pointers and lock files are readable by their owner
/// only, and the directories a run creates are owner-only.
#[cfg(unix)]
#[tokio::test]
async fn files_a_run_writes_are_private_to_their_owner() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let m = deep_reply_machine(dir.path(), "{\"tree\": 1}", Arc::new(AtomicBool::new(true)));
    m.run_with_id("modes-1", json!({})).await.unwrap();
    let mut seen = 0;
    let mut pending = vec![dir.path().join("checkpoints"), dir.path().join("locks")];
    while let Some(path) = pending.pop() {
        let meta = std::fs::symlink_metadata(&path).unwrap();
        let mode = meta.permissions().mode() & 0o777;
        if meta.is_dir() {
            assert_eq!(mode, 0o700, "{}", path.display());
            pending.extend(std::fs::read_dir(&path).unwrap().map(|e| e.unwrap().path()));
        } else {
            assert_eq!(mode, 0o600, "{}", path.display());
            seen += 1;
        }
    }
    assert!(seen >= 4, "only {seen} files");
}

/// Item 12: a SQLite checkpoint database the runtime creates is owner-only too, with its
/// directory and WAL files.
#[cfg(all(unix, feature = "sqlite"))]
#[tokio::test]
async fn sqlite_database_the_runtime_creates_is_private() {
    use flatmachine_runtime::persistence::MachineSnapshot;
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let db_dir = dir.path().join("db");
    let store = CheckpointStore::sqlite(db_dir.join("checkpoints.sqlite")).unwrap();
    let mut snapshot = MachineSnapshot::new(
        "e-1",
        "m",
        "1.0.0",
        "s",
        flatmachine_runtime::Context::new(),
        1,
    );
    snapshot.event = Some("execute".into());
    store.save(snapshot).await.unwrap();
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&db_dir), 0o700);
    let mut files = 0;
    for entry in std::fs::read_dir(&db_dir).unwrap() {
        let path = entry.unwrap().path();
        assert_eq!(mode(&path), 0o600, "{}", path.display());
        files += 1;
    }
    assert!(files >= 2, "{files} files");
}
