//! Machine-driven workers: jobs per second for a no-op job with 1 to 8 worker processes, each
//! running the worker machine (`tests/machines/distributed/{sqlite,redis}_worker.yml`:
//! register → claim → child machine with one no-op action → complete → deregister) once per
//! job until the pool is empty, with every role on SQLite (one file) or on Redis.
//!
//! `cargo bench -p flatmachine-runtime --features sqlite,redis --bench worker_jobs`
//!
//! * `FM_BENCH_JOBS` — jobs per run (default 4,000);
//! * `FM_BENCH_PROCS` — worker process counts (default `1,2,4,8`);
//! * `FM_BENCH_STORES` — `sqlite`, `redis`, `redis-unix` (the same server over its Unix
//!   socket), comma-separated (default `sqlite,redis`);
//! * `FM_BENCH_CHECKPOINTS` — `default` (the worker-machine defaults), `newest` (the defaults,
//!   keeping only the newest checkpoint while running too), `all` (every event and no
//!   retention, what other machines get), `none`, or events joined by `+` (`machine_end`),
//!   comma-separated (default `default`);
//! * `FM_BENCH_TRACE=0` — trace records off (`MachineBuilder::trace(false)`).
//!
//! Prints a Markdown table: wall-clock jobs/s, and CPU per job — the worker processes' user +
//! system time (orchestration: engine, hooks, client side of the store) and, for Redis, the
//! server's — from `/proc` (Linux); for Redis also the round trips per job (the scripts the
//! server ran, from `INFO commandstats`). The bench starts its own `redis-server` (AOF everysec).

#[path = "../tests/support/redis_server.rs"]
mod redis_server;

use flatmachine_runtime::distributed::{
    DistributedWorkerHooks, PushOptions, RedisWorkBackend, SqliteWorkBackend, WorkBackend,
};
use flatmachine_runtime::hooks::HooksRegistry;
use flatmachine_runtime::persistence::checkpoint_event;
use flatmachine_runtime::redis_backends::{REDIS_PREFIX_ENV, REDIS_URL_ENV};
use flatmachine_runtime::{Machine, MachineBuilder};
use serde_json::json;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Instant;

flatmachine_runtime::flatmachine!("tests/machines/distributed/sqlite_worker.yml");
flatmachine_runtime::flatmachine!("tests/machines/distributed/redis_worker.yml");

const POOL: &str = "bench";

/// Clock ticks per second of `/proc` CPU times (USER_HZ; 100 on Linux).
const TICKS: f64 = 100.0;

fn main() {
    if let Ok(spec) = std::env::var("FM_BENCH_WORKER") {
        worker(&spec);
        return;
    }
    let env = |name: &str, default: &str| std::env::var(name).unwrap_or_else(|_| default.into());
    let jobs: usize = env("FM_BENCH_JOBS", "4000").parse().expect("FM_BENCH_JOBS");
    let procs: Vec<usize> = env("FM_BENCH_PROCS", "1,2,4,8")
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    let stores = env("FM_BENCH_STORES", "sqlite,redis");
    let modes = env("FM_BENCH_CHECKPOINTS", "default");
    let server = stores
        .contains("redis")
        .then(redis_server::RedisServer::start);
    println!(
        "| store | checkpoints | processes | jobs | seconds | jobs/s | worker CPU ms/job | server CPU ms/job | Redis round trips/job |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    let mut run = 0;
    for store in stores.split(',').map(str::trim) {
        for mode in modes.split(',').map(str::trim) {
            for &n in &procs {
                run += 1;
                let dir = tempfile::tempdir().expect("tempdir");
                let prefix = format!("bench{run}");
                // `redis-unix`: the same server over its Unix socket (a single-host deployment).
                let url = match (&server, store) {
                    (Some(s), "redis-unix") => s.unix_url(),
                    (Some(s), _) => s.url(),
                    (None, _) => String::new(),
                };
                push(store, dir.path(), &url, &prefix, jobs);
                let server_cpu = || server.as_ref().and_then(|s| s.pid()).map_or(0.0, proc_cpu);
                let calls_before = redis_calls(store, &url);
                let (cpu_before, server_before) = (children_cpu(), server_cpu());
                let started = Instant::now();
                let children: Vec<_> = (0..n)
                    .map(|k| {
                        Command::new(std::env::current_exe().expect("exe"))
                            .env("FM_BENCH_WORKER", format!("{store}|{mode}|w{k}"))
                            .env(REDIS_URL_ENV, &url)
                            .env(REDIS_PREFIX_ENV, &prefix)
                            .current_dir(dir.path())
                            .stdout(Stdio::null())
                            .spawn()
                            .expect("spawn")
                    })
                    .collect();
                for mut c in children {
                    assert!(c.wait().expect("wait").success(), "a worker failed");
                }
                let secs = started.elapsed().as_secs_f64();
                let worker_ms = (children_cpu() - cpu_before) * 1000.0 / jobs as f64;
                let server_ms = (server_cpu() - server_before) * 1000.0 / jobs as f64;
                let done = done(store, dir.path(), &url, &prefix);
                assert_eq!(done, jobs as u64, "every job done");
                let (server_col, calls_col) = if store.starts_with("redis") {
                    let calls = redis_calls(store, &url) - calls_before;
                    (
                        format!("{server_ms:.2}"),
                        format!("{:.1}", calls as f64 / jobs as f64),
                    )
                } else {
                    ("-".to_string(), "-".to_string())
                };
                println!(
                    "| {store} | {mode} | {n} | {jobs} | {secs:.2} | {:.0} | {worker_ms:.2} | {server_col} | {calls_col} |",
                    jobs as f64 / secs
                );
            }
        }
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

fn work_backend(store: &str, dir: &Path, url: &str, prefix: &str) -> Arc<dyn WorkBackend> {
    match store {
        "sqlite" => Arc::new(SqliteWorkBackend::open(dir.join("workers.sqlite")).expect("open")),
        _ => Arc::new(RedisWorkBackend::open(url, prefix).expect("open")),
    }
}

fn push(store: &str, dir: &Path, url: &str, prefix: &str, jobs: usize) {
    let work = work_backend(store, dir, url, prefix);
    runtime().block_on(async {
        let pool = work.pool(POOL);
        for chunk in (0..jobs).collect::<Vec<_>>().chunks(1000) {
            pool.push_many(
                chunk.iter().map(|n| json!({"n": n})).collect(),
                PushOptions::default(),
            )
            .await
            .expect("push");
        }
    });
}

fn done(store: &str, dir: &Path, url: &str, prefix: &str) -> u64 {
    let work = work_backend(store, dir, url, prefix);
    runtime()
        .block_on(work.pool(POOL).stats())
        .expect("stats")
        .done
}

/// Scripts the Redis server has run so far (`EVALSHA` + `EVAL` of `INFO commandstats`): every
/// call the backends make on a worker's path is one script, one round trip (the commands a
/// script runs are counted under their own names and left out). 0 for SQLite.
fn redis_calls(store: &str, url: &str) -> u64 {
    if !store.starts_with("redis") {
        return 0;
    }
    let mut conn = redis::Client::open(url)
        .and_then(|c| c.get_connection())
        .expect("redis");
    let stats: String = redis::cmd("INFO")
        .arg("commandstats")
        .query(&mut conn)
        .expect("INFO");
    redis_server::command_calls(&stats, redis_server::SCRIPTS)
}

/// CPU seconds of this process's waited-for children (`/proc/self/stat` cutime + cstime).
fn children_cpu() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    stat_fields(&stat, &[15, 16])
}

/// CPU seconds of process `pid` (utime + stime).
fn proc_cpu(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    stat_fields(&stat, &[13, 14])
}

/// The sum of the given 0-based fields after the command name, in seconds.
fn stat_fields(stat: &str, fields: &[usize]) -> f64 {
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let parts: Vec<&str> = rest.split_whitespace().collect();
    fields
        .iter()
        .filter_map(|i| parts.get(i - 2)?.parse::<f64>().ok())
        .sum::<f64>()
        / TICKS
}

/// One worker process: runs the worker machine until the pool is empty.
fn worker(spec: &str) {
    let mut parts = spec.split('|');
    let (store, mode, id) = (
        parts.next().expect("store"),
        parts.next().expect("mode"),
        parts.next().expect("id"),
    );
    let rt = runtime();
    rt.block_on(async {
        let (builder, hooks): (MachineBuilder, DistributedWorkerHooks) = match store {
            "sqlite" => (
                Machine::of::<sqlite_worker::Machine>(),
                DistributedWorkerHooks::for_machine(&sqlite_worker::SPEC).expect("hooks"),
            ),
            _ => (
                Machine::of::<redis_worker::Machine>(),
                DistributedWorkerHooks::for_machine(&redis_worker::SPEC).expect("hooks"),
            ),
        };
        let hooks = hooks.action_mut("do_work", |ctx, _call| {
            Box::pin(async move {
                ctx.insert("value".into(), json!(1));
                Ok(())
            })
        });
        let hooks = Arc::new(hooks);
        let mut registry = HooksRegistry::new();
        registry.register_instance("DistributedWorkerHooks", hooks.clone());
        let builder = builder.hooks_registry(registry);
        let builder = match mode {
            "none" => builder.no_persistence(),
            "default" => builder,
            // The defaults, keeping only the newest checkpoint while running too.
            "newest" => builder.keep_last_checkpoints(1),
            "all" => builder
                .checkpoint_on(checkpoint_event::ALL)
                .keep_finished_checkpoints(None),
            events => builder.checkpoint_on(events.split('+')),
        };
        let builder = if std::env::var("FM_BENCH_TRACE").as_deref() == Ok("0") {
            builder.trace(false)
        } else {
            builder
        };
        let machine = builder.build().expect("build");
        let input = json!({"pool_id": POOL, "worker_id": id});
        loop {
            let result = machine.run(input.clone()).await.expect("run");
            if result.output["status"] == json!("no_work_available") {
                break;
            }
        }
        hooks.shutdown().await.expect("shutdown");
    });
}
