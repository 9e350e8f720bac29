//! Machine-driven workers in one process (memory backends): heartbeats happen by default, at
//! the interval the YAML sets; a worker whose claim is taken back stops, cannot complete the
//! job, and its execution is marked superseded (resume refused, naming the new holder); the
//! reaper machine takes back jobs whose lease expired even while their worker heartbeats.

use std::sync::Arc;
use std::time::Duration;

use flatmachine_runtime::distributed::superseded::superseded;
use flatmachine_runtime::distributed::*;
use flatmachine_runtime::hooks::HooksRegistry;
use flatmachine_runtime::persistence::CheckpointStore;
use flatmachine_runtime::{Machine, RunError, StateError};
use serde_json::json;
use tokio::sync::Notify;

flatmachine_runtime::flatmachine!("tests/machines/distributed/memory_worker.yml");
flatmachine_runtime::flatmachine!("tests/machines/distributed/reaper.yml");

fn registry(hooks: DistributedWorkerHooks) -> HooksRegistry {
    let mut registry = HooksRegistry::new();
    registry.register_instance("DistributedWorkerHooks", Arc::new(hooks));
    registry
}

#[tokio::test]
async fn the_yaml_sets_the_heartbeat_interval_and_the_lease() {
    let hooks = DistributedWorkerHooks::for_machine(&memory_worker::SPEC).unwrap();
    let debug = format!("{hooks:?}");
    assert!(debug.contains("heartbeat_interval: 0.05"), "{debug}");
    assert!(debug.contains("job_lease: 600s"), "{debug}");
    assert!(is_worker_machine(&memory_worker::SPEC));
    assert!(!is_worker_machine(&reaper::SPEC));
}

/// A job that takes 400 ms: the worker heartbeats while it runs (interval 0.05 s from the
/// YAML), without any heartbeat step in the machine.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_machine_driven_worker_heartbeats_while_its_job_runs() {
    let backends = Backends::memory();
    let pool = backends.work.pool("jobs");
    pool.push(json!({"n": 1}), PushOptions::default())
        .await
        .unwrap();
    let hooks = DistributedWorkerHooks::new(backends.clone())
        .heartbeat_interval(memory_worker::SPEC.heartbeat_interval.unwrap())
        .action_mut("do_work", |ctx, _call| {
            Box::pin(async move {
                tokio::time::sleep(Duration::from_millis(400)).await;
                ctx.insert("value".into(), json!("worked"));
                Ok(())
            })
        });
    let hooks = Arc::new(hooks);
    let mut hooks_registry = HooksRegistry::new();
    hooks_registry.register_instance("DistributedWorkerHooks", hooks.clone());
    let machine = Machine::of::<memory_worker::Machine>()
        .hooks_registry(hooks_registry)
        .build()
        .unwrap();
    let run = tokio::spawn({
        let machine = machine.clone();
        async move {
            machine
                .run(json!({"pool_id": "jobs", "worker_id": "w1"}))
                .await
        }
    });
    // Watch the registry while the job runs.
    let mut beats = std::collections::BTreeSet::new();
    for _ in 0..30 {
        tokio::time::sleep(Duration::from_millis(10)).await;
        if let Some(w) = backends.registration.get("w1").await.unwrap() {
            beats.insert(w.last_heartbeat.clone());
        }
    }
    let result = run.await.unwrap().unwrap();
    assert_eq!(result.output["result"]["value"], json!("worked"));
    assert!(
        beats.len() >= 3,
        "the heartbeat moved {} times in 300 ms",
        beats.len()
    );
    // Between runs the worker stays registered and heartbeating: the process runs the
    // machine again for the next job.
    let w = backends.registration.get("w1").await.unwrap().unwrap();
    assert_eq!(w.status, worker_status::ACTIVE);
    assert!(hooks.heartbeating("w1"));
    let published = w.metadata.unwrap();
    assert!(published[METRICS_METADATA_KEY]["claims"].as_u64().unwrap() >= 1);
    // The second run registers nothing again (the record keeps its start time).
    let second = machine
        .run(json!({"pool_id": "jobs", "worker_id": "w1"}))
        .await
        .unwrap();
    assert_eq!(second.output["status"], json!("no_work_available"));
    let again = backends.registration.get("w1").await.unwrap().unwrap();
    assert_eq!(again.started_at, w.started_at);
    // Shut down: terminated, and the heartbeat stops.
    hooks.shutdown().await.unwrap();
    let w = backends.registration.get("w1").await.unwrap().unwrap();
    assert_eq!(w.status, worker_status::TERMINATED);
    let last = w.last_heartbeat;
    tokio::time::sleep(Duration::from_millis(150)).await;
    let after = backends.registration.get("w1").await.unwrap().unwrap();
    assert_eq!(after.last_heartbeat, last);
}

/// Worker A is paused mid-job; the reaper takes its job back and worker B claims it. A's
/// heartbeat finds the claim gone: A's completion is refused (the result stays B's), its
/// execution is marked superseded, and resuming it is refused naming B.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_whose_claim_moved_cannot_finish_and_is_superseded() {
    let backends = Backends::memory();
    let pool = backends.work.pool("jobs");
    let job = pool
        .push(json!({"n": 7}), PushOptions::default())
        .await
        .unwrap();
    let store = CheckpointStore::memory();
    let gate = Arc::new(Notify::new());
    let started = Arc::new(Notify::new());
    let hooks = DistributedWorkerHooks::new(backends.clone())
        .heartbeat_interval(0.05)
        .checkpoints(store.clone())
        .action_mut("do_work", {
            let (gate, started) = (gate.clone(), started.clone());
            move |ctx, _call| {
                let (gate, started) = (gate.clone(), started.clone());
                Box::pin(async move {
                    started.notify_one();
                    gate.notified().await;
                    ctx.insert("value".into(), json!("late"));
                    Ok(())
                })
            }
        });
    let machine = Machine::of::<memory_worker::Machine>()
        .hooks_registry(registry(hooks))
        .persistence(store.clone())
        .build()
        .unwrap();
    let run_a = tokio::spawn({
        let machine = machine.clone();
        async move {
            machine
                .run_with_id("exec-a", json!({"pool_id": "jobs", "worker_id": "A"}))
                .await
        }
    });
    started.notified().await;
    let held = pool.get(&job).await.unwrap().unwrap();
    assert_eq!(held.execution_id.as_deref(), Some("exec-a"));

    // The reaper (its own hooks, same backends and store) reaps A as if it were stale.
    let reaper_hooks = DistributedWorkerHooks::new(backends.clone()).checkpoints(store.clone());
    let mut ctx = serde_json::Map::new();
    ctx.insert("pool_id".into(), json!("jobs"));
    ctx.insert("worker".into(), json!("A"));
    reaper_hooks.reap_worker(&mut ctx).await.unwrap();
    assert_eq!(ctx["jobs_released"], json!(1));
    let mark = superseded(&store, "exec-a").await.unwrap().unwrap();
    assert!(mark.reason.contains("worker `A` was lost"), "{mark:?}");

    // B claims the job (and names itself in A's mark) and completes it.
    let b_hooks = DistributedWorkerHooks::new(backends.clone()).checkpoints(store.clone());
    let mut b = serde_json::Map::new();
    b.insert("pool_id".into(), json!("jobs"));
    b.insert("worker_id".into(), json!("B"));
    b_hooks.claim_job(&mut b).await.unwrap();
    assert_eq!(b["job_id"], json!(job));
    let mark = superseded(&store, "exec-a").await.unwrap().unwrap();
    assert_eq!(mark.holder.as_deref(), Some("B"));
    b.insert("result".into(), json!("B's result"));
    b_hooks.complete_job(&mut b).await.unwrap();

    // A's heartbeat finds out; A wakes up and its completion is refused.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(metrics().snapshot().claims_lost >= 1);
    gate.notify_one();
    let err = run_a.await.unwrap().unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains(CLAIM_LOST_ERROR_TYPE) || text.contains("lost its claim"),
        "{text}"
    );
    let done = pool.get(&job).await.unwrap().unwrap();
    assert_eq!(done.result, Some(json!("B's result")));
    assert_eq!(done.claimed_by.as_deref(), Some("B"));

    // Resuming A is refused, naming the new holder.
    let err = machine.resume("exec-a").await.unwrap_err();
    assert!(matches!(err, RunError::Persistence(_)), "{err:?}");
    let text = err.to_string();
    assert!(
        text.contains("superseded") && text.contains("worker `B`"),
        "{text}"
    );
    // `inspect` shows it.
    let history = flatmachine_runtime::inspect::ExecutionHistory::load(&store, "exec-a")
        .await
        .unwrap();
    let table = history.render_table();
    assert!(
        table.contains("superseded: its claim on job") && table.contains("worker `B`"),
        "{table}"
    );
    // Worker machines keep `execute` checkpoints only (no state_enter / state_exit).
    assert!(
        history
            .checkpoints
            .iter()
            .all(|c| c.event == "execute" || c.event == "machine_end"),
        "{table}"
    );
}

/// A stuck job (its worker alive and heartbeating) is taken back by the reaper machine once
/// its lease ends; the worker's completion is then refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_reaper_machine_takes_back_an_expired_lease_of_a_live_worker() {
    let backends = Backends::memory();
    let pool = backends.work.pool("jobs");
    let job = pool
        .push(json!({"n": 1}), PushOptions { max_retries: 5 })
        .await
        .unwrap();
    let store = CheckpointStore::memory();
    let gate = Arc::new(Notify::new());
    let hooks = DistributedWorkerHooks::new(backends.clone())
        .heartbeat_interval(0.05)
        .job_lease(Duration::from_millis(300))
        .checkpoints(store.clone())
        .action_mut("do_work", {
            let gate = gate.clone();
            move |_ctx, _call| {
                let gate = gate.clone();
                Box::pin(async move {
                    gate.notified().await;
                    Err::<(), _>(StateError::new("Stuck", "gave up waiting"))
                })
            }
        });
    let registry = registry(hooks);
    let worker = Machine::of::<memory_worker::Machine>()
        .hooks_registry(registry.clone())
        .persistence(store.clone())
        .build()
        .unwrap();
    let reaper = Machine::of::<reaper::Machine>()
        .hooks_registry(registry)
        .build()
        .unwrap();
    let run = tokio::spawn({
        let worker = worker.clone();
        async move {
            worker
                .run_with_id("exec-stuck", json!({"pool_id": "jobs", "worker_id": "W"}))
                .await
        }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let out = reaper
        .run(json!({"pool_id": "jobs", "stale_threshold_seconds": 60}))
        .await
        .unwrap();
    assert_eq!(
        out.output["expired_jobs_released"],
        json!(0),
        "lease not over"
    );
    tokio::time::sleep(Duration::from_millis(350)).await;
    let out = reaper
        .run(json!({"pool_id": "jobs", "stale_threshold_seconds": 60}))
        .await
        .unwrap();
    assert_eq!(out.output["expired_jobs_released"], json!(1));
    assert_eq!(out.output["reaped_count"], json!(0), "the worker is alive");
    let back = pool.get(&job).await.unwrap().unwrap();
    assert_eq!(back.status, JobStatus::Pending);
    assert_eq!(
        superseded(&store, "exec-stuck")
            .await
            .unwrap()
            .unwrap()
            .reason,
        "its lease expired"
    );
    // The worker's job fails now; its fail_job is refused (the claim is gone).
    gate.notify_one();
    let err = run.await.unwrap().unwrap_err();
    assert!(
        err.to_string().contains("lost its claim") || err.to_string().contains("not claimed"),
        "{err}"
    );
    assert_eq!(
        pool.get(&job).await.unwrap().unwrap().status,
        JobStatus::Pending
    );
}
