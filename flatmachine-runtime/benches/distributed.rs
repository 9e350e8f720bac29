//! SQLite work pool throughput: push, then claim + complete, with 1 and 8 worker processes.
//!
//! `cargo bench -p flatmachine-runtime --features sqlite --bench distributed`
//! (`FM_BENCH_JOBS` = jobs per run, default 80,000; `FM_BENCH_BATCHES` = claim batch sizes,
//! default `1,64`). Workers are this binary re-executed (`FM_BENCH_WORKER` set). Prints one
//! line per configuration: jobs/s for push and for the drain (claim + complete).

use flatmachine_runtime::distributed::{PushOptions, SqliteWorkBackend, WorkBackend};
use serde_json::json;
use std::process::{Command, Stdio};
use std::time::Instant;

const POOL: &str = "bench";

fn main() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    if let Ok(spec) = std::env::var("FM_BENCH_WORKER") {
        let (db, batch) = spec.split_once('|').expect("db|batch");
        rt.block_on(worker(db, batch.parse().expect("batch")));
        return;
    }
    let jobs: usize = std::env::var("FM_BENCH_JOBS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(80_000);
    let batches: Vec<usize> = std::env::var("FM_BENCH_BATCHES")
        .unwrap_or_else(|_| "1,64".into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    println!("| processes | claim batch | jobs | push jobs/s | claim+complete jobs/s |");
    println!("|---|---|---|---|---|");
    for &batch in &batches {
        for procs in [1usize, 8] {
            // Unbatched claims are slow: use fewer jobs so the run stays short.
            let n = if batch == 1 { jobs / 8 } else { jobs };
            let dir = tempfile::tempdir().expect("tempdir");
            let db = dir.path().join("bench.sqlite");
            let backend = SqliteWorkBackend::open(&db).expect("open");
            let pool = backend.pool(POOL);
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
                        .env("FM_BENCH_WORKER", format!("{}|{batch}", db.display()))
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
}

async fn worker(db: &str, batch: usize) {
    let backend = SqliteWorkBackend::open(db).expect("open");
    let pool = backend.pool(POOL);
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
