//! A child machine and its parent share checkpoint scripts on Redis (`engine/handover.rs`):
//! the parent's `execute` checkpoint of the state running the child goes in the child's first
//! script, the child's last checkpoints in the parent's next one — two round trips fewer per
//! child, the same checkpoints saved, the locks taken and released by those scripts. Also
//! when the parent fails with only deferred checkpoints left, when the child cannot save
//! (the parent saves its own batch itself), and never for a run whose events are watched.

#![cfg(feature = "redis")]

#[path = "support/redis_server.rs"]
mod redis_server;

use std::sync::Arc;

use flatmachine_runtime::persistence::{CheckpointStore, checkpoint_event};
use flatmachine_runtime::redis_backends::{RedisConnection, RedisLock, RedisPersistence};
use flatmachine_runtime::{Machine, MachineBuilder, RunOptions, Value};
use futures::StreamExt;
use redis_server::RedisServer;
use serde_json::json;

flatmachine_runtime::flatmachine!("tests/machines/parent_single.yml");
flatmachine_runtime::flatmachine!("tests/machines/grandparent.yml");
flatmachine_runtime::flatmachine!("tests/machines/compose/child_timeout.yml");
// `stuck` has no fallback transition on purpose: silence the compiler's warning.
flatmachine_runtime::flatmachine!("tests/machines/parent_then_stuck.yml", allow_warnings);

/// `double` (child_double.yml): `y = 2x`.
fn with_double(builder: MachineBuilder) -> MachineBuilder {
    builder.action_mut("double", |ctx, _call| {
        let x = ctx.get("x").and_then(Value::as_i64).unwrap_or(0);
        ctx.insert("y".into(), json!(2 * x));
        Box::pin(async { Ok(()) })
    })
}

struct Fixture {
    _server: RedisServer,
    store: CheckpointStore,
    lock: Arc<RedisLock>,
    redis: redis::aio::MultiplexedConnection,
}

async fn fixture() -> Fixture {
    let server = RedisServer::start();
    let conn = RedisConnection::open(&server.url(), "ho").unwrap();
    let store = CheckpointStore::new(Arc::new(RedisPersistence::new(conn.clone())));
    let lock = Arc::new(RedisLock::new(conn));
    let redis = redis::Client::open(server.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    Fixture {
        _server: server,
        store,
        lock,
        redis,
    }
}

impl Fixture {
    /// `parent` on this server's store and lock (one fencing domain: the scripts take and
    /// release the locks), checkpointing `execute` and `machine_end`, keeping all.
    fn machine(&self, parent: MachineBuilder) -> Machine {
        self.built(with_double(parent))
    }

    /// `builder` on this server's store and lock, as [`machine`](Self::machine), with the
    /// handlers it already has.
    fn built(&self, builder: MachineBuilder) -> Machine {
        builder
            .persistence(self.store.clone())
            .lock(self.lock.clone())
            .trace(false)
            .checkpoint_on(["execute", "machine_end"])
            .keep_finished_checkpoints(None)
            .build()
            .unwrap()
    }

    /// Scripts the server ran since the last call.
    async fn scripts(&mut self) -> u64 {
        let info: String = redis::cmd("INFO")
            .arg("commandstats")
            .query_async(&mut self.redis)
            .await
            .unwrap();
        let _: () = redis::cmd("CONFIG")
            .arg("RESETSTAT")
            .query_async(&mut self.redis)
            .await
            .unwrap();
        redis_server::command_calls(&info, redis_server::SCRIPTS)
    }

    /// The one child of `parent`: its id and latest checkpoint's event.
    async fn child_of(&self, parent: &str) -> (String, String) {
        let mut children = Vec::new();
        for id in self.store.execution_ids().await.unwrap() {
            let latest = self.store.load_latest(&id).await.unwrap().unwrap();
            if latest.parent_execution_id.as_deref() == Some(parent) {
                children.push((id, latest.event.unwrap_or_default()));
            }
        }
        assert_eq!(children.len(), 1, "{children:?}");
        children.pop().unwrap()
    }

    async fn lock_held(&mut self, id: &str) -> bool {
        let value: Option<String> = redis::cmd("GET")
            .arg(format!("ho:lock:{id}"))
            .query_async(&mut self.redis)
            .await
            .unwrap();
        value.is_some()
    }

    /// The events of `id`'s checkpoints, in run order.
    async fn events(&self, id: &str) -> Vec<String> {
        let mut events = Vec::new();
        for key in self.store.checkpoint_keys(id).await.unwrap() {
            let s = self.store.backend().load(&key).await.unwrap().unwrap();
            events.push(format!("{}:{}", s.current_state, s.event.unwrap()));
        }
        events
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_childs_end_goes_in_its_parents_next_script() {
    let mut f = fixture().await;
    let machine = f.machine(Machine::of::<parent_single::Machine>());
    machine.run(json!({"x": 1, "fail_on": -1})).await.unwrap();
    f.scripts().await;
    let out = machine.run(json!({"x": 4, "fail_on": -1})).await.unwrap();
    assert_eq!(out.output, json!({"y": 8}));
    // The parent's `call` with the child's `start`, then both ends: 2 scripts (4 without).
    assert_eq!(f.scripts().await, 2);
    let (child, event) = f.child_of(&out.execution_id).await;
    assert_eq!(event, checkpoint_event::MACHINE_END);
    assert_eq!(
        f.events(&child).await,
        ["start:execute", "done:execute", "end:machine_end"]
    );
    assert_eq!(
        f.events(&out.execution_id).await,
        [
            "start:execute",
            "call:execute",
            "done:execute",
            "end:machine_end"
        ]
    );
    assert!(!f.lock_held(&child).await, "the child's lock is released");
    assert!(!f.lock_held(&out.execution_id).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parent_that_fails_after_the_child_still_saves_its_end() {
    let mut f = fixture().await;
    let machine = f.machine(Machine::of::<parent_then_stuck::Machine>());
    let failure = machine
        .run_with(json!({"x": 3}), RunOptions::new().execution_id("stuck-1"))
        .await
        .unwrap_err();
    assert!(failure.to_string().contains("stuck"), "{failure}");
    let (child, event) = f.child_of("stuck-1").await;
    assert_eq!(event, checkpoint_event::MACHINE_END);
    assert!(!f.lock_held(&child).await, "the child's lock is released");
    // The parent's deferred `execute` of `stuck` went with it.
    assert_eq!(
        f.events("stuck-1").await.last().map(String::as_str),
        Some("stuck:execute")
    );
}

/// Three levels: the middle run saves its parent's batch before starting its own child (no
/// batch goes two levels down: the leaf's work sees the grandparent's `call` checkpoint
/// saved), and the ends go up together — 3 checkpoint scripts for 3 executions, every end
/// saved, every lock released.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_levels_save_in_three_checkpoint_scripts() {
    let mut f = fixture().await;
    // The leaf's work sees the grandparent's `call` checkpoint saved already.
    let store = f.store.clone();
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen_by_leaf = seen.clone();
    let grandparent = Machine::of::<grandparent::Machine>().action_mut("double", move |ctx, _| {
        let (store, seen) = (store.clone(), seen_by_leaf.clone());
        Box::pin(async move {
            let latest = store.latest_checkpoint_key("gp-2").await.unwrap();
            seen.lock().unwrap().push(latest);
            let x = ctx.get("x").and_then(Value::as_i64).unwrap_or(0);
            ctx.insert("y".into(), json!(2 * x));
            Ok(())
        })
    });
    let machine = f.built(grandparent);
    machine
        .run_with(json!({"x": 1}), RunOptions::new().execution_id("gp-1"))
        .await
        .unwrap();
    f.scripts().await;
    let out = machine
        .run_with(json!({"x": 5}), RunOptions::new().execution_id("gp-2"))
        .await
        .unwrap();
    assert_eq!(out.output, json!({"y": 10}));
    assert_eq!(
        seen.lock().unwrap().last().cloned().flatten().as_deref(),
        Some("gp-2/step_000002_execute.json")
    );
    // One script takes the grandparent's lock (an id given by the caller is locked before the
    // run starts); then the middle's `call` with the grandparent's batch, the leaf's `start`,
    // and the three ends together.
    assert_eq!(f.scripts().await, 4);
    let (middle, event) = f.child_of(&out.execution_id).await;
    assert_eq!(event, checkpoint_event::MACHINE_END);
    let (leaf, event) = f.child_of(&middle).await;
    assert_eq!(event, checkpoint_event::MACHINE_END);
    assert_eq!(
        f.events(&middle).await,
        [
            "start:execute",
            "call:execute",
            "done:execute",
            "end:machine_end"
        ]
    );
    assert_eq!(
        f.events(&leaf).await,
        ["start:execute", "done:execute", "end:machine_end"]
    );
    for id in [&out.execution_id, &middle, &leaf] {
        assert!(!f.lock_held(id).await, "{id}'s lock is released");
    }
}

/// A child refused at its first save (its lock is held elsewhere) saves nothing — not its
/// parent's batch either, all or nothing — and the parent saves its own batch with its next
/// checkpoint, after routing the child's error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_child_that_cannot_save_gives_its_parents_batch_back() {
    let mut f = fixture().await;
    let machine = f.machine(Machine::of::<parent_single::Machine>());
    let input = json!({"x": 1, "fail_on": -1});
    let options = || RunOptions::new().execution_id("held-1");
    machine.run_with(input.clone(), options()).await.unwrap();
    let (child, _) = f.child_of("held-1").await;
    let _: () = redis::cmd("FLUSHDB")
        .query_async(&mut f.redis)
        .await
        .unwrap();
    let _: () = redis::cmd("SET")
        .arg(format!("ho:lock:{child}"))
        .arg("another-runner")
        .query_async(&mut f.redis)
        .await
        .unwrap();
    let out = machine.run_with(input, options()).await.unwrap();
    assert!(
        out.output["error"].as_str().unwrap().contains("held"),
        "{}",
        out.output
    );
    assert_eq!(f.store.latest_checkpoint_key(&child).await.unwrap(), None);
    assert_eq!(
        f.events("held-1").await,
        [
            "start:execute",
            "call:execute",
            "failed:execute",
            "end:machine_end"
        ]
    );
}

/// A state with a `timeout` drops its child when it expires: its `execute` checkpoint is saved
/// before the child starts, not handed to it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timed_state_saves_its_checkpoint_before_its_child() {
    let f = fixture().await;
    let machine = f.built(Machine::of::<child_timeout::Machine>().action_mut(
        "hang",
        |_ctx, _call| {
            Box::pin(async {
                std::future::pending::<()>().await;
                Ok(())
            })
        },
    ));
    let out = machine
        .run_with(json!({}), RunOptions::new().execution_id("timed-1"))
        .await
        .unwrap();
    assert_eq!(out.output["route"], json!("timed_out"));
    assert_eq!(
        f.events("timed-1").await,
        ["start:execute", "timed_out:execute", "end:machine_end"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watched_child_saves_its_own_end() {
    let mut f = fixture().await;
    let machine = f.machine(Machine::of::<parent_single::Machine>());
    machine.run(json!({"x": 1, "fail_on": -1})).await.unwrap();
    f.scripts().await;
    let mut stream = machine.stream(json!({"x": 2, "fail_on": -1}), RunOptions::new());
    let mut saved = Vec::new();
    while let Some(event) = stream.next().await {
        if let flatmachine_runtime::events::EventKind::CheckpointSaved { event: e, .. } =
            &event.kind
        {
            saved.push((event.execution_id.to_string(), e.to_string()));
        }
    }
    let out = stream.result().await.unwrap();
    assert_eq!(f.scripts().await, 4);
    let (child, _) = f.child_of(&out.execution_id).await;
    assert!(
        saved.contains(&(child, checkpoint_event::MACHINE_END.to_owned())),
        "{saved:?}"
    );
}

/// `save_encoded_batches` on Redis is all or nothing: a part refused by its fencing check
/// leaves the other parts unwritten, and the error names the refused execution.
#[tokio::test]
async fn parts_of_several_executions_are_saved_all_or_nothing() {
    use flatmachine_runtime::persistence::{BatchPart, EncodedCheckpoint, MachineSnapshot};
    let f = fixture().await;
    let backend = f.store.backend();
    assert!(backend.saves_executions_together());
    let snap = |id: &str, step: u64, token: Option<u64>| {
        let mut s = MachineSnapshot::new(id, "m", "1.0.0", "s", Default::default(), step)
            .with_event(checkpoint_event::EXECUTE);
        s.fencing_token = token;
        EncodedCheckpoint::from_snapshot(&s).unwrap()
    };
    let part = |checkpoint: EncodedCheckpoint| BatchPart {
        checkpoints: vec![checkpoint],
        texts: &[],
        keep: None,
        lock: None,
    };
    // `b` has seen fencing token 5.
    backend
        .save_encoded_batches(vec![part(snap("b", 1, Some(5)))])
        .await
        .unwrap();
    let err = backend
        .save_encoded_batches(vec![part(snap("a", 1, None)), part(snap("b", 2, Some(1)))])
        .await
        .unwrap_err();
    assert!(err.to_string().contains("execution `b`"), "{err}");
    assert_eq!(f.store.latest_checkpoint_key("a").await.unwrap(), None);
    assert_eq!(
        f.store.latest_checkpoint_key("b").await.unwrap().as_deref(),
        Some("b/step_000001_execute.json")
    );
    backend
        .save_encoded_batches(vec![part(snap("a", 1, None)), part(snap("b", 2, Some(5)))])
        .await
        .unwrap();
    assert_eq!(
        f.store.latest_checkpoint_key("a").await.unwrap().as_deref(),
        Some("a/step_000001_execute.json")
    );
    assert_eq!(
        f.store.latest_checkpoint_key("b").await.unwrap().as_deref(),
        Some("b/step_000002_execute.json")
    );
}
