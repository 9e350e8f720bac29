//! Issue 17 #1: a provider answering 200 with a body that echoes the `Authorization` header
//! (the key straddling the 500-character cut, too) leaves the key in no run error, no
//! `context.last_error`, no checkpoint and no log line. Its own test binary: it installs the
//! process's tracing subscriber.

use flatmachine_runtime::persistence::CheckpointStore;
use flatmachine_runtime::{Machine, flatmachine};
use flatmachine_tests::loopback_llm::{LoopbackLlm, Received};
use serde_json::json;
use std::sync::{Arc, Mutex};

flatmachine!("machines/keys/echo_key.yml");

/// Records every event's fields, rendered.
#[derive(Default)]
struct Recorder(Mutex<Vec<String>>);

struct Fields<'a>(&'a mut String);

impl tracing::field::Visit for Fields<'_> {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        self.0.push_str(&format!(" {}={value:?}", field.name()));
    }
}

impl tracing::Subscriber for Recorder {
    fn enabled(&self, _: &tracing::Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, span: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        let mut line = String::new();
        span.record(&mut Fields(&mut line));
        self.0.lock().unwrap().push(line);
        tracing::span::Id::from_u64(1)
    }
    fn record(&self, _: &tracing::span::Id, values: &tracing::span::Record<'_>) {
        let mut line = String::new();
        values.record(&mut Fields(&mut line));
        self.0.lock().unwrap().push(line);
    }
    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
    fn event(&self, event: &tracing::Event<'_>) {
        let mut line = String::new();
        event.record(&mut Fields(&mut line));
        self.0.lock().unwrap().push(line);
    }
    fn enter(&self, _: &tracing::span::Id) {}
    fn exit(&self, _: &tracing::span::Id) {}
}

fn files_under(dir: &std::path::Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files_under(&path, out);
        } else {
            out.push(path);
        }
    }
}

#[tokio::test]
async fn an_echoed_key_reaches_no_error_context_checkpoint_or_log() {
    let recorder = Arc::new(Recorder::default());
    tracing::subscriber::set_global_default(Arc::clone(&recorder)).unwrap();
    let key = "sk-proj-echo-0123456789abcdefghijklmnopqrstuvwxyz";
    let prefix = &key[..12];
    // SAFETY: this test binary has one test; nothing else reads the variable.
    unsafe { std::env::set_var("FLATMACHINE_TEST_ECHOED_KEY", key) };
    let server = LoopbackLlm::start(|req: &Received| {
        let auth = req.header("authorization").unwrap_or_default().to_string();
        // Readable JSON without `choices`, the header once in a value, once as a key, and once
        // placed so that it straddles the 500-character cut of the message.
        (
            200,
            json!({
                "error": {"message": format!("{}{auth}", "x".repeat(420))},
                "echo": auth,
                auth.clone(): 1,
            }),
        )
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let machine = Machine::of::<echo_key::Machine>()
        .base_url(server.openai_base())
        .persistence(CheckpointStore::local(dir.path().join("checkpoints")))
        .lock_dir(dir.path().join("locks"))
        .build()
        .unwrap();

    let routed = machine.run(json!({"routed": true})).await.unwrap();
    let last_error = routed.output["error"].as_str().unwrap().to_string();
    assert!(
        last_error.contains("InternalServerError") || last_error.contains("malformed"),
        "{last_error}"
    );
    assert!(!last_error.contains(prefix), "{last_error}");

    let failed = machine.run(json!({"routed": false})).await.unwrap_err();
    for shown in [failed.to_string(), format!("{failed:?}")] {
        assert!(!shown.contains(prefix), "{shown}");
    }
    assert_eq!(server.received().len(), 2);
    assert!(
        server.received()[0]
            .header("authorization")
            .is_some_and(|a| a.contains(key)),
        "the key was sent"
    );

    let mut files = Vec::new();
    files_under(dir.path(), &mut files);
    assert!(files.len() > 2, "checkpoints were written: {files:?}");
    for file in files {
        let bytes = std::fs::read(&file).unwrap();
        let text = String::from_utf8_lossy(&bytes);
        assert!(!text.contains(prefix), "{}: {text}", file.display());
    }
    let logs = recorder.0.lock().unwrap().clone();
    assert!(!logs.is_empty());
    for line in &logs {
        assert!(!line.contains(prefix), "{line}");
    }
}
