//! `DistributedWorkerHooks`, action by action, through `MachineHooks::on_action` on the memory
//! backends: the context keys each action reads and writes (the reference's names), and what
//! it does to the pool and the registry.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use flatmachine_runtime::distributed::{
    Backends, CommandSpawner, DistributedError, DistributedWorkerHooks, JobStatus, PushOptions,
    SpawnRequest, WorkerFilter, WorkerSpawner, worker_status,
};
use flatmachine_runtime::hooks::{ActionOutcome, MachineHooks};
use flatmachine_runtime::{Context, StateError};
use serde_json::{Value, json};

fn ctx(value: Value) -> Context {
    match value {
        Value::Object(map) => map,
        other => panic!("not an object: {other}"),
    }
}

async fn act(hooks: &DistributedWorkerHooks, action: &str, context: &mut Context) {
    let outcome = hooks
        .on_action(action, context)
        .await
        .unwrap_or_else(|e| panic!("{action}: {e}"));
    assert!(matches!(outcome, ActionOutcome::Handled), "{action}");
}

async fn act_err(hooks: &DistributedWorkerHooks, action: &str, context: &mut Context) -> String {
    match hooks.on_action(action, context).await {
        Ok(_) => panic!("{action} should fail"),
        Err(e) => e.to_string(),
    }
}

#[tokio::test]
async fn pool_state_claim_complete_and_fail() {
    let backends = Backends::memory();
    let hooks = DistributedWorkerHooks::new(backends.clone());
    let pool = backends.work.pool("jobs");
    // A claim counts an attempt; failing at `max_retries` attempts poisons.
    let retry_once = PushOptions { max_retries: 2 };
    let first = pool.push(json!({"n": 1}), retry_once).await.unwrap();
    pool.push(json!({"n": 2}), retry_once).await.unwrap();

    let mut c = ctx(json!({"pool_id": "jobs", "worker_id": "w1"}));
    act(&hooks, "register_worker", &mut c).await;
    assert_eq!(c["status"], "active");
    assert!(c["registered_at"].is_string());
    act(&hooks, "get_pool_state", &mut c).await;
    assert_eq!(
        (c["queue_depth"].clone(), c["active_workers"].clone()),
        (json!(2), json!(1))
    );

    act(&hooks, "claim_job", &mut c).await;
    assert_eq!(c["job"], json!({"n": 1}));
    assert_eq!(c["job_id"], json!(first));
    assert_eq!(c["job_attempts"], json!(1));
    c.insert("result".into(), json!({"ok": true}));
    act(&hooks, "complete_job", &mut c).await;
    let done = pool.get(&first).await.unwrap().unwrap();
    assert_eq!(done.status, JobStatus::Done);
    assert_eq!(done.result, Some(json!({"ok": true})));

    // fail_job: back to pending, then poisoned at max_retries; the error text comes from
    // `error`, else `last_error`.
    act(&hooks, "claim_job", &mut c).await;
    c.insert("last_error".into(), json!("boom"));
    act(&hooks, "fail_job", &mut c).await;
    assert_eq!(c["job_status"], "pending");
    act(&hooks, "claim_job", &mut c).await;
    assert_eq!(c["job_attempts"], json!(2));
    act(&hooks, "fail_job", &mut c).await;
    assert_eq!(c["job_status"], "poisoned");
    let poisoned = pool
        .get(c["job_id"].as_str().unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(poisoned.error.as_deref(), Some("boom"));

    // An empty pool: job, job_id and job_attempts are null.
    act(&hooks, "claim_job", &mut c).await;
    assert!(c["job"].is_null() && c["job_id"].is_null() && c["job_attempts"].is_null());
    act(&hooks, "get_pool_state", &mut c).await;
    assert_eq!(c["queue_depth"], json!(0));
}

#[tokio::test]
async fn missing_keys_are_invalid_context_errors() {
    let hooks = DistributedWorkerHooks::new(Backends::memory());
    for action in [
        "claim_job",
        "complete_job",
        "fail_job",
        "register_worker",
        "heartbeat",
    ] {
        let message = act_err(&hooks, action, &mut Context::new()).await;
        assert!(message.contains("is required for"), "{action}: {message}");
    }
    let message = act_err(&hooks, "reap_worker", &mut Context::new()).await;
    assert!(message.contains("worker is required"), "{message}");
    // Unknown actions are left to other hooks.
    let outcome = hooks
        .on_action("not_mine", &mut Context::new())
        .await
        .unwrap();
    assert!(matches!(outcome, ActionOutcome::NotHandled));
}

#[tokio::test]
async fn heartbeat_merges_metadata_and_deregister_terminates() {
    let backends = Backends::memory();
    let hooks = DistributedWorkerHooks::new(backends.clone());
    let mut c = ctx(json!({
        "worker_id": "w1",
        "pool_id": "p",
        "capabilities": ["gpu", 7, "cpu"],
    }));
    act(&hooks, "register_worker", &mut c).await;
    let record = backends.registration.get("w1").await.unwrap().unwrap();
    assert_eq!(record.capabilities, Some(vec!["gpu".into(), "cpu".into()]));
    assert_eq!(record.pool_id.as_deref(), Some("p"));
    assert_eq!(record.pid, Some(std::process::id()));

    c.insert("heartbeat_metadata".into(), json!({"load": 0.5}));
    act(&hooks, "heartbeat", &mut c).await;
    c.insert("heartbeat_metadata".into(), json!({"jobs": 3}));
    act(&hooks, "heartbeat", &mut c).await;
    let record = backends.registration.get("w1").await.unwrap().unwrap();
    assert_eq!(
        record.metadata.map(Value::Object),
        Some(json!({"load": 0.5, "jobs": 3}))
    );

    // The end of a run: the worker stays registered (and heartbeating) for the process's
    // next run, which registers nothing again.
    act(&hooks, "deregister_worker", &mut c).await;
    let record = backends.registration.get("w1").await.unwrap().unwrap();
    assert_eq!(record.status, worker_status::ACTIVE);
    assert!(hooks.heartbeating("w1"));
    let mut again = ctx(json!({"worker_id": "w1", "pool_id": "p"}));
    act(&hooks, "register_worker", &mut again).await;
    assert_eq!(again["registered_at"], json!(record.started_at));
    let unchanged = backends.registration.get("w1").await.unwrap().unwrap();
    assert_eq!(unchanged.metadata, record.metadata, "not registered again");
    // Shutting the process's workers down terminates them and stops the heartbeats.
    hooks.shutdown().await.unwrap();
    let record = backends.registration.get("w1").await.unwrap().unwrap();
    assert_eq!(record.status, worker_status::TERMINATED);
    assert!(!hooks.heartbeating("w1"));
    // Without a heartbeat task here, `deregister_worker` terminates at once.
    act(&hooks, "register_worker", &mut c).await;
    hooks.shutdown().await.unwrap();
    backends
        .registration
        .update_status("w1", worker_status::ACTIVE)
        .await
        .unwrap();
    act(&hooks, "deregister_worker", &mut c).await;
    let record = backends.registration.get("w1").await.unwrap().unwrap();
    assert_eq!(record.status, worker_status::TERMINATED);
}

#[tokio::test]
async fn stale_workers_are_listed_and_reaped_unless_they_heartbeat_in_between() {
    let backends = Backends::memory();
    let hooks = DistributedWorkerHooks::new(backends.clone());
    let pool = backends.work.pool("default");
    for id in ["dead", "slow", "fresh"] {
        act(
            &hooks,
            "register_worker",
            &mut ctx(json!({"worker_id": id})),
        )
        .await;
    }
    for n in 0..3 {
        pool.push(json!({"n": n}), Default::default())
            .await
            .unwrap();
    }
    pool.claim("dead").await.unwrap().unwrap();
    pool.claim("dead").await.unwrap().unwrap();
    pool.claim("slow").await.unwrap().unwrap();
    tokio::time::sleep(Duration::from_millis(20)).await;
    act(&hooks, "heartbeat", &mut ctx(json!({"worker_id": "fresh"}))).await;

    let mut reaper = ctx(json!({"stale_threshold_seconds": 0.01}));
    act(&hooks, "list_stale_workers", &mut reaper).await;
    assert_eq!(reaper["stale_count"], json!(2));
    let listed: Vec<&str> = reaper["workers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["worker_id"].as_str().unwrap())
        .collect();
    assert_eq!(listed.len(), 2);
    assert!(listed.contains(&"dead") && listed.contains(&"slow"));

    // `slow` heartbeats after being listed: the reaper leaves it alone.
    act(&hooks, "heartbeat", &mut ctx(json!({"worker_id": "slow"}))).await;
    act(&hooks, "reap_stale_workers", &mut reaper).await;
    assert_eq!(reaper["reaped_workers"], json!(["dead"]));
    assert_eq!(reaper["reaped_count"], json!(1));
    assert_eq!(reaper["total_jobs_released"], json!(2));
    let reg = &backends.registration;
    assert_eq!(
        reg.get("dead").await.unwrap().unwrap().status,
        worker_status::LOST
    );
    assert_eq!(
        reg.get("slow").await.unwrap().unwrap().status,
        worker_status::ACTIVE
    );
    assert_eq!(
        pool.size().await.unwrap(),
        2,
        "dead's jobs are pending again"
    );

    // reap_worker reaps unconditionally.
    let mut one = ctx(json!({"worker": {"worker_id": "slow"}}));
    act(&hooks, "reap_worker", &mut one).await;
    assert_eq!(one["reaped_worker_id"], "slow");
    assert_eq!(one["jobs_released"], json!(1));
    let lost = reg
        .list(&WorkerFilter::status(worker_status::LOST))
        .await
        .unwrap();
    assert_eq!(lost.len(), 2);
}

#[tokio::test]
async fn calculate_spawn_follows_the_reference_formula() {
    let hooks = DistributedWorkerHooks::new(Backends::memory());
    for (depth, active, max, needed, to_spawn) in [
        (json!(10), json!(1), json!("3"), 3, 2),
        (json!(2), json!(0), Value::Null, 2, 2),
        (json!(0), json!(2), json!(5), 0, 0),
        (json!("7"), json!(9), json!(8), 7, 0),
    ] {
        let mut c = ctx(json!({"queue_depth": depth, "active_workers": active}));
        if !max.is_null() {
            c.insert("max_workers".into(), max);
        }
        act(&hooks, "calculate_spawn", &mut c).await;
        assert_eq!(c["workers_needed"], json!(needed), "{c:?}");
        assert_eq!(c["workers_to_spawn"], json!(to_spawn), "{c:?}");
        assert_eq!(c["spawn_list"].as_array().unwrap().len(), to_spawn);
    }
}

/// A spawner that remembers what it was asked to start.
#[derive(Default)]
struct Recorder(Mutex<Vec<SpawnRequest>>);

#[async_trait]
impl WorkerSpawner for Recorder {
    async fn spawn(&self, request: &SpawnRequest) -> Result<(), DistributedError> {
        self.0.lock().unwrap().push(request.clone());
        Ok(())
    }
}

#[tokio::test]
async fn spawn_workers_asks_the_spawner_once_per_worker() {
    let recorder = Arc::new(Recorder::default());
    let hooks = DistributedWorkerHooks::new(Backends::memory()).spawner(recorder.clone());
    let mut c = ctx(json!({
        "workers_to_spawn": 3,
        "pool_id": "p",
        "worker_config_path": "job_worker.yml",
    }));
    act(&hooks, "spawn_workers", &mut c).await;
    assert_eq!(c["spawned_count"], json!(3));
    let requests = recorder.0.lock().unwrap().clone();
    let ids: Vec<Value> = requests.iter().map(|r| json!(r.worker_id)).collect();
    assert_eq!(c["spawned_ids"], Value::Array(ids));
    for r in &requests {
        assert!(r.worker_id.starts_with("worker-") && r.worker_id.len() == 15);
        assert_eq!(r.input, json!({"pool_id": "p", "worker_id": r.worker_id}));
        assert_eq!(r.worker_config_path.as_deref(), Some("job_worker.yml"));
    }

    // Nothing to spawn needs no spawner; something to spawn without one is an error.
    let bare = DistributedWorkerHooks::new(Backends::memory());
    let mut none = ctx(json!({"workers_to_spawn": 0}));
    act(&bare, "spawn_workers", &mut none).await;
    assert_eq!(none["spawned_count"], json!(0));
    let message = act_err(
        &bare,
        "spawn_workers",
        &mut ctx(json!({"workers_to_spawn": 1})),
    )
    .await;
    assert!(message.contains("needs a WorkerSpawner"), "{message}");
}

#[tokio::test]
async fn command_spawner_starts_real_processes_with_the_cli_contract() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("args.txt");
    // `sh -c 'echo "$@" >> FILE' sh run --input {input}`: records what a cli::main worker gets.
    let spawner = Arc::new(CommandSpawner::new("sh").args([
        "-c".to_string(),
        format!("echo \"$@\" >> {}", out.display()),
        "sh".to_string(),
        "run".to_string(),
        "--input".to_string(),
        "{input}".to_string(),
    ]));
    let hooks = DistributedWorkerHooks::new(Backends::memory()).spawner(spawner.clone());
    let mut c = ctx(json!({"workers_to_spawn": 2, "pool_id": "p"}));
    act(&hooks, "spawn_workers", &mut c).await;
    let finished = spawner.wait_all();
    assert_eq!(finished.len(), 2);
    assert!(finished.iter().all(|(_, ok)| *ok), "{finished:?}");
    let text = std::fs::read_to_string(&out).unwrap();
    let mut lines: Vec<&str> = text.lines().collect();
    lines.sort_unstable();
    let mut expected: Vec<String> = c["spawned_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|id| format!("run --input {}", json!({"pool_id": "p", "worker_id": id})))
        .collect();
    expected.sort_unstable();
    assert_eq!(lines, expected);
    // With no arguments set, the default is the cli::main contract.
    let (_, args) = CommandSpawner::new("app").command_line(&SpawnRequest {
        worker_id: "worker-1".into(),
        pool_id: "p".into(),
        worker_config_path: None,
        input: json!({"pool_id": "p", "worker_id": "worker-1"}),
    });
    assert_eq!(args[..2], ["run".to_string(), "--input".to_string()]);
}

#[tokio::test]
async fn user_actions_run_first_and_can_replace_a_builtin() {
    let hooks = DistributedWorkerHooks::new(Backends::memory())
        .action_mut("echo", |c, _call| {
            Box::pin(async move {
                c.insert("echoed".into(), json!(true));
                Ok(())
            })
        })
        .action_mut("calculate_spawn", |c, _call| {
            Box::pin(async move {
                c.insert("workers_to_spawn".into(), json!(42));
                Ok(())
            })
        })
        .action_mut("explode", |c, _call| {
            Box::pin(async move {
                c.insert("half_done".into(), json!(true));
                Err(StateError::new("JobError", "nope"))
            })
        });
    let mut c = Context::new();
    act(&hooks, "echo", &mut c).await;
    act(&hooks, "calculate_spawn", &mut c).await;
    assert_eq!(c["echoed"], json!(true));
    assert_eq!(c["workers_to_spawn"], json!(42));
    assert!(
        c.get("workers_needed").is_none(),
        "the built-in did not run"
    );
    let message = act_err(&hooks, "explode", &mut c).await;
    assert!(message.contains("nope"), "{message}");
    // What a failing in-place action wrote stays (as with `MachineBuilder::action_mut`).
    assert_eq!(c["half_done"], json!(true));
}

/// The by-value form still works (deprecated: a failing closure's changes are lost).
#[tokio::test]
#[allow(deprecated)]
async fn the_deprecated_by_value_action_form_still_runs() {
    let hooks = DistributedWorkerHooks::new(Backends::memory())
        .action("echo", |mut c: Context| async move {
            c.insert("echoed".into(), json!(true));
            Ok(c)
        })
        .action("explode", |mut c: Context| async move {
            c.insert("half_done".into(), json!(true));
            Err(StateError::new("JobError", "nope"))
        });
    let mut c = Context::new();
    act(&hooks, "echo", &mut c).await;
    assert_eq!(c["echoed"], json!(true));
    act_err(&hooks, "explode", &mut c).await;
    assert!(c.get("half_done").is_none());
}

/// A worker registered once per process that the reaper marked `lost` while it was alive
/// (paused between runs) is found out by its next heartbeat and registered again (`active`)
/// by its next run — otherwise no reaper would ever reap it again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_marked_lost_while_alive_registers_again() {
    let backends = Backends::memory();
    let hooks = DistributedWorkerHooks::new(backends.clone()).heartbeat_interval(0.05);
    let mut c = ctx(json!({"worker_id": "w1", "pool_id": "p"}));
    act(&hooks, "register_worker", &mut c).await;
    let first = backends.registration.get("w1").await.unwrap().unwrap();
    backends
        .registration
        .update_status("w1", worker_status::LOST)
        .await
        .unwrap();
    // Before a heartbeat noticed, a run would skip the registration; after, it writes it.
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    act(&hooks, "register_worker", &mut c).await;
    let record = backends.registration.get("w1").await.unwrap().unwrap();
    assert_eq!(record.status, worker_status::ACTIVE);
    assert_ne!(record.started_at, first.started_at, "registered again");
    hooks.shutdown().await.unwrap();
}
