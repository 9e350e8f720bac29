//! `SqlitePersistence` (feature `sqlite`): the backend contract against the memory and file
//! backends, atomic checkpoints, pruning, resume through `persistence: {backend: sqlite}`, and
//! byte-for-byte conversion between the reference's file layout and SQLite.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use flatmachine_runtime::persistence::{
    CheckpointStore, LocalFileBackend, MachineSnapshot, MemoryBackend, PersistenceBackend,
    PersistenceError, SqliteOptions, SqlitePersistence, checkpoint_event, copy_executions,
    latest_key,
};
use flatmachine_runtime::{Context, Machine, RunError, StateError, Value};
use serde_json::json;

flatmachine_runtime::flatmachine!("tests/machines/resumable_sqlite.yml");

fn snap(id: &str, step: u64, event: &str) -> MachineSnapshot {
    let mut context = Context::new();
    context.insert("n".into(), json!(step));
    context.insert("text".into(), json!("naïve ☃ \"quoted\""));
    context.insert("f".into(), json!(1e-5));
    let mut s =
        MachineSnapshot::new(id, "m", "1.0.0", format!("s{step}"), context, step).with_event(event);
    s.total_api_calls = Some(step);
    s.total_cost = Some(0.5);
    s
}

/// The checkpoints of a run of `steps` states, in run order.
fn run_events(id: &str, steps: u64) -> Vec<MachineSnapshot> {
    let mut all = vec![snap(id, 0, checkpoint_event::MACHINE_START)];
    for step in 1..=steps {
        for event in [
            checkpoint_event::STATE_ENTER,
            checkpoint_event::EXECUTE,
            checkpoint_event::STATE_EXIT,
        ] {
            all.push(snap(id, step, event));
        }
    }
    all.push(snap(id, steps, checkpoint_event::MACHINE_END));
    all
}

fn db(dir: &Path) -> PathBuf {
    dir.join("cp").join("checkpoints.sqlite")
}

#[tokio::test]
async fn a_checkpoint_stores_the_reference_bytes_and_the_pointer_together() {
    let dir = tempfile::tempdir().unwrap();
    let store = CheckpointStore::sqlite(db(dir.path())).unwrap();
    let files = CheckpointStore::local(dir.path().join("files"));
    let snapshot = snap("exec-1", 3, checkpoint_event::EXECUTE);
    let key = store.save(snapshot.clone()).await.unwrap();
    files.save(snapshot.clone()).await.unwrap();
    assert_eq!(key, "exec-1/step_000003_execute.json");

    // The stored bytes are the file backend's (the reference's) bytes.
    let stored = store.backend().load_text(&key).await.unwrap().unwrap();
    let on_disk = std::fs::read_to_string(dir.path().join("files").join(&key)).unwrap();
    assert_eq!(stored, on_disk);
    assert!(
        stored.contains(r#""text": "na\u00efve \u2603 \"quoted\"""#),
        "{stored}"
    );
    assert_eq!(
        store
            .backend()
            .load_text(&latest_key("exec-1"))
            .await
            .unwrap()
            .as_deref(),
        Some(key.as_str())
    );
    let (latest, loaded) = store.load_latest_entry("exec-1").await.unwrap().unwrap();
    assert_eq!(latest, key);
    assert_eq!(loaded, snapshot);

    // A second connection (another process would be the same) sees the committed rows.
    let other = CheckpointStore::sqlite(db(dir.path())).unwrap();
    assert_eq!(other.load_latest("exec-1").await.unwrap(), Some(snapshot));
    assert_eq!(other.execution_ids().await.unwrap(), vec!["exec-1"]);
}

#[tokio::test]
async fn keys_and_listing_follow_the_other_backends() {
    let dir = tempfile::tempdir().unwrap();
    let sqlite: Arc<dyn PersistenceBackend> =
        Arc::new(SqlitePersistence::open(db(dir.path())).unwrap());
    let memory: Arc<dyn PersistenceBackend> = Arc::new(MemoryBackend::new());
    for backend in [&sqlite, &memory] {
        for id in ["a", "ab", "b"] {
            let store = CheckpointStore::new(Arc::clone(backend));
            for s in run_events(id, 2) {
                store.save(s).await.unwrap();
            }
        }
        backend.save_text("a/notes/x", "text").await.unwrap();
    }
    for prefix in [
        "",
        "a",
        "a/",
        "a/step_",
        "ab/",
        "b/step_000001",
        "c/",
        "a/notes/",
    ] {
        assert_eq!(
            sqlite.list(prefix).await.unwrap(),
            memory.list(prefix).await.unwrap(),
            "prefix {prefix:?}"
        );
    }
    for bad in ["../x", "/abs", "a/../b", "a//b", ".hidden", "a\\b", ""] {
        let err = sqlite.save_text(bad, "x").await.unwrap_err();
        assert!(
            matches!(err, PersistenceError::InvalidKey(_)),
            "{bad}: {err}"
        );
        assert!(matches!(
            sqlite.load_text(bad).await.unwrap_err(),
            PersistenceError::InvalidKey(_)
        ));
    }
    assert!(sqlite.load("a/missing.json").await.unwrap().is_none());
    sqlite.delete("a/missing.json").await.unwrap();
    // A text that is not a snapshot is corrupt, naming the database file.
    let err = sqlite.load("a/notes/x").await.unwrap_err();
    assert!(
        matches!(&err, PersistenceError::Corrupt { path: Some(p), .. } if p.ends_with("checkpoints.sqlite")),
        "{err}"
    );
    let store = CheckpointStore::new(Arc::clone(&sqlite));
    store.delete_execution("a").await.unwrap();
    assert!(sqlite.list("a/").await.unwrap().is_empty());
    assert_eq!(sqlite.list("ab/").await.unwrap().len(), 9);
}

#[tokio::test]
async fn pruning_keeps_what_the_memory_store_keeps() {
    let dir = tempfile::tempdir().unwrap();
    for keep in [1, 2, 5] {
        let sqlite = CheckpointStore::sqlite(db(dir.path()))
            .unwrap()
            .with_keep_last(Some(keep));
        let memory = CheckpointStore::memory().with_keep_last(Some(keep));
        let id = format!("keep-{keep}");
        for s in run_events(&id, 4) {
            sqlite.save(s.clone()).await.unwrap();
            memory.save(s).await.unwrap();
            assert_eq!(
                sqlite.checkpoint_keys(&id).await.unwrap(),
                memory.checkpoint_keys(&id).await.unwrap()
            );
        }
        let kept = sqlite.checkpoint_keys(&id).await.unwrap();
        assert_eq!(kept.len(), keep);
        assert!(kept.contains(&format!("{id}/step_000004_machine_end.json")));
        assert_eq!(
            sqlite
                .load_latest(&id)
                .await
                .unwrap()
                .unwrap()
                .event
                .as_deref(),
            Some("machine_end")
        );
    }
}

#[tokio::test]
async fn synchronous_full_is_configurable_and_reads_the_same_file() {
    let dir = tempfile::tempdir().unwrap();
    let options = SqliteOptions {
        synchronous_full: true,
        ..SqliteOptions::default()
    };
    let full = SqlitePersistence::open_with(db(dir.path()), options).unwrap();
    assert!(full.options().synchronous_full);
    let store = CheckpointStore::new(Arc::new(full));
    let s = snap("full", 1, checkpoint_event::STATE_EXIT);
    store.save(s.clone()).await.unwrap();
    let normal = CheckpointStore::sqlite(db(dir.path())).unwrap();
    assert_eq!(normal.load_latest("full").await.unwrap(), Some(s));
}

#[tokio::test]
async fn a_database_of_a_newer_release_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = db(dir.path());
    drop(SqlitePersistence::open(&path).unwrap());
    let conn = rusqlite::Connection::open(&path).unwrap();
    conn.execute(
        "UPDATE flatmachine_schema SET version = 99 WHERE component = 'checkpoints'",
        [],
    )
    .unwrap();
    drop(conn);
    let err = SqlitePersistence::open(&path).unwrap_err().to_string();
    assert!(err.contains("schema version 99"), "{err}");
}

/// Every file below `root`, as relative path → bytes (checksum files excluded).
fn tree(root: &Path) -> std::collections::BTreeMap<String, Vec<u8>> {
    let mut out = std::collections::BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let entry = entry.unwrap();
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else if !path.to_string_lossy().ends_with(".crc32") {
                let rel = path
                    .strip_prefix(root)
                    .unwrap()
                    .to_string_lossy()
                    .into_owned();
                out.insert(rel, std::fs::read(&path).unwrap());
            }
        }
    }
    out
}

#[tokio::test]
async fn reference_checkpoints_convert_to_sqlite_and_back_byte_for_byte() {
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/python_checkpoints");
    let dir = tempfile::tempdir().unwrap();
    let from = CheckpointStore::local(&fixture);
    let sqlite = CheckpointStore::sqlite(db(dir.path())).unwrap();
    let report = copy_executions(&from, &sqlite, None).await.unwrap();
    assert_eq!(report.executions.len(), 2);
    assert_eq!(report.pointers, 2);
    let original = tree(&fixture);
    assert_eq!(report.checkpoints + report.pointers, original.len());
    // Each row holds the file's exact bytes.
    for (key, bytes) in &original {
        let stored = sqlite.backend().load_text(key).await.unwrap().unwrap();
        assert_eq!(stored.as_bytes(), bytes.as_slice(), "{key}");
    }
    // Resume reads them like the files.
    for id in &report.executions {
        assert_eq!(
            sqlite.load_latest(id).await.unwrap(),
            from.load_latest(id).await.unwrap()
        );
    }
    // And back to the reference layout: the same files, byte for byte.
    let back_dir = dir.path().join("back");
    let back = CheckpointStore::local(&back_dir);
    let again = copy_executions(&sqlite, &back, None).await.unwrap();
    assert_eq!(again, report);
    assert_eq!(tree(&back_dir), original);
}

#[tokio::test]
async fn our_checkpoints_convert_from_sqlite_to_files_and_back() {
    let dir = tempfile::tempdir().unwrap();
    let sqlite = CheckpointStore::sqlite(db(dir.path())).unwrap();
    for id in ["one", "two"] {
        for s in run_events(id, 3) {
            sqlite.save(s).await.unwrap();
        }
    }
    let files_dir = dir.path().join("files");
    let files = CheckpointStore::local(&files_dir);
    let only = vec!["two".to_string()];
    let report = copy_executions(&sqlite, &files, Some(&only)).await.unwrap();
    assert_eq!(report.executions, only);
    assert_eq!(report.checkpoints, 11);
    // Canonical snapshots are saved as snapshots: the file store writes their checksums.
    assert!(
        files_dir
            .join("two/step_000001_execute.json.crc32")
            .is_file()
    );
    for key in sqlite.checkpoint_keys("two").await.unwrap() {
        let in_db = sqlite.backend().load_text(&key).await.unwrap().unwrap();
        assert_eq!(
            std::fs::read_to_string(files_dir.join(&key)).unwrap(),
            in_db
        );
    }
    assert_eq!(
        std::fs::read_to_string(files_dir.join("two/latest")).unwrap(),
        "two/step_000003_machine_end.json"
    );
    // Back into a fresh database: identical rows.
    let sqlite2 = CheckpointStore::sqlite(dir.path().join("second.sqlite")).unwrap();
    copy_executions(&files, &sqlite2, None).await.unwrap();
    for key in sqlite.backend().list("two/").await.unwrap() {
        assert_eq!(
            sqlite.backend().load_text(&key).await.unwrap(),
            sqlite2.backend().load_text(&key).await.unwrap(),
            "{key}"
        );
    }
    assert!(sqlite2.backend().list("one/").await.unwrap().is_empty());
}

#[tokio::test]
async fn a_snapshot_of_another_execution_stops_the_copy() {
    let dir = tempfile::tempdir().unwrap();
    let sqlite = CheckpointStore::sqlite(db(dir.path())).unwrap();
    let foreign = snap("other", 1, checkpoint_event::EXECUTE);
    sqlite
        .backend()
        .save("mine/step_000001_execute.json", &foreign)
        .await
        .unwrap();
    let files = CheckpointStore::local(dir.path().join("files"));
    let err = copy_executions(&sqlite, &files, None).await.unwrap_err();
    assert!(
        err.to_string().contains("belongs to execution `other`"),
        "{err}"
    );
}

fn resumable_sqlite(dir: &Path, fail: Arc<AtomicBool>) -> Machine {
    Machine::of::<resumable_sqlite::Machine>()
        .checkpoint_dir(dir.join(".checkpoints"))
        .lock_dir(dir.join(".locks"))
        .action_mut("first", |ctx, _| {
            trail(ctx, "first");
            Box::pin(async { Ok(()) })
        })
        .action_mut("flaky", move |ctx, _| {
            let fail = fail.load(Ordering::SeqCst);
            if !fail {
                trail(ctx, "flaky");
            }
            Box::pin(async move {
                if fail {
                    Err(StateError::new("Flaky", "not this time"))
                } else {
                    Ok(())
                }
            })
        })
        .build()
        .unwrap()
}

fn trail(ctx: &mut Context, what: &str) {
    if let Some(Value::Array(trail)) = ctx.get_mut("trail") {
        trail.push(json!(what));
    }
}

#[tokio::test]
async fn backend_sqlite_in_yaml_checkpoints_and_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let fail = Arc::new(AtomicBool::new(true));
    let machine = resumable_sqlite(dir.path(), fail.clone());
    let err = machine.run_with_id("sq-1", json!({})).await.unwrap_err();
    assert!(matches!(err, RunError::State { .. }), "{err}");
    let path = dir.path().join(".checkpoints/checkpoints.sqlite");
    assert!(
        path.is_file(),
        "the default database is in the checkpoint dir"
    );
    // No file per snapshot.
    assert!(!dir.path().join(".checkpoints/sq-1").exists());
    let store = CheckpointStore::sqlite(&path).unwrap();
    assert_eq!(
        store
            .latest_checkpoint_key("sq-1")
            .await
            .unwrap()
            .as_deref(),
        Some("sq-1/step_000002_execute.json")
    );

    fail.store(false, Ordering::SeqCst);
    let resumed = machine.resume("sq-1").await.unwrap();
    assert_eq!(resumed.output, json!({"trail": ["first", "flaky"]}));
    // A new machine (another process would be the same) finds the finished run.
    let again = resumable_sqlite(dir.path(), fail)
        .resume("sq-1")
        .await
        .unwrap();
    assert_eq!(again.output, resumed.output);
    // Every checkpoint, then `latest` at machine_end.
    assert_eq!(
        store
            .latest_checkpoint_key("sq-1")
            .await
            .unwrap()
            .as_deref(),
        Some("sq-1/step_000003_machine_end.json")
    );
    let keys = store.checkpoint_keys("sq-1").await.unwrap();
    assert!(
        keys.contains(&"sq-1/step_000002_state_exit.json".to_string()),
        "{keys:?}"
    );
    assert!(
        keys.contains(&"sq-1/step_000000_machine_start.json".to_string()),
        "{keys:?}"
    );
    let local = LocalFileBackend::new(dir.path().join("unused"));
    assert!(local.list("").await.unwrap().is_empty());
}
