//! Children across a crash, and the limits of a run tree: derived child ids, a resumed parent
//! reusing finished children and resuming unfinished ones, `mode: any` after a resume, the
//! concurrency cap on tokio's paused clock, one `max_agent_calls` budget per run tree,
//! `max_foreach_items`, what a failed run leaves (`RunFailure`, `RunTotals`), resuming a child
//! id through its parent's machine, and run trees. Machines in `tests/machines/compose/`.
//!
//! The "crash" here is a run task aborted while a child hangs (its checkpoints stay, as after
//! a SIGKILL); `examples/tests/compose_resume.rs` SIGKILLs real processes.

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use flatmachine_runtime::hooks::{HookError, MachineHooks};
use flatmachine_runtime::persistence::{
    CheckpointStore, LocalFileBackend, MachineSnapshot, PersistenceBackend, PersistenceError,
};
use flatmachine_runtime::run_tree::{Fate, RunTree};
use flatmachine_runtime::{
    AgentOutput, Context, Machine, MachineBuilder, RunError, RunOptions, RunTotals, StateError,
    Value,
};
use serde_json::json;

flatmachine_runtime::flatmachine!("tests/machines/compose/fan_out.yml");
flatmachine_runtime::flatmachine!("tests/machines/compose/planned_fan_out.yml");
flatmachine_runtime::flatmachine!("tests/machines/compose/spend_then_fail.yml");
flatmachine_runtime::flatmachine!("tests/machines/compose/race.yml");

/// How often each worker item ran `work` and called `scorer`, and how many are hanging.
#[derive(Default)]
struct Counts {
    work: Mutex<BTreeMap<i64, usize>>,
    score: Mutex<BTreeMap<i64, usize>>,
    hanging: AtomicUsize,
}

impl Counts {
    fn bump(map: &Mutex<BTreeMap<i64, usize>>, n: i64) {
        *map.lock().unwrap().entry(n).or_default() += 1;
    }

    fn work(&self) -> Vec<(i64, usize)> {
        self.work.lock().unwrap().clone().into_iter().collect()
    }

    fn score(&self) -> Vec<(i64, usize)> {
        self.score.lock().unwrap().clone().into_iter().collect()
    }
}

/// The worker's `work` action and `scorer` agent (one call, cost 0.5). `work` hangs for item
/// `hang`; it sleeps `n` ms (tokio time) when `sleep_ms` is set.
fn worker(
    builder: MachineBuilder,
    counts: Arc<Counts>,
    hang: Option<i64>,
    sleep_ms: bool,
) -> MachineBuilder {
    let scored = counts.clone();
    builder
        .agent("scorer", move |input: Value, _ctx: Context| {
            let counts = scored.clone();
            async move {
                let n = input["n"].as_i64().unwrap_or(0);
                Counts::bump(&counts.score, n);
                let mut out = AgentOutput::new(json!({"score": n * 10}));
                out.cost = 0.5;
                Ok(out)
            }
        })
        .action_mut("work", move |ctx, _call| {
            let counts = counts.clone();
            let n = ctx.get("n").and_then(Value::as_i64).unwrap_or(0);
            Box::pin(async move {
                Counts::bump(&counts.work, n);
                if Some(n) == hang {
                    counts.hanging.fetch_add(1, Ordering::SeqCst);
                    std::future::pending::<()>().await;
                }
                if sleep_ms {
                    tokio::time::sleep(Duration::from_millis(n as u64)).await;
                }
                Ok(())
            })
        })
}

fn on_files(builder: MachineBuilder, dir: &std::path::Path) -> MachineBuilder {
    builder
        .persistence(CheckpointStore::local(dir.join(".checkpoints")))
        .lock_dir(dir.join(".locks"))
}

/// Child executions of `parent` in the store, with the event of their newest checkpoint.
async fn children_of(store: &CheckpointStore, parent: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for id in store.execution_ids().await.unwrap() {
        if let Ok(Some(s)) = store.load_latest(&id).await
            && s.parent_execution_id.as_deref() == Some(parent)
        {
            out.insert(id, s.event.unwrap_or_default());
        }
    }
    out
}

async fn wait_for(what: &str, mut done: impl AsyncFnMut() -> bool) {
    for _ in 0..1000 {
        if done().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("timed out waiting for {what}");
}

fn expected_results(items: &[i64]) -> Value {
    json!({"results": items.iter().map(|n| json!({"n": n, "score": n * 10})).collect::<Vec<_>>()})
}

#[tokio::test]
async fn child_ids_are_derived_from_the_parent_and_recorded_with_it() {
    let mut seen = Vec::new();
    for _ in 0..2 {
        let dir = tempfile::tempdir().unwrap();
        let machine = on_files(
            worker(
                Machine::of::<fan_out::Machine>(),
                Arc::default(),
                None,
                false,
            ),
            dir.path(),
        )
        .build()
        .unwrap();
        machine
            .run_with_id("fan-ids", json!({"items": [1, 2, 3]}))
            .await
            .unwrap();
        let children = children_of(machine.store().unwrap(), "fan-ids").await;
        assert_eq!(children.len(), 3);
        assert!(children.values().all(|e| e == "machine_end"));
        seen.push(children.into_keys().collect::<Vec<_>>());
    }
    assert_eq!(
        seen[0], seen[1],
        "the same parent id derives the same child ids"
    );
}

#[tokio::test]
async fn a_resumed_foreach_reuses_finished_children_and_resumes_the_unfinished_one() {
    let dir = tempfile::tempdir().unwrap();
    let items = [1, 2, 3, 4];
    let counts = Arc::new(Counts::default());
    // First process: child 3 hangs inside `work`; 1, 2 and 4 finish (cap 2).
    let first = on_files(
        worker(
            Machine::of::<fan_out::Machine>(),
            counts.clone(),
            Some(3),
            false,
        ),
        dir.path(),
    )
    .max_concurrency(2)
    .build()
    .unwrap();
    let store = first.store().unwrap().clone();
    let task = tokio::spawn({
        let first = first.clone();
        async move { first.run_with_id("fan-1", json!({"items": items})).await }
    });
    wait_for("three finished children and one hanging", async || {
        let children = children_of(&store, "fan-1").await;
        counts.hanging.load(Ordering::SeqCst) == 1
            && children.values().filter(|e| *e == "machine_end").count() == 3
    })
    .await;
    task.abort();
    let _ = task.await;

    // The tree before the resume: the hanging child is resumed with its parent.
    let tree = RunTree::load(&store).await.unwrap();
    let parent = tree
        .runs
        .iter()
        .find(|r| r.execution_id == "fan-1")
        .unwrap();
    assert_eq!(parent.fate, Fate::ResumeIt);
    let fates: Vec<&Fate> = tree
        .runs
        .iter()
        .filter(|r| r.depth == 1)
        .map(|r| &r.fate)
        .collect();
    assert_eq!(fates.len(), 4);
    assert_eq!(fates.iter().filter(|f| ***f == Fate::Finished).count(), 3);
    assert_eq!(fates.iter().filter(|f| ***f == Fate::WithParent).count(), 1);

    // Second process: nothing hangs.
    let second = on_files(
        worker(
            Machine::of::<fan_out::Machine>(),
            counts.clone(),
            None,
            false,
        ),
        dir.path(),
    )
    .max_concurrency(2)
    .build()
    .unwrap();
    let result = second.resume("fan-1").await.unwrap();
    assert_eq!(result.output, expected_results(&items));
    // Only child 3 ran `work` again (it was inside it); nobody called the agent twice.
    assert_eq!(counts.work(), [(1, 1), (2, 1), (3, 2), (4, 1)]);
    assert_eq!(counts.score(), [(1, 1), (2, 1), (3, 1), (4, 1)]);
    // Totals counted once: four calls, 0.5 each.
    assert_eq!(result.total_api_calls, 4);
    assert_eq!(result.total_cost, 2.0);
    // No new child executions.
    let children = children_of(second.store().unwrap(), "fan-1").await;
    assert_eq!(children.len(), 4);
    assert!(children.values().all(|e| e == "machine_end"));

    // Resuming the finished parent again runs nothing.
    let again = second.resume("fan-1").await.unwrap();
    assert_eq!(again.output, result.output);
    assert_eq!(counts.work().iter().map(|(_, c)| c).sum::<usize>(), 5);
}

#[tokio::test]
async fn a_child_id_resumed_through_the_parent_machine_runs_as_that_child() {
    let dir = tempfile::tempdir().unwrap();
    let counts = Arc::new(Counts::default());
    let first = on_files(
        worker(
            Machine::of::<fan_out::Machine>(),
            counts.clone(),
            Some(2),
            false,
        ),
        dir.path(),
    )
    .build()
    .unwrap();
    let store = first.store().unwrap().clone();
    let task = tokio::spawn({
        let first = first.clone();
        async move { first.run_with_id("fan-2", json!({"items": [1, 2]})).await }
    });
    wait_for("child 2 hanging", async || {
        counts.hanging.load(Ordering::SeqCst) == 1
            && children_of(&store, "fan-2")
                .await
                .values()
                .any(|e| e == "machine_end")
    })
    .await;
    task.abort();
    let _ = task.await;
    let hanging = children_of(&store, "fan-2")
        .await
        .into_iter()
        .find(|(_, e)| e != "machine_end")
        .map(|(id, _)| id)
        .unwrap();

    let second = on_files(
        worker(
            Machine::of::<fan_out::Machine>(),
            counts.clone(),
            None,
            false,
        ),
        dir.path(),
    )
    .build()
    .unwrap();
    // The checkpoints name `worker`: the parent's machine resumes it as its child.
    let child = second.resume(&hanging).await.unwrap();
    assert_eq!(child.output, json!({"n": 2, "score": 20}));
    // The parent then finds it finished and does not run it again.
    let parent = second.resume("fan-2").await.unwrap();
    assert_eq!(parent.output, expected_results(&[1, 2]));
    assert_eq!(counts.work(), [(1, 1), (2, 2)]);
    assert_eq!(counts.score(), [(1, 1), (2, 1)]);

    // An execution of a machine this one does not have is refused, naming it.
    let mut stray =
        MachineSnapshot::new("stray-1", "stranger", "1.0.0", "start", Context::new(), 1);
    stray.event = Some("execute".into());
    stray.parent_execution_id = Some("elsewhere".into());
    store.save(stray).await.unwrap();
    let err = second.resume("stray-1").await.unwrap_err();
    assert!(
        matches!(&err, RunError::OtherMachine { recorded, .. } if recorded == "stranger"),
        "{err:?}"
    );
    let text = err.to_string();
    assert!(text.contains("machine `stranger`"), "{text}");
    assert!(text.contains("child of execution `elsewhere`"), "{text}");
    assert!(text.contains("resume it with"), "{text}");
    // Nothing was written for it.
    assert_eq!(store.load_latest("stray-1").await.unwrap().unwrap().step, 1);
}

/// Local files; hangs (until the task is aborted) right after the `latest` pointer of a
/// `fast` run's `machine_end` is written.
struct HangAfterFastEnds {
    inner: LocalFileBackend,
    ended: Mutex<HashSet<String>>,
}

#[async_trait]
impl PersistenceBackend for HangAfterFastEnds {
    async fn save(&self, key: &str, snapshot: &MachineSnapshot) -> Result<(), PersistenceError> {
        self.inner.save(key, snapshot).await?;
        if snapshot.machine_name == "fast" && snapshot.event.as_deref() == Some("machine_end") {
            self.ended
                .lock()
                .unwrap()
                .insert(snapshot.execution_id.clone());
        }
        Ok(())
    }

    async fn load(&self, key: &str) -> Result<Option<MachineSnapshot>, PersistenceError> {
        self.inner.load(key).await
    }

    async fn save_text(&self, key: &str, text: &str) -> Result<(), PersistenceError> {
        self.inner.save_text(key, text).await?;
        let ended = key
            .strip_suffix("/latest")
            .is_some_and(|id| self.ended.lock().unwrap().contains(id));
        if ended {
            std::future::pending::<()>().await;
        }
        Ok(())
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

    fn file_path(&self, key: &str) -> Option<std::path::PathBuf> {
        self.inner.file_path(key)
    }
}

#[tokio::test]
async fn mode_any_after_a_resume_takes_the_child_that_finished_before_the_crash() {
    let dir = tempfile::tempdir().unwrap();
    let quick = Arc::new(AtomicUsize::new(0));
    let race = |hang: bool| {
        let quick = quick.clone();
        let backend: Arc<dyn PersistenceBackend> = if hang {
            Arc::new(HangAfterFastEnds {
                inner: LocalFileBackend::new(dir.path().join(".checkpoints")),
                ended: Mutex::default(),
            })
        } else {
            Arc::new(LocalFileBackend::new(dir.path().join(".checkpoints")))
        };
        Machine::of::<race::Machine>()
            .persistence(CheckpointStore::new(backend))
            .lock_dir(dir.path().join(".locks"))
            .action_mut("hang", |_ctx, _call| {
                Box::pin(async {
                    std::future::pending::<()>().await;
                    Ok(())
                })
            })
            .action_mut("quick", move |_ctx, _call| {
                quick.fetch_add(1, Ordering::SeqCst);
                Box::pin(async { Ok(()) })
            })
            .build()
            .unwrap()
    };
    let first = race(true);
    let store = first.store().unwrap().clone();
    let task = tokio::spawn({
        let first = first.clone();
        async move { first.run_with_id("race-1", json!({})).await }
    });
    wait_for("the fast child to finish", async || {
        children_of(&store, "race-1")
            .await
            .values()
            .any(|e| e == "machine_end")
    })
    .await;
    task.abort();
    let _ = task.await;
    assert_eq!(
        store
            .load_latest("race-1")
            .await
            .unwrap()
            .unwrap()
            .event
            .as_deref(),
        Some("execute"),
        "the parent was still in the race"
    );

    let result = race(false).resume("race-1").await.unwrap();
    assert_eq!(result.output, json!({"winner": {"fast": {"who": "fast"}}}));
    assert_eq!(
        quick.load(Ordering::SeqCst),
        1,
        "the winner did not run again"
    );

    // The slow loser was cancelled twice and left behind: nothing will resume it.
    let tree = RunTree::load(&store).await.unwrap();
    let slow = tree
        .runs
        .iter()
        .find(|r| r.machine_name.as_deref() == Some("slow"))
        .unwrap();
    assert_eq!(
        slow.fate,
        Fate::Abandoned {
            parent: "finished".into()
        }
    );
    let text = tree.render(Some("race_app"));
    assert!(text.contains("abandoned"), "{text}");
    assert!(
        text.contains(&format!("`race_app resume {}`", slow.execution_id)),
        "{text}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_slot_frees_as_soon_as_any_child_finishes() {
    let counts = Arc::new(Counts::default());
    let machine = worker(
        Machine::of::<fan_out::Machine>(),
        counts.clone(),
        None,
        true,
    )
    .max_concurrency(2)
    .no_persistence()
    .build()
    .unwrap();
    // Slow, fast, fast, slow (milliseconds of tokio time): with a true cap of 2 the two fast
    // children run beside the first slow one and the last starts right after them: about
    // 2 s. A cap that keeps a finished child's slot until those before it finish takes 4 s.
    let items = [2000, 50, 50, 2000];
    let started = tokio::time::Instant::now();
    let result = machine.run(json!({"items": items})).await.unwrap();
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(2000) && took < Duration::from_millis(2200),
        "took {took:?}"
    );
    assert_eq!(result.output, expected_results(&items));

    // Reversed, the same time: order does not matter any more.
    let reversed = [50, 2000, 2000, 50];
    let started = tokio::time::Instant::now();
    machine.run(json!({"items": reversed})).await.unwrap();
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(2000) && took < Duration::from_millis(2200),
        "took {took:?}"
    );

    // Never more than two at a time: three children of 1 s take two rounds.
    let started = tokio::time::Instant::now();
    machine
        .run(json!({"items": [1000, 1000, 1000]}))
        .await
        .unwrap();
    assert_eq!(started.elapsed().as_millis() / 100, 20);
}

/// Answers `planner` with `count` items and counts every agent call.
fn planned(count: usize, calls: Arc<AtomicUsize>) -> MachineBuilder {
    let planner_calls = calls.clone();
    worker(
        Machine::of::<planned_fan_out::Machine>(),
        Arc::default(),
        None,
        false,
    )
    .agent("planner", move |_input: Value, _ctx: Context| {
        let calls = planner_calls.clone();
        async move {
            calls.fetch_add(1, Ordering::SeqCst);
            Ok(AgentOutput::new(
                json!({"items": (0..count).collect::<Vec<_>>()}),
            ))
        }
    })
    .agent("scorer", move |input: Value, _ctx: Context| {
        let calls = calls.clone();
        async move {
            calls.fetch_add(1, Ordering::SeqCst);
            tokio::task::yield_now().await;
            Ok(AgentOutput::new(json!({"score": input["n"]})))
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_agent_calls_bounds_a_foreach_over_20000_model_supplied_items() {
    let calls = Arc::new(AtomicUsize::new(0));
    let machine = planned(20_000, calls.clone())
        .max_agent_calls(5)
        .max_foreach_items(50_000)
        .no_persistence()
        .build()
        .unwrap();
    let failure = machine
        .execute(json!({}), RunOptions::new())
        .await
        .unwrap_err();
    assert!(
        matches!(
            &failure.error,
            RunError::MaxAgentCalls { limit: 5, state, .. } if state == "fan"
        ),
        "{:?}",
        failure.error
    );
    assert_eq!(
        calls.load(Ordering::SeqCst),
        5,
        "one plan and four children"
    );
    // The run's totals: the plan and the four children that finished.
    assert_eq!(failure.totals.api_calls, 5);
    let context = failure.context.expect("the run had a context");
    assert_eq!(context["items"].as_array().map(Vec::len), Some(20_000));
    assert_eq!(context["last_error_type"], json!("MaxAgentCallsError"));
}

#[tokio::test]
async fn run_options_max_agent_calls_overrides_the_builders() {
    let calls = Arc::new(AtomicUsize::new(0));
    let machine = planned(3, calls.clone())
        .max_agent_calls(100)
        .no_persistence()
        .build()
        .unwrap();
    let err = machine
        .run_with(json!({}), RunOptions::new().max_agent_calls(2))
        .await
        .unwrap_err();
    assert!(
        matches!(err, RunError::MaxAgentCalls { limit: 2, .. }),
        "{err:?}"
    );
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    // Without the option the builder's limit holds: 1 + 3 calls.
    let result = machine.run(json!({})).await.unwrap();
    assert_eq!(result.total_api_calls, 4);
}

#[tokio::test]
async fn a_foreach_past_max_foreach_items_starts_no_child() {
    let counts = Arc::new(Counts::default());
    let machine = worker(
        Machine::of::<fan_out::Machine>(),
        counts.clone(),
        None,
        false,
    )
    .max_foreach_items(3)
    .no_persistence()
    .build()
    .unwrap();
    let err = machine
        .run(json!({"items": [1, 2, 3, 4]}))
        .await
        .unwrap_err();
    match err {
        RunError::State { state, error, .. } => {
            assert_eq!(state, "start");
            assert_eq!(error.error_type, "ForeachLimitError");
            assert!(error.message.contains("4 items"), "{}", error.message);
            assert!(
                error.message.contains("max_foreach_items (3)"),
                "{}",
                error.message
            );
        }
        other => panic!("expected a state error, got {other:?}"),
    }
    assert!(counts.work().is_empty());
    // At the limit it runs.
    machine.run(json!({"items": [1, 2, 3]})).await.unwrap();
    assert_eq!(counts.work().len(), 3);
}

/// Records [`RunTotals::current`] when each state is entered and when the run fails.
#[derive(Default)]
struct TotalsSeen(Mutex<Vec<(String, u64, f64)>>);

#[async_trait]
impl MachineHooks for TotalsSeen {
    async fn on_state_enter(&self, state: &str, _context: &mut Context) -> Result<(), HookError> {
        let t = RunTotals::current().expect("set while the run runs");
        self.0
            .lock()
            .unwrap()
            .push((state.to_string(), t.api_calls, t.cost));
        Ok(())
    }

    async fn on_error(
        &self,
        state: &str,
        _error: &StateError,
        _context: &mut Context,
    ) -> Result<Option<String>, HookError> {
        let t = RunTotals::current().expect("set while the run runs");
        self.0
            .lock()
            .unwrap()
            .push((format!("error in {state}"), t.api_calls, t.cost));
        Ok(None)
    }
}

#[tokio::test]
async fn a_failed_run_hands_back_its_context_and_totals_and_hooks_read_them_running() {
    let seen = Arc::new(TotalsSeen::default());
    let machine = Machine::of::<spend_then_fail::Machine>()
        .hooks(seen.clone())
        .agent("scorer", |input: Value, _ctx: Context| async move {
            let mut out = AgentOutput::new(json!({"score": input["n"]}));
            out.cost = 0.25;
            Ok(out)
        })
        .action_mut("charge", |ctx, _call| {
            Box::pin(async move {
                let totals = RunTotals::current().expect("visible to actions");
                ctx.insert("calls_seen".into(), json!(totals.api_calls));
                Err(StateError::new("Declined", "card declined"))
            })
        })
        .build()
        .unwrap();
    let failure = machine
        .execute(json!({}), RunOptions::new().execution_id("spent-1"))
        .await
        .unwrap_err();
    assert!(
        matches!(&failure.error, RunError::State { state, .. } if state == "charge"),
        "{:?}",
        failure.error
    );
    assert_eq!(failure.execution_id, "spent-1");
    assert_eq!(failure.steps, 2);
    assert_eq!(failure.totals.api_calls, 1);
    assert_eq!(failure.totals.cost, 0.25);
    let context = failure.context.as_ref().unwrap();
    assert_eq!(context["score"], json!(4));
    assert_eq!(context["calls_seen"], json!(1));
    assert_eq!(context["last_error_type"], json!("Declined"));
    assert_eq!(failure.to_string(), failure.error.to_string());
    assert_eq!(
        *seen.0.lock().unwrap(),
        [
            ("start".to_string(), 0, 0.0),
            ("charge".to_string(), 1, 0.25),
            ("error in charge".to_string(), 1, 0.25),
        ]
    );
    // Outside a run there are none.
    assert!(RunTotals::current().is_none());
    // `run` gives the same error alone.
    let err = machine.run(json!({})).await.unwrap_err();
    assert!(matches!(err, RunError::State { .. }), "{err:?}");
}
