//! Redis restart in the middle of a run: 8 worker processes drain 80,000 jobs (8 × 10,000;
//! `FM_REDIS_FAULT_JOBS` overrides) from one Redis pool while the test SIGKILLs `redis-server`
//! and starts it again on the same port and directory (AOF, `appendfsync everysec`).
//!
//! Workers are this binary re-executed (`FM_REDIS_FAULT_WORKER` set: `fault_worker_entry`
//! becomes a worker). They never crash on a storage error: they wait and retry, and they settle
//! any call whose reply was lost by reading the job back (`get`): a completion that went through
//! counts, a claim that went through is taken back with `release_by_worker` (a worker at its
//! claim step holds nothing else). Every acknowledged completion is logged with its time.
//!
//! Checks: every pushed job ends `done`; each has exactly one acknowledged completion, or more
//! than one where the earlier ones were lost by the restart — and those must have been
//! acknowledged inside the durability window before the kill (2 s: see `docs/many-hosts.md`).
//! The final result names the worker of the last acknowledged completion.

#![cfg(feature = "redis")]

#[path = "support/redis_server.rs"]
mod redis_server;

use flatmachine_runtime::distributed::*;
use flatmachine_runtime::redis_backends::RedisConnection;
use redis_server::RedisServer;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const POOL: &str = "fault";
const PREFIX: &str = "fault";
/// The documented window of acknowledged writes a restart may lose (ms).
const WINDOW_MS: u128 = 2_000;

fn now_ms() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis()
}

struct WorkerArgs {
    url: String,
    id: String,
    batch: usize,
    log: PathBuf,
}

fn worker_args() -> Option<WorkerArgs> {
    let v: Value = serde_json::from_str(&std::env::var("FM_REDIS_FAULT_WORKER").ok()?).ok()?;
    Some(WorkerArgs {
        url: v["url"].as_str()?.to_string(),
        id: v["id"].as_str()?.to_string(),
        batch: v["batch"].as_u64()? as usize,
        log: PathBuf::from(v["log"].as_str()?),
    })
}

/// Retries `f` until it succeeds (the server may be down for a while); counts the failures.
async fn retry<T, F, Fut>(errors: &mut u64, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, DistributedError>>,
{
    let started = Instant::now();
    loop {
        match f().await {
            Ok(v) => return v,
            Err(e) => {
                *errors += 1;
                assert!(
                    started.elapsed() < Duration::from_secs(60),
                    "Redis unreachable for 60 s: {e}"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// The worker process body.
async fn worker(a: WorkerArgs) {
    let conn = RedisConnection::open(&a.url, PREFIX).unwrap();
    let pool = RedisWorkBackend::new(conn).redis_pool(POOL);
    let mut log = std::io::BufWriter::new(std::fs::File::create(&a.log).unwrap());
    let mut errors = 0u64;
    loop {
        let jobs = match pool.claim_many(&a.id, a.batch).await {
            Ok(jobs) => jobs,
            Err(_) => {
                errors += 1;
                // The claim may have run with its reply lost: take back whatever we hold (at
                // this point we hold nothing we know of).
                retry(&mut errors, || pool.release_by_worker(&a.id)).await;
                continue;
            }
        };
        if jobs.is_empty() {
            let s = retry(&mut errors, || pool.stats()).await;
            if s.pending == 0 && s.claimed == 0 {
                break;
            }
            // Claims of this worker it does not know of — a completion the restart lost whose
            // claim it kept — go back to the pool, as the reaper would put them back when
            // their lease ends (this worker holds nothing while it waits here).
            if s.pending == 0 {
                retry(&mut errors, || pool.release_by_worker(&a.id)).await;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        }
        let results: Vec<(Claim, Option<Value>)> = jobs
            .iter()
            .map(|j| (j.claim().unwrap(), Some(json!({"worker": a.id}))))
            .collect();
        if pool.complete_many(results.clone()).await.is_ok() {
            let t = now_ms();
            for (claim, _) in &results {
                writeln!(log, "{} {t}", claim.job_id).unwrap();
            }
            continue;
        }
        errors += 1;
        // Settle each job: done by us (the reply was lost) counts; still ours: complete it;
        // otherwise the server lost our claim (restart) and the job is someone else's again.
        for (claim, result) in results {
            let id = claim.job_id.clone();
            loop {
                let item = retry(&mut errors, || pool.get(&id)).await;
                let Some(item) = item else { break };
                let ours = item.claimed_by.as_deref() == Some(a.id.as_str());
                match item.status {
                    JobStatus::Done if ours && item.result == result => {
                        writeln!(log, "{id} {}", now_ms()).unwrap();
                        break;
                    }
                    JobStatus::Claimed if ours => {
                        if pool.complete(&claim, result.clone()).await.is_ok() {
                            writeln!(log, "{id} {}", now_ms()).unwrap();
                            break;
                        }
                        errors += 1;
                    }
                    _ => break,
                }
            }
        }
    }
    log.flush().unwrap();
    eprintln!("worker {} done after {errors} storage errors", a.id);
    std::fs::write(a.log.with_extension("errors"), errors.to_string()).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_worker_entry() {
    if let Some(a) = worker_args() {
        worker(a).await;
    }
}

fn spawn_worker(url: &str, dir: &Path, id: &str, batch: usize) -> Child {
    let args = json!({
        "url": url, "id": id, "batch": batch,
        "log": dir.join(format!("{id}.log")),
    });
    Command::new(std::env::current_exe().unwrap())
        .args([
            "fault_worker_entry",
            "--exact",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("FM_REDIS_FAULT_WORKER", args.to_string())
        .stdout(Stdio::null())
        .spawn()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eight_processes_survive_a_redis_sigkill_and_restart() {
    if worker_args().is_some() {
        return;
    }
    let jobs: u64 = std::env::var("FM_REDIS_FAULT_JOBS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(80_000);
    let mut server = RedisServer::start();
    let url = server.url();
    let dir = tempfile::tempdir().unwrap();
    let conn = RedisConnection::open(&url, PREFIX).unwrap();
    let pool = RedisWorkBackend::new(conn).redis_pool(POOL);
    for chunk in (0..jobs).collect::<Vec<_>>().chunks(1000) {
        pool.push_many(
            chunk.iter().map(|n| json!({"n": n})).collect(),
            PushOptions { max_retries: 100 },
        )
        .await
        .unwrap();
    }
    // Let everysec flush the pushes (they are not what this test is about).
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let started = Instant::now();
    let mut children: Vec<Child> = (0..8)
        .map(|k| spawn_worker(&url, dir.path(), &format!("w{k}"), [8, 16, 32, 64][k % 4]))
        .collect();

    // Kill the server once about a third of the jobs are done, restart it 500 ms later.
    loop {
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "workers made no progress"
        );
        if let Ok(s) = pool.stats().await
            && s.done >= jobs / 3
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let done_before = pool.stats().await.unwrap().done;
    let killed_at = now_ms();
    server.kill();
    tokio::time::sleep(Duration::from_millis(500)).await;
    server.restart();
    let restarted_after = now_ms() - killed_at;

    for c in &mut children {
        assert!(c.wait().unwrap().success(), "a worker crashed");
    }
    let elapsed = started.elapsed();

    // Acknowledged completions, per job.
    let mut acks: HashMap<String, Vec<(u128, String)>> = HashMap::new();
    let mut errors = 0u64;
    for k in 0..8 {
        let worker = format!("w{k}");
        let log = dir.path().join(format!("{worker}.log"));
        for line in std::fs::read_to_string(&log).unwrap().lines() {
            let (id, t) = line.split_once(' ').unwrap();
            acks.entry(id.to_string())
                .or_default()
                .push((t.parse().unwrap(), worker.clone()));
        }
        errors += std::fs::read_to_string(log.with_extension("errors"))
            .unwrap()
            .parse::<u64>()
            .unwrap();
    }

    // This process's own connection broke with the restart too: its first call may fail.
    let mut own_errors = 0;
    let items = retry(&mut own_errors, || pool.all()).await;
    assert_eq!(items.len() as u64, jobs, "pushed jobs lost");
    let (mut once, mut redone, mut lost_acks) = (0u64, 0u64, Vec::new());
    for item in &items {
        assert_eq!(
            item.status,
            JobStatus::Done,
            "job {} left {}",
            item.id,
            item.status
        );
        let mut a = acks.remove(&item.id).unwrap_or_default();
        assert!(
            !a.is_empty(),
            "job {} done without an acknowledged completion",
            item.id
        );
        a.sort();
        let (_, last) = a.last().unwrap();
        assert_eq!(item.result.as_ref().unwrap()["worker"], json!(last));
        if a.len() == 1 {
            once += 1;
        } else {
            redone += 1;
            // Every completion but the last was lost by the restart: acknowledged shortly
            // before the kill.
            for (t, _) in &a[..a.len() - 1] {
                assert!(
                    *t <= killed_at + restarted_after && killed_at.saturating_sub(*t) <= WINDOW_MS,
                    "job {} completed twice, the first {} ms before the kill",
                    item.id,
                    killed_at.saturating_sub(*t)
                );
                lost_acks.push(killed_at.saturating_sub(*t));
            }
        }
    }
    assert!(acks.is_empty(), "acknowledged jobs that do not exist");
    assert_eq!(once + redone, jobs);
    eprintln!(
        "{jobs} jobs by 8 processes in {:.2}s; redis SIGKILLed after {done_before} done, back after {restarted_after} ms; \
         {errors} storage errors retried by the workers; {once} done exactly once, {redone} completed again after the restart lost \
         {} acknowledged completions (max {} ms before the kill)",
        elapsed.as_secs_f64(),
        lost_acks.len(),
        lost_acks.iter().max().copied().unwrap_or(0),
    );
}
