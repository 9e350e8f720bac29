//! Redis throughput: the work-pool scenario of `benches/distributed.rs` (push, then claim +
//! complete with 1 and 8 worker processes) on a Redis pool, and checkpoint saves per second on
//! `RedisPersistence` (snapshot + `latest` in one script).
//!
//! `cargo bench -p flatmachine-runtime --features redis --bench distributed_redis`
//! (`FM_BENCH_JOBS` = jobs per run, default 80,000; `FM_BENCH_BATCHES` = claim batch sizes,
//! default `1,64`; `FM_BENCH_SAVES` = checkpoint saves, default 20,000). Starts its own
//! `redis-server` (AOF, `appendfsync everysec`) on a free port; workers are this binary
//! re-executed (`FM_BENCH_WORKER` set).

#[path = "../tests/support/redis_server.rs"]
mod redis_server;

use flatmachine_runtime::distributed::{PushOptions, RedisWorkBackend, WorkBackend};
use flatmachine_runtime::persistence::{CheckpointStore, MachineSnapshot};
use flatmachine_runtime::redis_backends::{RedisConnection, RedisPersistence};
use serde_json::json;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Instant;

const POOL: &str = "bench";

fn main() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    if let Ok(spec) = std::env::var("FM_BENCH_WORKER") {
        let mut parts = spec.split('|');
        let (url, prefix, batch) = (
            parts.next().expect("url"),
            parts.next().expect("prefix"),
            parts.next().expect("batch"),
        );
        rt.block_on(worker(url, prefix, batch.parse().expect("batch")));
        return;
    }
    let env = |name: &str, default: usize| {
        std::env::var(name)
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(default)
    };
    let jobs = env("FM_BENCH_JOBS", 80_000);
    let saves = env("FM_BENCH_SAVES", 20_000);
    let batches: Vec<usize> = std::env::var("FM_BENCH_BATCHES")
        .unwrap_or_else(|_| "1,64".into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    let server = redis_server::RedisServer::start();
    let url = server.url();
    println!("| processes | claim batch | jobs | push jobs/s | claim+complete jobs/s |");
    println!("|---|---|---|---|---|");
    let mut run = 0;
    for &batch in &batches {
        for procs in [1usize, 8] {
            run += 1;
            let prefix = format!("bench{run}");
            let n = if batch == 1 { jobs / 8 } else { jobs };
            let conn = RedisConnection::open(&url, &prefix).expect("url");
            let pool = RedisWorkBackend::new(conn).pool(POOL);
            let t = Instant::now();
            rt.block_on(async {
                for chunk in (0..n).collect::<Vec<_>>().chunks(1000) {
                    pool.push_many(
                        chunk.iter().map(|i| json!({"n": i})).collect(),
                        PushOptions::default(),
                    )
                    .await
                    .expect("push");
                }
            });
            let push_rate = n as f64 / t.elapsed().as_secs_f64();
            let exe = std::env::current_exe().expect("exe");
            let t = Instant::now();
            let children: Vec<_> = (0..procs)
                .map(|_| {
                    Command::new(&exe)
                        .env("FM_BENCH_WORKER", format!("{url}|{prefix}|{batch}"))
                        .stdout(Stdio::null())
                        .spawn()
                        .expect("spawn")
                })
                .collect();
            for mut c in children {
                assert!(c.wait().expect("wait").success(), "worker failed");
            }
            let drain_rate = n as f64 / t.elapsed().as_secs_f64();
            let stats = rt.block_on(pool.stats()).expect("stats");
            assert_eq!(stats.done as usize, n, "every job done");
            println!("| {procs} | {batch} | {n} | {push_rate:.0} | {drain_rate:.0} |");
        }
    }

    // Checkpoint saves: one execution saving in a loop (the engine's pattern), then 8
    // executions saving concurrently on the shared connection.
    println!();
    println!("| checkpoint saves | executions | saves | saves/s |");
    println!("|---|---|---|---|");
    let conn = RedisConnection::open(&url, "cp").expect("url");
    let store = CheckpointStore::new(Arc::new(RedisPersistence::new(conn)));
    for (label, execs) in [("sequential", 1usize), ("concurrent", 8)] {
        let per = saves / execs;
        let t = Instant::now();
        rt.block_on(async {
            let tasks: Vec<_> = (0..execs)
                .map(|e| {
                    let store = store.clone();
                    async move {
                        for step in 0..per {
                            let snap = MachineSnapshot::new(
                                format!("{label}-{e}"),
                                "bench",
                                "1.0.0",
                                "work",
                                json!({"step": step, "text": "some context"})
                                    .as_object()
                                    .cloned()
                                    .unwrap_or_default(),
                                step as u64,
                            )
                            .with_event("execute");
                            store.save(snap).await.expect("save");
                        }
                    }
                })
                .collect();
            futures::future::join_all(tasks).await;
        });
        let rate = (per * execs) as f64 / t.elapsed().as_secs_f64();
        println!("| {label} | {execs} | {} | {rate:.0} |", per * execs);
    }
    drop(server);
}

async fn worker(url: &str, prefix: &str, batch: usize) {
    let conn = RedisConnection::open(url, prefix).expect("url");
    let pool = RedisWorkBackend::new(conn).pool(POOL);
    let me = format!("w{}", std::process::id());
    loop {
        let jobs = pool.claim_many(&me, batch).await.expect("claim");
        if jobs.is_empty() {
            break;
        }
        pool.complete_many(
            jobs.iter()
                .map(|j| (j.claim().expect("claimed"), Some(json!(1))))
                .collect(),
        )
        .await
        .expect("complete");
    }
}
