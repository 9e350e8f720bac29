//! Hostile text in checkpoints and secrets in webhook URLs (issue 17, items 7 and 10).

use flatmachine_runtime::persistence::{CheckpointStore, MachineSnapshot};
use flatmachine_runtime::{Context, Value};
use serde_json::json;

fn ctx(value: Value) -> Context {
    match value {
        Value::Object(map) => map,
        _ => unreachable!("test contexts are objects"),
    }
}

/// Item 7: terminal escape sequences in an error text, a state name or a context value are
/// shown escaped in the `inspect` table, never sent to the terminal raw.
#[tokio::test]
async fn inspect_table_escapes_control_characters_from_checkpoints() {
    let store = CheckpointStore::memory();
    let hostile = "\u{1b}]0;pwned\u{7}\u{1b}[2J\rfake row\u{9b}31m";
    let mut first = MachineSnapshot::new(
        "run-1",
        format!("demo{hostile}"),
        "1.0.0",
        "start",
        Context::new(),
        0,
    );
    first.event = Some("machine_start".into());
    store.save(first).await.unwrap();
    let mut second = MachineSnapshot::new(
        "run-1",
        "demo",
        "1.0.0",
        format!("charge{hostile}"),
        ctx(json!({
            "last_error": format!("provider said: {hostile}"),
            "last_error_type": "AgentError",
            "reply": format!("{hostile}\u{7f}"),
        })),
        1,
    );
    second.event = Some("execute".into());
    store.save(second).await.unwrap();

    for table in [
        flatmachine_runtime::inspect::report(&store, Some("run-1"), false)
            .await
            .unwrap(),
        flatmachine_runtime::inspect::report(&store, None, false)
            .await
            .unwrap(),
    ] {
        let raw: Vec<char> = table
            .chars()
            .filter(|c| c.is_control() && *c != '\n')
            .collect();
        assert!(
            raw.is_empty(),
            "raw control characters {raw:?} in:\n{table}"
        );
        assert!(table.contains("\\u{1b}"), "{table}");
    }
}

#[cfg(feature = "webhooks")]
mod webhook {
    use super::*;
    use flatmachine_runtime::hooks::{MachineHooks, WebhookHooks};
    use std::sync::{Arc, Mutex};

    /// Every field of every event, as text.
    #[derive(Default)]
    struct AllFields(Mutex<Vec<String>>);

    struct Visitor<'a>(&'a mut String);

    impl tracing::field::Visit for Visitor<'_> {
        fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
            self.0.push_str(&format!(" {}={value:?}", field.name()));
        }
    }

    impl tracing::Subscriber for AllFields {
        fn enabled(&self, _: &tracing::Metadata<'_>) -> bool {
            true
        }
        fn new_span(&self, _: &tracing::span::Attributes<'_>) -> tracing::span::Id {
            tracing::span::Id::from_u64(1)
        }
        fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}
        fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
        fn event(&self, event: &tracing::Event<'_>) {
            let mut line = String::new();
            event.record(&mut Visitor(&mut line));
            self.0.lock().unwrap().push(line);
        }
        fn enter(&self, _: &tracing::span::Id) {}
        fn exit(&self, _: &tracing::span::Id) {}
    }

    /// Item 10: tokens in a webhook URL's path, query or user info never reach `Debug` or
    /// the error logged when a call fails.
    #[tokio::test]
    async fn webhook_url_secrets_stay_out_of_logs_and_debug() {
        let url = "http://user:pw-SECRET@127.0.0.1:1/services/T0/B0/PATH-SECRET?token=QUERY-SECRET#FRAG-SECRET";
        let hooks = WebhookHooks::new(url).unwrap();
        let debug = format!("{hooks:?}");
        assert!(!debug.contains("SECRET"), "{debug}");
        assert!(debug.contains("http://127.0.0.1:1"), "{debug}");

        let recorder = Arc::new(AllFields::default());
        let dispatch = tracing::Dispatch::from(recorder.clone());
        let _guard = tracing::dispatcher::set_default(&dispatch);
        let mut context = Context::new();
        hooks.on_machine_start(&mut context).await.unwrap();
        let lines = recorder.0.lock().unwrap().clone();
        assert!(!lines.is_empty(), "nothing was logged");
        for line in &lines {
            assert!(!line.contains("SECRET"), "{line}");
        }
    }

    /// Item 10: an API key is refused over plain http to another host (it would travel in
    /// clear text), and allowed over https or to a loopback host.
    #[test]
    fn webhook_api_key_is_refused_over_plain_http_to_a_remote_host() {
        let error = WebhookHooks::new("http://hooks.example.com/x")
            .unwrap()
            .with_api_key("k-123")
            .unwrap_err()
            .to_string();
        assert!(error.contains("clear text"), "{error}");
        assert!(!error.contains("k-123"), "{error}");
        for ok in [
            "https://hooks.example.com/x",
            "http://127.0.0.1:9/x",
            "http://localhost:9/x",
            "http://[::1]:9/x",
        ] {
            WebhookHooks::new(ok).unwrap().with_api_key("k").unwrap();
        }
    }
}
