//! `machine:` and `foreach` children that wait for a signal: the parent parks with them, and a
//! dispatcher (or a `resume`) brings the whole tree back, on the memory backends and on a
//! SQLite file shared by separate machines (another process's view of the same store).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use flatmachine_runtime::persistence::{CheckpointStore, checkpoint_event};
use flatmachine_runtime::signals::{
    Dispatcher, MemorySignalBackend, SendOptions, SignalBackend, waiting_runs,
};
use flatmachine_runtime::{Machine, RunStatus, Value};
use serde_json::json;

flatmachine_runtime::flatmachine!("tests/machines/signals/waiting_child.yml");
flatmachine_runtime::flatmachine!("tests/machines/signals/waiting_foreach.yml");
flatmachine_runtime::flatmachine!("tests/machines/signals/waiting_nested.yml");

fn memory() -> (CheckpointStore, Arc<dyn SignalBackend>) {
    (
        CheckpointStore::memory(),
        Arc::new(MemorySignalBackend::new()),
    )
}

fn parent(store: &CheckpointStore, signals: &Arc<dyn SignalBackend>) -> Machine {
    Machine::of::<waiting_child::Machine>()
        .persistence(store.clone())
        .signal_backend(signals.clone())
        .build()
        .unwrap()
}

async fn approve(signals: &Arc<dyn SignalBackend>, channel: &str, by: &str) {
    signals
        .send(
            channel,
            json!({"decision": "approve", "by": by}),
            SendOptions::default(),
        )
        .await
        .unwrap();
}

#[tokio::test]
async fn a_child_that_waits_parks_its_parent_and_a_dispatcher_resumes_both() {
    let (store, signals) = memory();
    let parent = parent(&store, &signals);
    let result = parent
        .run_with_id("p-1", json!({"ticket": 7}))
        .await
        .unwrap();

    // The parent waits with its child: a status naming the child and its channel, no result
    // made up for the child, no error routed.
    let waiting = result.waiting().expect("the parent waits").clone();
    assert_eq!(waiting.channel, "approval/7");
    assert_eq!(waiting.state, "start");
    let child_id = waiting.child.clone().expect("the waiting child is named");
    assert_ne!(child_id, "p-1");
    assert!(result.context.get("child").is_none());
    assert!(result.context.get("last_error_type").is_none());

    // Both are checkpointed as waiting; only the child holds a waiter (the signal is its).
    let parent_snap = store.load_latest("p-1").await.unwrap().unwrap();
    assert_eq!(
        parent_snap.event.as_deref(),
        Some(checkpoint_event::WAITING)
    );
    assert_eq!(parent_snap.waiting_channel.as_deref(), Some("approval/7"));
    let child_snap = store.load_latest(&child_id).await.unwrap().unwrap();
    assert_eq!(child_snap.event.as_deref(), Some(checkpoint_event::WAITING));
    assert_eq!(child_snap.parent_execution_id.as_deref(), Some("p-1"));
    let waiters = signals.waiters(None).await.unwrap();
    assert_eq!(waiters.len(), 1);
    assert_eq!(waiters[0].execution_id, child_id);

    // `flatmachine waiting` lists both: the child registered, the parent on its child's channel.
    let listed = waiting_runs(&store, Some(signals.as_ref())).await.unwrap();
    let mut ids: Vec<_> = listed
        .iter()
        .map(|w| (w.execution_id.as_str(), w.channel.as_str(), w.registered))
        .collect();
    ids.sort();
    let mut expected = vec![
        ("p-1", "approval/7", Some(false)),
        (child_id.as_str(), "approval/7", Some(true)),
    ];
    expected.sort();
    assert_eq!(ids, expected);

    // Nothing happens without the signal.
    let dispatcher = Dispatcher::new(&parent);
    assert!(
        dispatcher
            .dispatch_once()
            .await
            .unwrap()
            .outcomes
            .is_empty()
    );

    // With it, one round resumes the parent, which resumes the child inside its state.
    approve(&signals, "approval/7", "li").await;
    let report = dispatcher.dispatch_once().await.unwrap();
    let resumed: Vec<_> = report.resumed().collect();
    assert_eq!(resumed.len(), 1, "{:?}", report.outcomes);
    assert_eq!(resumed[0].execution_id, "p-1");
    assert!(resumed[0].is_finished());
    assert_eq!(resumed[0].final_state, "done");
    assert_eq!(
        resumed[0].output["child"],
        json!({"decision": "approve", "by": "li"})
    );
    let child_end = store.load_latest(&child_id).await.unwrap().unwrap();
    assert_eq!(
        child_end.event.as_deref(),
        Some(checkpoint_event::MACHINE_END)
    );
    assert!(signals.waiters(None).await.unwrap().is_empty());
    assert!(signals.peek("approval/7").await.unwrap().is_empty());
    // The next round finds nothing left to do.
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
async fn resuming_a_parked_parent_parks_again_until_the_signal_then_finishes() {
    let (store, signals) = memory();
    let parent = parent(&store, &signals);
    let first = parent
        .run_with_id("p-2", json!({"ticket": 8}))
        .await
        .unwrap();
    let child_id = first.waiting().unwrap().child.clone().unwrap();

    // A resume before the signal: the child parks again, so does the parent (same child).
    let again = parent.resume("p-2").await.unwrap();
    let waiting = again.waiting().expect("still waiting");
    assert_eq!(waiting.child.as_deref(), Some(child_id.as_str()));
    assert_eq!(waiting.channel, "approval/8");
    assert_eq!(signals.waiters(None).await.unwrap().len(), 1);

    // After the signal a plain `resume` of the parent finishes the tree.
    approve(&signals, "approval/8", "mo").await;
    let done = parent.resume("p-2").await.unwrap();
    assert!(matches!(done.status, RunStatus::Finished));
    assert_eq!(done.output["child"]["by"], json!("mo"));
    assert!(signals.waiters(None).await.unwrap().is_empty());
}

#[tokio::test]
async fn a_foreach_parks_until_every_waiting_item_has_its_signal() {
    let (store, signals) = memory();
    // Item `a` finds its signal at once; `b` and `c` wait.
    approve(&signals, "approval/a", "ana").await;
    let machine = Machine::of::<waiting_foreach::Machine>()
        .persistence(store.clone())
        .signal_backend(signals.clone())
        .build()
        .unwrap();
    let result = machine
        .run_with_id("fe-1", json!({"tickets": ["a", "b", "c"]}))
        .await
        .unwrap();
    let waiting = result.waiting().expect("the foreach waits");
    assert_eq!(waiting.state, "start");
    assert!(
        ["approval/b", "approval/c"].contains(&waiting.channel.as_str()),
        "{waiting:?}"
    );
    assert!(signals.peek("approval/a").await.unwrap().is_empty());
    assert_eq!(signals.waiters(None).await.unwrap().len(), 2);

    let dispatcher = Dispatcher::new(&machine);
    // One of the two signals: the parent comes back, `b` finishes, `c` parks it again.
    approve(&signals, "approval/b", "bo").await;
    let report = dispatcher.dispatch_once().await.unwrap();
    let resumed: Vec<_> = report.resumed().collect();
    assert_eq!(resumed.len(), 1, "{:?}", report.outcomes);
    assert_eq!(resumed[0].execution_id, "fe-1");
    let still = resumed[0].waiting().expect("`c` still waits");
    assert_eq!(still.channel, "approval/c");
    assert_eq!(signals.waiters(None).await.unwrap().len(), 1);

    // The last signal: every item's result, in order, none run twice.
    approve(&signals, "approval/c", "cy").await;
    let report = dispatcher.dispatch_once().await.unwrap();
    let resumed: Vec<_> = report.resumed().collect();
    assert_eq!(resumed.len(), 1, "{:?}", report.outcomes);
    assert!(resumed[0].is_finished());
    assert_eq!(
        resumed[0].output["results"],
        json!([
            {"decision": "approve", "by": "ana"},
            {"decision": "approve", "by": "bo"},
            {"decision": "approve", "by": "cy"},
        ])
    );
    assert!(signals.waiters(None).await.unwrap().is_empty());
}

#[tokio::test]
async fn a_grandparent_parks_for_a_waiting_grandchild_and_is_resumed_from_the_top() {
    let (store, signals) = memory();
    let counted = Arc::new(AtomicUsize::new(0));
    let count = counted.clone();
    let machine = Machine::of::<waiting_nested::Machine>()
        .persistence(store.clone())
        .signal_backend(signals.clone())
        .action_mut("count", move |ctx, _call| {
            count.fetch_add(1, Ordering::SeqCst);
            let before = ctx.get("before").and_then(Value::as_i64).unwrap_or(0) + 1;
            ctx.insert("before".into(), json!(before));
            Box::pin(async { Ok(()) })
        })
        .build()
        .unwrap();
    let result = machine
        .run_with_id("g-1", json!({"ticket": 9}))
        .await
        .unwrap();
    let waiting = result.waiting().expect("the grandparent waits");
    assert_eq!(waiting.state, "ask");
    assert_eq!(waiting.channel, "approval/9");
    // The child named is the grandchild that holds the waiter.
    let holder = signals.waiters(None).await.unwrap();
    assert_eq!(holder.len(), 1);
    assert_eq!(
        waiting.child.as_deref(),
        Some(holder[0].execution_id.as_str())
    );
    let middle = store
        .load_latest(&holder[0].execution_id)
        .await
        .unwrap()
        .unwrap()
        .parent_execution_id
        .unwrap();
    assert_ne!(middle, "g-1");
    let middle_snap = store.load_latest(&middle).await.unwrap().unwrap();
    assert_eq!(
        middle_snap.event.as_deref(),
        Some(checkpoint_event::WAITING)
    );
    assert_eq!(middle_snap.parent_execution_id.as_deref(), Some("g-1"));

    approve(&signals, "approval/9", "zu").await;
    let report = Dispatcher::new(&machine).dispatch_once().await.unwrap();
    let resumed: Vec<_> = report.resumed().collect();
    assert_eq!(resumed.len(), 1, "{:?}", report.outcomes);
    assert_eq!(resumed[0].execution_id, "g-1");
    assert!(resumed[0].is_finished());
    assert_eq!(resumed[0].output["verdict"], json!("approve"));
    // The states before the parked one did not run again.
    assert_eq!(resumed[0].output["before"], json!(1));
    assert_eq!(counted.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn recovery_registers_the_waiting_child_but_not_its_parked_parent() {
    let store = CheckpointStore::memory();
    let first: Arc<dyn SignalBackend> = Arc::new(MemorySignalBackend::new());
    let result = parent(&store, &first)
        .run_with_id("p-3", json!({"ticket": 3}))
        .await
        .unwrap();
    let child_id = result.waiting().unwrap().child.clone().unwrap();

    // The signal backend is replaced by an empty one: recovery finds the runs through their
    // `waiting` checkpoints and registers only the child (the parent holds no signal).
    let fresh: Arc<dyn SignalBackend> = Arc::new(MemorySignalBackend::new());
    let machine = parent(&store, &fresh);
    let dispatcher = Dispatcher::new(&machine);
    assert_eq!(dispatcher.recover().await.unwrap(), 1);
    let waiters = fresh.waiters(None).await.unwrap();
    assert_eq!(waiters.len(), 1);
    assert_eq!(waiters[0].execution_id, child_id);

    approve(&fresh, "approval/3", "re").await;
    let report = dispatcher.dispatch_once().await.unwrap();
    let resumed: Vec<_> = report.resumed().collect();
    assert_eq!(resumed.len(), 1, "{:?}", report.outcomes);
    assert_eq!(resumed[0].execution_id, "p-3");
    assert!(resumed[0].is_finished());
}

#[cfg(feature = "sqlite")]
#[tokio::test]
async fn a_parked_tree_on_a_sqlite_file_is_resumed_by_another_machine_instance() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("runs.sqlite");
    let open = || {
        let store = CheckpointStore::sqlite(&db).unwrap();
        let signals: Arc<dyn SignalBackend> =
            Arc::new(flatmachine_runtime::signals::SqliteSignalBackend::open(&db).unwrap());
        (store, signals)
    };
    {
        let (store, signals) = open();
        let result = parent(&store, &signals)
            .run_with_id("p-4", json!({"ticket": 4}))
            .await
            .unwrap();
        assert!(result.is_waiting());
    }
    // Everything the first instance held is gone; a new one reads the file.
    let (store, signals) = open();
    approve(&signals, "approval/4", "sq").await;
    let report = Dispatcher::new(&parent(&store, &signals))
        .dispatch_once()
        .await
        .unwrap();
    let resumed: Vec<_> = report.resumed().collect();
    assert_eq!(resumed.len(), 1, "{:?}", report.outcomes);
    assert_eq!(resumed[0].execution_id, "p-4");
    assert_eq!(resumed[0].output["child"]["by"], json!("sq"));
}

#[tokio::test]
async fn signals_for_several_items_in_one_round_resume_their_parent_once() {
    let (store, signals) = memory();
    let machine = Machine::of::<waiting_foreach::Machine>()
        .persistence(store.clone())
        .signal_backend(signals.clone())
        .build()
        .unwrap();
    let result = machine
        .run_with_id("fe-2", json!({"tickets": ["x", "y", "z"]}))
        .await
        .unwrap();
    assert!(result.is_waiting());
    assert_eq!(signals.waiters(None).await.unwrap().len(), 3);
    for (channel, by) in [
        ("approval/x", "xi"),
        ("approval/y", "yo"),
        ("approval/z", "zu"),
    ] {
        approve(&signals, channel, by).await;
    }
    let report = Dispatcher::new(&machine).dispatch_once().await.unwrap();
    // Three waiters, one tree: the parent is resumed once and finishes with every item.
    let resumed: Vec<_> = report.resumed().collect();
    assert_eq!(resumed.len(), 1, "{:?}", report.outcomes);
    assert_eq!(resumed[0].execution_id, "fe-2");
    let by: Vec<_> = resumed[0].output["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["by"].clone())
        .collect();
    assert_eq!(by, vec![json!("xi"), json!("yo"), json!("zu")]);
    assert!(signals.waiters(None).await.unwrap().is_empty());
}
