//! Checkpoint persistence through the public API: backends, the checkpoint layout and the
//! wire format shared with the Python reference (`flatmachines` 1.0.0).
//!
//! `tests/fixtures/python_checkpoints/` is a real `.checkpoints` directory written by
//! `flatmachines==1.0.0` (pip) running `tests/fixtures/gen_python_fixture.py` with
//! `backend: local`; `tests/fixtures/python_snapshot.json` is a copy of the parent's
//! `step_000001_state_exit.json` from it.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use flatmachine_runtime::persistence::{
    CheckpointStore, LaunchIntent, LocalFileBackend, MAX_EXECUTION_ID_LEN, MachineSnapshot,
    MemoryBackend, PersistenceBackend, PersistenceError, checkpoint_event, latest_key,
    parse_snapshot_key, snapshot_key, validate_execution_id, validate_key,
};
use flatmachine_runtime::{Context, StateError};
use serde_json::json;

const PY_PARENT: &str = "b019fc50-3dcf-46b2-ac37-e04f5db85117";
const PY_CHILD: &str = "1d3e7bcc-64e2-49dc-99ed-328dad2f9acf";

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn ctx(value: serde_json::Value) -> Context {
    match value {
        serde_json::Value::Object(map) => map,
        other => panic!("not an object: {other}"),
    }
}

fn snap(id: &str, state: &str, step: u64, event: &str) -> MachineSnapshot {
    let mut s = MachineSnapshot::new(id, "m", "1.0.0", state, ctx(json!({"n": step})), step)
        .with_event(event);
    s.total_api_calls = Some(0);
    s.total_cost = Some(0.0);
    s
}

/// The event sequence of a run of `steps` states: machine_start, then per step state_enter,
/// execute, state_exit, then machine_end (on the last step number).
fn run_events(id: &str, steps: u64) -> Vec<MachineSnapshot> {
    let mut all = vec![snap(id, "start", 0, checkpoint_event::MACHINE_START)];
    for step in 1..=steps {
        for event in [
            checkpoint_event::STATE_ENTER,
            checkpoint_event::EXECUTE,
            checkpoint_event::STATE_EXIT,
        ] {
            all.push(snap(id, &format!("s{step}"), step, event));
        }
    }
    all.push(snap(id, "end", steps, checkpoint_event::MACHINE_END));
    all
}

fn backends(dir: &Path) -> Vec<(&'static str, Arc<dyn PersistenceBackend>)> {
    vec![
        ("memory", Arc::new(MemoryBackend::new())),
        ("local", Arc::new(LocalFileBackend::new(dir.join("cp")))),
        (
            "local-nofsync",
            Arc::new(LocalFileBackend::new(dir.join("cp-nofsync")).with_fsync(false)),
        ),
    ]
}

/// The files below `root`, without the checksum files (`*.json.crc32`) that sit beside every
/// snapshot we write (see `files_with_checksums_under`).
fn files_under(root: &Path) -> Vec<String> {
    let mut out = files_with_checksums_under(root);
    out.retain(|name| !name.ends_with(".json.crc32"));
    out
}

fn files_with_checksums_under(root: &Path) -> Vec<String> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(root, &path, out);
            } else {
                out.push(
                    path.strip_prefix(root)
                        .unwrap()
                        .to_string_lossy()
                        .replace('\\', "/"),
                );
            }
        }
    }
    let mut out = Vec::new();
    walk(root, root, &mut out);
    out.sort();
    out
}

#[tokio::test]
async fn backend_round_trip_save_load_delete_list() {
    let dir = tempfile::tempdir().unwrap();
    for (name, backend) in backends(dir.path()) {
        let a = snap("exec-a", "s1", 1, "execute");
        backend
            .save("exec-a/step_000001_execute.json", &a)
            .await
            .unwrap();
        backend
            .save("exec-a/step_000000_machine_start.json", &a)
            .await
            .unwrap();
        backend
            .save("exec-b/step_000000_machine_start.json", &a)
            .await
            .unwrap();
        backend
            .save_text("exec-a/latest", "exec-a/step_000001_execute.json")
            .await
            .unwrap();

        let loaded = backend
            .load("exec-a/step_000001_execute.json")
            .await
            .unwrap();
        assert_eq!(loaded.as_ref(), Some(&a), "{name}");
        assert_eq!(
            backend.load("exec-a/missing.json").await.unwrap(),
            None,
            "{name}"
        );
        assert_eq!(
            backend.load_text("exec-a/latest").await.unwrap().as_deref(),
            Some("exec-a/step_000001_execute.json"),
            "{name}"
        );
        assert_eq!(
            backend.load_text("nothing/here").await.unwrap(),
            None,
            "{name}"
        );

        assert_eq!(
            backend.list("exec-a/").await.unwrap(),
            vec![
                "exec-a/latest",
                "exec-a/step_000000_machine_start.json",
                "exec-a/step_000001_execute.json"
            ],
            "{name}"
        );
        assert_eq!(backend.list("exec-").await.unwrap().len(), 4, "{name}");
        assert_eq!(backend.list("").await.unwrap().len(), 4, "{name}");
        assert_eq!(
            backend.list("exec-a/step_000001").await.unwrap().len(),
            1,
            "{name}"
        );
        assert!(backend.list("zzz").await.unwrap().is_empty(), "{name}");
        assert!(backend.list("nodir/").await.unwrap().is_empty(), "{name}");

        backend
            .delete("exec-a/step_000001_execute.json")
            .await
            .unwrap();
        backend
            .delete("exec-a/step_000001_execute.json")
            .await
            .unwrap(); // absent: fine
        assert_eq!(
            backend
                .load("exec-a/step_000001_execute.json")
                .await
                .unwrap(),
            None
        );
        assert_eq!(backend.list("exec-a/").await.unwrap().len(), 2, "{name}");
    }
}

#[tokio::test]
async fn memory_backend_text_and_snapshot_entries_convert() {
    let backend = MemoryBackend::new();
    assert!(backend.is_empty());
    let s = snap("e", "s", 1, "execute");
    backend.save("e/a.json", &s).await.unwrap();
    // A snapshot reads as the JSON the file backend would hold.
    let text = backend.load_text("e/a.json").await.unwrap().unwrap();
    assert_eq!(text.as_bytes(), s.to_json_vec().unwrap().as_slice());
    // A text holding a snapshot loads as one; other text is corrupt.
    backend.save_text("e/b.json", &text).await.unwrap();
    assert_eq!(backend.load("e/b.json").await.unwrap(), Some(s.clone()));
    backend.save_text("e/c.json", "not json").await.unwrap();
    let err = backend.load("e/c.json").await.unwrap_err();
    assert!(
        matches!(err, PersistenceError::Corrupt { ref key, path: None, .. } if key == "e/c.json")
    );
    // Snapshots are kept as their JSON (the compact form) and read back equal.
    let shared = Arc::new(s);
    backend
        .save_shared("e/d.json", Arc::clone(&shared))
        .await
        .unwrap();
    assert_eq!(*backend.get_shared("e/d.json").unwrap(), *shared);
    assert_eq!(
        &*backend.get_json("e/d.json").unwrap(),
        shared.to_json_vec().unwrap().as_slice()
    );
    assert_eq!(backend.len(), 4);
}

#[tokio::test]
async fn checkpoint_layout_and_latest_pointer_match_the_reference() {
    let dir = tempfile::tempdir().unwrap();
    let id = "0b7c4f0e-9a5e-4c53-8d0c-1f2e3d4c5b6a";
    let expected_keys: Vec<String> = [
        "step_000000_machine_start.json",
        "step_000001_execute.json",
        "step_000001_state_enter.json",
        "step_000001_state_exit.json",
        "step_000002_execute.json",
        "step_000002_machine_end.json",
        "step_000002_state_enter.json",
        "step_000002_state_exit.json",
    ]
    .iter()
    .map(|name| format!("{id}/{name}"))
    .collect();

    for (name, backend) in backends(dir.path()) {
        let store = CheckpointStore::new(Arc::clone(&backend));
        let mut last_key = String::new();
        for s in run_events(id, 2) {
            let key = store.save(s.clone()).await.unwrap();
            assert_eq!(key, snapshot_key(id, s.step, s.event.as_deref().unwrap()));
            assert_eq!(
                backend.load_text(&latest_key(id)).await.unwrap().as_deref(),
                Some(key.as_str()),
                "{name}: latest holds the key text"
            );
            last_key = key;
        }
        assert_eq!(
            store.checkpoint_keys(id).await.unwrap(),
            expected_keys,
            "{name}"
        );
        let mut all = expected_keys.clone();
        all.insert(0, format!("{id}/latest"));
        assert_eq!(
            backend.list(&format!("{id}/")).await.unwrap(),
            all,
            "{name}"
        );
        assert_eq!(
            store.latest_checkpoint_key(id).await.unwrap(),
            Some(last_key)
        );
        let latest = store.load_latest(id).await.unwrap().unwrap();
        assert_eq!(latest.event.as_deref(), Some("machine_end"));
        assert_eq!(latest.current_state, "end");
        assert_eq!(store.execution_ids().await.unwrap(), vec![id.to_owned()]);
        assert_eq!(store.load_latest("other-id").await.unwrap(), None, "{name}");
    }

    // On disk: exactly the reference's files, `latest` without a trailing newline, no leftovers.
    let root = dir.path().join("cp");
    let mut expected_files = expected_keys.clone();
    expected_files.insert(0, format!("{id}/latest"));
    assert_eq!(files_under(&root), expected_files);
    assert_eq!(
        std::fs::read_to_string(root.join(id).join("latest")).unwrap(),
        format!("{id}/step_000002_machine_end.json")
    );
    assert_eq!(files_under(&dir.path().join("cp-nofsync")), expected_files);
}

#[test]
fn key_helpers() {
    assert_eq!(
        snapshot_key("x", 7, "execute"),
        "x/step_000007_execute.json"
    );
    assert_eq!(
        snapshot_key("x", 1_234_567, "state_exit"),
        "x/step_1234567_state_exit.json"
    );
    assert_eq!(latest_key("x"), "x/latest");
    assert_eq!(
        parse_snapshot_key("x/step_000007_state_enter.json"),
        Some(("x", 7, "state_enter"))
    );
    assert_eq!(parse_snapshot_key("x/latest"), None);
    assert_eq!(parse_snapshot_key("x/step_7_execute.json"), None);
    assert_eq!(checkpoint_event::ALL.len(), 5);
}

#[tokio::test]
async fn snapshot_without_event_uses_unknown_in_its_key() {
    let store = CheckpointStore::memory();
    let mut s = snap("e", "s", 3, "x");
    s.event = None;
    assert_eq!(store.save(s).await.unwrap(), "e/step_000003_unknown.json");
}

#[test]
fn written_json_has_reference_key_order_and_nulls() {
    let s = MachineSnapshot::new("id-1", "m", "1.0.0", "start", Context::new(), 0)
        .with_event("machine_start");
    let text = String::from_utf8(s.to_json_vec().unwrap()).unwrap();
    let expected_prefix = "{\"execution_id\": \"id-1\", \"machine_name\": \"m\", \"spec_version\": \"1.0.0\", \
         \"current_state\": \"start\", \"context\": {}, \"step\": 0, \"created_at\": \"";
    assert!(text.starts_with(expected_prefix), "{text}");
    assert!(
        text.ends_with(
            "\"event\": \"machine_start\", \"output\": null, \"total_api_calls\": null, \
             \"total_cost\": null, \"parent_execution_id\": null, \"pending_launches\": null}"
        ),
        "{text}"
    );
    // Key order through a generic JSON parse (preserve_order).
    let value: serde_json::Value = serde_json::from_str(&text).unwrap();
    let keys: Vec<&str> = value
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(
        keys,
        [
            "execution_id",
            "machine_name",
            "spec_version",
            "current_state",
            "context",
            "step",
            "created_at",
            "event",
            "output",
            "total_api_calls",
            "total_cost",
            "parent_execution_id",
            "pending_launches"
        ]
    );
}

#[test]
fn created_at_is_python_isoformat_utc() {
    let s = MachineSnapshot::new("i", "m", "1.0.0", "s", Context::new(), 0);
    let t = &s.created_at;
    // YYYY-MM-DDTHH:MM:SS[.ffffff]+00:00
    assert!(t.ends_with("+00:00"), "{t}");
    let bytes = t.as_bytes();
    assert_eq!(
        (bytes[4], bytes[7], bytes[10], bytes[13], bytes[16]),
        (b'-', b'-', b'T', b':', b':')
    );
    assert!(t.len() == 25 || (t.len() == 32 && bytes[19] == b'.'), "{t}");
    assert!(t[..4].parse::<u32>().unwrap() >= 2024);
}

#[test]
fn python_written_snapshot_reads_and_rewrites_byte_for_byte() {
    let bytes = std::fs::read(fixtures().join("python_snapshot.json")).unwrap();
    let s = MachineSnapshot::from_json_slice(&bytes).unwrap();
    assert_eq!(s.execution_id, PY_PARENT);
    assert_eq!(s.machine_name, "fixture-machine");
    assert_eq!(s.spec_version, "1.0.0");
    assert_eq!(s.current_state, "begin");
    assert_eq!(s.step, 1);
    assert_eq!(s.created_at, "2026-11-24T19:32:52.751431+00:00");
    assert_eq!(s.event.as_deref(), Some("state_exit"));
    assert_eq!(s.output, None);
    assert_eq!(s.total_api_calls, Some(0));
    assert_eq!(s.total_cost, Some(0.0));
    assert_eq!(s.parent_execution_id, None);
    assert_eq!(
        s.context,
        ctx(json!({
            "greeting": "h\u{e9}llo \u{2713} \u{1F600} \"q\" \\ /\t\u{7f}",
            "n": 3, "ratio": 0.1, "big": 1e16, "tiny": 1e-05,
            "items": [1, 2.5, null, true, {"k": "v"}],
        }))
    );
    assert_eq!(
        s.pending_launches,
        Some(vec![LaunchIntent {
            execution_id: PY_CHILD.into(),
            machine: "child".into(),
            input: ctx(json!({"x": 1})),
            launched: true,
        }])
    );
    // Writing it back gives the reference's exact bytes (separators, \u escapes, float repr).
    assert_eq!(
        String::from_utf8(s.to_json_vec().unwrap()).unwrap(),
        String::from_utf8(bytes).unwrap()
    );
}

#[tokio::test]
async fn every_python_checkpoint_file_round_trips_and_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join(".checkpoints");
    copy_tree(&fixtures().join("python_checkpoints"), &root);
    let store = CheckpointStore::new(Arc::new(LocalFileBackend::new(&root)));

    assert_eq!(
        store.execution_ids().await.unwrap(),
        vec![PY_CHILD.to_owned(), PY_PARENT.to_owned()]
    );
    for id in [PY_PARENT, PY_CHILD] {
        let keys = store.checkpoint_keys(id).await.unwrap();
        assert_eq!(keys.len(), 8);
        for key in &keys {
            let bytes = std::fs::read(root.join(key)).unwrap();
            let s = store.backend().load(key).await.unwrap().unwrap();
            assert_eq!(
                s.to_json_vec().unwrap(),
                bytes,
                "{key} rewrites identically"
            );
            assert_eq!(key, &snapshot_key(id, s.step, s.event.as_deref().unwrap()));
        }
    }
    let parent = store.load_latest(PY_PARENT).await.unwrap().unwrap();
    assert_eq!(parent.event.as_deref(), Some("machine_end"));
    assert_eq!(parent.current_state, "end");
    assert_eq!(parent.output.unwrap()["n"], json!(3));
    let child = store.load_latest(PY_CHILD).await.unwrap().unwrap();
    assert_eq!(child.parent_execution_id.as_deref(), Some(PY_PARENT));
    assert_eq!(child.output, Some(ctx(json!({"ok": true}))));

    // The reference's machine_start snapshot of the child.
    let start = store
        .backend()
        .load(&snapshot_key(PY_CHILD, 0, "machine_start"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!((start.current_state.as_str(), start.step), ("start", 0));
}

#[test]
fn reading_is_lenient_about_missing_and_null_fields() {
    let minimal = br#"{"execution_id": "e", "current_state": "s", "step": 4}"#;
    let s = MachineSnapshot::from_json_slice(minimal).unwrap();
    assert_eq!(
        (s.execution_id.as_str(), s.current_state.as_str(), s.step),
        ("e", "s", 4)
    );
    assert!(s.context.is_empty());
    assert_eq!(s.machine_name, "");
    assert!(s.created_at.ends_with("+00:00"));
    assert_eq!(s.event, None);

    let nulls = br#"{"execution_id": "e", "machine_name": null, "spec_version": null,
        "current_state": "s", "context": null, "step": 1, "created_at": null, "event": null,
        "output": null, "total_api_calls": null, "total_cost": null,
        "parent_execution_id": null, "pending_launches": [{"execution_id": "c",
        "machine": "m", "input": null}], "extra_field": 1}"#;
    let s = MachineSnapshot::from_json_slice(nulls).unwrap();
    assert!(s.context.is_empty());
    assert!(!s.created_at.is_empty());
    let launch = &s.pending_launches.unwrap()[0];
    assert_eq!(launch, &LaunchIntent::new("c", "m", Context::new()));

    // Integral floats and integers both read as total_cost.
    let s = MachineSnapshot::from_json_slice(
        br#"{"execution_id": "e", "current_state": "s", "step": 1, "total_cost": 2}"#,
    )
    .unwrap();
    assert_eq!(s.total_cost, Some(2.0));
}

#[test]
fn writer_escapes_like_python_json_dumps() {
    let mut s = MachineSnapshot::new("e", "m", "1.0.0", "s", Context::new(), 1);
    s.created_at = "2026-01-01T00:00:00+00:00".into();
    s.context = ctx(json!({
        "text": "a\u{e9}\u{1F600}\n\u{1}\u{7f}</>",
        "floats": [0.5, 100.0, 1e16, 1e-7, -0.0, 123456.789],
        "ints": [0, -3, 18446744073709551615u64],
    }));
    s.total_cost = Some(f64::NAN);
    let text = String::from_utf8(s.to_json_vec().unwrap()).unwrap();
    assert!(text.is_ascii());
    assert!(
        text.contains(
            r#""context": {"text": "a\u00e9\ud83d\ude00\n\u0001\u007f</>", "floats": [0.5, 100.0, 1e+16, 1e-07, -0.0, 123456.789], "ints": [0, -3, 18446744073709551615]}"#
        ),
        "{text}"
    );
    // NaN is not JSON: written as null.
    assert!(text.contains(r#""total_cost": null"#), "{text}");
    let back = MachineSnapshot::from_json_slice(text.as_bytes()).unwrap();
    assert_eq!(back.context, s.context);
}

#[tokio::test]
async fn invalid_keys_are_rejected_everywhere() {
    let bad = [
        "",
        "..",
        "../x",
        "a/../b",
        "a/..",
        "/etc/passwd",
        "a\\b",
        "..\\x",
        "a\0b",
        "a//b",
        "a/",
        "./a",
        "a/.hidden",
    ];
    for key in bad {
        assert!(validate_key(key).is_err(), "{key:?}");
    }
    assert!(validate_key("a/b/step_000001_execute.json").is_ok());
    assert!(
        validate_key("a..b/c").is_ok(),
        "`..` inside a name is harmless"
    );
    for id in ["", "..", "a/b", "/x", ".x", "a\\b", "a\0"] {
        assert!(validate_execution_id(id).is_err(), "{id:?}");
    }

    let dir = tempfile::tempdir().unwrap();
    let s = snap("e", "s", 1, "execute");
    for (name, backend) in backends(dir.path()) {
        for key in bad {
            let check = |r: Result<(), PersistenceError>, op: &str| {
                let err = r.expect_err(&format!("{name} {op} {key:?}"));
                assert!(
                    matches!(err, PersistenceError::InvalidKey(_)),
                    "{name} {op} {key:?}: {err}"
                );
            };
            check(backend.save(key, &s).await, "save");
            check(backend.save_text(key, "x").await, "save_text");
            check(backend.load(key).await.map(drop), "load");
            check(backend.load_text(key).await.map(drop), "load_text");
            check(backend.delete(key).await, "delete");
        }
        assert!(backend.list("../").await.map(drop).is_err() || name == "memory");
    }
    // Nothing escaped the temporary directory.
    assert!(!dir.path().join("etc").exists());
    assert!(!dir.path().join("x").exists());

    // The store refuses execution ids that are not one path segment.
    let store = CheckpointStore::new(Arc::new(LocalFileBackend::new(dir.path().join("cp"))));
    let err = store
        .save(snap("../evil", "s", 1, "execute"))
        .await
        .unwrap_err();
    assert!(matches!(err, PersistenceError::InvalidKey(_)), "{err}");
    assert!(!dir.path().join("evil").exists());
    assert!(store.load_latest("../cp").await.is_err());
    let msg = err.to_string();
    assert!(msg.contains("../evil") && msg.contains("invalid"), "{msg}");
}

#[tokio::test]
async fn a_latest_pointer_outside_the_store_is_reported_not_followed() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("cp");
    std::fs::create_dir_all(root.join("e")).unwrap();
    std::fs::write(dir.path().join("secret.json"), b"{}").unwrap();
    std::fs::write(root.join("e/latest"), b"../secret.json").unwrap();
    let store = CheckpointStore::local(&root);
    let err = store.load_latest("e").await.unwrap_err();
    match &err {
        PersistenceError::Corrupt { key, path, reason } => {
            assert_eq!(key, "e/latest");
            assert_eq!(path.as_deref(), Some(root.join("e/latest").as_path()));
            // Described, never quoted: a pointer's text may be anything (docs/security.md).
            assert!(!reason.contains("secret"), "{reason}");
            assert!(
                reason.contains("does not hold a checkpoint key"),
                "{reason}"
            );
        }
        other => panic!("{other}"),
    }
}

#[tokio::test]
async fn corrupt_snapshot_names_the_file_and_is_left_alone() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("cp");
    let store = CheckpointStore::local(&root);
    let key = store.save(snap("e", "s", 1, "execute")).await.unwrap();
    let file = root.join(&key);
    let garbage = b"{\"execution_id\": \"e\", \"step\": tru";
    std::fs::write(&file, garbage).unwrap();

    for _ in 0..2 {
        let err = store.load_latest("e").await.unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains(&file.display().to_string()), "{msg}");
        match err {
            PersistenceError::Corrupt { key: k, path, .. } => {
                assert_eq!(k, key);
                assert_eq!(path.as_deref(), Some(file.as_path()));
            }
            other => panic!("{other}"),
        }
        // Unchanged, still there, pointer intact.
        assert_eq!(std::fs::read(&file).unwrap(), garbage);
        assert_eq!(std::fs::read_to_string(root.join("e/latest")).unwrap(), key);
    }

    // A pointer that is not UTF-8, or empty, is corrupt too.
    std::fs::write(root.join("e/latest"), [0xff, 0xfe]).unwrap();
    let err = store.load_latest("e").await.unwrap_err();
    assert!(
        matches!(err, PersistenceError::Corrupt { ref key, .. } if key == "e/latest"),
        "{err}"
    );
    std::fs::write(root.join("e/latest"), b"").unwrap();
    let err = store.load_latest("e").await.unwrap_err();
    assert!(err.to_string().contains("empty"), "{err}");

    // A snapshot missing a required field.
    std::fs::write(&file, br#"{"execution_id": "e"}"#).unwrap();
    std::fs::write(root.join("e/latest"), key.as_bytes()).unwrap();
    let err = store.load_latest("e").await.unwrap_err();
    assert!(err.to_string().contains("current_state"), "{err}");
}

#[tokio::test]
async fn dangling_latest_pointer_is_an_error() {
    let store = CheckpointStore::memory();
    let key = store.save(snap("e", "s", 1, "execute")).await.unwrap();
    store.backend().delete(&key).await.unwrap();
    let err = store.load_latest("e").await.unwrap_err();
    assert!(
        matches!(err, PersistenceError::DanglingLatest { ref execution_id, key: ref k }
            if execution_id == "e" && *k == key),
        "{err}"
    );
}

#[tokio::test]
async fn pruning_keeps_the_newest_n_in_run_order() {
    let dir = tempfile::tempdir().unwrap();
    for (name, backend) in backends(dir.path()) {
        let store = CheckpointStore::new(Arc::clone(&backend)).with_keep_last(Some(2));
        assert_eq!(store.keep_last(), Some(2));
        let other = CheckpointStore::new(Arc::clone(&backend)); // no pruning
        other.save(snap("other", "s", 1, "execute")).await.unwrap();
        other.save(snap("other", "s", 2, "execute")).await.unwrap();
        other.save(snap("other", "s", 3, "execute")).await.unwrap();

        for s in run_events("e", 3) {
            store.save(s).await.unwrap();
            assert!(
                store.checkpoint_keys("e").await.unwrap().len() <= 2,
                "{name}"
            );
        }
        assert_eq!(
            store.checkpoint_keys("e").await.unwrap(),
            vec![
                "e/step_000003_machine_end.json",
                "e/step_000003_state_exit.json"
            ],
            "{name}"
        );
        let latest = store.load_latest("e").await.unwrap().unwrap();
        assert_eq!(latest.event.as_deref(), Some("machine_end"), "{name}");
        // Other executions are untouched.
        assert_eq!(
            store.checkpoint_keys("other").await.unwrap().len(),
            3,
            "{name}"
        );
    }

    // keep 1: within a step, run order (not key order) decides: `execute` is newer than
    // `state_enter` although it sorts first.
    let store = CheckpointStore::memory().with_keep_last(Some(1));
    store.save(snap("e", "s", 2, "state_enter")).await.unwrap();
    store.save(snap("e", "s", 2, "execute")).await.unwrap();
    assert_eq!(
        store.checkpoint_keys("e").await.unwrap(),
        vec!["e/step_000002_execute.json"]
    );
    // 0 means 1: the checkpoint `latest` names is never deleted.
    let store = CheckpointStore::memory().with_keep_last(Some(0));
    assert_eq!(store.keep_last(), Some(1));
    store.save(snap("e", "s", 1, "execute")).await.unwrap();
    assert!(store.load_latest("e").await.unwrap().is_some());
}

#[tokio::test]
async fn pruning_on_disk_leaves_only_the_kept_files() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("cp");
    let store = CheckpointStore::new(Arc::new(LocalFileBackend::new(&root).with_fsync(false)))
        .with_keep_last(Some(3));
    for s in run_events("e", 4) {
        store.save(s).await.unwrap();
    }
    assert_eq!(
        files_under(&root),
        vec![
            "e/latest",
            "e/step_000004_execute.json",
            "e/step_000004_machine_end.json",
            "e/step_000004_state_exit.json",
        ]
    );
}

#[tokio::test]
async fn fsync_can_be_turned_off() {
    let dir = tempfile::tempdir().unwrap();
    let backend = LocalFileBackend::new(dir.path().join("a/b/cp")).with_fsync(false);
    assert!(!backend.fsync());
    assert!(LocalFileBackend::new("x").fsync(), "fsync is on by default");
    assert_eq!(
        LocalFileBackend::default().root(),
        Path::new(".checkpoints")
    );
    assert_eq!(LocalFileBackend::DEFAULT_ROOT, ".checkpoints");
    let store = CheckpointStore::new(Arc::new(backend.clone()));
    let s = snap("e", "s", 5, "state_exit");
    let key = store.save(s.clone()).await.unwrap();
    assert_eq!(store.load_latest("e").await.unwrap(), Some(s.clone()));
    assert_eq!(
        std::fs::read(backend.path_for(&key).unwrap()).unwrap(),
        s.to_json_vec().unwrap()
    );
    assert_eq!(
        files_under(backend.root()),
        vec!["e/latest", "e/step_000005_state_exit.json"]
    );
}

#[tokio::test]
async fn reading_creates_nothing_and_temp_files_are_not_listed() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("never-created");
    let store = CheckpointStore::local(&root);
    assert_eq!(store.load_latest("e").await.unwrap(), None);
    assert!(store.execution_ids().await.unwrap().is_empty());
    assert!(store.checkpoint_keys("e").await.unwrap().is_empty());
    assert!(!root.exists());

    store.save(snap("e", "s", 1, "execute")).await.unwrap();
    // A temp file left by a crash mid-write is ignored and does not disturb reading.
    std::fs::write(root.join("e/.step_000002_execute.json.tmp"), b"{\"half").unwrap();
    assert_eq!(
        store.checkpoint_keys("e").await.unwrap(),
        vec!["e/step_000001_execute.json"]
    );
    assert_eq!(store.load_latest("e").await.unwrap().unwrap().step, 1);
}

#[tokio::test]
async fn delete_execution_removes_its_keys_only() {
    let dir = tempfile::tempdir().unwrap();
    for (name, backend) in backends(dir.path()) {
        let store = CheckpointStore::new(backend);
        for s in run_events("a", 1).into_iter().chain(run_events("b", 1)) {
            store.save(s).await.unwrap();
        }
        store.delete_execution("a").await.unwrap();
        assert_eq!(store.load_latest("a").await.unwrap(), None, "{name}");
        assert!(
            store.checkpoint_keys("a").await.unwrap().is_empty(),
            "{name}"
        );
        assert_eq!(
            store.execution_ids().await.unwrap(),
            vec!["b".to_owned()],
            "{name}"
        );
        assert_eq!(store.checkpoint_keys("b").await.unwrap().len(), 5, "{name}");
    }
}

#[tokio::test]
async fn concurrent_saves_of_different_executions() {
    let dir = tempfile::tempdir().unwrap();
    let store = CheckpointStore::local(dir.path().join("cp"));
    let mut tasks = Vec::new();
    for i in 0..8 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            for s in run_events(&format!("exec-{i}"), 3) {
                store.save(s).await.unwrap();
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    assert_eq!(store.execution_ids().await.unwrap().len(), 8);
    for i in 0..8 {
        let latest = store
            .load_latest(&format!("exec-{i}"))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            (latest.step, latest.event.as_deref()),
            (3, Some("machine_end"))
        );
    }
}

#[test]
fn persistence_error_converts_to_state_error() {
    let err = PersistenceError::DanglingLatest {
        execution_id: "e".into(),
        key: "e/x.json".into(),
    };
    let state: StateError = err.into();
    assert_eq!(state.error_type, "PersistenceError");
    assert!(state.message.contains("e/x.json"));
}

/// Interop the other way: the Python reference loads and resumes a checkpoint written here.
/// Runs only where `import flatmachines` works (set `FLATMACHINE_PYTHON` to pick the
/// interpreter); otherwise prints why it is skipped.
#[tokio::test]
async fn python_reference_reads_our_checkpoints() {
    let python = std::env::var("FLATMACHINE_PYTHON").unwrap_or_else(|_| "python3".into());
    let probe = std::process::Command::new(&python)
        .args(["-c", "import flatmachines"])
        .output();
    if !matches!(&probe, Ok(out) if out.status.success()) {
        eprintln!("skipped: `{python} -c 'import flatmachines'` failed (set FLATMACHINE_PYTHON)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join(".checkpoints");
    let store = CheckpointStore::local(&root);
    let mut s = snap("rust-exec", "done", 2, "machine_end");
    s.context = ctx(json!({"word": "caf\u{e9} \u{1F600}", "x": 1e16, "nested": {"a": [1, null]}}));
    s.output = Some(ctx(json!({"result": "ok", "ratio": 2.75})));
    s.pending_launches = Some(vec![LaunchIntent::new(
        "child-1",
        "child",
        ctx(json!({"k": 1})),
    )]);
    store.save(s).await.unwrap();

    let script = r#"
import asyncio, json, sys
from flatmachines.persistence import LocalFileBackend, CheckpointManager
snap = asyncio.run(CheckpointManager(LocalFileBackend(sys.argv[1]), "rust-exec").load_latest())
print(json.dumps({"state": snap.current_state, "step": snap.step, "event": snap.event,
    "context": snap.context, "output": snap.output, "launches": snap.pending_launches}))
"#;
    let out = std::process::Command::new(&python)
        .args(["-c", script, root.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        got,
        json!({"state": "done", "step": 2, "event": "machine_end",
            "context": {"word": "caf\u{e9} \u{1F600}", "x": 1e16, "nested": {"a": [1, null]}},
            "output": {"result": "ok", "ratio": 2.75},
            "launches": [{"execution_id": "child-1", "machine": "child", "input": {"k": 1},
                "launched": false}]})
    );
}

fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_tree(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

// -------------------------------------------------------------------------------------------
// Hostile and damaged stores (issue 12)
// -------------------------------------------------------------------------------------------

#[tokio::test]
async fn a_latest_pointer_to_another_executions_snapshot_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("cp");
    let store = CheckpointStore::local(&root);
    store.save(snap("a", "s", 1, "execute")).await.unwrap();
    let b_key = store.save(snap("b", "s", 3, "execute")).await.unwrap();
    // A copy of b's snapshot inside a's directory, and a's pointer aimed at it.
    let copied = "a/step_000003_execute.json";
    std::fs::copy(root.join(&b_key), root.join(copied)).unwrap();
    std::fs::write(root.join("a/latest"), copied).unwrap();
    let err = store.load_latest("a").await.unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains(&root.join(copied).display().to_string()),
        "{msg}"
    );
    assert!(msg.contains("belongs to execution `b`, not `a`"), "{msg}");

    // A pointer straight into b's directory is refused before anything is read.
    std::fs::write(root.join("a/latest"), &b_key).unwrap();
    let err = store.load_latest("a").await.unwrap_err();
    assert!(
        err.to_string()
            .contains("outside the execution's directory"),
        "{err}"
    );
}

#[tokio::test]
async fn a_missing_latest_falls_back_to_the_newest_valid_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("cp");
    let store = CheckpointStore::local(&root);
    for s in run_events("e", 3) {
        store.save(s).await.unwrap();
    }
    std::fs::remove_file(root.join("e/latest")).unwrap();
    // machine_end is the newest in run order (step 3); make it unusable: the one before it
    // (state_exit of step 3) is taken.
    std::fs::write(root.join("e/step_000003_machine_end.json"), b"{oops").unwrap();
    let (key, snapshot) = store.load_latest_entry("e").await.unwrap().unwrap();
    assert_eq!(key, "e/step_000003_state_exit.json");
    assert_eq!(snapshot.event.as_deref(), Some("state_exit"));

    // Nothing usable: the error says what was found.
    for k in store.checkpoint_keys("e").await.unwrap() {
        std::fs::write(root.join(&k), b"{oops").unwrap();
    }
    let err = store.load_latest("e").await.unwrap_err().to_string();
    assert!(
        err.contains("latest pointer is missing and none of the 11 checkpoints"),
        "{err}"
    );
    assert!(err.contains("step_000003_machine_end.json"), "{err}");

    // No snapshots at all: no checkpoint.
    assert!(store.load_latest("other").await.unwrap().is_none());
}

#[tokio::test]
async fn edited_snapshots_are_refused_and_reference_snapshots_load() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("cp");
    let store = CheckpointStore::local(&root);
    let key = store.save(snap("e", "s", 7, "execute")).await.unwrap();
    let file = root.join(&key);
    let sum = root.join(format!("{key}.crc32"));
    assert!(sum.is_file(), "a checksum file beside the snapshot");
    assert!(store.load_latest("e").await.unwrap().is_some());

    // Edit one value; the JSON stays valid.
    let text = std::fs::read_to_string(&file).unwrap();
    let edited = text.replace(r#""n": 7"#, r#""n": 8"#);
    assert_ne!(text, edited);
    std::fs::write(&file, &edited).unwrap();
    let err = store.load_latest("e").await.unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("checksum mismatch"), "{msg}");
    assert!(msg.contains(&file.display().to_string()), "{msg}");
    assert!(matches!(err, PersistenceError::Corrupt { .. }));

    // Without its checksum file (as the reference writes it) the same file loads.
    std::fs::remove_file(&sum).unwrap();
    let loaded = store.load_latest("e").await.unwrap().unwrap();
    assert_eq!(loaded.context.get("n"), Some(&json!(8)));

    // A rewrite by a writer that keeps no checksums (another created_at) loads unchecked.
    store.save(snap("e", "s", 7, "execute")).await.unwrap();
    let mut foreign = snap("e", "s", 7, "execute");
    foreign.created_at = "2001-01-01T00:00:00+00:00".into();
    std::fs::write(&file, foreign.to_json_vec().unwrap()).unwrap();
    assert_eq!(
        store.load_latest("e").await.unwrap().unwrap().created_at,
        foreign.created_at
    );

    // The checksum is zlib's CRC-32 of the file's exact bytes.
    let record: serde_json::Value = serde_json::from_slice(&std::fs::read(&sum).unwrap()).unwrap();
    assert_eq!(record["algorithm"], "crc32");
    assert!(record["checksum"].as_str().unwrap().len() == 8, "{record}");

    // Deleting the snapshot takes its checksum file along.
    store.delete_execution("e").await.unwrap();
    assert!(files_with_checksums_under(&root).is_empty());
}

#[tokio::test]
async fn temporary_files_are_unique_and_removed_on_the_next_open() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("cp");
    let backend = Arc::new(LocalFileBackend::new(&root).with_fsync(false));
    let store = CheckpointStore::new(backend.clone());
    store.save(snap("e", "s", 1, "execute")).await.unwrap();
    // What killed writers leave behind (old fixed name, new unique names).
    for name in [
        ".latest.tmp",
        ".step_000002_execute.json.4242-7.tmp",
        ".step_000002_execute.json.crc32.4242-8.tmp",
    ] {
        std::fs::write(root.join("e").join(name), b"partial").unwrap();
    }
    std::fs::write(root.join("e/keep.txt"), b"not ours to remove").unwrap();
    store.clean_execution("e").await.unwrap();
    assert_eq!(
        files_with_checksums_under(&root),
        [
            "e/keep.txt",
            "e/latest",
            "e/step_000001_execute.json",
            "e/step_000001_execute.json.crc32"
        ]
    );

    // Many writers of one key at once: no shared temporary file, every write lands whole.
    let mut tasks = Vec::new();
    for n in 0..16u64 {
        let backend = backend.clone();
        tasks.push(tokio::spawn(async move {
            let mut s = snap("e", "s", 9, "execute");
            s.context = ctx(json!({"writer": n}));
            backend.save("e/step_000009_execute.json", &s).await
        }));
    }
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    let last = backend
        .load("e/step_000009_execute.json")
        .await
        .unwrap()
        .unwrap();
    assert!(last.context.contains_key("writer"));
    assert!(
        files_with_checksums_under(&root)
            .iter()
            .all(|f| !f.ends_with(".tmp")),
        "no temporary file is left"
    );
}

#[test]
fn execution_ids_are_limited_to_128_bytes() {
    let ok = "x".repeat(MAX_EXECUTION_ID_LEN);
    assert_eq!(MAX_EXECUTION_ID_LEN, 128);
    validate_execution_id(&ok).unwrap();
    let long = "x".repeat(5000);
    let err = validate_execution_id(&long).unwrap_err();
    assert!(err.to_string().contains("at most 128 bytes"), "{err}");
    assert!(err.to_string().len() < 400, "the message is not flooded");
    // A multi-byte character across the cut does not panic.
    let wide = "é".repeat(100);
    assert!(validate_execution_id(&wide).is_err());
}
