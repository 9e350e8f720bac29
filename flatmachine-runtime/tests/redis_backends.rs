//! Redis persistence, locks and results on a real `redis-server` (one per test): the same
//! checkpoint bytes and layout as the local file backend, atomic saves, server-side pruning,
//! leases with renewal and fencing (a runner whose lease expired cannot overwrite the new
//! owner's checkpoints), and write-once results with blocking reads woken by the write.
//! Work pools and the worker registry run the shared suite in `distributed_backends.rs`.

#![cfg(feature = "redis")]

#[path = "support/redis_server.rs"]
mod redis_server;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use flatmachine_runtime::lock::{ExecutionLock, LockError};
use flatmachine_runtime::persistence::{
    CheckpointStore, MachineSnapshot, PersistenceBackend, PersistenceError, checkpoint_event,
};
use flatmachine_runtime::redis_backends::{
    FencingError, RedisConnection, RedisLock, RedisLockOptions, RedisPersistence, RedisResults,
};
use flatmachine_runtime::results::{ResultBackend, ResultError, make_uri};
use flatmachine_runtime::{Context, Machine, RunError, Value};
use redis_server::RedisServer;
use serde_json::json;

flatmachine_runtime::flatmachine!("tests/machines/resumable.yml");
flatmachine_runtime::flatmachine!("tests/machines/redis_backed.yml");

fn conn(server: &RedisServer, prefix: &str) -> RedisConnection {
    RedisConnection::open(&server.url(), prefix).unwrap()
}

fn snap(id: &str, state: &str, step: u64, event: &str) -> MachineSnapshot {
    let context = match json!({"n": step, "text": "h\u{e9}llo \u{1f600}", "f": 0.1}) {
        Value::Object(m) => m,
        _ => unreachable!(),
    };
    let mut s = MachineSnapshot::new(id, "m", "1.0.0", state, context, step).with_event(event);
    s.total_api_calls = Some(0);
    s.total_cost = Some(0.0);
    s
}

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

#[tokio::test]
async fn checkpoints_match_the_local_backend_byte_for_byte() {
    let server = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let redis = Arc::new(RedisPersistence::new(conn(&server, "app1")));
    let local_store = CheckpointStore::local(dir.path());
    let redis_store = CheckpointStore::new(redis.clone());
    for s in run_events("exec-1", 3) {
        let a = local_store.save(s.clone()).await.unwrap();
        let b = redis_store.save(s).await.unwrap();
        assert_eq!(a, b);
    }
    let keys = redis_store.checkpoint_keys("exec-1").await.unwrap();
    assert_eq!(keys, local_store.checkpoint_keys("exec-1").await.unwrap());
    assert_eq!(keys.len(), 11);
    for key in &keys {
        let file = std::fs::read(dir.path().join(key)).unwrap();
        let stored = redis.load_text(key).await.unwrap().unwrap();
        assert_eq!(stored.as_bytes(), &file[..], "{key}");
    }
    assert_eq!(
        redis.load_text("exec-1/latest").await.unwrap().as_deref(),
        Some("exec-1/step_000003_machine_end.json")
    );
    let latest = redis_store.load_latest("exec-1").await.unwrap().unwrap();
    assert_eq!(latest.event.as_deref(), Some("machine_end"));
    assert_eq!(redis_store.execution_ids().await.unwrap(), ["exec-1"]);

    // Another prefix on the same server is another store.
    let other = CheckpointStore::new(Arc::new(RedisPersistence::new(conn(&server, "app2"))));
    assert!(other.load_latest("exec-1").await.unwrap().is_none());

    // list / delete / delete_execution.
    assert_eq!(redis.list("exec-1/").await.unwrap().len(), 12);
    assert_eq!(redis.list("exec-").await.unwrap().len(), 12);
    assert!(redis.list("zzz").await.unwrap().is_empty());
    redis
        .delete("exec-1/step_000000_machine_start.json")
        .await
        .unwrap();
    redis
        .delete("exec-1/step_000000_machine_start.json")
        .await
        .unwrap();
    assert_eq!(redis.list("exec-1/").await.unwrap().len(), 11);
    redis_store.delete_execution("exec-1").await.unwrap();
    assert!(redis.list("").await.unwrap().is_empty());
    assert!(redis_store.load_latest("exec-1").await.unwrap().is_none());
}

#[tokio::test]
async fn pruning_runs_on_the_server_in_run_order() {
    let server = RedisServer::start();
    let backend: Arc<dyn PersistenceBackend> = Arc::new(RedisPersistence::new(conn(&server, "p")));
    let store = CheckpointStore::new(Arc::clone(&backend)).with_keep_last(Some(2));
    let other = CheckpointStore::new(Arc::clone(&backend));
    for step in 1..=3 {
        other
            .save(snap("other", "s", step, "execute"))
            .await
            .unwrap();
    }
    for s in run_events("e", 3) {
        store.save(s).await.unwrap();
        assert!(store.checkpoint_keys("e").await.unwrap().len() <= 2);
    }
    assert_eq!(
        store.checkpoint_keys("e").await.unwrap(),
        [
            "e/step_000003_machine_end.json",
            "e/step_000003_state_exit.json"
        ]
    );
    assert_eq!(store.checkpoint_keys("other").await.unwrap().len(), 3);
    // Within a step, run order decides (`execute` is newer than `state_enter`).
    let one = CheckpointStore::new(Arc::clone(&backend)).with_keep_last(Some(1));
    one.save(snap("f", "s", 2, "state_enter")).await.unwrap();
    one.save(snap("f", "s", 2, "execute")).await.unwrap();
    assert_eq!(
        one.checkpoint_keys("f").await.unwrap(),
        ["f/step_000002_execute.json"]
    );
    // The pruned keys left the listing index too.
    assert_eq!(backend.list("e/").await.unwrap().len(), 3);
}

#[tokio::test]
async fn invalid_keys_are_rejected() {
    let server = RedisServer::start();
    let backend = RedisPersistence::new(conn(&server, "k"));
    let s = snap("e", "s", 1, "execute");
    for key in [
        "../x",
        "/abs/key",
        "a/../b",
        "a//b",
        "",
        ".hidden/x",
        "a\\b",
    ] {
        assert!(
            matches!(
                backend.save(key, &s).await,
                Err(PersistenceError::InvalidKey(_))
            ),
            "{key:?}"
        );
        assert!(matches!(
            backend.load(key).await,
            Err(PersistenceError::InvalidKey(_))
        ));
        assert!(matches!(
            backend.save_text(key, "x").await,
            Err(PersistenceError::InvalidKey(_))
        ));
        assert!(matches!(
            backend.delete(key).await,
            Err(PersistenceError::InvalidKey(_))
        ));
    }
    let store = CheckpointStore::new(Arc::new(backend));
    assert!(matches!(
        store.save(snap("../e", "s", 1, "execute")).await,
        Err(PersistenceError::InvalidKey(_))
    ));
    // Garbage under a key is reported as corrupt, not a panic.
    let mut c = conn(&server, "k").manager().await.unwrap();
    let _: () = redis::cmd("SET")
        .arg("k:cp:e/step_000001_execute.json")
        .arg("{not json")
        .query_async(&mut c)
        .await
        .unwrap();
    let backend = RedisPersistence::new(conn(&server, "k"));
    assert!(matches!(
        backend.load("e/step_000001_execute.json").await,
        Err(PersistenceError::Corrupt { .. })
    ));
}

#[tokio::test]
async fn locks_are_exclusive_renewed_released_by_owner_and_fenced() {
    let server = RedisServer::start();
    let short = RedisLockOptions {
        lease: Duration::from_millis(300),
        renew_every: Some(Duration::from_millis(100)),
    };
    let a = RedisLock::with_options(conn(&server, "l"), short);
    let b = RedisLock::new(conn(&server, "l"));

    let g1 = a.acquire("exec").await.unwrap();
    assert_eq!(g1.fencing_token(), Some(1));
    assert!(matches!(
        b.acquire("exec").await,
        Err(LockError::Held { .. })
    ));
    // Renewal keeps it past several leases.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert!(matches!(
        b.acquire("exec").await,
        Err(LockError::Held { .. })
    ));
    // Other executions are independent.
    let other = b.acquire("exec-2").await.unwrap();
    assert_eq!(other.fencing_token(), Some(1));
    drop(g1);
    // Release is asynchronous (compare-and-delete): the lock frees promptly.
    let started = Instant::now();
    let g2 = loop {
        match b.acquire("exec").await {
            Ok(g) => break g,
            Err(LockError::Held { .. }) if started.elapsed() < Duration::from_secs(2) => {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            Err(e) => panic!("{e}"),
        }
    };
    assert!(
        started.elapsed() < Duration::from_millis(250),
        "freed by release, not expiry"
    );
    assert_eq!(g2.fencing_token(), Some(2), "tokens only grow");

    // Without renewal the lease expires; the old holder's release must not free the new one's.
    let no_renew = RedisLock::with_options(
        conn(&server, "l"),
        RedisLockOptions {
            lease: Duration::from_millis(200),
            renew_every: None,
        },
    );
    let old = no_renew.acquire("exec-3").await.unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;
    let new = b.acquire("exec-3").await.unwrap();
    assert!(new.fencing_token() > old.fencing_token());
    drop(old);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(matches!(
        a.acquire("exec-3").await,
        Err(LockError::Held { .. })
    ));
    assert!(matches!(
        a.acquire("../x").await,
        Err(LockError::InvalidId(_))
    ));
}

fn push_trail(ctx: &mut Context, what: &str) {
    if let Some(Value::Array(trail)) = ctx.get_mut("trail") {
        trail.push(json!(what));
    }
}

/// `resumable`'s two actions, each adding its name to the context's `trail`.
fn trail_actions(
    builder: flatmachine_runtime::MachineBuilder,
) -> flatmachine_runtime::MachineBuilder {
    builder
        .action_mut("first", |ctx, _| {
            Box::pin(async move {
                push_trail(ctx, "first");
                Ok(())
            })
        })
        .action_mut("flaky", |ctx, _| {
            Box::pin(async move {
                push_trail(ctx, "flaky");
                Ok(())
            })
        })
}

/// `resumable` on Redis checkpoints and a Redis lock; `flaky` sleeps `pause` first (a runner
/// frozen mid-state) when `pause` is set.
fn machine(
    server: &RedisServer,
    lock: RedisLock,
    name: &'static str,
    pause: Option<Duration>,
) -> Machine {
    let paused = Arc::new(AtomicBool::new(false));
    Machine::of::<resumable::Machine>()
        .persistence(CheckpointStore::new(Arc::new(RedisPersistence::new(conn(
            server, "fence",
        )))))
        .lock(Arc::new(lock))
        .action_mut("first", |ctx, _| {
            Box::pin(async move {
                push_trail(ctx, "first");
                Ok(())
            })
        })
        .action_mut("flaky", move |ctx, _| {
            let pause = pause.filter(|_| !paused.swap(true, Ordering::SeqCst));
            Box::pin(async move {
                if let Some(p) = pause {
                    tokio::time::sleep(p).await;
                }
                push_trail(ctx, name);
                Ok(())
            })
        })
        .build()
        .unwrap()
}

/// Runner A holds the lock without renewal (as if its process were frozen) and pauses inside
/// `flaky` past its lease; runner B acquires the lock, resumes the execution and finishes it;
/// A wakes and tries to checkpoint: refused with a fencing error, B's checkpoints intact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_runner_whose_lease_expired_cannot_overwrite_the_new_owner() {
    let server = RedisServer::start();
    let frozen = RedisLock::with_options(
        conn(&server, "fence"),
        RedisLockOptions {
            lease: Duration::from_millis(500),
            renew_every: None,
        },
    );
    let a = machine(
        &server,
        frozen,
        "flaky-A",
        Some(Duration::from_millis(2500)),
    );
    let b = machine(
        &server,
        RedisLock::new(conn(&server, "fence")),
        "flaky-B",
        None,
    );
    let store = CheckpointStore::new(Arc::new(RedisPersistence::new(conn(&server, "fence"))));

    let run_a = tokio::spawn(async move { a.run_with_id("job-1", json!({})).await });
    // Wait until A is inside `flaky` (its execute checkpoint), then past its lease.
    let started = Instant::now();
    loop {
        if let Some(s) = store.load_latest("job-1").await.unwrap()
            && s.current_state == "flaky"
            && s.event.as_deref() == Some("execute")
        {
            assert_eq!(s.fencing_token, Some(1));
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "A never reached flaky"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert!(!run_a.is_finished());

    let done = b.resume("job-1").await.unwrap();
    assert_eq!(done.output["trail"], json!(["first", "flaky-B"]));
    let b_latest = store.load_latest_entry("job-1").await.unwrap().unwrap();

    let err = run_a.await.unwrap().unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("fencing token 1") && text.contains("issued token 2"),
        "{text}"
    );
    // The error is the typed FencingError underneath.
    let fenced = match &err {
        RunError::Persistence(PersistenceError::Other(e)) => e.downcast_ref::<FencingError>(),
        _ => None,
    }
    .unwrap_or_else(|| panic!("not a fencing error: {err:?}"));
    assert_eq!((fenced.token, fenced.newest), (1, 2));
    assert_eq!(fenced.execution_id, "job-1");

    // B's checkpoints are intact: latest is still B's machine_end, token 2.
    let after = store.load_latest_entry("job-1").await.unwrap().unwrap();
    assert_eq!(after, b_latest);
    assert_eq!(after.1.event.as_deref(), Some("machine_end"));
    assert_eq!(after.1.fencing_token, Some(2));
    assert_eq!(
        after.1.output.unwrap()["trail"],
        json!(["first", "flaky-B"])
    );
    for key in store.checkpoint_keys("job-1").await.unwrap() {
        let s = store.backend().load(&key).await.unwrap().unwrap();
        let trail = s.context["trail"].as_array().unwrap().clone();
        assert!(!trail.contains(&json!("flaky-A")), "{key} written by A");
    }
}

#[tokio::test]
async fn results_are_write_once_and_readable() {
    let server = RedisServer::start();
    let results = RedisResults::new(conn(&server, "r"));
    let uri = make_uri("child-1", "result");
    assert_eq!(results.read(&uri, false, None).await.unwrap(), None);
    assert!(!results.exists(&uri).await.unwrap());
    results.write(&uri, json!({"n": 1})).await.unwrap();
    // Writing the same value again is fine; another value is refused.
    results.write(&uri, json!({"n": 1})).await.unwrap();
    let err = results.write(&uri, json!({"n": 2})).await.unwrap_err();
    assert!(err.to_string().contains("write-once"), "{err}");
    assert_eq!(
        results.read(&uri, false, None).await.unwrap(),
        Some(json!({"n": 1}))
    );
    assert!(results.exists(&uri).await.unwrap());
    // `flatagents://id` means `.../result`.
    assert_eq!(
        results
            .read("flatagents://child-1", true, None)
            .await
            .unwrap(),
        Some(json!({"n": 1}))
    );
    results.delete(&uri).await.unwrap();
    assert!(!results.exists(&uri).await.unwrap());
    assert!(matches!(
        results.write("http://x/result", json!(1)).await,
        Err(ResultError::InvalidUri { .. })
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blocking_reads_wake_on_the_write_and_time_out() {
    let server = RedisServer::start();
    let results = Arc::new(RedisResults::new(conn(&server, "r")));
    let uri = make_uri("child-2", "result");
    let mut readers = Vec::new();
    for _ in 0..4 {
        let (results, uri) = (Arc::clone(&results), uri.clone());
        readers.push(tokio::spawn(async move {
            let value = results
                .read(&uri, true, Some(Duration::from_secs(30)))
                .await;
            (value, Instant::now())
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(readers.iter().all(|r| !r.is_finished()));
    results
        .write(&make_uri("other", "result"), json!(0))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(
        readers.iter().all(|r| !r.is_finished()),
        "woken by another key"
    );
    // A writer on another connection (another host, as far as Redis knows).
    let writer = RedisResults::new(conn(&server, "r"));
    let written = Instant::now();
    writer.write(&uri, json!({"done": true})).await.unwrap();
    for r in readers {
        let (value, at) = r.await.unwrap();
        assert_eq!(value.unwrap(), Some(json!({"done": true})));
        // Woken by the write, not by a poll interval.
        assert!(at.duration_since(written) < Duration::from_millis(200));
    }

    let started = Instant::now();
    let err = results
        .read(
            &make_uri("never", "result"),
            true,
            Some(Duration::from_millis(300)),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, ResultError::Timeout { .. }), "{err}");
    let waited = started.elapsed();
    assert!(waited >= Duration::from_millis(300) && waited < Duration::from_secs(3));
}

/// `settings.backends` / `persistence: {backend: redis}` select the Redis backends, on the
/// server `FLATMACHINE_REDIS_URL` names (the only test of this binary that reads it).
#[tokio::test]
async fn yaml_selects_redis_for_every_role() {
    let server = RedisServer::start();
    // SAFETY: no other test of this binary reads or writes the environment.
    unsafe {
        std::env::set_var("FLATMACHINE_REDIS_URL", server.url());
        std::env::set_var("FLATMACHINE_REDIS_PREFIX", "yaml");
    }
    let m = Machine::of::<redis_backed::Machine>()
        .action_mut("first", |ctx, _| {
            Box::pin(async move {
                push_trail(ctx, "first");
                Ok(())
            })
        })
        .build()
        .unwrap();
    let out = m.run_with_id("yaml-1", json!({})).await.unwrap();
    assert_eq!(out.output["trail"], json!(["first"]));
    // The checkpoints and the lock's fencing counter are in Redis under the prefix.
    let store = CheckpointStore::new(Arc::new(RedisPersistence::new(conn(&server, "yaml"))));
    let latest = store.load_latest("yaml-1").await.unwrap().unwrap();
    assert_eq!(latest.event.as_deref(), Some("machine_end"));
    assert_eq!(latest.fencing_token, Some(1));

    let b = flatmachine_runtime::distributed::Backends::for_machine(&redis_backed::SPEC).unwrap();
    let id = b
        .work
        .pool("p")
        .push(json!(1), Default::default())
        .await
        .unwrap();
    use flatmachine_runtime::distributed::WorkBackend;
    let direct = flatmachine_runtime::distributed::RedisWorkBackend::new(conn(&server, "yaml"));
    assert!(direct.pool("p").get(&id).await.unwrap().is_some());
}

/// A fresh run (its id made up by the engine) on a Redis store and a Redis lock of the same
/// server and prefix: the lock is taken by the first checkpoint's script and released by the
/// last one's — no round trip of its own — with fencing token 1, and the counter says one
/// acquire happened. A "fresh" id used before is refused without writing anything; a hold
/// that another runner has is refused too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fresh_run_takes_and_releases_its_lock_with_its_checkpoints() {
    let server = RedisServer::start();
    let lock = RedisLock::new(conn(&server, "fresh"));
    let backend = RedisPersistence::new(conn(&server, "fresh"));
    assert_eq!(
        lock.fencing_domain(),
        PersistenceBackend::fencing_domain(&backend)
    );
    let store = CheckpointStore::new(Arc::new(backend));
    let m = trail_actions(
        Machine::of::<resumable::Machine>()
            .persistence(store.clone())
            .lock(Arc::new(lock.clone())),
    )
    .build()
    .unwrap();
    let out = m.run(json!({})).await.unwrap();
    let id = out.execution_id.clone();
    let redis = redis::Client::open(server.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let get = |key: String| {
        let mut c = redis.clone();
        async move {
            redis::cmd("GET")
                .arg(key)
                .query_async::<Option<String>>(&mut c)
                .await
                .unwrap()
        }
    };
    // Released by the machine_end script, not by a later task: gone at once.
    assert_eq!(get(format!("fresh:lock:{id}")).await, None);
    assert_eq!(
        get(format!("fresh:lock-fence:{id}")).await.as_deref(),
        Some("1")
    );
    for key in store.checkpoint_keys(&id).await.unwrap() {
        let s = store.backend().load(&key).await.unwrap().unwrap();
        assert_eq!(s.fencing_token, Some(1), "{key}");
    }
    assert_eq!(
        store
            .load_latest(&id)
            .await
            .unwrap()
            .unwrap()
            .event
            .as_deref(),
        Some("machine_end")
    );

    // The hold of acquire_fresh is pending until a batch takes it.
    let guard = lock.acquire_fresh("fresh-2").await.unwrap();
    assert_eq!(guard.fencing_token(), Some(1));
    let hold = guard.store_hold().unwrap().clone();
    assert!(!hold.is_acquired());
    assert_eq!(get("fresh:lock:fresh-2".to_string()).await, None);
    let mut first = snap("fresh-2", "s1", 1, checkpoint_event::EXECUTE);
    first.fencing_token = Some(1);
    let encoded =
        flatmachine_runtime::persistence::EncodedCheckpoint::from_snapshot(&first).unwrap();
    let ops = flatmachine_runtime::lock::HoldOps {
        hold: &hold,
        release: false,
    };
    store
        .save_encoded_batch(vec![encoded.clone()], Some(ops))
        .await
        .unwrap();
    assert!(hold.is_acquired());
    assert_eq!(
        get("fresh:lock:fresh-2".to_string()).await.as_deref(),
        Some(hold.token())
    );
    assert!(matches!(
        lock.acquire("fresh-2").await,
        Err(LockError::Held { .. })
    ));
    // Held by this hold: a second fresh hold of the same id is refused ("held").
    let other = lock.acquire_fresh("fresh-2").await.unwrap();
    let other_hold = other.store_hold().unwrap().clone();
    let err = store
        .save_encoded_batch(
            vec![encoded.clone()],
            Some(flatmachine_runtime::lock::HoldOps {
                hold: &other_hold,
                release: false,
            }),
        )
        .await
        .unwrap_err();
    assert!(err.to_string().contains("already running"), "{err}");
    drop(other);
    // Dropping the guard releases the lock (a task, as for every hold).
    drop(guard);
    let started = Instant::now();
    while get("fresh:lock:fresh-2".to_string()).await.is_some() {
        assert!(started.elapsed() < Duration::from_secs(5), "never released");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Free again, but its lock issued a token already: not fresh, nothing written.
    let again = lock.acquire_fresh("fresh-2").await.unwrap();
    let again_hold = again.store_hold().unwrap().clone();
    let mut later = snap("fresh-2", "s9", 9, checkpoint_event::EXECUTE);
    later.fencing_token = Some(1);
    let err = store
        .save_encoded_batch(
            vec![
                flatmachine_runtime::persistence::EncodedCheckpoint::from_snapshot(&later).unwrap(),
            ],
            Some(flatmachine_runtime::lock::HoldOps {
                hold: &again_hold,
                release: false,
            }),
        )
        .await
        .unwrap_err();
    assert!(err.to_string().contains("issued 2 fencing token"), "{err}");
    assert!(!again_hold.is_acquired());
    assert_eq!(get("fresh:lock:fresh-2".to_string()).await, None);
    assert_eq!(
        store
            .latest_checkpoint_key("fresh-2")
            .await
            .unwrap()
            .as_deref(),
        Some(encoded.key())
    );
}

/// A new server, and a connection to it for reading its statistics.
async fn server_and_client() -> (RedisServer, redis::aio::MultiplexedConnection) {
    let server = RedisServer::start();
    let client = redis::Client::open(server.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    (server, client)
}

/// Runs `m` twice (the first warms: scripts loaded, connection up) and returns the second
/// run's result and [`round_trips`].
async fn counted_run(
    m: &Machine,
    redis: &mut redis::aio::MultiplexedConnection,
) -> (flatmachine_runtime::RunResult, u64) {
    m.run(json!({})).await.unwrap();
    let _: () = redis::cmd("CONFIG")
        .arg("RESETSTAT")
        .query_async(redis)
        .await
        .unwrap();
    let out = m.run(json!({})).await.unwrap();
    (out, round_trips(redis).await)
}

/// A section of the server's `INFO`.
async fn info(redis: &mut redis::aio::MultiplexedConnection, section: &str) -> String {
    redis::cmd("INFO")
        .arg(section)
        .query_async(redis)
        .await
        .unwrap()
}

/// Round trips since the last `CONFIG RESETSTAT`, by `INFO commandstats`: the scripts
/// (`EVALSHA`, `EVAL`: what every save is) and the `GET`s (what a load is; the commands a script
/// runs are counted under their own names, and the scripts of these runs take no `GET`).
async fn round_trips(redis: &mut redis::aio::MultiplexedConnection) -> u64 {
    let info = info(redis, "commandstats").await;
    redis_server::command_calls(&info, &["evalsha", "eval", "get"])
}

/// A run's machine graph (the console's trace record) goes to Redis in the script of its first
/// checkpoint: a traced run makes exactly as many round trips as one with tracing off, and the
/// graph is there afterwards. A run that saves no checkpoint writes it at its end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_runs_graph_costs_no_round_trip_of_its_own() {
    let (server, mut redis) = server_and_client().await;
    let build = |trace: bool, checkpoint_on: &[&str]| {
        let store = CheckpointStore::new(Arc::new(RedisPersistence::new(conn(&server, "graph"))));
        let m = trail_actions(
            Machine::of::<resumable::Machine>()
                .persistence(store.clone())
                .trace(trace)
                .checkpoint_on(checkpoint_on.iter().copied()),
        )
        .build()
        .unwrap();
        (m, store)
    };
    let mut counts = Vec::new();
    for trace in [false, true, false, true] {
        let (m, store) = build(trace, &checkpoint_event::ALL);
        let (out, trips) = counted_run(&m, &mut redis).await;
        counts.push(trips);
        let graph = store
            .backend()
            .load_text(&flatmachine_runtime::trace::graph_key(&out.execution_id))
            .await
            .unwrap();
        assert_eq!(graph.is_some(), trace, "trace {trace}: graph {graph:?}");
        if let Some(graph) = graph {
            let g: serde_json::Value = serde_json::from_str(&graph).unwrap();
            assert_eq!(g["machine"], "resumable");
        }
    }
    assert!(counts[0] > 0, "{counts:?}");
    assert_eq!(
        counts[0], counts[1],
        "untraced vs traced round trips: {counts:?}"
    );
    assert_eq!(
        counts[2], counts[3],
        "untraced vs traced round trips: {counts:?}"
    );

    // No checkpoint at all: the graph is written when the run ends.
    let (m, store) = build(true, &[]);
    let out = m.run(json!({})).await.unwrap();
    assert!(
        store
            .checkpoint_keys(&out.execution_id)
            .await
            .unwrap()
            .is_empty()
    );
    assert!(
        store
            .backend()
            .load_text(&flatmachine_runtime::trace::graph_key(&out.execution_id))
            .await
            .unwrap()
            .is_some()
    );
}

/// A resumed run keeps the graph its start wrote (with its start time) and writes no other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resumed_run_keeps_the_graph_of_its_start() {
    let (server, _redis) = server_and_client().await;
    let store = CheckpointStore::new(Arc::new(RedisPersistence::new(conn(&server, "keep"))));
    let failing = Arc::new(AtomicBool::new(true));
    let fails = failing.clone();
    let m = Machine::of::<resumable::Machine>()
        .persistence(store.clone())
        .action_mut("first", |ctx, _| {
            Box::pin(async move {
                push_trail(ctx, "first");
                Ok(())
            })
        })
        .action_mut("flaky", move |ctx, _| {
            let fail = fails.swap(false, Ordering::SeqCst);
            Box::pin(async move {
                if fail {
                    return Err(flatmachine_runtime::StateError::new("Flaky", "not yet"));
                }
                push_trail(ctx, "flaky");
                Ok(())
            })
        })
        .build()
        .unwrap();
    m.run_with_id("keep-1", json!({})).await.unwrap_err();
    let key = flatmachine_runtime::trace::graph_key("keep-1");
    let before = store.backend().load_text(&key).await.unwrap().unwrap();
    tokio::time::sleep(Duration::from_millis(5)).await;
    let out = m.resume("keep-1").await.unwrap();
    assert_eq!(out.output["trail"], json!(["first", "flaky"]));
    assert!(!failing.load(Ordering::SeqCst));
    let after = store.backend().load_text(&key).await.unwrap().unwrap();
    assert_eq!(before, after);
}

/// A batch ending an execution that keeps its last checkpoint writes only that one: the
/// others would be deleted by the same script. Measured by the server's count of changes
/// (`rdb_changes_since_last_save`): the batch of three changes as much as the last alone.
#[tokio::test]
async fn a_finishing_batch_skips_the_checkpoints_its_pruning_deletes() {
    let (server, mut redis) = server_and_client().await;
    let store = CheckpointStore::new(Arc::new(RedisPersistence::new(conn(&server, "doomed"))))
        .with_keep_finished(Some(1));
    let encode = |id: &str, state: &str, step: u64, event: &str| {
        flatmachine_runtime::persistence::EncodedCheckpoint::from_snapshot(&snap(
            id, state, step, event,
        ))
        .unwrap()
    };
    let mut changes = Vec::new();
    for (id, whole) in [("doomed-1", true), ("doomed-2", false)] {
        store
            .save_encoded_batch(vec![encode(id, "a", 1, checkpoint_event::EXECUTE)], None)
            .await
            .unwrap();
        let mut batch = Vec::new();
        if whole {
            batch.push(encode(id, "b", 2, checkpoint_event::EXECUTE));
            batch.push(encode(id, "done", 3, checkpoint_event::EXECUTE));
        }
        let last = encode(id, "done", 3, checkpoint_event::MACHINE_END);
        batch.push(last.clone());
        let before = dirty(&mut redis).await;
        store.save_encoded_batch(batch, None).await.unwrap();
        changes.push(dirty(&mut redis).await - before);
        assert_eq!(
            store.checkpoint_keys(id).await.unwrap(),
            vec![last.key().to_owned()]
        );
        assert_eq!(
            store.latest_checkpoint_key(id).await.unwrap().as_deref(),
            Some(last.key())
        );
    }
    assert!(changes[1] > 0, "{changes:?}");
    assert_eq!(
        changes[0], changes[1],
        "three checkpoints vs the last alone"
    );
}

/// The server's count of changes since the last save (`INFO persistence`).
async fn dirty(redis: &mut redis::aio::MultiplexedConnection) -> i64 {
    info(redis, "persistence")
        .await
        .lines()
        .find_map(|l| l.strip_prefix("rdb_changes_since_last_save:"))
        .and_then(|n| n.trim().parse().ok())
        .expect("rdb_changes_since_last_save")
}

/// Hooks handling `resumable`'s two actions, saying `first` is idempotent when told so.
struct TrailHooks {
    first_is_idempotent: bool,
}

#[async_trait::async_trait]
impl flatmachine_runtime::hooks::MachineHooks for TrailHooks {
    fn may_defer_checkpoint(&self, action: &str) -> bool {
        self.first_is_idempotent && action == "first"
    }

    async fn on_action(
        &self,
        action: &str,
        context: &mut Context,
    ) -> Result<flatmachine_runtime::hooks::ActionOutcome, flatmachine_runtime::hooks::HookError>
    {
        push_trail(context, action);
        Ok(flatmachine_runtime::hooks::ActionOutcome::Handled)
    }
}

/// A state whose only work is an action its hooks call idempotent saves its `execute`
/// checkpoint in the next checkpoint's script: one round trip fewer, the same checkpoints.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idempotent_actions_checkpoint_goes_with_the_next_one() {
    let (server, mut redis) = server_and_client().await;
    let mut seen = Vec::new();
    for first_is_idempotent in [false, true] {
        let store = CheckpointStore::new(Arc::new(RedisPersistence::new(conn(&server, "idem"))));
        let m = Machine::of::<resumable::Machine>()
            .persistence(store.clone())
            .trace(false)
            .checkpoint_on(["execute", "machine_end"])
            .hooks(Arc::new(TrailHooks {
                first_is_idempotent,
            }))
            .build()
            .unwrap();
        let (out, trips) = counted_run(&m, &mut redis).await;
        assert_eq!(out.output["trail"], json!(["first", "flaky"]));
        let keys: Vec<String> = store
            .checkpoint_keys(&out.execution_id)
            .await
            .unwrap()
            .into_iter()
            .map(|k| k[out.execution_id.len()..].to_owned())
            .collect();
        seen.push((trips, keys));
    }
    // start (first) + flaky + done's execute with machine_end: 3 scripts; 2 when the
    // `execute` of `start` waits for `flaky`'s.
    assert_eq!(seen[0].0, 3, "{seen:?}");
    assert_eq!(seen[1].0, 2, "{seen:?}");
    assert_eq!(seen[0].1, seen[1].1);
}

/// The console pages through executions with `execution_ids_after`: on Redis every id comes
/// exactly once across pages, whatever the page size, ids that sort around each other's
/// `/latest` keys (`a`, `a-b`, `a.b`, `ab`) included, and a checkpoint's other keys are not
/// taken for executions.
#[tokio::test]
async fn redis_execution_ids_come_once_each_a_page_at_a_time() {
    let server = RedisServer::start();
    let store = CheckpointStore::new(Arc::new(RedisPersistence::new(conn(&server, "pages"))));
    let mut ids: Vec<String> = ["a", "a-b", "a.b", "ab", "b", "a-b-c", "Z", "0"]
        .into_iter()
        .map(String::from)
        .collect();
    ids.extend((0..17).map(|i| format!("run-{i:03}")));
    for id in &ids {
        for s in run_events(id, 2) {
            store.save(s).await.unwrap();
        }
    }
    let all = store.execution_ids().await.unwrap();
    let mut expected = ids.clone();
    expected.sort();
    let mut listed = all.clone();
    listed.sort();
    assert_eq!(listed, expected);
    for limit in [1, 3, 4, 25, 100] {
        let mut seen = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let page = store
                .execution_ids_after(cursor.as_deref(), limit)
                .await
                .unwrap();
            assert!(page.len() <= limit);
            if page.is_empty() {
                break;
            }
            cursor = page.last().cloned();
            seen.extend(page);
        }
        let mut sorted = seen.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(
            sorted.len(),
            seen.len(),
            "an id came twice with pages of {limit}: {seen:?}"
        );
        assert_eq!(sorted, expected, "pages of {limit}");
    }
}
