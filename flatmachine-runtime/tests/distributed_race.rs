//! Cross-process claim races and crash recovery on one SQLite file.
//!
//! The test re-executes its own binary as worker processes (`FM_RACE_WORKER` set: the
//! `race_worker_entry` test becomes a worker; without it that test does nothing). Eight workers
//! drain 80,000 jobs, 8 × 10,000 (`FM_RACE_JOBS` overrides; about 17 s of work in a debug build) with mixed claim batch sizes; some jobs fail once
//! (and then succeed), some always fail (poisoned at `max_retries`), and one extra worker claims
//! a few jobs and hangs until it is SIGKILLed; the test then acts as the reaper
//! (`DistributedWorkerHooks` `list_stale_workers` + `reap_stale_workers`) and the others finish
//! its jobs. Every claim is logged by the claiming process; the checks:
//!
//! * every job ends `done` exactly once or `poisoned` (the always-failing ones) — none lost;
//! * no (job, attempt) was claimed twice, and each job's logged claims equal its `attempts`;
//! * each done job's result names the worker that held the claim.

#![cfg(feature = "sqlite")]

use flatmachine_runtime::distributed::*;
use serde_json::{Value, json};
use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const POOL: &str = "race";
const HEARTBEAT: Duration = Duration::from_millis(100);
const STALE_SECONDS: f64 = 3.0;

/// Job `n` fails this many times before succeeding (99 = always: poisoned).
fn fail_times(n: u64) -> u64 {
    match n % 97 {
        0 => 99,
        1 | 2 => 1,
        _ => 0,
    }
}

struct WorkerArgs {
    db: PathBuf,
    id: String,
    batch: usize,
    hang: bool,
    log: PathBuf,
}

fn worker_args() -> Option<WorkerArgs> {
    let v: Value = serde_json::from_str(&std::env::var("FM_RACE_WORKER").ok()?).ok()?;
    Some(WorkerArgs {
        db: PathBuf::from(v["db"].as_str()?),
        id: v["id"].as_str()?.to_string(),
        batch: v["batch"].as_u64()? as usize,
        hang: v["hang"].as_bool()?,
        log: PathBuf::from(v["log"].as_str()?),
    })
}

/// The worker process body.
async fn worker(a: WorkerArgs) {
    let backends = Backends::sqlite(&a.db).unwrap();
    let reg = backends.registration.clone();
    reg.register(WorkerRegistration {
        pool_id: Some(POOL.into()),
        pid: Some(std::process::id()),
        ..WorkerRegistration::new(a.id.clone())
    })
    .await
    .unwrap();
    let hb_reg = reg.clone();
    let hb_id = a.id.clone();
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(HEARTBEAT).await;
            let _ = hb_reg.heartbeat(&hb_id, None).await;
        }
    });
    let pool = backends.work.pool(POOL);
    let mut log = std::io::BufWriter::new(std::fs::File::create(&a.log).unwrap());
    loop {
        let jobs = pool.claim_many(&a.id, a.batch).await.unwrap();
        for j in &jobs {
            writeln!(log, "{} {}", j.id, j.attempts).unwrap();
        }
        if a.hang && !jobs.is_empty() {
            log.flush().unwrap();
            drop(log);
            std::fs::write(a.log.with_extension("ready"), "").unwrap();
            // Mid-job until SIGKILL.
            std::future::pending::<()>().await;
            unreachable!();
        }
        if jobs.is_empty() {
            let s = pool.stats().await.unwrap();
            if s.pending == 0 && s.claimed == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        }
        let mut done = Vec::new();
        for j in jobs {
            let n = j.data["n"].as_u64().unwrap();
            if u64::from(j.attempts) <= fail_times(n) {
                pool.fail(&j.claim().unwrap(), Some("injected"))
                    .await
                    .unwrap();
            } else {
                done.push((j.claim().unwrap(), Some(json!({"worker": a.id, "n": n}))));
            }
        }
        pool.complete_many(done).await.unwrap();
    }
    log.flush().unwrap();
    reg.update_status(&a.id, worker_status::TERMINATED)
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn race_worker_entry() {
    if let Some(a) = worker_args() {
        worker(a).await;
    }
}

fn spawn_worker(db: &Path, dir: &Path, id: &str, batch: usize, hang: bool) -> Child {
    let args = json!({
        "db": db, "id": id, "batch": batch, "hang": hang,
        "log": dir.join(format!("{id}.log")),
    });
    Command::new(std::env::current_exe().unwrap())
        .args([
            "race_worker_entry",
            "--exact",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("FM_RACE_WORKER", args.to_string())
        .stdout(Stdio::null())
        .spawn()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eight_processes_drain_one_sqlite_pool_and_survive_a_sigkill() {
    if worker_args().is_some() {
        return;
    }
    let jobs: u64 = std::env::var("FM_RACE_JOBS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(80_000);
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("race.sqlite");
    let backends = Backends::sqlite(&db).unwrap();
    let pool = backends.work.pool(POOL);
    pool.push_many(
        (0..jobs).map(|n| json!({"n": n})).collect(),
        PushOptions::default(),
    )
    .await
    .unwrap();
    let started = Instant::now();

    // The victim claims first, then hangs mid-job.
    let mut victim = spawn_worker(&db, dir.path(), "victim", 5, true);
    let ready = dir.path().join("victim.ready");
    while !ready.exists() {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "victim never claimed"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut children: Vec<Child> = (0..8)
        .map(|k| {
            spawn_worker(
                &db,
                dir.path(),
                &format!("w{k}"),
                [1, 4, 16, 64][k % 4],
                false,
            )
        })
        .collect();
    victim.kill().unwrap(); // SIGKILL
    victim.wait().unwrap();

    // Reaper: the checker's own actions, every 200 ms, until the victim is reaped.
    let hooks =
        DistributedWorkerHooks::new(backends.clone()).heartbeat_interval(STALE_SECONDS / 2.0);
    let mut reaped = 0;
    while reaped == 0 {
        assert!(
            started.elapsed() < Duration::from_secs(300),
            "victim never went stale"
        );
        let mut ctx = serde_json::Map::new();
        ctx.insert("pool_id".into(), json!(POOL));
        hooks.list_stale_workers(&mut ctx).await.unwrap();
        hooks.reap_stale_workers(&mut ctx).await.unwrap();
        let names = ctx["reaped_workers"].as_array().unwrap().clone();
        assert!(
            names.iter().all(|n| n == "victim"),
            "live worker reaped: {names:?}"
        );
        if !names.is_empty() {
            assert_eq!(ctx["total_jobs_released"], json!(5));
            reaped += 1;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for c in &mut children {
        assert!(c.wait().unwrap().success(), "a worker failed");
    }
    let elapsed = started.elapsed();

    // Claims logged by every process.
    let mut claims: HashMap<String, Vec<(u32, String)>> = HashMap::new();
    let mut seen = HashSet::new();
    for entry in std::fs::read_dir(dir.path()).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().and_then(|e| e.to_str()) != Some("log") {
            continue;
        }
        let worker = path.file_stem().unwrap().to_string_lossy().to_string();
        for line in std::fs::read_to_string(&path).unwrap().lines() {
            let (id, attempt) = line.split_once(' ').unwrap();
            let attempt: u32 = attempt.parse().unwrap();
            assert!(
                seen.insert((id.to_string(), attempt)),
                "{id} attempt {attempt} claimed twice"
            );
            claims
                .entry(id.to_string())
                .or_default()
                .push((attempt, worker.clone()));
        }
    }

    let sqlite = SqliteWorkBackend::open(&db).unwrap();
    let items = sqlite.sqlite_pool(POOL).all().await.unwrap();
    assert_eq!(items.len() as u64, jobs);
    let (mut done, mut poisoned, mut victim_jobs) = (0, 0, 0);
    for item in &items {
        let n = item.data["n"].as_u64().unwrap();
        let mut c = claims.remove(&item.id).unwrap_or_default();
        c.sort();
        assert_eq!(c.len() as u32, item.attempts, "claims of {}", item.id);
        if c.iter().any(|(_, w)| w == "victim") {
            victim_jobs += 1;
        }
        match item.status {
            JobStatus::Done => {
                done += 1;
                let last = &c.last().unwrap().1;
                assert_eq!(item.result.as_ref().unwrap()["worker"], json!(last));
                assert_eq!(item.claimed_by.as_deref(), Some(last.as_str()));
                assert_ne!(fail_times(n), 99);
            }
            JobStatus::Poisoned => {
                poisoned += 1;
                assert_eq!(fail_times(n), 99, "job {n} poisoned");
                assert_eq!(item.attempts, 3);
            }
            other => panic!("job {n} left {other}"),
        }
    }
    assert_eq!(victim_jobs, 5);
    assert_eq!(poisoned, (0..jobs).filter(|n| fail_times(*n) == 99).count());
    assert_eq!(done + poisoned, jobs as usize);
    let victim_rec = backends.registration.get("victim").await.unwrap().unwrap();
    assert_eq!(victim_rec.status, worker_status::LOST);
    eprintln!(
        "{jobs} jobs by 8 processes: {done} done, {poisoned} poisoned, 5 recovered from a SIGKILLed worker, {:.2}s",
        elapsed.as_secs_f64()
    );
}
