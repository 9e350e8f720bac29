//! Actions as a Rust user writes them, and composition: child machines sharing the parent's
//! backends, usage adding up, concurrency caps, `mode: any`, timeouts, `launch:` through the
//! outbox. Machines in `tests/machines/compose/`.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use flatmachine_runtime::hooks::{
    ActionOutcome, HookError, HooksFor, HooksRegistry, MachineHooks, MetricsHooks,
};
use flatmachine_runtime::persistence::{CheckpointStore, MemoryBackend};
use flatmachine_runtime::results::make_uri;
use flatmachine_runtime::{
    ActionCall, AgentOutput, Context, Machine, MachineBuilder, StateError, Value,
};
use serde_json::json;

flatmachine_runtime::flatmachine!("tests/machines/compose/keep_on_fail.yml");
flatmachine_runtime::flatmachine!("tests/machines/compose/fan_out.yml");
flatmachine_runtime::flatmachine!("tests/machines/compose/fan_out_capped.yml");
flatmachine_runtime::flatmachine!("tests/machines/compose/race.yml");
flatmachine_runtime::flatmachine!("tests/machines/compose/child_timeout.yml");
flatmachine_runtime::flatmachine!("tests/machines/compose/launcher.yml");
flatmachine_runtime::flatmachine!("tests/machines/parent_single.yml");
flatmachine_runtime::flatmachine!("tests/machines/parent_hooked.yml");

// -------------------------------------------------------------------------------------------
// A1: a failing action keeps its changes, whichever way it is written
// -------------------------------------------------------------------------------------------

fn expected_failure() -> Value {
    json!({"route": "failed", "bumped": 1, "error_type": "Boom"})
}

#[tokio::test]
async fn a_failing_closure_keeps_its_changes() {
    let machine = Machine::of::<keep_on_fail::Machine>()
        .action_mut("bump_then_fail", |ctx, _call| {
            Box::pin(async move {
                ctx.insert("bumped".into(), json!(1));
                Err(StateError::new("Boom", "after the change"))
            })
        })
        .build()
        .unwrap();
    let result = machine.run(json!({})).await.unwrap();
    assert_eq!(result.output, expected_failure());
    assert_eq!(result.context["bumped"], json!(1));
    assert_eq!(result.context["last_error"], json!("after the change"));
}

struct BumpHooks;

#[async_trait]
impl MachineHooks for BumpHooks {
    async fn on_action(
        &self,
        action: &str,
        context: &mut Context,
    ) -> Result<ActionOutcome, HookError> {
        assert_eq!(action, "bump_then_fail");
        context.insert("bumped".into(), json!(1));
        Err(HookError::action("Boom", "after the change"))
    }
}

#[tokio::test]
async fn a_failing_on_action_hook_keeps_its_changes() {
    let machine = Machine::of::<keep_on_fail::Machine>()
        .hooks(Arc::new(BumpHooks))
        .build()
        .unwrap();
    let result = machine.run(json!({})).await.unwrap();
    assert_eq!(result.output, expected_failure());
}

#[tokio::test]
async fn a_failing_fallback_handler_keeps_its_changes() {
    let machine = Machine::of::<keep_on_fail::Machine>()
        .fallback_action(|call, ctx| {
            Box::pin(async move {
                assert_eq!(call.action, "bump_then_fail");
                ctx.insert("bumped".into(), json!(1));
                Err(StateError::new("Boom", "after the change"))
            })
        })
        .build()
        .unwrap();
    let result = machine.run(json!({})).await.unwrap();
    assert_eq!(result.output, expected_failure());
}

struct KeepActions;

impl keep_on_fail::Actions for KeepActions {
    async fn bump_then_fail(&self, context: &mut Context) -> Result<(), StateError> {
        context.insert("bumped".into(), json!(1));
        let call = ActionCall::current().expect("set while an action runs");
        assert_eq!(
            (call.machine, call.state, call.action),
            ("keep_on_fail", "start", "bump_then_fail")
        );
        Err(StateError::new("Boom", "after the change"))
    }
}

#[tokio::test]
async fn a_failing_typed_action_keeps_its_changes() {
    let machine = keep_on_fail::Machine::with_actions(KeepActions)
        .build()
        .unwrap();
    let result = machine.run(json!({})).await.unwrap();
    assert_eq!(result.output, expected_failure());
}

#[tokio::test]
#[allow(deprecated)]
async fn the_deprecated_by_value_form_still_compiles_and_runs() {
    let machine = Machine::of::<keep_on_fail::Machine>()
        .action("bump_then_fail", |mut ctx: Context| async move {
            ctx.insert("bumped".into(), json!(1));
            Ok(ctx)
        })
        .build()
        .unwrap();
    let result = machine.run(json!({})).await.unwrap();
    assert_eq!(result.output, json!({"route": "done"}));
    assert_eq!(result.context["bumped"], json!(1));
}

// -------------------------------------------------------------------------------------------
// A2, A3, A5: hooks see every action; one handler for parent and children; hooks learn
// which machine they are built for
// -------------------------------------------------------------------------------------------

#[tokio::test]
async fn metrics_hooks_count_actions_handled_by_closures() {
    let metrics = MetricsHooks::new();
    let machine = Machine::of::<keep_on_fail::Machine>()
        .hooks(Arc::new(metrics.clone()))
        .action_mut("bump_then_fail", |_ctx, _call| {
            Box::pin(async { Err(StateError::new("Boom", "no")) })
        })
        .build()
        .unwrap();
    machine.run(json!({})).await.unwrap();
    machine.run(json!({})).await.unwrap();
    let snap = metrics.snapshot();
    assert_eq!(snap.action_count("bump_then_fail"), 2);
    assert_eq!(snap.action_errors("bump_then_fail"), 2);
}

/// Records `on_action_done` calls.
#[derive(Default)]
struct DoneLog(Mutex<Vec<String>>);

#[async_trait]
impl MachineHooks for DoneLog {
    async fn on_action_done(
        &self,
        call: &ActionCall,
        context: &Context,
        error: Option<&StateError>,
    ) {
        self.0.lock().unwrap().push(format!(
            "{}:{}:{}:{}",
            call.machine,
            call.action,
            context.contains_key("bumped"),
            error.map(|e| e.error_type.as_str()).unwrap_or("ok")
        ));
    }
}

#[tokio::test]
async fn on_action_done_sees_typed_actions_with_the_context_they_left() {
    let log = Arc::new(DoneLog::default());
    let machine = keep_on_fail::Machine::with_actions(KeepActions)
        .hooks(log.clone())
        .build()
        .unwrap();
    machine.run(json!({})).await.unwrap();
    assert_eq!(
        *log.0.lock().unwrap(),
        ["keep_on_fail:bump_then_fail:true:Boom"]
    );
}

#[tokio::test]
async fn one_fallback_handler_serves_parent_and_child_and_knows_who_called() {
    let calls: Arc<Mutex<Vec<ActionCall>>> = Arc::default();
    let seen = calls.clone();
    let machine = Machine::of::<parent_single::Machine>()
        .fallback_action(move |call, ctx| {
            seen.lock().unwrap().push(call.clone());
            Box::pin(async move {
                if call.action != "double" {
                    return Ok(ActionOutcome::NotHandled);
                }
                let x = ctx.get("x").and_then(Value::as_i64).unwrap_or(0);
                ctx.insert("y".into(), json!(x * 2));
                Ok(ActionOutcome::Handled)
            })
        })
        .build()
        .unwrap();
    let result = machine
        .run_with_id("parent-1", json!({"x": 4, "fail_on": -1}))
        .await
        .unwrap();
    assert_eq!(result.output, json!({"y": 8}));
    let calls = calls.lock().unwrap();
    assert_eq!(calls.len(), 1);
    let call = &calls[0];
    assert_eq!(call.machine, "child_double");
    assert_eq!(call.state, "start");
    assert_eq!(call.parent_execution_id.as_deref(), Some("parent-1"));
    assert_ne!(call.execution_id, "parent-1");
}

#[tokio::test]
async fn a_fallback_returning_not_handled_is_an_unhandled_action() {
    let machine = Machine::of::<keep_on_fail::Machine>()
        .fallback_action(|_call, _ctx| Box::pin(async { Ok(ActionOutcome::NotHandled) }))
        .build()
        .unwrap();
    // `on_error: failed` routes the UnhandledActionError like any other.
    let result = machine.run(json!({})).await.unwrap();
    assert_eq!(
        result.context["last_error_type"],
        json!("UnhandledActionError")
    );
}

#[tokio::test]
async fn hooks_constructors_learn_which_machine_they_are_for() {
    let built: Arc<Mutex<Vec<HooksFor>>> = Arc::default();
    let record = built.clone();
    let mut registry = HooksRegistry::new();
    registry.register_for("ChildMetrics", move |target: &HooksFor, _args| {
        record.lock().unwrap().push(target.clone());
        Ok(Arc::new(MetricsHooks::new()) as Arc<dyn MachineHooks>)
    });
    let machine = Machine::of::<parent_hooked::Machine>()
        .hooks_registry(registry)
        .build()
        .unwrap();
    let result = machine
        .run_with_id("hooked-parent", json!({}))
        .await
        .unwrap();
    assert_eq!(result.output, json!({"child_ok": true}));
    let built = built.lock().unwrap();
    assert_eq!(built.len(), 1);
    assert_eq!(built[0].machine, "child_hooked");
    assert_eq!(
        built[0].parent_execution_id.as_deref(),
        Some("hooked-parent")
    );
    assert!(!built[0].resuming);
}

// -------------------------------------------------------------------------------------------
// C8: children share the store, checkpoint with lineage, and their usage adds up
// -------------------------------------------------------------------------------------------

/// `work` tracks how many children run it at once.
#[derive(Default)]
struct Gauge {
    running: AtomicUsize,
    peak: AtomicUsize,
    total: AtomicUsize,
}

fn with_worker(builder: MachineBuilder, gauge: Arc<Gauge>) -> MachineBuilder {
    builder
        // The `scorer` agent: one call per execution, cost 0.5.
        .agent("scorer", |input: Value, _ctx: Context| async move {
            let n = input["n"].as_i64().unwrap_or(0);
            let mut out = AgentOutput::new(json!({"score": n * 10}));
            out.cost = 0.5;
            Ok(out)
        })
        .action_mut("work", move |_ctx, _call| {
            let gauge = gauge.clone();
            Box::pin(async move {
                let now = gauge.running.fetch_add(1, Ordering::SeqCst) + 1;
                gauge.peak.fetch_max(now, Ordering::SeqCst);
                gauge.total.fetch_add(1, Ordering::SeqCst);
                // Let every other ready child run before this one finishes.
                for _ in 0..3 {
                    tokio::task::yield_now().await;
                }
                gauge.running.fetch_sub(1, Ordering::SeqCst);
                Ok(())
            })
        })
}

#[tokio::test]
async fn children_checkpoint_into_the_parents_store_with_lineage_and_add_up_usage() {
    let backend = Arc::new(MemoryBackend::new());
    let machine = with_worker(
        Machine::of::<fan_out::Machine>(),
        Arc::new(Gauge::default()),
    )
    .persistence(CheckpointStore::new(backend.clone()))
    .build()
    .unwrap();
    let result = machine
        .run_with_id("fan-1", json!({"items": [1, 2, 3]}))
        .await
        .unwrap();
    assert_eq!(result.total_api_calls, 3);
    assert_eq!(result.total_cost, 1.5);

    // The parent's final checkpoint carries the totals.
    let store = machine.store().unwrap();
    let end = store.load_latest("fan-1").await.unwrap().unwrap();
    assert_eq!(end.event.as_deref(), Some("machine_end"));
    assert_eq!(end.total_api_calls, Some(3));
    assert_eq!(end.total_cost, Some(1.5));

    // Three child executions, each checkpointed with the parent's id.
    let ids = store.execution_ids().await.unwrap();
    let children: Vec<_> = ids.iter().filter(|id| *id != "fan-1").collect();
    assert_eq!(children.len(), 3, "{ids:?}");
    for id in children {
        let snap = store.load_latest(id).await.unwrap().unwrap();
        assert_eq!(snap.machine_name, "worker");
        assert_eq!(snap.parent_execution_id.as_deref(), Some("fan-1"));
        assert_eq!(snap.event.as_deref(), Some("machine_end"));
        assert_eq!(snap.total_api_calls, Some(1));
    }
    assert!(!backend.is_empty());
}

// -------------------------------------------------------------------------------------------
// C9: a concurrency cap; results in input order
// -------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn foreach_over_1000_items_never_runs_more_than_the_cap() {
    let gauge = Arc::new(Gauge::default());
    let machine = with_worker(Machine::of::<fan_out::Machine>(), gauge.clone())
        .max_concurrency(8)
        .no_persistence()
        .build()
        .unwrap();
    let items: Vec<i64> = (0..1000).collect();
    let result = machine.run(json!({"items": items})).await.unwrap();
    assert_eq!(gauge.total.load(Ordering::SeqCst), 1000);
    let peak = gauge.peak.load(Ordering::SeqCst);
    assert!(peak <= 8, "peak {peak}");
    assert!(peak > 1, "children ran one at a time (peak {peak})");
    let results = result.output["results"].as_array().unwrap();
    assert_eq!(results.len(), 1000);
    for (i, r) in results.iter().enumerate() {
        assert_eq!(r, &json!({"n": i, "score": i * 10}), "entry {i}");
    }
    assert_eq!(result.total_api_calls, 1000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settings_max_concurrency_caps_from_yaml() {
    let gauge = Arc::new(Gauge::default());
    let machine = with_worker(Machine::of::<fan_out_capped::Machine>(), gauge.clone())
        .no_persistence()
        .build()
        .unwrap();
    let items: Vec<i64> = (0..50).collect();
    let result = machine.run(json!({"items": items})).await.unwrap();
    assert!(gauge.peak.load(Ordering::SeqCst) <= 3);
    assert_eq!(result.output["results"][49], json!({"n": 49, "score": 490}));
}

// -------------------------------------------------------------------------------------------
// C10: mode any cancels the losers; a machine state's timeout is a routed TimeoutError
// -------------------------------------------------------------------------------------------

/// Sets its flag when dropped.
struct DropFlag(Arc<AtomicBool>);

impl Drop for DropFlag {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

fn hanging(builder: MachineBuilder, dropped: Arc<AtomicBool>) -> MachineBuilder {
    builder.action_mut("hang", move |_ctx, _call| {
        let flag = DropFlag(dropped.clone());
        Box::pin(async move {
            let _flag = flag;
            std::future::pending::<()>().await;
            Ok(())
        })
    })
}

#[tokio::test]
async fn mode_any_returns_the_first_child_by_name_and_cancels_the_others() {
    let dropped = Arc::new(AtomicBool::new(false));
    let machine = hanging(Machine::of::<race::Machine>(), dropped.clone())
        .action_mut("quick", |_ctx, _call| Box::pin(async { Ok(()) }))
        .build()
        .unwrap();
    let result = machine.run(json!({})).await.unwrap();
    assert_eq!(result.output, json!({"winner": {"fast": {"who": "fast"}}}));
    assert!(
        dropped.load(Ordering::SeqCst),
        "the slow child was cancelled"
    );
}

#[tokio::test]
async fn a_machine_state_past_its_timeout_routes_a_timeout_error() {
    let dropped = Arc::new(AtomicBool::new(false));
    let machine = hanging(Machine::of::<child_timeout::Machine>(), dropped.clone())
        .build()
        .unwrap();
    let result = machine.run(json!({})).await.unwrap();
    assert_eq!(
        result.output,
        json!({"route": "timed_out", "error_type": "TimeoutError"})
    );
    assert!(dropped.load(Ordering::SeqCst), "the child was cancelled");
}

// -------------------------------------------------------------------------------------------
// C11, C12: launch through the outbox, results in the result backend, join_launched
// -------------------------------------------------------------------------------------------

#[tokio::test]
async fn a_launched_child_is_recorded_before_it_starts_and_writes_its_result() {
    let dir = tempfile::tempdir().unwrap();
    let gauge = Arc::new(Gauge::default());
    let machine = with_worker(Machine::of::<launcher::Machine>(), gauge.clone())
        .checkpoint_dir(dir.path().join(".checkpoints"))
        .lock_dir(dir.path().join(".locks"))
        .build()
        .unwrap();
    let result = machine
        .run_with_id("launcher-1", json!({"n": 7}))
        .await
        .unwrap();
    assert_eq!(result.output, json!({"launched": true}));
    let joined = machine.join_launched().await;
    assert_eq!(joined.len(), 1);
    let child = &joined[0];
    assert_eq!(child.machine, "worker");
    assert_eq!(child.result, Ok(json!({"n": 7, "score": 70})));
    assert_eq!(gauge.total.load(Ordering::SeqCst), 1);

    // The result is in the result backend under the child's id.
    let stored = machine
        .result_backend()
        .read(&make_uri(&child.execution_id, "result"), false, None)
        .await
        .unwrap();
    assert_eq!(stored, Some(json!({"n": 7, "score": 70})));

    // The launch step's `execute` checkpoint holds the intent, marked launched.
    let store = machine.store().unwrap();
    let execute = store
        .backend()
        .load("launcher-1/step_000001_execute.json")
        .await
        .unwrap()
        .unwrap();
    let intents = execute.pending_launches.expect("the outbox");
    assert_eq!(intents.len(), 1);
    assert_eq!(intents[0].execution_id, child.execution_id);
    assert_eq!(intents[0].machine, "worker");
    assert!(intents[0].launched);
    assert_eq!(intents[0].input, *json!({"n": 7}).as_object().unwrap());

    // The child checkpointed into the same directory with its parent's id.
    let child_end = store
        .load_latest(&child.execution_id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(child_end.parent_execution_id.as_deref(), Some("launcher-1"));

    // Nothing left to join.
    assert!(machine.join_launched().await.is_empty());
}

#[test]
fn run_blocking_waits_for_launched_children() {
    let dir = tempfile::tempdir().unwrap();
    let gauge = Arc::new(Gauge::default());
    let machine = with_worker(Machine::of::<launcher::Machine>(), gauge.clone())
        .checkpoint_dir(dir.path().join(".checkpoints"))
        .lock_dir(dir.path().join(".locks"))
        .build()
        .unwrap();
    machine.run_blocking(json!({"n": 1})).unwrap();
    assert_eq!(gauge.total.load(Ordering::SeqCst), 1);
}
