//! What one job of a machine-driven worker costs on Redis with the worker defaults: the
//! runbook's worker machine (`tests/machines/distributed/redis_worker.yml`, a child machine for
//! the job) makes 4 round trips per job — claim, complete, one checkpoint script as the job's
//! child starts its work (with the worker's checkpoints so far) and one for both ends (the
//! child hands its last checkpoints to the worker) — while keeping every checkpoint it kept
//! before the batching.
//! (Its own binary: it points `FLATMACHINE_REDIS_URL` at its server.)

#![cfg(feature = "redis")]

#[path = "support/redis_server.rs"]
mod redis_server;

use std::sync::Arc;

use flatmachine_runtime::distributed::{
    DistributedWorkerHooks, JobStatus, PushOptions, RedisWorkBackend, WorkBackend,
};
use flatmachine_runtime::hooks::HooksRegistry;
use flatmachine_runtime::persistence::{CheckpointStore, checkpoint_event};
use flatmachine_runtime::redis_backends::{
    REDIS_PREFIX_ENV, REDIS_URL_ENV, RedisConnection, RedisPersistence,
};
use flatmachine_runtime::{Machine, RunResult};
use redis_server::RedisServer;
use serde_json::json;

flatmachine_runtime::flatmachine!("tests/machines/distributed/redis_worker.yml");

const PREFIX: &str = "trips";

/// The worker machine with the hooks of the YAML's backends and a `do_work` that records
/// its job; `keep_all` keeps every checkpoint of finished executions.
fn worker(keep_all: bool) -> (Machine, Arc<DistributedWorkerHooks>) {
    let hooks = DistributedWorkerHooks::for_machine(&redis_worker::SPEC)
        .unwrap()
        .action_mut("do_work", |ctx, _call| {
            Box::pin(async move {
                let n = ctx["job"]["n"].clone();
                ctx.insert("value".into(), n);
                Ok(())
            })
        });
    let hooks = Arc::new(hooks);
    let mut registry = HooksRegistry::new();
    registry.register_instance("DistributedWorkerHooks", hooks.clone());
    let builder = Machine::of::<redis_worker::Machine>().hooks_registry(registry);
    let builder = match keep_all {
        true => builder.keep_finished_checkpoints(None),
        false => builder,
    };
    (builder.build().unwrap(), hooks)
}

/// Scripts (`EVALSHA`, `EVAL`) the server ran since the last `CONFIG RESETSTAT`: every call
/// on a worker's path is one script (the commands a script runs count under their own names).
async fn round_trips(redis: &mut redis::aio::MultiplexedConnection) -> u64 {
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(redis)
        .await
        .unwrap();
    redis_server::command_calls(&info, redis_server::SCRIPTS)
}

async fn run_job(machine: &Machine) -> RunResult {
    let input = json!({"pool_id": "jobs", "worker_id": "w1"});
    let out = machine.run(input).await.unwrap();
    assert!(out.output["job_id"].is_string(), "{:?}", out.output);
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_job_costs_four_round_trips_and_keeps_its_checkpoints() {
    let server = RedisServer::start();
    // SAFETY: the only test of this binary; set before any backend is opened.
    unsafe {
        std::env::set_var(REDIS_URL_ENV, server.url());
        std::env::set_var(REDIS_PREFIX_ENV, PREFIX);
    }
    let work = RedisWorkBackend::open(&server.url(), PREFIX).unwrap();
    work.pool("jobs")
        .push_many(
            (0..3).map(|n| json!({"n": n})).collect(),
            PushOptions::default(),
        )
        .await
        .unwrap();
    let mut redis = redis::Client::open(server.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let store = CheckpointStore::new(Arc::new(RedisPersistence::new(
        RedisConnection::open(&server.url(), PREFIX).unwrap(),
    )));

    // Worker defaults. The first job warms up (scripts loaded, worker registered).
    let (machine, hooks) = worker(false);
    run_job(&machine).await;
    let _: () = redis::cmd("CONFIG")
        .arg("RESETSTAT")
        .query_async(&mut redis)
        .await
        .unwrap();
    let out = run_job(&machine).await;
    assert_eq!(out.output["result"]["value"], json!(1));
    assert_eq!(round_trips(&mut redis).await, 4);
    // A finished worker execution keeps its last checkpoint.
    assert_eq!(
        store.checkpoint_keys(&out.execution_id).await.unwrap(),
        [format!("{}/step_000007_machine_end.json", out.execution_id)]
    );
    hooks.shutdown().await.unwrap();

    // Every checkpoint kept: the `execute` checkpoints that waited for the next script are all
    // there, one per state, then `machine_end`.
    let (machine, hooks) = worker(true);
    let out = run_job(&machine).await;
    let mut saved = Vec::new();
    for key in store.checkpoint_keys(&out.execution_id).await.unwrap() {
        let s = store.backend().load(&key).await.unwrap().unwrap();
        saved.push((s.current_state, s.event.unwrap()));
    }
    let expected: Vec<(String, String)> = [
        "start",
        "register",
        "claim",
        "process",
        "complete",
        "deregister",
        "done",
    ]
    .into_iter()
    .map(|s| (s.to_owned(), checkpoint_event::EXECUTE.to_owned()))
    .chain([("end".to_owned(), checkpoint_event::MACHINE_END.to_owned())])
    .collect();
    assert_eq!(saved, expected);
    // The child's end went in the worker's last script: saved, its lock released.
    let mut children = Vec::new();
    for id in store.execution_ids().await.unwrap() {
        let latest = store.load_latest(&id).await.unwrap().unwrap();
        if latest.parent_execution_id.as_deref() == Some(out.execution_id.as_str()) {
            children.push((id, latest));
        }
    }
    assert_eq!(children.len(), 1, "{children:?}");
    let (child, latest) = &children[0];
    assert_eq!(latest.event.as_deref(), Some(checkpoint_event::MACHINE_END));
    assert_eq!(latest.output.as_ref().unwrap()["value"], json!(2));
    let lock: Option<String> = redis::cmd("GET")
        .arg(format!("{PREFIX}:lock:{child}"))
        .query_async(&mut redis)
        .await
        .unwrap();
    assert_eq!(lock, None, "the child's lock is released");
    // The job's result and claim are the worker's: done, by this execution.
    let job = work
        .pool("jobs")
        .get(out.output["job_id"].as_str().unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(job.status, JobStatus::Done, "{job:?}");
    assert_eq!(job.result.as_ref().unwrap()["value"], json!(job.data["n"]));
    hooks.shutdown().await.unwrap();
}
