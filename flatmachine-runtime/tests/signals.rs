//! `wait_for` states, signals, the dispatcher, durable timeouts, forks and fingerprints,
//! through the public API, on the memory backends (SQLite and Redis: `signal_backends.rs`;
//! children that wait: `signals_children.rs`).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use flatmachine_runtime::engine::{ForkOptions, fork_execution};
use flatmachine_runtime::persistence::{CheckpointStore, checkpoint_event};
use flatmachine_runtime::signals::{
    DispatchOptions, Dispatcher, MemorySignalBackend, SIGNAL_TIMEOUT, SendOptions, SignalBackend,
    waiting_runs,
};
use flatmachine_runtime::{Machine, ResumeOptions, RunError, RunStatus, Value};
use serde_json::json;

flatmachine_runtime::flatmachine!("tests/machines/signals/approval.yml");
flatmachine_runtime::flatmachine!("tests/machines/signals/collect.yml");
flatmachine_runtime::flatmachine!("tests/machines/signals/timed.yml");
flatmachine_runtime::flatmachine!("tests/machines/signals/timed_unrouted.yml");
flatmachine_runtime::flatmachine!("tests/machines/signals/numbered.yml");
flatmachine_runtime::flatmachine!("tests/machines/signals/steps.yml");

/// `approval.yml` after an edit that changes its shape (same machine name).
mod edited {
    flatmachine_runtime::flatmachine!("tests/machines/signals/approval_v2.yml");
}

fn approval_machine(store: &CheckpointStore, signals: &Arc<dyn SignalBackend>) -> Machine {
    Machine::of::<approval::Machine>()
        .persistence(store.clone())
        .signal_backend(signals.clone())
        .build()
        .unwrap()
}

fn memory() -> (CheckpointStore, Arc<dyn SignalBackend>) {
    (
        CheckpointStore::memory(),
        Arc::new(MemorySignalBackend::new()),
    )
}

#[tokio::test]
async fn a_run_waits_then_a_signal_resumes_it() {
    let (store, signals) = memory();
    let machine = approval_machine(&store, &signals);
    let result = machine
        .run_with_id("t-1", json!({"ticket": 1}))
        .await
        .unwrap();
    // Waiting is not an error: a status, the state, the channel.
    assert!(result.is_waiting());
    let waiting = result.waiting().unwrap();
    assert_eq!(waiting.channel, "approval/1");
    assert_eq!(waiting.state, "wait_decision");
    assert_eq!(result.final_state, "wait_decision");
    assert_eq!(result.output, Value::Null);
    // The run is checkpointed as waiting, and registered.
    let latest = store.load_latest("t-1").await.unwrap().unwrap();
    assert_eq!(latest.event.as_deref(), Some(checkpoint_event::WAITING));
    assert_eq!(latest.waiting_channel.as_deref(), Some("approval/1"));
    assert_eq!(
        latest.config_hash.as_deref(),
        Some(approval::SPEC.config_hash)
    );
    assert!(approval::SPEC.config_hash.starts_with("fm-shape1:"));
    let waiters = signals.waiters(Some("approval/1")).await.unwrap();
    assert_eq!(waiters.len(), 1);
    assert_eq!(waiters[0].execution_id, "t-1");

    // Nothing to deliver yet: a round does nothing.
    let dispatcher = Dispatcher::new(&machine);
    let report = dispatcher.dispatch_once().await.unwrap();
    assert!(report.outcomes.is_empty());

    signals
        .send(
            "approval/1",
            json!({"decision": "approve", "by": "ana"}),
            SendOptions::default(),
        )
        .await
        .unwrap();
    let report = dispatcher.dispatch_once().await.unwrap();
    assert_eq!(report.delivered, 1);
    let resumed: Vec<_> = report.resumed().collect();
    assert_eq!(resumed.len(), 1);
    assert!(resumed[0].is_finished());
    assert_eq!(resumed[0].final_state, "approved");
    assert_eq!(
        resumed[0].output,
        json!({"decision": "approve", "by": "ana"})
    );
    // The signal is consumed, the waiter gone; the wait kept its step (not counted again).
    assert!(signals.peek("approval/1").await.unwrap().is_empty());
    assert!(signals.waiters(None).await.unwrap().is_empty());
    assert_eq!(resumed[0].steps, 3);
    // A second round finds nothing.
    assert!(
        dispatcher
            .dispatch_once()
            .await
            .unwrap()
            .outcomes
            .is_empty()
    );
}

#[tokio::test]
async fn a_signal_sent_before_anyone_waits_is_kept_and_taken_at_once() {
    let (store, signals) = memory();
    let machine = approval_machine(&store, &signals);
    signals
        .send(
            "approval/9",
            json!({"decision": "reject", "by": "bo"}),
            SendOptions::default(),
        )
        .await
        .unwrap();
    let result = machine
        .run_with_id("t-9", json!({"ticket": 9}))
        .await
        .unwrap();
    assert!(result.is_finished());
    assert_eq!(result.final_state, "rejected");
    assert!(signals.peek("approval/9").await.unwrap().is_empty());
    assert!(signals.waiters(None).await.unwrap().is_empty());
    // The run never waited: no waiting checkpoint.
    let keys = store.checkpoint_keys("t-9").await.unwrap();
    assert!(
        keys.iter().all(|k| !k.ends_with("_waiting.json")),
        "{keys:?}"
    );
}

#[tokio::test]
async fn several_signals_in_a_row_are_taken_in_order_one_per_wait() {
    let (store, signals) = memory();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let record = seen.clone();
    let machine = Machine::of::<collect::Machine>()
        .persistence(store.clone())
        .signal_backend(signals.clone())
        .action_mut("record", move |ctx, _call| {
            let record = record.clone();
            Box::pin(async move {
                let last = ctx.get("last").cloned().unwrap_or(Value::Null);
                record.lock().unwrap().push(last.clone());
                let count = ctx.get("count").and_then(Value::as_i64).unwrap_or(0) + 1;
                ctx.insert("count".into(), json!(count));
                if let Some(Value::Array(list)) = ctx.get_mut("seen") {
                    list.push(last);
                }
                Ok(())
            })
        })
        .build()
        .unwrap();
    let first = machine
        .run_with_id("c-1", json!({"id": "a"}))
        .await
        .unwrap();
    assert!(first.is_waiting());
    for n in 1..=4 {
        signals
            .send("feed/a", json!({"n": n}), SendOptions::default())
            .await
            .unwrap();
    }
    // One round: the first signal wakes the run; each later wait takes the next pending one
    // on the spot, in order; the fourth stays queued.
    let report = Dispatcher::new(&machine).dispatch_once().await.unwrap();
    let resumed: Vec<_> = report.resumed().collect();
    assert_eq!(resumed.len(), 1);
    assert_eq!(resumed[0].output, json!({"seen": [1, 2, 3]}));
    assert_eq!(*seen.lock().unwrap(), vec![json!(1), json!(2), json!(3)]);
    let left = signals.peek("feed/a").await.unwrap();
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].data, json!({"n": 4}));
}

#[tokio::test]
async fn one_signal_wakes_every_run_waiting_on_its_channel() {
    let (store, signals) = memory();
    let machine = approval_machine(&store, &signals);
    for id in ["b-1", "b-2", "b-3"] {
        let r = machine
            .run_with_id(id, json!({"ticket": "all"}))
            .await
            .unwrap();
        assert!(r.is_waiting());
    }
    for decision in ["approve", "reject"] {
        signals
            .send(
                "approval/all",
                json!({"decision": decision, "by": "team"}),
                SendOptions::default(),
            )
            .await
            .unwrap();
    }
    let report = Dispatcher::new(&machine).dispatch_once().await.unwrap();
    assert_eq!(report.delivered, 3);
    let mut finals: Vec<(String, String)> = report
        .resumed()
        .map(|r| (r.execution_id.clone(), r.final_state.clone()))
        .collect();
    finals.sort();
    assert_eq!(
        finals,
        vec![
            ("b-1".to_string(), "approved".to_string()),
            ("b-2".to_string(), "approved".to_string()),
            ("b-3".to_string(), "approved".to_string()),
        ]
    );
    // The second signal waits for the next run that waits there.
    let left = signals.peek("approval/all").await.unwrap();
    assert_eq!(left.len(), 1);
    let late = machine
        .run_with_id("b-4", json!({"ticket": "all"}))
        .await
        .unwrap();
    assert_eq!(late.final_state, "rejected");
}

#[tokio::test]
async fn channels_are_text_so_a_number_and_its_text_are_one_channel() {
    let (store, signals) = memory();
    let machine = Machine::of::<numbered::Machine>()
        .persistence(store)
        .signal_backend(signals.clone())
        .build()
        .unwrap();
    let r = machine.run_with_id("n-1", json!({"n": 7})).await.unwrap();
    assert_eq!(r.waiting().unwrap().channel, "7");
    signals
        .send("7", json!("seven"), SendOptions::default())
        .await
        .unwrap();
    let report = Dispatcher::new(&machine).dispatch_once().await.unwrap();
    let done: Vec<_> = report.resumed().collect();
    assert_eq!(done[0].output, json!({"got": "seven"}));
}

#[tokio::test]
async fn signals_past_their_time_to_live_are_never_delivered() {
    let (store, signals) = memory();
    let machine = approval_machine(&store, &signals);
    signals
        .send(
            "approval/old",
            json!({"decision": "approve"}),
            SendOptions::ttl(Duration::from_millis(20)),
        )
        .await
        .unwrap();
    signals
        .send(
            "approval/kept",
            json!({"decision": "approve", "by": "x"}),
            SendOptions::keep_until_taken(),
        )
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(60)).await;
    assert!(signals.peek("approval/old").await.unwrap().is_empty());
    assert_eq!(signals.channels().await.unwrap(), vec!["approval/kept"]);
    let report = Dispatcher::new(&machine).dispatch_once().await.unwrap();
    assert_eq!(report.purged, 1);
    assert!(report.outcomes.is_empty());
    signals
        .send(
            "approval/old",
            json!({"decision": "approve"}),
            SendOptions::ttl(Duration::from_millis(20)),
        )
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(60)).await;
    let r = machine
        .run_with_id("old", json!({"ticket": "old"}))
        .await
        .unwrap();
    assert!(r.is_waiting(), "an expired signal must not be taken");
    let r = machine
        .run_with_id("kept", json!({"ticket": "kept"}))
        .await
        .unwrap();
    assert_eq!(r.final_state, "approved");
}

#[tokio::test]
async fn resume_takes_the_delivered_signal_and_a_resume_without_one_waits_again() {
    let (store, signals) = memory();
    let machine = approval_machine(&store, &signals);
    machine
        .run_with_id("r-1", json!({"ticket": 5}))
        .await
        .unwrap();
    // Resuming with no signal: the run waits again, same step, still one waiter.
    let again = machine.resume("r-1").await.unwrap();
    assert_eq!(again.waiting().unwrap().channel, "approval/5");
    assert_eq!(again.steps, 2);
    assert_eq!(signals.waiters(None).await.unwrap().len(), 1);
    // A signal pending on the channel is taken by a plain resume too.
    signals
        .send(
            "approval/5",
            json!({"decision": "approve", "by": "cy"}),
            SendOptions::default(),
        )
        .await
        .unwrap();
    let done = machine.resume("r-1").await.unwrap();
    assert_eq!(done.final_state, "approved");
    assert!(signals.waiters(None).await.unwrap().is_empty());
}

#[tokio::test]
async fn a_machine_without_checkpoints_cannot_wait() {
    let signals: Arc<dyn SignalBackend> = Arc::new(MemorySignalBackend::new());
    let machine = Machine::of::<approval::Machine>()
        .no_persistence()
        .signal_backend(signals.clone())
        .build()
        .unwrap();
    let err = machine
        .run_with_id("np", json!({"ticket": 1}))
        .await
        .unwrap_err();
    let text = err.to_string();
    assert!(text.contains("without checkpoints"), "{text}");
    assert!(signals.waiters(None).await.unwrap().is_empty());
}

#[tokio::test]
async fn racing_dispatchers_resume_each_run_once() {
    let (store, signals) = memory();
    let machine = approval_machine(&store, &signals);
    for i in 0..50 {
        machine
            .run_with_id(format!("race-{i}"), json!({"ticket": i}))
            .await
            .unwrap();
        signals
            .send(
                &format!("approval/{i}"),
                json!({"decision": "approve", "by": i}),
                SendOptions::default(),
            )
            .await
            .unwrap();
    }
    let a = Dispatcher::new(&machine);
    let b = Dispatcher::new(&machine);
    let (ra, rb) = tokio::join!(a.dispatch_once(), b.dispatch_once());
    let mut resumed: Vec<String> = ra
        .unwrap()
        .resumed()
        .chain(rb.unwrap().resumed())
        .map(|r| r.execution_id.clone())
        .collect();
    resumed.sort();
    resumed.dedup();
    // Whatever one dispatcher left, a later round of either picks up; nothing is resumed twice.
    let mut total = resumed.len();
    while total < 50 {
        let more = a.dispatch_once().await.unwrap();
        assert!(
            !more.outcomes.is_empty(),
            "{total} of 50 resumed, and no progress"
        );
        total += more.resumed().count();
    }
    assert_eq!(total, 50);
    for i in 0..50 {
        let latest = store
            .load_latest(&format!("race-{i}"))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(latest.event.as_deref(), Some(checkpoint_event::MACHINE_END));
        assert_eq!(latest.output.unwrap()["by"], json!(i));
    }
}

#[tokio::test]
async fn a_thousand_waiting_runs_are_resumed_by_one_dispatcher() {
    let (store, signals) = memory();
    let machine = approval_machine(&store, &signals);
    for i in 0..1000 {
        let r = machine
            .run_with_id(format!("k-{i}"), json!({"ticket": i}))
            .await
            .unwrap();
        assert!(r.is_waiting());
        signals
            .send(
                &format!("approval/{i}"),
                json!({"decision": "approve", "by": i}),
                SendOptions::default(),
            )
            .await
            .unwrap();
    }
    let report = Dispatcher::new(&machine).dispatch_once().await.unwrap();
    assert_eq!(report.delivered, 1000);
    assert_eq!(report.resumed().filter(|r| r.is_finished()).count(), 1000);
    assert!(signals.waiters(None).await.unwrap().is_empty());
    assert!(signals.channels().await.unwrap().is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_deadline_passes_on_tokios_clock_and_on_error_routes_the_timeout() {
    let (store, signals) = memory();
    let machine = Machine::of::<timed::Machine>()
        .persistence(store.clone())
        .signal_backend(signals.clone())
        .build()
        .unwrap();
    let r = machine.run_with_id("tm-1", json!({"id": 1})).await.unwrap();
    let deadline = r.waiting().unwrap().deadline.clone().unwrap();
    let latest = store.load_latest("tm-1").await.unwrap().unwrap();
    assert_eq!(latest.wait_deadline.as_deref(), Some(deadline.as_str()));
    // The long-running dispatcher sleeps until the deadline (an hour of tokio's clock).
    let dispatcher = Dispatcher::with_options(
        &machine,
        DispatchOptions::new().poll_interval(Duration::from_secs(24 * 3600)),
    );
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn({
        let dispatcher = dispatcher.clone();
        async move {
            dispatcher
                .run_until(async {
                    let _ = stopped.await;
                })
                .await
        }
    });
    tokio::time::sleep(Duration::from_secs(3599)).await;
    let before = store.load_latest("tm-1").await.unwrap().unwrap();
    assert_eq!(before.event.as_deref(), Some(checkpoint_event::WAITING));
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = store.load_latest("tm-1").await.unwrap().unwrap();
    assert_eq!(after.event.as_deref(), Some(checkpoint_event::MACHINE_END));
    assert_eq!(
        after.output.unwrap(),
        json!({"error": SIGNAL_TIMEOUT})
            .as_object()
            .unwrap()
            .clone()
    );
    assert_eq!(after.context["last_error_type"], json!(SIGNAL_TIMEOUT));
    stop.send(()).unwrap();
    task.await.unwrap().unwrap();
    assert!(signals.waiters(None).await.unwrap().is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_signal_before_the_deadline_wins_and_an_unrouted_timeout_fails_the_run() {
    let (store, signals) = memory();
    let machine = Machine::of::<timed::Machine>()
        .persistence(store.clone())
        .signal_backend(signals.clone())
        .build()
        .unwrap();
    machine.run_with_id("tm-2", json!({"id": 2})).await.unwrap();
    tokio::time::sleep(Duration::from_secs(10)).await;
    signals
        .send("tick/2", json!("tock"), SendOptions::default())
        .await
        .unwrap();
    let report = Dispatcher::new(&machine).dispatch_once().await.unwrap();
    assert_eq!(
        report.resumed().next().unwrap().output,
        json!({"got": "tock"})
    );

    let unrouted = Machine::of::<timed_unrouted::Machine>()
        .persistence(store.clone())
        .signal_backend(signals.clone())
        .build()
        .unwrap();
    unrouted
        .run_with_id("tm-3", json!({"id": 3}))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(61)).await;
    let report = Dispatcher::new(&unrouted).dispatch_once().await.unwrap();
    let (id, error) = report.failures().next().expect("the timeout fails the run");
    assert_eq!(id, "tm-3");
    match error {
        RunError::State { state, error, .. } => {
            assert_eq!(state, "wait_tick");
            assert_eq!(error.error_type, SIGNAL_TIMEOUT);
        }
        other => panic!("expected a state error, got {other}"),
    }
}

#[tokio::test]
async fn a_build_of_another_shape_is_refused_unless_opted_in() {
    let (store, signals) = memory();
    let v1 = approval_machine(&store, &signals);
    v1.run_with_id("f-1", json!({"ticket": "f"})).await.unwrap();
    let v2 = Machine::of::<edited::approval::Machine>()
        .persistence(store.clone())
        .signal_backend(signals.clone())
        .build()
        .unwrap();
    assert_ne!(
        approval::SPEC.config_hash,
        edited::approval::SPEC.config_hash
    );
    let err = v2.resume("f-1").await.unwrap_err();
    let text = err.to_string();
    assert!(
        matches!(err, RunError::FingerprintMismatch { .. }),
        "{text}"
    );
    assert!(text.contains(approval::SPEC.config_hash), "{text}");
    assert!(text.contains(edited::approval::SPEC.config_hash), "{text}");
    assert_eq!(err.execution_id(), Some("f-1"));

    // Signalling it through v2's dispatcher is refused the same way (and retried later).
    signals
        .send(
            "approval/f",
            json!({"decision": "approve", "by": "v2"}),
            SendOptions::default(),
        )
        .await
        .unwrap();
    let report = Dispatcher::new(&v2).dispatch_once().await.unwrap();
    let (_, error) = report.failures().next().unwrap();
    assert!(matches!(error, RunError::FingerprintMismatch { .. }));
    // Forking it with v2 too.
    assert!(matches!(
        v2.fork("f-1", ForkOptions::new()).await.unwrap_err(),
        RunError::FingerprintMismatch { .. }
    ));

    // Opting in: v2 takes over, and its checkpoints carry v2's fingerprint.
    let done = v2
        .resume_with("f-1", ResumeOptions::new().allow_fingerprint_change(true))
        .await
        .unwrap();
    assert_eq!(done.output, json!({"decision": "approve", "by": "v2"}));
    let latest = store.load_latest("f-1").await.unwrap().unwrap();
    assert_eq!(
        latest.config_hash.as_deref(),
        Some(edited::approval::SPEC.config_hash)
    );
}

#[tokio::test]
async fn checkpoints_without_our_fingerprint_still_load() {
    let (store, signals) = memory();
    let machine = approval_machine(&store, &signals);
    for (id, hash) in [
        // Written by the reference 1.0.0 (no hash) or by a build that writes none.
        ("h-none", None),
        // The reference 4.2.1's SHA-256 of its config text: another kind, not compared.
        (
            "h-sha",
            Some("9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"),
        ),
    ] {
        machine
            .run_with_id(id, json!({"ticket": id}))
            .await
            .unwrap();
        let mut snap = store.load_latest(id).await.unwrap().unwrap();
        snap.config_hash = hash.map(str::to_string);
        store.save(snap).await.unwrap();
        signals
            .send(
                &format!("approval/{id}"),
                json!({"decision": "approve", "by": id}),
                SendOptions::default(),
            )
            .await
            .unwrap();
        let done = machine.resume(id).await.unwrap();
        assert_eq!(done.final_state, "approved", "{id}");
    }
}

#[tokio::test]
async fn a_waiting_checkpoint_written_by_the_reference_is_found_and_resumed() {
    let (store, signals) = memory();
    let machine = approval_machine(&store, &signals);
    // What flatmachines 4.2.1 writes for a run paused in `wait_decision` (its field order,
    // `tool_loop_state`, its own kind of `config_hash`, no waiter registry).
    let text = r#"{"execution_id": "py-wait", "machine_name": "approval", "spec_version": "4.2.1", "current_state": "wait_decision", "context": {"ticket": "py", "machine": {"execution_id": "py-wait", "step": 2}}, "step": 2, "created_at": "2026-11-24T19:15:37.123456+00:00", "event": "waiting", "output": null, "total_api_calls": 0, "total_cost": 0.0, "parent_execution_id": null, "pending_launches": null, "waiting_channel": "approval/py", "tool_loop_state": null, "config_hash": "0f1e2d3c4b5a69788796a5b4c3d2e1f00f1e2d3c4b5a69788796a5b4c3d2e1f0"}"#;
    let snap = flatmachine_runtime::persistence::MachineSnapshot::from_json_slice(text.as_bytes())
        .unwrap();
    assert_eq!(snap.waiting_channel.as_deref(), Some("approval/py"));
    store.save(snap).await.unwrap();
    let runs = waiting_runs(&store, Some(signals.as_ref())).await.unwrap();
    assert_eq!(runs.len(), 1);
    assert_eq!(runs[0].registered, Some(false));
    let dispatcher = Dispatcher::new(&machine);
    assert_eq!(dispatcher.recover().await.unwrap(), 1);
    signals
        .send(
            "approval/py",
            json!({"decision": "approve", "by": "python"}),
            SendOptions::default(),
        )
        .await
        .unwrap();
    let report = dispatcher.dispatch_once().await.unwrap();
    let done: Vec<_> = report.resumed().collect();
    assert_eq!(done.len(), 1);
    assert_eq!(
        done[0].output,
        json!({"decision": "approve", "by": "python"})
    );
}

#[tokio::test]
async fn inspect_shows_the_fingerprint_and_the_wait() {
    let (store, signals) = memory();
    let machine = approval_machine(&store, &signals);
    machine
        .run_with_id("i-1", json!({"ticket": "i"}))
        .await
        .unwrap();
    let text = flatmachine_runtime::inspect::report(&store, Some("i-1"), false)
        .await
        .unwrap();
    assert!(
        text.contains(&format!("shape {}", approval::SPEC.config_hash)),
        "{text}"
    );
    assert!(text.contains("waiting on approval/i"), "{text}");
    let listing = flatmachine_runtime::signals::render_waiting(
        &waiting_runs(&store, Some(signals.as_ref())).await.unwrap(),
    );
    assert!(listing.contains("i-1"), "{listing}");
    assert!(listing.contains("approval/i"), "{listing}");
}

/// The `steps` machine: `mark` appends the state's name (times `factor`) to `trail`; the
/// launched `side` child counts its runs and blocks until `release` has a permit.
fn steps_machine(
    store: &CheckpointStore,
    side_runs: Arc<AtomicUsize>,
    release: Arc<tokio::sync::Semaphore>,
) -> Machine {
    Machine::of::<steps::Machine>()
        .persistence(store.clone())
        .action_mut("mark", |ctx, call| {
            let state = call.state.to_string();
            Box::pin(async move {
                let factor = ctx.get("factor").and_then(Value::as_i64).unwrap_or(1);
                if let Some(Value::Array(trail)) = ctx.get_mut("trail") {
                    trail.push(json!(format!("{state}x{factor}")));
                }
                Ok(())
            })
        })
        .action_mut("side", move |_ctx, _call| {
            let side_runs = side_runs.clone();
            let release = release.clone();
            Box::pin(async move {
                side_runs.fetch_add(1, Ordering::SeqCst);
                let _ = release.acquire().await;
                Ok(())
            })
        })
        .build()
        .unwrap()
}

#[tokio::test]
async fn a_fork_starts_from_any_step_with_edits_and_records_its_origin() {
    let store = CheckpointStore::memory();
    let side_runs = Arc::new(AtomicUsize::new(0));
    let release = Arc::new(tokio::sync::Semaphore::new(0));
    let machine = steps_machine(&store, side_runs.clone(), release.clone());
    let source = machine.run_with_id("src", json!({})).await.unwrap();
    assert_eq!(source.output["trail"], json!(["onex1", "twox1", "threex1"]));
    while side_runs.load(Ordering::SeqCst) == 0 {
        tokio::task::yield_now().await;
    }
    // The launched child is still running (blocked): the source's later checkpoints list it.
    let at_three = store
        .load_latest("src")
        .await
        .unwrap()
        .unwrap()
        .pending_launches
        .unwrap_or_default();
    assert_eq!(at_three.len(), 1);

    // Fork from step 3 (entering `three`) with another factor: `three` runs again.
    let fork = machine
        .fork(
            "src",
            ForkOptions::new()
                .step(3)
                .set("factor", json!(10))
                .execution_id("fork-3"),
        )
        .await
        .unwrap();
    assert_eq!(fork.from.execution_id, "src");
    assert_eq!(fork.from.step, 3);
    assert_eq!(fork.state, "three");
    assert_eq!(fork.event, "state_enter");
    let done = machine.resume("fork-3").await.unwrap();
    assert_eq!(done.output["trail"], json!(["onex1", "twox1", "threex10"]));
    assert_eq!(done.output["factor"], json!(10));
    // Every checkpoint of the fork names its origin, none carries the source's launches, and
    // the source's child was not started a second time.
    for key in store.checkpoint_keys("fork-3").await.unwrap() {
        let snap = store.backend().load(&key).await.unwrap().unwrap();
        assert_eq!(snap.execution_id, "fork-3");
        let origin = snap.forked_from.unwrap();
        assert_eq!((origin.execution_id.as_str(), origin.step), ("src", 3));
        assert!(snap.pending_launches.is_none(), "{key}");
        assert!(snap.parent_execution_id.is_none());
    }
    assert_eq!(side_runs.load(Ordering::SeqCst), 1);
    // The fork's history is the source's up to the fork point: steps 0, 1, 2, then 3 on.
    let history = flatmachine_runtime::inspect::ExecutionHistory::load(&store, "fork-3")
        .await
        .unwrap();
    assert_eq!(history.checkpoints.first().unwrap().step, 0);
    assert_eq!(history.forked_from.as_ref().unwrap().step, 3);
    // The source is untouched.
    let src = store.load_latest("src").await.unwrap().unwrap();
    assert_eq!(
        src.output.unwrap()["trail"],
        json!(["onex1", "twox1", "threex1"])
    );

    // Fork from step 2 (entering `two`, before its launch): the fork launches a child of its
    // own (a new execution id), which is a new launch, not a duplicate.
    let (fork2, done2) = machine
        .fork_and_run("src", ForkOptions::new().step(2).execution_id("fork-2"))
        .await
        .unwrap();
    assert_eq!(fork2.from.step, 2);
    assert!(done2.is_finished());
    release.add_permits(10);
    let joined = machine.join_launched().await;
    let ids: Vec<&str> = joined.iter().map(|l| l.execution_id.as_str()).collect();
    assert_eq!(ids.len(), 2, "{ids:?}");
    assert_ne!(ids[0], ids[1]);
    assert_eq!(side_runs.load(Ordering::SeqCst), 2);

    // Bad requests are clear errors.
    assert!(
        machine
            .fork("src", ForkOptions::new().step(99))
            .await
            .is_err()
    );
    assert!(
        machine
            .fork("src", ForkOptions::new().execution_id("fork-3"))
            .await
            .is_err()
    );
}

#[tokio::test]
async fn a_fork_of_a_waiting_run_waits_on_its_own_channel() {
    let (store, signals) = memory();
    let machine = approval_machine(&store, &signals);
    machine
        .run_with_id("w-src", json!({"ticket": "one"}))
        .await
        .unwrap();
    // Without a machine (what `flatmachine fork` does): the waiting checkpoint becomes an
    // `execute` one, the channel is rendered again from the edited context.
    let fork = fork_execution(
        &store,
        "w-src",
        &ForkOptions::new()
            .set("ticket", json!("two"))
            .execution_id("w-fork"),
    )
    .await
    .unwrap();
    assert_eq!(fork.event, "execute");
    let forked = machine.resume("w-fork").await.unwrap();
    assert_eq!(forked.waiting().unwrap().channel, "approval/two");
    // A signal for the source goes to the source only.
    signals
        .send(
            "approval/one",
            json!({"decision": "approve", "by": "src"}),
            SendOptions::default(),
        )
        .await
        .unwrap();
    let report = Dispatcher::new(&machine).dispatch_once().await.unwrap();
    let ids: Vec<&str> = report.resumed().map(|r| r.execution_id.as_str()).collect();
    assert_eq!(ids, vec!["w-src"]);
    assert!(machine.resume("w-fork").await.unwrap().is_waiting());
    assert!(matches!(
        forked.status,
        RunStatus::Waiting(ref w) if w.state == "wait_decision"
    ));
}
