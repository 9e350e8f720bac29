//! The fault harness of machine-driven workers: real worker processes (this binary re-executed,
//! `FM_WORKER_FAULT` set) run the worker machine (`tests/machines/distributed/fault_*_worker.yml`:
//! heartbeat every 0.2 s, 4 s lease) against a real `redis-server` or a real SQLite file, each
//! job a 5–20 ms action that appends one side-effect line per execution to its worker's log. The
//! test runs the reaper machine every 200 ms (stale after 3 s without a heartbeat) and, once a
//! third of the jobs are done, applies one fault to a fresh pool:
//!
//! * SIGKILL two of three workers (two new ones take their place);
//! * SIGKILL `redis-server`, restart it 1 s later on the same port and AOF;
//! * SIGSTOP a worker for 6 s (past its lease and its heartbeat threshold), then SIGCONT;
//! * `CLIENT KILL TYPE normal` every connection, three times.
//!
//! Checks, per scenario: every job ends `done` (0 lost); each job's result was written by the
//! worker holding the claim at completion, from one of that worker's executions of the job (0
//! results by a non-holder); a job's side effect appears more than once only if the job was
//! claimed at the fault (in flight). After a Redis restart or killed connections no worker run
//! failed (storage calls are retried); a paused worker's execution whose job moved is marked
//! superseded. SQLite gets the faults that apply to it (killed and paused workers).

#![cfg(all(feature = "sqlite", feature = "redis"))]

#[path = "support/redis_server.rs"]
mod redis_server;

use flatmachine_runtime::distributed::superseded::superseded;
use flatmachine_runtime::distributed::*;
use flatmachine_runtime::hooks::HooksRegistry;
use flatmachine_runtime::persistence::{CheckpointStore, SqlitePersistence};
use flatmachine_runtime::redis_backends::{
    REDIS_PREFIX_ENV, REDIS_URL_ENV, RedisConnection, RedisPersistence,
};
use flatmachine_runtime::{Machine, MachineBuilder};
use redis_server::RedisServer;
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

flatmachine_runtime::flatmachine!("tests/machines/distributed/fault_sqlite_worker.yml");
flatmachine_runtime::flatmachine!("tests/machines/distributed/fault_redis_worker.yml");
flatmachine_runtime::flatmachine!("tests/machines/distributed/reaper.yml");

const POOL: &str = "faults";
const JOBS: usize = 150;
const WORKERS: usize = 3;
/// Seconds without a heartbeat after which the reaper releases a worker's jobs.
const STALE_SECONDS: u64 = 3;
/// How long a Redis SIGKILL may have lost acknowledged writes (`appendfsync everysec`).
const WINDOW_MS: u128 = 2_000;

fn now_ms() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis()
}

// ---- the worker process ----------------------------------------------------------------

/// `sqlite` or `redis`, worker id, the scenario directory (SQLite file, logs, `stop`).
fn worker_args() -> Option<(String, String, PathBuf)> {
    let v: Value = serde_json::from_str(&std::env::var("FM_WORKER_FAULT").ok()?).ok()?;
    Some((
        v["store"].as_str()?.to_string(),
        v["id"].as_str()?.to_string(),
        PathBuf::from(v["dir"].as_str()?),
    ))
}

fn append(path: &Path, line: &str) {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap();
    // One write per line: lines of concurrent writers never interleave.
    f.write_all(line.as_bytes()).unwrap();
}

/// Runs the worker machine until `dir/stop` exists; failed runs are logged to `ID.failed`.
async fn worker(store: String, id: String, dir: PathBuf) {
    static EXECUTIONS: AtomicU64 = AtomicU64::new(0);
    let (builder, hooks): (MachineBuilder, DistributedWorkerHooks) = if store == "sqlite" {
        (
            Machine::of::<fault_sqlite_worker::Machine>(),
            DistributedWorkerHooks::for_machine(&fault_sqlite_worker::SPEC).unwrap(),
        )
    } else {
        (
            Machine::of::<fault_redis_worker::Machine>(),
            DistributedWorkerHooks::for_machine(&fault_redis_worker::SPEC).unwrap(),
        )
    };
    let effects = dir.join(format!("{id}.effects"));
    let hooks = hooks.action_mut("do_work", {
        let id = id.clone();
        move |ctx, _call| {
            let (id, effects) = (id.clone(), effects.clone());
            Box::pin(async move {
                let n = ctx["job"]["n"].as_u64().unwrap_or(0);
                tokio::time::sleep(Duration::from_millis(5 + n % 16)).await;
                let job_id = ctx["job_id"].as_str().unwrap_or_default().to_string();
                let nonce = format!(
                    "{}-{}",
                    std::process::id(),
                    EXECUTIONS.fetch_add(1, Ordering::Relaxed)
                );
                append(&effects, &format!("{job_id} {id} {nonce} {}\n", now_ms()));
                ctx.insert("value".into(), json!({"worker": id, "nonce": nonce}));
                Ok(())
            })
        }
    });
    let hooks = Arc::new(hooks);
    let mut registry = HooksRegistry::new();
    registry.register_instance("DistributedWorkerHooks", hooks.clone());
    let machine = builder.hooks_registry(registry).build().unwrap();
    let input = json!({"pool_id": POOL, "worker_id": id});
    while !dir.join("stop").exists() {
        match machine.run(input.clone()).await {
            Ok(r) if r.output["status"] == json!("no_work_available") => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Ok(_) => {}
            Err(e) => {
                append(&dir.join(format!("{id}.failed")), &format!("{e}\n"));
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    hooks.shutdown().await.unwrap();
    let snapshot = serde_json::to_string(&metrics().snapshot()).unwrap();
    std::fs::write(dir.join(format!("{id}.metrics")), snapshot).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_worker_entry() {
    if let Some((store, id, dir)) = worker_args() {
        worker(store, id, dir).await;
    }
}

// ---- the harness -----------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq)]
enum Fault {
    KillWorkers,
    RestartRedis,
    PauseWorker,
    KillConnections,
}

struct Scenario {
    store: &'static str,
    dir: tempfile::TempDir,
    url: String,
    prefix: String,
    work: Arc<dyn WorkBackend>,
    checkpoints: CheckpointStore,
    children: BTreeMap<String, Child>,
}

impl Scenario {
    fn new(store: &'static str, url: &str, prefix: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let (backends, checkpoints) = if store == "sqlite" {
            let path = dir.path().join("workers.sqlite");
            (
                Backends::sqlite(&path).unwrap(),
                CheckpointStore::new(Arc::new(SqlitePersistence::open(&path).unwrap())),
            )
        } else {
            let conn = RedisConnection::open(url, prefix).unwrap();
            (
                Backends::redis(conn.clone()),
                CheckpointStore::new(Arc::new(RedisPersistence::new(conn))),
            )
        };
        Scenario {
            store,
            dir,
            url: url.to_string(),
            prefix: prefix.to_string(),
            work: backends.work.clone(),
            checkpoints,
            children: BTreeMap::new(),
        }
    }

    fn spawn(&mut self, id: &str) {
        let args = json!({"store": self.store, "id": id, "dir": self.dir.path()});
        let child = Command::new(std::env::current_exe().unwrap())
            .args([
                "fault_worker_entry",
                "--exact",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("FM_WORKER_FAULT", args.to_string())
            .env(REDIS_URL_ENV, &self.url)
            .env(REDIS_PREFIX_ENV, &self.prefix)
            .current_dir(self.dir.path())
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        self.children.insert(id.to_string(), child);
    }

    fn signal(&self, id: &str, signal: &str) {
        let pid = self.children[id].id().to_string();
        let status = Command::new("kill").args([signal, &pid]).status().unwrap();
        assert!(status.success(), "kill {signal} {pid}");
    }

    /// The claimed jobs (none while the store is unreachable).
    async fn claimed_jobs(&self) -> Vec<WorkItem> {
        self.work
            .pool(POOL)
            .jobs(JobStatus::Claimed, JOBS)
            .await
            .unwrap_or_default()
    }

    /// Ids of the claimed jobs.
    async fn claimed(&self) -> BTreeSet<String> {
        self.claimed_jobs()
            .await
            .into_iter()
            .map(|j| j.id)
            .collect()
    }

    /// Ids of the jobs claimed by one of `workers`.
    async fn held_by(&self, workers: &[&str]) -> BTreeSet<String> {
        let held = self.claimed_jobs().await.into_iter();
        held.filter(|j| workers.contains(&j.claimed_by.as_deref().unwrap_or_default()))
            .map(|j| j.id)
            .collect()
    }

    async fn done(&self) -> u64 {
        self.work
            .pool(POOL)
            .stats()
            .await
            .map(|s| s.done)
            .unwrap_or(0)
    }
}

/// What a scenario saw, for the test's output.
#[derive(Debug)]
#[allow(dead_code)] // printed
struct Outcome {
    storage_retries: u64,
    seconds: f64,
    in_flight: usize,
    duplicated: usize,
    failed_runs: usize,
    superseded: usize,
}

async fn run_scenario(
    store: &'static str,
    fault: Fault,
    server: Option<&mut RedisServer>,
    prefix: &str,
) -> Outcome {
    let url = server.as_ref().map(|s| s.url()).unwrap_or_default();
    let mut s = Scenario::new(store, &url, prefix);
    let pool = s.work.pool(POOL);
    let ids = pool
        .push_many(
            (0..JOBS).map(|n| json!({"n": n})).collect(),
            PushOptions { max_retries: 20 },
        )
        .await
        .unwrap();

    // The reaper machine, in this process, every 200 ms.
    let reaper_hooks = if store == "sqlite" {
        DistributedWorkerHooks::new(Backends::sqlite(s.dir.path().join("workers.sqlite")).unwrap())
    } else {
        DistributedWorkerHooks::new(Backends::redis(
            RedisConnection::open(&url, prefix).unwrap(),
        ))
    }
    .checkpoints(s.checkpoints.clone());
    let mut registry = HooksRegistry::new();
    registry.register_instance("DistributedWorkerHooks", Arc::new(reaper_hooks));
    let reaper = Machine::of::<reaper::Machine>()
        .hooks_registry(registry)
        .no_persistence()
        .build()
        .unwrap();
    let reaping = tokio::spawn(async move {
        loop {
            let _ = reaper
                .run(json!({"pool_id": POOL, "stale_threshold_seconds": STALE_SECONDS}))
                .await;
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });

    let started = Instant::now();
    for k in 0..WORKERS {
        s.spawn(&format!("w{k}"));
    }
    while s.done().await < (JOBS / 3) as u64 {
        assert!(started.elapsed() < Duration::from_secs(30), "no progress");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    // The fault. `in_flight`: every job claimed just before or just after it.
    let mut in_flight = s.claimed().await;
    let mut killed_at = None;
    // Jobs the killed or paused workers held: taken back by the reaper, their executions
    // superseded.
    let mut taken = BTreeSet::new();
    match fault {
        Fault::KillWorkers => {
            for id in ["w0", "w1"] {
                let mut child = s.children.remove(id).unwrap();
                child.kill().unwrap();
                child.wait().unwrap();
            }
            in_flight.extend(s.claimed().await);
            taken = s.held_by(&["w0", "w1"]).await;
            tokio::time::sleep(Duration::from_millis(200)).await;
            s.spawn("w3");
            s.spawn("w4");
        }
        Fault::RestartRedis => {
            let server = server.unwrap();
            killed_at = Some(now_ms());
            server.kill();
            tokio::time::sleep(Duration::from_secs(1)).await;
            server.restart();
            in_flight.extend(s.claimed().await);
        }
        Fault::PauseWorker => {
            // Stopped while it holds a job (jobs are short: try until it does).
            for _ in 0..500 {
                s.signal("w0", "-STOP");
                taken = s.held_by(&["w0"]).await;
                if !taken.is_empty() {
                    break;
                }
                s.signal("w0", "-CONT");
                tokio::time::sleep(Duration::from_millis(3)).await;
            }
            assert!(!taken.is_empty(), "w0 never seen holding a job");
            in_flight.extend(s.claimed().await);
            tokio::time::sleep(Duration::from_secs(6)).await;
            s.signal("w0", "-CONT");
        }
        Fault::KillConnections => {
            let client = redis::Client::open(url.as_str()).unwrap();
            let mut admin = client.get_connection().unwrap();
            for _ in 0..3 {
                in_flight.extend(s.claimed().await);
                let killed: i64 = redis::cmd("CLIENT")
                    .arg(&["KILL", "TYPE", "normal", "SKIPME", "yes"])
                    .query(&mut admin)
                    .unwrap();
                assert!(killed >= WORKERS as i64, "killed {killed} connections");
                in_flight.extend(s.claimed().await);
                tokio::time::sleep(Duration::from_millis(150)).await;
            }
        }
    }

    // Every job done.
    loop {
        let stats = pool.stats().await;
        if let Ok(stats) = stats
            && stats.done == JOBS as u64
        {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(40),
            "{store} {fault:?}: jobs not done: {stats:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let seconds = started.elapsed().as_secs_f64();
    std::fs::write(s.dir.path().join("stop"), "").unwrap();
    for (id, mut child) in std::mem::take(&mut s.children) {
        assert!(child.wait().unwrap().success(), "worker {id} crashed");
    }
    reaping.abort();

    // Side effects and failed runs, per job / worker.
    let mut effects: BTreeMap<String, Vec<(String, String, u128)>> = BTreeMap::new();
    let mut failed: Vec<String> = Vec::new();
    let mut storage_retries = 0;
    for entry in std::fs::read_dir(s.dir.path()).unwrap() {
        let path = entry.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        match path.extension().and_then(|e| e.to_str()) {
            Some("effects") => {
                for line in text.lines() {
                    let f: Vec<&str> = line.split(' ').collect();
                    effects.entry(f[0].to_string()).or_default().push((
                        f[1].to_string(),
                        f[2].to_string(),
                        f[3].parse().unwrap(),
                    ));
                }
            }
            Some("failed") => failed.extend(text.lines().map(str::to_string)),
            // Each worker's own metrics, written as it stops (killed ones write none).
            Some("metrics") => {
                let m: MetricsSnapshot = serde_json::from_str(&text).unwrap();
                storage_retries += m.storage_retries;
            }
            _ => {}
        }
    }

    let (mut duplicated, mut superseded_count) = (0, 0);
    for id in &ids {
        let job = pool.get(id).await.unwrap().unwrap();
        assert_eq!(
            job.status,
            JobStatus::Done,
            "{store} {fault:?}: job {id} lost"
        );
        let runs = effects.get(id).cloned().unwrap_or_default();
        assert!(
            !runs.is_empty(),
            "{store} {fault:?}: job {id} done, never executed"
        );
        // The result is the holder's, from one of the holder's executions.
        let result = &job.result.as_ref().unwrap()["value"];
        let holder = job.claimed_by.clone().unwrap();
        assert_eq!(
            result["worker"],
            json!(holder),
            "{store} {fault:?}: job {id}: result written by a non-holder"
        );
        assert!(
            runs.iter()
                .any(|(w, nonce, _)| *w == holder && json!(nonce) == result["nonce"]),
            "{store} {fault:?}: job {id}: result {result} from no execution of {holder}: {runs:?}"
        );
        if runs.len() > 1 {
            duplicated += 1;
            // Executed again: only a job in flight at the fault (or, when Redis was killed,
            // one whose earlier execution fell in the window of acknowledged writes lost).
            let in_window = killed_at.is_some_and(|k| {
                runs.iter()
                    .any(|(_, _, t)| k.saturating_sub(*t) <= WINDOW_MS)
            });
            assert!(
                in_flight.contains(id) || in_window,
                "{store} {fault:?}: job {id} executed {} times without being in flight at the fault: {runs:?}",
                runs.len()
            );
        }
        // A claim taken back: the execution that lost it is marked superseded.
        assert!(
            !taken.contains(id) || job.previous_execution_id.is_some(),
            "{store} {fault:?}: job {id} of a killed or paused worker never taken back"
        );
        if let Some(previous) = &job.previous_execution_id {
            let mark = superseded(&s.checkpoints, previous).await.unwrap();
            assert!(
                mark.is_some(),
                "{store} {fault:?}: execution {previous} of job {id} not marked superseded"
            );
            superseded_count += 1;
        }
    }
    let outcome = Outcome {
        storage_retries,
        seconds,
        in_flight: in_flight.len(),
        duplicated,
        failed_runs: failed.len(),
        superseded: superseded_count,
    };
    eprintln!("{store} {fault:?}: {JOBS} jobs, 0 lost: {outcome:?}; failed runs: {failed:?}");
    match fault {
        // Storage calls are retried: no run fails on a restart or a killed connection.
        Fault::RestartRedis | Fault::KillConnections => {
            assert!(
                failed.is_empty(),
                "{store} {fault:?}: runs failed: {failed:?}"
            );
            assert!(storage_retries > 0, "{fault:?}: no worker retried a call");
        }
        // The paused worker's run found its claim gone (its heartbeat, or a refused
        // completion) and failed; nobody else's did.
        Fault::PauseWorker => assert!(
            failed.iter().all(|f| f.contains("claim")),
            "{store}: runs failed: {failed:?}"
        ),
        Fault::KillWorkers => {
            assert!(failed.is_empty(), "{store}: runs failed: {failed:?}")
        }
    }
    outcome
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_workers_survive_killed_workers_redis_restarts_pauses_and_killed_connections() {
    if worker_args().is_some() {
        return;
    }
    let mut server = RedisServer::start();
    for (k, fault) in [
        Fault::KillWorkers,
        Fault::RestartRedis,
        Fault::PauseWorker,
        Fault::KillConnections,
    ]
    .into_iter()
    .enumerate()
    {
        run_scenario("redis", fault, Some(&mut server), &format!("f{k}")).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_workers_survive_killed_and_paused_workers() {
    if worker_args().is_some() {
        return;
    }
    for fault in [Fault::KillWorkers, Fault::PauseWorker] {
        run_scenario("sqlite", fault, None, "-").await;
    }
}
