//! The reference's distributed worker example on a SQLite work pool, offline. Its four machines
//! are in `examples/machines/distributed/` (checker, worker, job, reaper).
//!
//! `cargo run -p flatmachine-examples --bin distributed_worker [-- --jobs 1000 --workers 4]`
//!
//! 1. pushes `--jobs` jobs into the pool `jobs` of `<dir>/workers.sqlite`;
//! 2. runs the `parallelization_checker` machine every 250 ms; its `spawn_workers` action
//!    starts worker processes (this binary, `distributed_worker worker --db … --input {json}`),
//!    each running the `job_worker` machine (register → claim → `echo_processor` child →
//!    complete/fail → deregister) once per job until the pool is empty;
//! 3. SIGKILLs one worker while it holds a job, and runs the `stale_worker_reaper` machine every
//!    cycle, which marks the dead worker `lost` and puts its job back in the pool;
//! 4. prints the final report. `lost` and `duplicated` must be 0 (the exit status says so).
//!
//! Jobs fail at random (20 %, `echo_delay` raising), so some are retried and a few poisoned
//! after 3 attempts. Files go below `$FLATMACHINE_EXAMPLE_DIR` (default: `<temp
//! dir>/flatmachine-distributed-example`), recreated on each run.

use flatmachine_runtime::distributed::{
    Backends, Claim, ClaimToken, CommandSpawner, DistributedWorkerHooks, SqliteWorkBackend,
    WorkPool,
};
use flatmachine_runtime::hooks::HooksRegistry;
use flatmachine_runtime::{Context, Machine, StateError, Value};
use serde_json::json;
use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

flatmachine_runtime::flatmachine!("machines/distributed/parallelization_checker.yml");
flatmachine_runtime::flatmachine!("machines/distributed/stale_worker_reaper.yml");

use parallelization_checker::children::job_worker;

const POOL: &str = "jobs";
/// Seconds without a heartbeat before the reaper gives a worker up.
const STALE_SECONDS: u64 = 2;
/// Worker heartbeat period.
const HEARTBEAT: Duration = Duration::from_millis(400);

type Error = Box<dyn std::error::Error>;

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .cloned()
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("worker") {
        let db = arg(&args, "--db").ok_or("worker: --db PATH required")?;
        let input = arg(&args, "--input").ok_or("worker: --input JSON required")?;
        return worker(Path::new(&db), serde_json::from_str(&input)?).await;
    }
    let jobs: usize = arg(&args, "--jobs").map_or(Ok(1000), |s| s.parse())?;
    let max_workers: u64 = arg(&args, "--workers").map_or(Ok(4), |s| s.parse())?;
    let dir = std::env::var_os("FLATMACHINE_EXAMPLE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| std::env::temp_dir().join("flatmachine-distributed-example"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("events"))?;
    let db = dir.join("workers.sqlite");
    checker_loop(&dir, &db, jobs, max_workers).await
}

/// Appends one line to this process's event log (`completed <job> <worker>` / `failed …`).
fn record(events: &Path, line: &str) -> Result<(), StateError> {
    let path = events.join(format!("{}.log", std::process::id()));
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .and_then(|mut f| writeln!(f, "{line}"))
        .map_err(|e| StateError::new("IOError", e.to_string()))
}

/// The claim `claim_job` made: the job id and the claim token it put in the context.
fn claim_of(ctx: &Context) -> Result<Claim, StateError> {
    let token = ClaimToken::parse(&text(ctx, "job_claim_token"))?;
    Ok(Claim::new(text(ctx, "job_id"), token))
}

fn text(ctx: &Context, key: &str) -> String {
    ctx.get(key)
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string()
}

/// A worker process: runs `job_worker` once per job until it finds no work.
async fn worker(db: &Path, input: Value) -> Result<(), Error> {
    input["worker_id"].as_str().ok_or("input.worker_id")?;
    let events = db.parent().unwrap_or(Path::new(".")).join("events");
    let job_ms: u64 = std::env::var("FM_JOB_MS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5);
    let backends = Backends::sqlite(db)?;
    let work = backends.work.clone();
    let (ev_ok, ev_fail) = (events.clone(), events);
    // Heartbeats are sent by the hooks while the worker is registered (every HEARTBEAT).
    let hooks = DistributedWorkerHooks::new(backends.clone())
        .heartbeat_interval(HEARTBEAT.as_secs_f64())
        // The echo_processor's job: wait, then fail 20 % of the time.
        .action_mut("echo_delay", move |ctx, _call| {
            Box::pin(async move {
                tokio::time::sleep(Duration::from_millis(job_ms)).await;
                if fastrand_f64() < 0.2 {
                    return Err(StateError::new("EchoError", "injected failure"));
                }
                ctx.insert("processed".into(), json!(true));
                Ok(())
            })
        })
        // The built-in complete_job / fail_job, plus an event line per call for the report.
        .action_mut("complete_job", {
            let work = work.clone();
            move |ctx, _call| {
                let (work, events) = (work.clone(), ev_ok.clone());
                Box::pin(async move {
                    let (pool, worker) = (text(ctx, "pool_id"), text(ctx, "worker_id"));
                    let claim = claim_of(ctx)?;
                    let result = json!({"worker": worker, "output": ctx.get("result")});
                    work.pool(&pool).complete(&claim, Some(result)).await?;
                    record(&events, &format!("completed {} {worker}", claim.job_id))?;
                    Ok(())
                })
            }
        })
        .action_mut("fail_job", move |ctx, _call| {
            let (work, events) = (work.clone(), ev_fail.clone());
            Box::pin(async move {
                let (pool, worker) = (text(ctx, "pool_id"), text(ctx, "worker_id"));
                let claim = claim_of(ctx)?;
                let error = ctx.get("last_error").map(|e| e.to_string());
                work.pool(&pool).fail(&claim, error.as_deref()).await?;
                record(&events, &format!("failed {} {worker}", claim.job_id))?;
                Ok(())
            })
        });
    let hooks = Arc::new(hooks);
    let mut registry = HooksRegistry::new();
    registry.register_instance("DistributedWorkerHooks", hooks.clone());
    let machine = Machine::of::<job_worker::Machine>()
        .hooks_registry(registry)
        .no_persistence()
        .build()?;

    // The worker stays registered across runs (one per job); shutdown() terminates it.
    loop {
        let result = machine.run(input.clone()).await?;
        if result.output["status"] == json!("no_work_available") {
            hooks.shutdown().await?;
            return Ok(());
        }
    }
}

fn fastrand_f64() -> f64 {
    use std::collections::hash_map::RandomState;
    use std::hash::{BuildHasher, Hasher};
    let mut h = RandomState::new().build_hasher();
    h.write_u128(Instant::now().elapsed().as_nanos());
    (h.finish() >> 11) as f64 / (1u64 << 53) as f64
}

/// The parent: push jobs, run the checker and the reaper until the pool is drained, report.
async fn checker_loop(dir: &Path, db: &Path, jobs: usize, max_workers: u64) -> Result<(), Error> {
    let backends = Backends::sqlite(db)?;
    let pool = backends.work.pool(POOL);
    pool.push_many(
        (0..jobs).map(|n| json!({"n": n})).collect(),
        Default::default(),
    )
    .await?;
    let exe = std::env::current_exe()?;
    // Workers get only PATH, HOME and the locale, plus what is passed here.
    let spawner = Arc::new(
        CommandSpawner::new(exe)
            .args([
                "worker".to_string(),
                "--db".to_string(),
                db.display().to_string(),
                "--input".to_string(),
                "{input}".to_string(),
            ])
            .pass_env("FM_JOB_MS"),
    );
    let hooks = DistributedWorkerHooks::new(backends.clone()).spawner(spawner.clone());
    let mut registry = HooksRegistry::new();
    registry.register_instance("DistributedWorkerHooks", Arc::new(hooks));
    let checker = Machine::of::<parallelization_checker::Machine>()
        .hooks_registry(registry.clone())
        .no_persistence()
        .build()?;
    let reaper = Machine::of::<stale_worker_reaper::Machine>()
        .hooks_registry(registry)
        .no_persistence()
        .build()?;
    println!(
        "pushed {jobs} jobs into pool `{POOL}` of {}; checker allows {max_workers} workers",
        db.display()
    );

    let started = Instant::now();
    let mut killed: Option<(String, String)> = None;
    let (mut spawned_total, mut reaped_total) = (0u64, 0u64);
    loop {
        let out = checker
            .run(json!({"pool_id": POOL, "max_workers": max_workers}))
            .await?
            .output;
        spawned_total += out["spawned_ids"].as_array().map_or(0, |a| a.len() as u64);

        // Kill one worker while it holds a job (once): kill a running worker, then look at what
        // it held when it died; if nothing (it was between jobs), try another next cycle.
        if killed.is_none()
            && let Some((w, _)) = spawner.children().into_iter().next()
            && spawner.kill(&w)
        {
            let sqlite = SqliteWorkBackend::open(db)?;
            let held = sqlite.sqlite_pool(POOL).all().await?.into_iter().find(|j| {
                j.status == flatmachine_runtime::distributed::JobStatus::Claimed
                    && j.claimed_by.as_deref() == Some(w.as_str())
            });
            match held {
                Some(job) => {
                    println!("SIGKILLed worker {w} while it held job {}", job.id);
                    killed = Some((w, job.id));
                }
                None => println!("SIGKILLed worker {w} between jobs; trying another"),
            }
        }

        let out = reaper
            .run(json!({"pool_id": POOL, "stale_threshold_seconds": STALE_SECONDS}))
            .await?
            .output;
        let reaped = out["reaped_count"].as_u64().unwrap_or(0);
        if reaped > 0 {
            println!("reaper: {reaped} stale worker(s) marked lost, their jobs back in the pool");
            reaped_total += reaped;
        }
        spawner.reap();
        let stats = pool.stats().await?;
        if stats.pending == 0 && stats.claimed == 0 {
            break;
        }
        if started.elapsed() > Duration::from_secs(600) {
            spawner.kill_all();
            return Err("timed out".into());
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    for (w, ok) in spawner.wait_all() {
        if !ok {
            eprintln!("worker {w} exited with an error");
        }
    }
    let elapsed = started.elapsed();
    report(
        dir,
        db,
        pool.as_ref(),
        jobs,
        killed,
        spawned_total,
        reaped_total,
        elapsed,
    )
    .await
}

#[allow(clippy::too_many_arguments)]
async fn report(
    dir: &Path,
    db: &Path,
    pool: &dyn WorkPool,
    jobs: usize,
    killed: Option<(String, String)>,
    spawned: u64,
    reaped: u64,
    elapsed: Duration,
) -> Result<(), Error> {
    let stats = pool.stats().await?;
    let mut completions: HashMap<String, u32> = HashMap::new();
    let mut failed = 0u64;
    for entry in std::fs::read_dir(dir.join("events"))? {
        for line in std::fs::read_to_string(entry?.path())?.lines() {
            let mut parts = line.split(' ');
            match (parts.next(), parts.next()) {
                (Some("completed"), Some(job)) => {
                    *completions.entry(job.to_string()).or_default() += 1
                }
                (Some("failed"), Some(_)) => failed += 1,
                _ => {}
            }
        }
    }
    let duplicated = completions.values().filter(|n| **n > 1).count();
    let lost = jobs as u64 - stats.done - stats.poisoned;
    let sqlite = SqliteWorkBackend::open(db)?;
    let recovered = match &killed {
        Some((w, job)) => {
            let j = sqlite.sqlite_pool(POOL).get(job).await?;
            let status = Backends::sqlite(db)?
                .registration
                .get(w)
                .await?
                .map(|r| r.status)
                .unwrap_or_default();
            format!(
                "killed worker {w}: status `{status}`; its job {job} ended `{}` after {} attempt(s)",
                j.as_ref().map(|j| j.status.as_str()).unwrap_or("?"),
                j.map(|j| j.attempts).unwrap_or(0)
            )
        }
        None => "no worker was killed (none held a job when checked)".to_string(),
    };
    println!("\n== distributed_worker report");
    println!("jobs:        {jobs}");
    println!("done:        {}", stats.done);
    println!("failed:      {failed} (failed attempts, retried or poisoned)");
    println!("poisoned:    {}", stats.poisoned);
    println!("lost:        {lost}");
    println!("duplicated:  {duplicated}");
    println!("workers:     {spawned} spawned, {reaped} reaped");
    println!("recovery:    {recovered}");
    println!("elapsed:     {:.2}s", elapsed.as_secs_f64());
    if lost != 0 || duplicated != 0 || killed.is_none() || reaped == 0 {
        return Err(format!("report check failed: lost {lost}, duplicated {duplicated}").into());
    }
    Ok(())
}
