//! The execution loop through the public API, on machines compiled by `flatmachine!` from
//! `tests/machines/*.yml`: order of events, error routing, limits, templates, persistence,
//! resume, locks, hooks from YAML, child machines, agents.

// The by-value `MachineBuilder::action` form is deprecated but must keep working: these tests pin it.
#![allow(deprecated)]

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use flatmachine_runtime::engine::BuildError;
use flatmachine_runtime::hooks::{
    ActionOutcome, HookError, HooksRegistry, MachineHooks, MetricsHooks,
};
use flatmachine_runtime::lock::{LocalFileLock, LockError};
use flatmachine_runtime::persistence::{
    CheckpointStore, MachineSnapshot, MemoryBackend, PersistenceBackend, PersistenceError,
};
use flatmachine_runtime::{
    AgentOutput, Context, Machine, RunError, RunResult, StateError, Value, error_type,
};
use serde_json::json;

flatmachine_runtime::flatmachine!("tests/machines/event_order.yml");
flatmachine_runtime::flatmachine!("tests/machines/error_routing.yml");
flatmachine_runtime::flatmachine!("tests/machines/error_string.yml");
flatmachine_runtime::flatmachine!("tests/machines/error_unrouted.yml");
flatmachine_runtime::flatmachine!("tests/machines/expr_error.yml");
flatmachine_runtime::flatmachine!("tests/machines/expr_error_unrouted.yml");
flatmachine_runtime::flatmachine!("tests/machines/counter_loop.yml");
// This machine has no fallback transition on purpose: silence the compiler's warning.
flatmachine_runtime::flatmachine!("tests/machines/no_transition.yml", allow_warnings);
flatmachine_runtime::flatmachine!("tests/machines/unknown_action.yml");
flatmachine_runtime::flatmachine!("tests/machines/templates.yml");
flatmachine_runtime::flatmachine!("tests/machines/persist_disabled.yml");
flatmachine_runtime::flatmachine!("tests/machines/persist_end_only.yml");
flatmachine_runtime::flatmachine!("tests/machines/resumable.yml");
flatmachine_runtime::flatmachine!("tests/machines/hooks_yaml.yml");
flatmachine_runtime::flatmachine!("tests/machines/hooks_typo.yml");
flatmachine_runtime::flatmachine!("tests/machines/parent_single.yml");
flatmachine_runtime::flatmachine!("tests/machines/parent_foreach.yml");
flatmachine_runtime::flatmachine!("tests/machines/agent_call.yml");
flatmachine_runtime::flatmachine!("tests/machines/parent_launch.yml");
flatmachine_runtime::flatmachine!("tests/machines/parent_hooked.yml");
flatmachine_runtime::flatmachine!("tests/machines/state_timeout.yml");
flatmachine_runtime::flatmachine!("tests/machines/state_input_alias.yml");

// -------------------------------------------------------------------------------------------
// Recording hooks and backend
// -------------------------------------------------------------------------------------------

type Log = Arc<Mutex<Vec<String>>>;

fn push(log: &Log, entry: impl Into<String>) {
    log.lock().unwrap().push(entry.into());
}

fn entries(log: &Log) -> Vec<String> {
    log.lock().unwrap().clone()
}

/// Records every hook call; `recover_to` makes `on_error` return that state.
struct RecordingHooks {
    log: Log,
    recover_to: Option<&'static str>,
}

impl RecordingHooks {
    fn new(log: &Log) -> Arc<Self> {
        Arc::new(Self {
            log: log.clone(),
            recover_to: None,
        })
    }
}

#[async_trait]
impl MachineHooks for RecordingHooks {
    async fn on_machine_start(&self, _context: &mut Context) -> Result<(), HookError> {
        push(&self.log, "on_machine_start");
        Ok(())
    }

    async fn on_machine_end(
        &self,
        _context: &Context,
        output: &mut Value,
    ) -> Result<(), HookError> {
        push(&self.log, format!("on_machine_end {output}"));
        Ok(())
    }

    async fn on_state_enter(&self, state: &str, _context: &mut Context) -> Result<(), HookError> {
        push(&self.log, format!("on_state_enter {state}"));
        Ok(())
    }

    async fn on_state_exit(
        &self,
        state: &str,
        _context: &mut Context,
        _output: &mut Option<Value>,
    ) -> Result<(), HookError> {
        push(&self.log, format!("on_state_exit {state}"));
        Ok(())
    }

    async fn on_transition(
        &self,
        from: &str,
        to: &str,
        _context: &mut Context,
    ) -> Result<String, HookError> {
        push(&self.log, format!("on_transition {from} -> {to}"));
        Ok(to.to_string())
    }

    async fn on_error(
        &self,
        state: &str,
        error: &StateError,
        _context: &mut Context,
    ) -> Result<Option<String>, HookError> {
        push(
            &self.log,
            format!("on_error {state} {}: {}", error.error_type, error.message),
        );
        Ok(self.recover_to.map(str::to_string))
    }
}

/// A memory backend that logs every snapshot written (event, state, step, whether it has output).
struct RecordingBackend {
    inner: MemoryBackend,
    log: Log,
}

impl RecordingBackend {
    fn record(&self, snapshot: &MachineSnapshot) {
        push(
            &self.log,
            format!(
                "checkpoint {} {} step={}{}",
                snapshot.event.as_deref().unwrap_or("?"),
                snapshot.current_state,
                snapshot.step,
                match &snapshot.output {
                    Some(o) => format!(" output={}", Value::Object(o.clone())),
                    None => String::new(),
                }
            ),
        );
    }
}

#[async_trait]
impl PersistenceBackend for RecordingBackend {
    async fn save(&self, key: &str, snapshot: &MachineSnapshot) -> Result<(), PersistenceError> {
        self.record(snapshot);
        self.inner.save(key, snapshot).await
    }

    async fn save_shared(
        &self,
        key: &str,
        snapshot: Arc<MachineSnapshot>,
    ) -> Result<(), PersistenceError> {
        self.record(&snapshot);
        self.inner.save_shared(key, snapshot).await
    }

    async fn load(&self, key: &str) -> Result<Option<MachineSnapshot>, PersistenceError> {
        self.inner.load(key).await
    }

    async fn save_text(&self, key: &str, text: &str) -> Result<(), PersistenceError> {
        self.inner.save_text(key, text).await
    }

    async fn load_text(&self, key: &str) -> Result<Option<String>, PersistenceError> {
        self.inner.load_text(key).await
    }

    async fn delete(&self, key: &str) -> Result<(), PersistenceError> {
        self.inner.delete(key).await
    }

    async fn list(&self, prefix: &str) -> Result<Vec<String>, PersistenceError> {
        self.inner.list(prefix).await
    }
}

fn recording_store(log: &Log) -> CheckpointStore {
    CheckpointStore::new(Arc::new(RecordingBackend {
        inner: MemoryBackend::new(),
        log: log.clone(),
    }))
}

fn state_error(err: RunError) -> (String, StateError) {
    match err {
        RunError::State { state, error, .. } => (state, error),
        other => panic!("expected RunError::State, got {other:?}"),
    }
}

// -------------------------------------------------------------------------------------------
// (a) order of events
// -------------------------------------------------------------------------------------------

fn event_order_machine(log: &Log) -> Machine {
    let action_log = log.clone();
    Machine::of::<event_order::Machine>()
        .hooks(RecordingHooks::new(log))
        .persistence(recording_store(log))
        .action("do_work", move |mut ctx: Context| {
            let log = action_log.clone();
            async move {
                push(&log, "action do_work");
                let n = ctx.get("n").and_then(Value::as_i64).unwrap_or(0);
                ctx.insert("result".into(), json!(n * 2));
                Ok(ctx)
            }
        })
        .build()
        .unwrap()
}

#[tokio::test]
async fn events_come_in_the_reference_order() {
    let log: Log = Arc::default();
    let machine = event_order_machine(&log);
    let result = machine
        .run_with_id("order-1", json!({"n": 21}))
        .await
        .unwrap();
    assert_eq!(result.output, json!({"result": 42}));
    assert_eq!(result.final_state, "done");
    assert_eq!(result.steps, 3);
    assert_eq!(result.execution_id, "order-1");

    let expected = [
        "checkpoint machine_start start step=0",
        "on_machine_start",
        // step 1: start
        "checkpoint state_enter start step=1",
        "on_state_enter start",
        "checkpoint execute start step=1",
        "checkpoint state_exit start step=1",
        "on_state_exit start",
        "on_transition start -> work",
        // step 2: work
        "checkpoint state_enter work step=2",
        "on_state_enter work",
        "checkpoint execute work step=2",
        "action do_work",
        "checkpoint state_exit work step=2",
        "on_state_exit work",
        "on_transition work -> done",
        // step 3: done (final): only its state_exit and machine_end carry the output
        "checkpoint state_enter done step=3",
        "on_state_enter done",
        "checkpoint execute done step=3",
        r#"checkpoint state_exit done step=3 output={"result":42}"#,
        "on_state_exit done",
        r#"checkpoint machine_end end step=3 output={"result":42}"#,
        r#"on_machine_end {"result":42}"#,
    ];
    assert_eq!(entries(&log), expected);

    // The store holds 3 checkpoints per step plus machine_start and machine_end.
    let store = machine.store().unwrap();
    let keys = store.checkpoint_keys("order-1").await.unwrap();
    assert_eq!(keys.len(), 3 * 3 + 2, "{keys:?}");
    assert_eq!(keys[0], "order-1/step_000000_machine_start.json");
    assert_eq!(
        store.latest_checkpoint_key("order-1").await.unwrap(),
        Some("order-1/step_000003_machine_end.json".to_string())
    );
}

#[tokio::test]
async fn recovery_via_on_error_skips_exit_hooks_and_checkpoint_of_the_failed_step() {
    // SEMANTICS #22: on_state_exit, on_transition and state_exit are skipped for the failed step.
    let log: Log = Arc::default();
    let machine = Machine::of::<error_string::Machine>()
        .hooks(RecordingHooks::new(&log))
        .persistence(recording_store(&log))
        .action("risky", |_ctx: Context| async move {
            Err(StateError::new("MyError", "boom"))
        })
        .build()
        .unwrap();
    let result = machine.run(json!({})).await.unwrap();
    assert_eq!(
        result.output,
        json!({"route": "recovered", "error_type": "MyError"})
    );
    let expected = [
        "checkpoint machine_start start step=0",
        "on_machine_start",
        "checkpoint state_enter start step=1",
        "on_state_enter start",
        "checkpoint execute start step=1",
        "checkpoint state_enter recovered step=2",
        "on_state_enter recovered",
        "checkpoint execute recovered step=2",
        r#"checkpoint state_exit recovered step=2 output={"route":"recovered","error_type":"MyError"}"#,
        "on_state_exit recovered",
        r#"checkpoint machine_end end step=2 output={"route":"recovered","error_type":"MyError"}"#,
        r#"on_machine_end {"route":"recovered","error_type":"MyError"}"#,
    ];
    assert_eq!(entries(&log), expected);
}

#[tokio::test]
async fn a_failed_run_never_calls_on_machine_end() {
    let log: Log = Arc::default();
    let machine = Machine::of::<error_unrouted::Machine>()
        .hooks(RecordingHooks::new(&log))
        .persistence(recording_store(&log))
        .action("risky", |_ctx: Context| async move {
            Err(StateError::new("MyError", "boom"))
        })
        .build()
        .unwrap();
    machine.run(json!({})).await.unwrap_err();
    let log = entries(&log);
    assert_eq!(log.last().unwrap(), "on_error start MyError: boom");
    assert!(!log.iter().any(|e| e.contains("machine_end")), "{log:?}");
}

// -------------------------------------------------------------------------------------------
// (b) error routing by type
// -------------------------------------------------------------------------------------------

fn risky_by_kind() -> impl Fn(Context) -> futures::future::Ready<Result<Context, StateError>> {
    |ctx: Context| {
        let kind = ctx
            .get("kind")
            .and_then(Value::as_str)
            .unwrap_or("Unknown")
            .to_string();
        futures::future::ready(Err(StateError::new(kind, "boom")))
    }
}

#[tokio::test]
async fn on_error_map_routes_by_exact_type_then_default() {
    let machine = Machine::of::<error_routing::Machine>()
        .action("risky", risky_by_kind())
        .build()
        .unwrap();

    let by_type = machine.run(json!({"kind": "MyError"})).await.unwrap();
    assert_eq!(by_type.final_state, "by_type");
    assert_eq!(
        by_type.output,
        json!({"route": "by_type", "error": "boom", "error_type": "MyError"})
    );
    assert_eq!(by_type.context["last_error"], json!("boom"));
    assert_eq!(by_type.context["last_error_type"], json!("MyError"));

    let other = machine.run(json!({"kind": "OtherError"})).await.unwrap();
    assert_eq!(other.final_state, "by_default");
    assert_eq!(
        other.output,
        json!({"route": "by_default", "error": "boom", "error_type": "OtherError"})
    );
    assert_eq!(other.context["last_error_type"], json!("OtherError"));

    // The stable engine types route the same way (here: to `default`).
    let action_error = machine
        .run(json!({"kind": error_type::ACTION}))
        .await
        .unwrap();
    assert_eq!(action_error.final_state, "by_default");
}

#[tokio::test]
async fn on_error_string_form_catches_every_type() {
    let machine = Machine::of::<error_string::Machine>()
        .action("risky", |_ctx: Context| async move {
            Err(StateError::new("WhateverError", "nope"))
        })
        .build()
        .unwrap();
    let result = machine.run(json!({})).await.unwrap();
    assert_eq!(result.final_state, "recovered");
    assert_eq!(
        result.output,
        json!({"route": "recovered", "error_type": "WhateverError"})
    );
    assert_eq!(result.context["last_error"], json!("nope"));
}

#[tokio::test]
async fn the_on_error_hook_recovers_when_the_state_has_no_on_error() {
    let log: Log = Arc::default();
    let machine = Machine::of::<error_unrouted::Machine>()
        .hooks(Arc::new(RecordingHooks {
            log: log.clone(),
            recover_to: Some("recovered"),
        }))
        .action("risky", |_ctx: Context| async move {
            Err(StateError::new("MyError", "boom"))
        })
        .build()
        .unwrap();
    let result = machine.run(json!({})).await.unwrap();
    assert_eq!(result.final_state, "recovered");
    assert_eq!(
        result.output,
        json!({"route": "recovered", "error": "boom"})
    );
    assert!(entries(&log).contains(&"on_error start MyError: boom".to_string()));
}

#[tokio::test]
async fn an_unrouted_error_fails_the_run_naming_the_state() {
    let machine = Machine::of::<error_unrouted::Machine>()
        .action("risky", |_ctx: Context| async move {
            Err(StateError::new("MyError", "boom"))
        })
        .build()
        .unwrap();
    let err = machine.run(json!({})).await.unwrap_err();
    let text = err.to_string();
    assert!(text.contains("`start`"), "{text}");
    assert!(text.contains("error_unrouted"), "{text}");
    assert!(text.contains("MyError: boom"), "{text}");
    let (state, error) = state_error(err);
    assert_eq!(state, "start");
    assert_eq!(error, StateError::new("MyError", "boom"));
}

#[tokio::test]
async fn an_on_error_hook_naming_an_unknown_state_is_an_error() {
    let machine = Machine::of::<error_unrouted::Machine>()
        .hooks(Arc::new(RecordingHooks {
            log: Arc::default(),
            recover_to: Some("nowhere"),
        }))
        .action("risky", |_ctx: Context| async move {
            Err(StateError::new("MyError", "boom"))
        })
        .build()
        .unwrap();
    match machine.run(json!({})).await.unwrap_err() {
        RunError::UnknownState { state, .. } => assert_eq!(state, "nowhere"),
        other => panic!("expected UnknownState, got {other:?}"),
    }
}

/// Fails `on_state_enter` of one state.
struct FailingEnter(&'static str);

#[async_trait]
impl MachineHooks for FailingEnter {
    async fn on_state_enter(&self, state: &str, _context: &mut Context) -> Result<(), HookError> {
        if state == self.0 {
            return Err(HookError::failed("enter refused"));
        }
        Ok(())
    }
}

#[tokio::test]
async fn a_failing_hook_is_a_hook_error_routed_by_on_error() {
    let machine = Machine::of::<error_string::Machine>()
        .hooks(Arc::new(FailingEnter("start")))
        .action("risky", |ctx: Context| async move { Ok(ctx) })
        .build()
        .unwrap();
    let result = machine.run(json!({})).await.unwrap();
    assert_eq!(result.final_state, "recovered");
    assert_eq!(result.context["last_error_type"], json!("HookError"));
    assert_eq!(
        result.context["last_error"],
        json!("hook failed: enter refused")
    );
}

// -------------------------------------------------------------------------------------------
// (c) expression errors at run time
// -------------------------------------------------------------------------------------------

#[tokio::test]
async fn an_expression_error_routes_through_on_error() {
    let machine = Machine::of::<expr_error::Machine>().build().unwrap();
    let result = machine.run(json!({})).await.unwrap();
    assert_eq!(result.final_state, "handled");
    assert_eq!(
        result.output,
        json!({"route": "handled", "error_type": "ExpressionError"})
    );
    let message = result.context["last_error"].as_str().unwrap();
    assert!(!message.is_empty());
}

#[tokio::test]
async fn an_unrouted_expression_error_fails_as_expression_error() {
    let machine = Machine::of::<expr_error_unrouted::Machine>()
        .build()
        .unwrap();
    let (state, error) = state_error(machine.run(json!({})).await.unwrap_err());
    assert_eq!(state, "start");
    assert_eq!(error.error_type, error_type::EXPRESSION);
    assert_eq!(error.error_type, "ExpressionError");
    // The message names the condition that failed and both operand types.
    assert!(
        error
            .message
            .starts_with("in expression `context.missing >= 5`: "),
        "{}",
        error.message
    );
    assert!(
        error.message.contains("null") && error.message.contains("number"),
        "{}",
        error.message
    );
}

// -------------------------------------------------------------------------------------------
// (d) max_steps, (e) no transition, (f) unknown actions
// -------------------------------------------------------------------------------------------

fn counter(max_steps: Option<u64>) -> Machine {
    let mut builder = Machine::of::<counter_loop::Machine>().action("inc", |mut ctx: Context| {
        let i = ctx.get("i").and_then(Value::as_i64).unwrap_or(0);
        ctx.insert("i".into(), json!(i + 1));
        futures::future::ready(Ok(ctx))
    });
    if let Some(n) = max_steps {
        builder = builder.max_steps(n);
    }
    builder.build().unwrap()
}

#[tokio::test]
async fn max_steps_counts_every_state_visit_including_the_final_one() {
    // 1000 iterations of `count` + the final `done` = 1001 steps.
    let result = counter(Some(1001)).run(json!({"n": 1000})).await.unwrap();
    assert_eq!(result.output, json!({"i": 1000}));
    assert_eq!(result.steps, 1001);

    match counter(Some(1000))
        .run(json!({"n": 1000}))
        .await
        .unwrap_err()
    {
        RunError::MaxSteps {
            machine,
            limit,
            next,
            ..
        } => {
            assert_eq!(machine, "counter_loop");
            assert_eq!(limit, 1000);
            assert_eq!(next, "done");
        }
        other => panic!("expected MaxSteps, got {other:?}"),
    }
}

#[tokio::test]
async fn the_default_max_steps_is_1000_and_exceeding_it_is_an_error() {
    let err = counter(None).run(json!({"n": 1000})).await.unwrap_err();
    assert!(
        matches!(err, RunError::MaxSteps { limit: 1000, .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("max_steps (1000)"), "{err}");
    let ok = counter(None).run(json!({"n": 998})).await.unwrap();
    assert_eq!(ok.steps, 999);
}

#[tokio::test]
async fn a_non_final_state_with_no_matching_transition_is_an_error() {
    let machine = Machine::of::<no_transition::Machine>().build().unwrap();
    match machine.run(json!({"go": false})).await.unwrap_err() {
        RunError::NoTransition { machine, state, .. } => {
            assert_eq!(machine, "no_transition");
            assert_eq!(state, "start");
        }
        other => panic!("expected NoTransition, got {other:?}"),
    }
    let ok = machine.run(json!({"go": true})).await.unwrap();
    assert_eq!(ok.final_state, "done");
    assert_eq!(ok.output, json!({}));
}

#[tokio::test]
async fn an_unknown_action_is_an_error_unless_ignored() {
    // Nothing that could run `nosuch`: `build()` says so before any run.
    match Machine::of::<unknown_action::Machine>().build() {
        Err(BuildError::MissingHandlers { machine, missing }) => {
            assert_eq!(machine, "unknown_action");
            assert_eq!(missing.len(), 1);
            assert_eq!(missing[0].name, "nosuch");
            assert_eq!(missing[0].state, "start");
        }
        other => panic!("expected MissingHandlers, got {other:?}"),
    }
    // A fallback that declines it: the run finds it unhandled.
    let machine = Machine::of::<unknown_action::Machine>()
        .fallback_action(|_call, _ctx| Box::pin(async { Ok(ActionOutcome::NotHandled) }))
        .build()
        .unwrap();
    let err = machine
        .run_with_id("unhandled-1", json!({"kept": "k"}))
        .await
        .unwrap_err();
    assert_eq!(err.execution_id(), Some("unhandled-1"));
    match &err {
        RunError::UnhandledAction { state, action, .. } => {
            assert_eq!(state, "start");
            assert_eq!(action, "nosuch");
        }
        other => panic!("expected UnhandledAction, got {other:?}"),
    }
    // A parent routing it still sees the stable type name.
    assert_eq!(err.to_state_error().error_type, "UnhandledActionError");

    let lenient = Machine::of::<unknown_action::Machine>()
        .ignore_unhandled_actions(true)
        .build()
        .unwrap();
    let result = lenient.run(json!({"kept": "k"})).await.unwrap();
    assert_eq!(result.output, json!({"kept": "k"}));
    assert_eq!(
        result.context,
        json!({"kept": "k"}).as_object().cloned().unwrap()
    );
}

// -------------------------------------------------------------------------------------------
// (g) templates
// -------------------------------------------------------------------------------------------

#[tokio::test]
async fn single_expression_templates_keep_their_type() {
    let machine = Machine::of::<templates::Machine>().build().unwrap();
    let input = json!({
        "n": 1000, "s": "1000", "b": true, "nul": null, "lst": [1, 2], "empty": false
    });
    let result = machine.run(input).await.unwrap();
    assert_eq!(result.final_state, "with_output");
    assert_eq!(
        result.output,
        json!({
            "n": 1000,
            "s": "1000",
            "b": true,
            "nul": null,
            "missing": null,
            "lst": [1, 2],
            "bare": [1, 2],
            "mixed": "x1000",
            // Mixed text is parsed as JSON when it can be (SEMANTICS #23).
            "mixed_json": 10001000,
            "listed": "x[1, 2]",
            // Rendered at every depth, inside lists too (SEMANTICS #5 decision).
            "nested": {"a": 1000, "b": [1000, 7, {"c": 1000}]},
            "literal": 5,
            "bare_plain": "bare",
        })
    );
}

#[tokio::test]
async fn a_final_state_without_output_gives_an_empty_object() {
    let machine = Machine::of::<templates::Machine>().build().unwrap();
    let result = machine
        .run(json!({"n": 1, "s": "", "b": false, "lst": [], "empty": true}))
        .await
        .unwrap();
    assert_eq!(result.final_state, "no_output");
    assert_eq!(result.output, json!({}));
}

// -------------------------------------------------------------------------------------------
// (h) persistence settings
// -------------------------------------------------------------------------------------------

#[tokio::test]
async fn persistence_disabled_means_no_checkpoints() {
    let machine = Machine::of::<persist_disabled::Machine>().build().unwrap();
    assert!(machine.store().is_none());
    let result = machine.run_with_id("off-1", json!({})).await.unwrap();
    assert_eq!(result.output, json!({"ok": true}));
    assert!(matches!(
        machine.resume("off-1").await.unwrap_err(),
        RunError::UnknownExecution(id) if id == "off-1"
    ));
}

#[tokio::test]
async fn no_persistence_section_checkpoints_to_memory() {
    let machine = Machine::of::<event_order::Machine>()
        .action("do_work", |ctx: Context| async move { Ok(ctx) })
        .build()
        .unwrap();
    let store = machine.store().expect("memory checkpoints by default");
    machine.run_with_id("mem-1", json!({"n": 1})).await.unwrap();
    let keys = store.checkpoint_keys("mem-1").await.unwrap();
    assert_eq!(keys.len(), 11, "{keys:?}");
    let end = store.load_latest("mem-1").await.unwrap().unwrap();
    assert_eq!(end.event.as_deref(), Some("machine_end"));
    assert_eq!(end.current_state, "end");

    // `.no_persistence()` turns it off.
    let off = Machine::of::<event_order::Machine>()
        .action("do_work", |ctx: Context| async move { Ok(ctx) })
        .no_persistence()
        .build()
        .unwrap();
    assert!(off.store().is_none());
}

#[tokio::test]
async fn checkpoint_on_limits_the_events_saved() {
    let machine = Machine::of::<persist_end_only::Machine>().build().unwrap();
    machine.run_with_id("end-1", json!({})).await.unwrap();
    let keys = machine
        .store()
        .unwrap()
        .checkpoint_keys("end-1")
        .await
        .unwrap();
    assert_eq!(keys, ["end-1/step_000002_machine_end.json"]);
}

// -------------------------------------------------------------------------------------------
// (i) resume
// -------------------------------------------------------------------------------------------

#[tokio::test]
async fn resuming_a_finished_execution_returns_its_output() {
    let machine = Machine::of::<event_order::Machine>()
        .action("do_work", |mut ctx: Context| async move {
            ctx.insert("result".into(), json!("first run"));
            Ok(ctx)
        })
        .build()
        .unwrap();
    let first = machine.run_with_id("done-1", json!({})).await.unwrap();
    let again = machine.resume("done-1").await.unwrap();
    assert_eq!(again.output, first.output);
    assert_eq!(again.output, json!({"result": "first run"}));
    assert_eq!(again.steps, 3);
    assert_eq!(again.execution_id, "done-1");
    assert_eq!(again.context, first.context);
    // The real final state, not the `"end"` that machine_end checkpoints record.
    assert_eq!(again.final_state, "done");
}

#[tokio::test]
async fn resuming_a_finished_execution_names_its_final_state_without_state_exit_checkpoints() {
    let machine = Machine::of::<persist_end_only::Machine>().build().unwrap();
    machine.run_with_id("end-2", json!({})).await.unwrap();
    let again = machine.resume("end-2").await.unwrap();
    assert_eq!(again.output, json!({"ok": true}));
    assert_eq!(again.final_state, "done");
}

/// `build()` walks the child machines too: their actions run with the parent's handlers, and
/// Rust hooks given to the parent are not theirs (a child uses its own YAML `hooks:`).
#[test]
fn build_checks_the_actions_of_child_machines() {
    let missing = |builder: flatmachine_runtime::MachineBuilder| match builder.build() {
        Err(BuildError::MissingHandlers { machine, missing }) => {
            assert_eq!(machine, "parent_foreach");
            missing
                .iter()
                .map(|m| format!("{}/{}/{}", m.machine, m.state, m.name))
                .collect::<Vec<_>>()
        }
        Err(other) => panic!("expected MissingHandlers, got {other}"),
        Ok(_) => Vec::new(),
    };
    let all = missing(Machine::of::<parent_foreach::Machine>());
    assert_eq!(all, ["child_double/start/double"]);
    let hooked =
        missing(Machine::of::<parent_foreach::Machine>().hooks(Arc::new(MetricsHooks::new())));
    assert_eq!(hooked, all);
    let message = Machine::of::<parent_foreach::Machine>()
        .build()
        .err()
        .unwrap()
        .to_string();
    assert!(
        message.starts_with("machine `parent_foreach`: nothing runs one name the machine uses:\n  - action `double` (state `start` of `child_double`)"),
        "{message}"
    );
    let handled = Machine::of::<parent_foreach::Machine>()
        .action_mut("double", |_ctx, _call| Box::pin(async { Ok(()) }));
    assert!(missing(handled).is_empty());
}

#[tokio::test]
async fn resuming_an_unknown_execution_is_an_error() {
    let machine = Machine::of::<event_order::Machine>()
        .action_mut("do_work", |_ctx, _call| Box::pin(async { Ok(()) }))
        .build()
        .unwrap();
    match machine.resume("no-such-run").await.unwrap_err() {
        RunError::UnknownExecution(id) => assert_eq!(id, "no-such-run"),
        other => panic!("expected UnknownExecution, got {other:?}"),
    }
}

/// The `resumable` machine on disk below `dir`; `flaky` fails while `fail` is set.
fn resumable_machine(dir: &std::path::Path, fail: Arc<AtomicBool>) -> Machine {
    Machine::of::<resumable::Machine>()
        .checkpoint_dir(dir.join(".checkpoints"))
        .lock_dir(dir.join(".locks"))
        .action("first", |ctx: Context| async move {
            Ok(push_trail(ctx, "first"))
        })
        .action("flaky", move |ctx: Context| {
            let fail = fail.load(Ordering::SeqCst);
            async move {
                if fail {
                    Err(StateError::new("Flaky", "not this time"))
                } else {
                    Ok(push_trail(ctx, "flaky"))
                }
            }
        })
        .build()
        .unwrap()
}

fn push_trail(mut ctx: Context, what: &str) -> Context {
    if let Some(Value::Array(trail)) = ctx.get_mut("trail") {
        trail.push(json!(what));
    }
    ctx
}

#[tokio::test]
async fn resume_continues_from_the_latest_disk_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let fail = Arc::new(AtomicBool::new(true));
    let machine = resumable_machine(dir.path(), fail.clone());
    let (state, error) = state_error(machine.run_with_id("disk-1", json!({})).await.unwrap_err());
    assert_eq!(state, "flaky");
    assert_eq!(error.error_type, "Flaky");
    let latest = std::fs::read_to_string(dir.path().join(".checkpoints/disk-1/latest")).unwrap();
    assert_eq!(latest, "disk-1/step_000002_execute.json");

    fail.store(false, Ordering::SeqCst);
    let resumed = machine.resume("disk-1").await.unwrap();
    let fresh = machine.run(json!({})).await.unwrap();
    assert_eq!(resumed.output, fresh.output);
    assert_eq!(resumed.output, json!({"trail": ["first", "flaky"]}));
    // The resumed state keeps its step number (the reference spends a new one): `flaky` is
    // step 2 before and after the resume, `done` is step 3, as in the uninterrupted run.
    assert_eq!(resumed.steps, 3);
    assert_eq!(fresh.steps, 3);
}

#[tokio::test]
async fn a_corrupt_latest_snapshot_is_a_persistence_error_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let machine = resumable_machine(dir.path(), Arc::new(AtomicBool::new(true)));
    machine
        .run_with_id("corrupt-1", json!({}))
        .await
        .unwrap_err();
    let file = dir
        .path()
        .join(".checkpoints/corrupt-1/step_000002_execute.json");
    let garbage = b"{\"execution_id\": \"corrupt-1\", truncated";
    std::fs::write(&file, garbage).unwrap();

    let err = machine.resume("corrupt-1").await.unwrap_err();
    assert!(
        matches!(err, RunError::Persistence(PersistenceError::Corrupt { .. })),
        "{err:?}"
    );
    let text = err.to_string();
    assert!(
        text.contains(&file.display().to_string()),
        "the message should name {}: {text}",
        file.display()
    );
    assert_eq!(
        std::fs::read(&file).unwrap(),
        garbage,
        "the file must be left as it was"
    );
}

// -------------------------------------------------------------------------------------------
// (j) locks
// -------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_runner_on_a_locked_execution_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let entered = Arc::new(tokio::sync::Notify::new());
    let release = Arc::new(tokio::sync::Notify::new());
    let (e, r) = (entered.clone(), release.clone());
    let first = Machine::of::<resumable::Machine>()
        .checkpoint_dir(dir.path().join(".checkpoints"))
        .lock(Arc::new(LocalFileLock::new(dir.path().join(".locks"))))
        .action("first", |ctx: Context| async move { Ok(ctx) })
        .action("flaky", move |ctx: Context| {
            let (e, r) = (e.clone(), r.clone());
            async move {
                e.notify_one();
                r.notified().await;
                Ok(push_trail(ctx, "held"))
            }
        })
        .build()
        .unwrap();
    let running = tokio::spawn(async move { first.run_with_id("locked-1", json!({})).await });
    tokio::time::timeout(Duration::from_secs(10), entered.notified())
        .await
        .expect("the first run reaches `flaky`");

    // Another runner with its own lock object on the same directory.
    let second = resumable_machine(dir.path(), Arc::new(AtomicBool::new(false)));
    for err in [
        second.run_with_id("locked-1", json!({})).await.unwrap_err(),
        second.resume("locked-1").await.unwrap_err(),
    ] {
        match &err {
            RunError::Lock(LockError::Held { execution_id }) => {
                assert_eq!(execution_id, "locked-1")
            }
            other => panic!("expected a held lock, got {other:?}"),
        }
        assert!(err.to_string().contains("already running"), "{err}");
    }

    release.notify_one();
    let done = running.await.unwrap().unwrap();
    assert_eq!(done.output, json!({"trail": ["held"]}));
    // Once released, the other runner may proceed (the execution is finished: its output).
    assert_eq!(second.resume("locked-1").await.unwrap().output, done.output);
}

// -------------------------------------------------------------------------------------------
// (k) hooks from YAML
// -------------------------------------------------------------------------------------------

#[tokio::test]
async fn yaml_hooks_class_resolves_through_the_registry() {
    let metrics = Arc::new(MetricsHooks::new());
    let mut registry = HooksRegistry::new();
    registry.register_instance("MetricsHooks", metrics.clone());
    let machine = Machine::of::<hooks_yaml::Machine>()
        .hooks_registry(registry)
        .build()
        .unwrap();
    machine.run(json!({})).await.unwrap();
    machine.run(json!({})).await.unwrap();
    let snap = metrics.snapshot();
    assert_eq!(snap.state_count("start"), 2);
    assert_eq!(snap.state_count("done"), 2);
    assert_eq!(snap.transition_count("start", "done"), 2);

    // The built-in class from the default registry works too.
    let builtin = Machine::of::<hooks_yaml::Machine>().build().unwrap();
    assert_eq!(
        builtin.run(json!({})).await.unwrap().output,
        json!({"ok": true})
    );
}

#[test]
fn an_unregistered_hooks_class_fails_the_build_naming_it() {
    let err = Machine::of::<hooks_yaml::Machine>()
        .hooks_registry(HooksRegistry::empty())
        .build()
        .unwrap_err();
    match &err {
        BuildError::UnknownHooksClass { machine, class, .. } => {
            assert_eq!(machine, "hooks_yaml");
            assert_eq!(class, "MetricsHooks");
        }
        other => panic!("expected UnknownHooksClass, got {other:?}"),
    }
    assert!(err.to_string().contains("`MetricsHooks`"), "{err}");

    let typo = Machine::of::<hooks_typo::Machine>().build().unwrap_err();
    let text = typo.to_string();
    assert!(text.contains("`MetricHooks`"), "{text}");
    assert!(text.contains("did you mean `MetricsHooks`"), "{text}");

    // Hooks passed to the builder replace the YAML class, so nothing needs resolving.
    Machine::of::<hooks_typo::Machine>()
        .hooks(Arc::new(MetricsHooks::new()))
        .build()
        .unwrap();
}

// -------------------------------------------------------------------------------------------
// (l) child machines
// -------------------------------------------------------------------------------------------

/// `double`: y = 2x, failing when x == fail_on; sleeps less for bigger x, so children finish
/// out of order.
async fn double(mut ctx: Context) -> Result<Context, StateError> {
    let x = ctx.get("x").and_then(Value::as_i64).unwrap_or(0);
    tokio::time::sleep(Duration::from_millis(5 * (4 - x.clamp(0, 4)) as u64)).await;
    if ctx.get("fail_on") == Some(&json!(x)) {
        return Err(StateError::new(
            "RuntimeError",
            format!("child failed on {x}"),
        ));
    }
    ctx.insert("y".into(), json!(2 * x));
    Ok(ctx)
}

#[tokio::test]
async fn a_single_child_machine_runs_and_its_failure_routes_by_on_error() {
    let machine = Machine::of::<parent_single::Machine>()
        .action("double", double)
        .build()
        .unwrap();
    let ok = machine.run(json!({"x": 21})).await.unwrap();
    assert_eq!(ok.output, json!({"y": 42}));

    // SEMANTICS #28: a single child's failure is the parent state's error.
    let failed = machine.run(json!({"x": 3, "fail_on": 3})).await.unwrap();
    assert_eq!(failed.final_state, "failed");
    assert_eq!(
        failed.output,
        json!({"error": "child failed on 3", "error_type": "RuntimeError"})
    );
}

#[tokio::test]
async fn foreach_results_come_back_in_item_order() {
    let machine = Machine::of::<parent_foreach::Machine>()
        .action("double", double)
        .build()
        .unwrap();
    let result = machine.run(json!({"items": [3, 1, 2]})).await.unwrap();
    assert_eq!(
        result.output,
        json!({"results": [{"y": 6}, {"y": 2}, {"y": 4}]})
    );
}

#[tokio::test]
async fn a_failing_child_in_foreach_becomes_an_error_entry() {
    let machine = Machine::of::<parent_foreach::Machine>()
        .action("double", double)
        .build()
        .unwrap();
    // `fail_on` reaches the children through the foreach `input`, which sees the parent's
    // context (SEMANTICS #18 decision).
    let result = machine
        .run(json!({"items": [3, 1, 2], "fail_on": 3}))
        .await
        .unwrap();
    assert_eq!(result.final_state, "done");
    assert_eq!(
        result.output,
        json!({"results": [
            {"_error": "child failed on 3", "_error_type": "RuntimeError"},
            {"y": 2},
            {"y": 4},
        ]})
    );
}

#[tokio::test]
async fn a_child_gets_its_own_yaml_hooks_not_the_parents() {
    // SEMANTICS #20: the parent's hooks object is not passed down; the child's `hooks: {class}`
    // resolves through the registry the parent was built with.
    let log: Log = Arc::default();
    let child_metrics = Arc::new(MetricsHooks::new());
    let mut registry = HooksRegistry::new();
    registry.register_instance("ChildMetrics", child_metrics.clone());
    let machine = Machine::of::<parent_hooked::Machine>()
        .hooks(RecordingHooks::new(&log))
        .hooks_registry(registry)
        .build()
        .unwrap();
    let result = machine.run(json!({})).await.unwrap();
    assert_eq!(result.output, json!({"child_ok": true}));
    assert_eq!(child_metrics.snapshot().state_count("child_start"), 1);
    assert_eq!(child_metrics.snapshot().state_count("start"), 0);
    let log = entries(&log);
    assert!(log.contains(&"on_state_enter start".to_string()));
    assert!(
        !log.iter()
            .any(|e| e.contains("child_start") || e.contains("child_done")),
        "{log:?}"
    );

    // A child's hooks class must be registered too: checked when the parent is built.
    let err = Machine::of::<parent_hooked::Machine>().build().unwrap_err();
    assert!(err.to_string().contains("`ChildMetrics`"), "{err}");
}

#[test]
fn a_childs_unregistered_hooks_class_fails_the_build_even_with_parent_hooks() {
    // Without `.hooks(..)` the build fails naming `ChildMetrics` (see
    // a_child_gets_its_own_yaml_hooks_not_the_parents). With it, `build()` succeeds and the
    // child fails only at run time, as a MachineError in the parent's `start` state.
    let err = Machine::of::<parent_hooked::Machine>()
        .hooks(Arc::new(MetricsHooks::new()))
        .build()
        .unwrap_err();
    assert!(err.to_string().contains("`ChildMetrics`"), "{err}");
}

#[tokio::test]
async fn launch_starts_the_child_without_waiting_for_it() {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let gate = Arc::new(tokio::sync::Notify::new());
    let child_gate = gate.clone();
    let machine = Machine::of::<parent_launch::Machine>()
        .action("double", move |ctx: Context| {
            let (tx, gate) = (tx.clone(), child_gate.clone());
            async move {
                // The child blocks until the parent has finished.
                gate.notified().await;
                let ctx = double(ctx).await?;
                let _ = tx.send(ctx.get("y").cloned());
                Ok(ctx)
            }
        })
        .build()
        .unwrap();
    let result = machine.run(json!({"x": 5})).await.unwrap();
    assert_eq!(result.output, json!({"launched": true}));
    gate.notify_one();
    let y = tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .expect("the launched child finishes after the parent");
    assert_eq!(y, Some(Some(json!(10))));
}

// -------------------------------------------------------------------------------------------
// (m) agents
// -------------------------------------------------------------------------------------------

fn agent_machine() -> flatmachine_runtime::MachineBuilder {
    Machine::of::<agent_call::Machine>().agent("writer", |input: Value, _ctx: Context| async move {
        let topic = input["topic"].as_str().unwrap_or("?").to_string();
        Ok(AgentOutput::new(
            json!({"x": format!("{topic}!"), "ignored": 1}),
        ))
    })
}

#[tokio::test]
async fn agents_are_closures_and_their_calls_are_counted() {
    let result: RunResult = agent_machine()
        .build()
        .unwrap()
        .run(json!({"topic": "hi"}))
        .await
        .unwrap();
    assert_eq!(result.output, json!({"x": "hi!!"}));
    assert_eq!(result.context["x"], json!("hi!!"));
    assert!(!result.context.contains_key("ignored"));
    assert_eq!(result.total_api_calls, 2);
    assert_eq!(result.total_cost, 0.0);
}

#[tokio::test]
async fn agent_cost_and_call_limits() {
    let costly = Machine::of::<agent_call::Machine>()
        .agent("writer", |_input: Value, _ctx: Context| async move {
            Ok(AgentOutput {
                output: json!({"x": "x"}),
                api_calls: 3,
                cost: 0.25,
            })
        })
        .build()
        .unwrap();
    let result = costly.run(json!({"topic": "t"})).await.unwrap();
    assert_eq!(result.total_api_calls, 6);
    assert_eq!(result.total_cost, 0.5);

    let limited = agent_machine().max_agent_calls(1).build().unwrap();
    match limited.run(json!({"topic": "t"})).await.unwrap_err() {
        RunError::MaxAgentCalls { limit, state, .. } => {
            assert_eq!(limit, 1);
            assert_eq!(state, "again");
        }
        other => panic!("expected MaxAgentCalls, got {other:?}"),
    }

    // An agent of a type no adapter takes, and no closure: `build()` refuses.
    match Machine::of::<agent_call::Machine>().build() {
        Err(BuildError::MissingHandlers { missing, .. }) => {
            assert_eq!(missing.len(), 1);
            assert_eq!(missing[0].name, "writer");
            assert_eq!(missing[0].adapter_type.as_deref(), Some("custom"));
        }
        other => panic!("expected MissingHandlers, got {other:?}"),
    }
}

// -------------------------------------------------------------------------------------------
// (n) run_blocking
// -------------------------------------------------------------------------------------------

#[test]
fn run_blocking_works_outside_a_runtime() {
    let machine = Machine::of::<event_order::Machine>()
        .action("do_work", |mut ctx: Context| async move {
            tokio::time::sleep(Duration::from_millis(1)).await;
            ctx.insert("result".into(), json!("blocking"));
            Ok(ctx)
        })
        .build()
        .unwrap();
    let result = machine.run_blocking(json!({})).unwrap();
    assert_eq!(result.output, json!({"result": "blocking"}));
}

#[tokio::test]
async fn run_blocking_inside_a_runtime_does_not_panic() {
    let machine = Machine::of::<event_order::Machine>()
        .action("do_work", |mut ctx: Context| async move {
            tokio::time::sleep(Duration::from_millis(1)).await;
            ctx.insert("result".into(), json!("inside"));
            Ok(ctx)
        })
        .build()
        .unwrap();
    let result = machine.run_blocking(json!({})).unwrap();
    assert_eq!(result.output, json!({"result": "inside"}));
    // From a blocking-pool thread too.
    let result = tokio::task::spawn_blocking(move || machine.run_blocking(json!({})))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(result.output, json!({"result": "inside"}));
}

fn timeout_machine() -> Machine {
    Machine::of::<state_timeout::Machine>()
        .action("sleep", |mut ctx: Context| async move {
            let ms = ctx.get("delay_ms").and_then(Value::as_u64).unwrap_or(0);
            tokio::time::sleep(Duration::from_millis(ms)).await;
            ctx.insert("slept".into(), json!(true));
            Ok(ctx)
        })
        .build()
        .unwrap()
}

#[tokio::test]
async fn a_state_past_its_timeout_fails_with_timeout_error_and_keeps_the_old_context() {
    let r = timeout_machine()
        .run(json!({"delay_ms": 2000}))
        .await
        .unwrap();
    assert_eq!(
        r.output,
        json!({"route": "timed_out", "error_type": "TimeoutError", "slept": null})
    );
    let r = timeout_machine().run(json!({"delay_ms": 1})).await.unwrap();
    assert_eq!(r.output, json!({"route": "done", "slept": true}));
}

#[tokio::test]
async fn run_options_set_the_execution_id_and_override_max_steps_per_run() {
    let machine = counter(None);
    let ok = machine
        .run_with(
            json!({"n": 3}),
            flatmachine_runtime::RunOptions::new()
                .execution_id("per-run-id")
                .max_steps(4),
        )
        .await
        .unwrap();
    assert_eq!(ok.execution_id, "per-run-id");
    assert_eq!(ok.steps, 4);
    let err = machine
        .run_with(
            json!({"n": 3}),
            flatmachine_runtime::RunOptions::new().max_steps(3),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, RunError::MaxSteps { limit: 3, .. }), "{err}");
}

#[tokio::test]
async fn inside_a_state_input_is_the_context() {
    let machine = Machine::of::<state_input_alias::Machine>()
        .agent("echo", |input: Value, _ctx: Context| async move {
            assert_eq!(input, json!({"subject": "tides", "same": "tides"}));
            Ok(AgentOutput::new(json!({"heard": input["subject"]})))
        })
        .build()
        .unwrap();
    let r = machine.run(json!({"topic": "tides"})).await.unwrap();
    assert_eq!(r.output, json!({"heard": "tides (asked about tides)"}));
}
