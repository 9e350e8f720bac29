//! The operator commands of `flatmachine` (`pool`, `workers`, `stats`, `prune`, and `inspect`
//! over Redis), run as a process against a real `redis-server` and a real SQLite file that the
//! test fills through the runtime's public API.

#[path = "../../flatmachine-runtime/tests/support/redis_server.rs"]
mod redis_server;

use flatmachine_runtime::distributed::{
    Backends, ClaimRequest, PushOptions, WorkerRegistration, worker_status,
};
use flatmachine_runtime::persistence::{CheckpointStore, MachineSnapshot};
use flatmachine_runtime::redis_backends::{RedisConnection, RedisPersistence};
use redis_server::RedisServer;
use serde_json::{Value, json};
use std::process::Command;
use std::sync::Arc;

fn flatmachine(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_flatmachine"))
        .args(args)
        .env_remove("FLATMACHINE_REDIS_URL")
        .env_remove("FLATMACHINE_REDIS_PREFIX")
        .output()
        .expect("run flatmachine");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `flatmachine ARGS --store STORE --prefix PREFIX`, which must succeed; its stdout.
fn ok(args: &[&str], store: &str, prefix: &str) -> String {
    let mut all = args.to_vec();
    all.extend(["--store", store, "--prefix", prefix]);
    let (code, out, err) = flatmachine(&all);
    assert_eq!(code, 0, "flatmachine {all:?}: {err}");
    out
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// Pool `jobs`: one job claimed by `w1` for execution `exec-1`, one poisoned, one pending;
/// workers `w1` (active), `w2` (lost), `w3` (terminated). Returns (claimed, poisoned) ids.
async fn fill(backends: &Backends) -> (String, String) {
    let pool = backends.work.pool("jobs");
    let claimed = pool
        .push(json!({"n": 1}), PushOptions::default())
        .await
        .unwrap();
    let poisoned = pool
        .push(json!({"n": 2}), PushOptions { max_retries: 1 })
        .await
        .unwrap();
    pool.push(json!({"n": 3}), PushOptions::default())
        .await
        .unwrap();
    let got = pool
        .claim_with(&ClaimRequest::new("w1").execution_id("exec-1"))
        .await
        .unwrap();
    assert_eq!(got[0].id, claimed);
    let p = pool.claim("w9").await.unwrap().unwrap();
    pool.fail(&p.claim().unwrap(), Some("boom")).await.unwrap();
    for (id, status) in [
        ("w1", worker_status::ACTIVE),
        ("w2", worker_status::LOST),
        ("w3", worker_status::TERMINATED),
    ] {
        backends
            .registration
            .register(WorkerRegistration::new(id))
            .await
            .unwrap();
        backends
            .registration
            .update_status(id, status)
            .await
            .unwrap();
    }
    (claimed, poisoned)
}

#[test]
fn operator_commands_over_redis() {
    let server = RedisServer::start();
    let url = server.url();
    let prefix = "adm";
    let conn = RedisConnection::open(&url, prefix).unwrap();
    let backends = Backends::redis(conn.clone());
    let (claimed, poisoned) = rt().block_on(fill(&backends));

    // pool list: counts, oldest claim.
    let out = ok(&["pool", "list"], &url, prefix);
    let row = out.lines().find(|l| l.starts_with("jobs")).expect(&out);
    let cells: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(&cells[1..5], ["1", "1", "0", "1"], "{out}");
    assert!(out.starts_with("POOL"), "{out}");

    // pool jobs: the claimed one with its holder, execution and lease.
    let out = ok(&["pool", "jobs", "jobs"], &url, prefix);
    assert!(
        out.contains(&claimed) && out.contains("w1") && out.contains("exec-1"),
        "{out}"
    );
    let out = ok(
        &["pool", "jobs", "jobs", "--status", "poisoned", "--json"],
        &url,
        prefix,
    );
    let jobs: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(jobs[0]["id"], json!(poisoned));
    assert_eq!(jobs[0]["error"], json!("boom"));

    // stats: JSON gauges.
    let stats: Value = serde_json::from_str(&ok(&["stats"], &url, prefix)).unwrap();
    assert_eq!(stats["queue_depth"], json!(1));
    assert_eq!(stats["pools"][0]["stats"]["claimed"], json!(1));
    assert_eq!(stats["workers"]["active"], json!(1));
    assert_eq!(stats["workers"]["lost"], json!(1));
    assert!(stats["pools"][0]["oldest_claim_seconds"].is_number());

    // requeue: poisoned jobs with their attempts reset; a claimed job taken from its holder,
    // whose execution is marked superseded (inspect shows it).
    let out = ok(&["pool", "requeue", "jobs", "--poisoned"], &url, prefix);
    assert!(out.contains("requeued 1 job(s)"), "{out}");
    let out = ok(&["pool", "requeue", "jobs", &claimed], &url, prefix);
    assert!(
        out.contains("taken from worker `w1`") && out.contains("exec-1"),
        "{out}"
    );
    let (code, out, err) = flatmachine(&["inspect", "exec-1", "--dir", &url, "--prefix", prefix]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("superseded: its claim on job"), "{out}");
    let stats = rt().block_on(backends.work.pool("jobs").stats()).unwrap();
    assert_eq!((stats.pending, stats.claimed, stats.poisoned), (3, 0, 0));
    let (code, _, err) = flatmachine(&["pool", "requeue", "jobs", "--store", &url]);
    assert_ne!(code, 0);
    assert!(err.contains("--poisoned"), "{err}");

    // drop-poisoned: every poisoned job when no id is given.
    rt().block_on(async {
        let pool = backends.work.pool("jobs");
        pool.push(json!("bad"), PushOptions { max_retries: 1 })
            .await
            .unwrap();
        loop {
            let j = pool.claim("w9").await.unwrap().unwrap();
            if j.data == json!("bad") {
                pool.fail(&j.claim().unwrap(), None).await.unwrap();
                break;
            }
            pool.complete(&j.claim().unwrap(), None).await.unwrap();
        }
    });
    let out = ok(&["pool", "drop-poisoned", "jobs"], &url, prefix);
    assert!(out.contains("dropped 1 poisoned job(s)"), "{out}");

    // workers: list, remove the dead ones; an active one is refused.
    let out = ok(&["workers", "list"], &url, prefix);
    for w in ["w1", "w2", "w3"] {
        assert!(out.contains(w), "{out}");
    }
    let lost: Value = serde_json::from_str(&ok(
        &["workers", "list", "--status", "lost", "--json"],
        &url,
        prefix,
    ))
    .unwrap();
    assert_eq!(lost.as_array().unwrap().len(), 1);
    let out = ok(&["workers", "remove", "--dead", "w1"], &url, prefix);
    assert!(out.contains("removed 2 worker(s)"), "{out}");
    assert!(out.contains("kept w1: still active"), "{out}");
    let out = ok(&["workers", "list"], &url, prefix);
    assert!(
        out.contains("w1") && !out.contains("w2") && !out.contains("w3"),
        "{out}"
    );

    // prune: finished executions go, a running one stays.
    rt().block_on(async {
        let store = CheckpointStore::new(Arc::new(RedisPersistence::new(conn.clone())));
        for (id, events) in [
            ("done-1", &["machine_start", "execute", "machine_end"][..]),
            ("running-1", &["machine_start", "execute"][..]),
        ] {
            for (step, event) in events.iter().enumerate() {
                let mut s =
                    MachineSnapshot::new(id, "m", "1.0.0", "s", Default::default(), step as u64);
                s.event = Some(event.to_string());
                store.save(s).await.unwrap();
            }
        }
    });
    let out = ok(&["prune"], &url, prefix);
    assert!(out.contains("1 finished execution(s): 1 deleted"), "{out}");
    let (code, out, err) = flatmachine(&["inspect", "--dir", &url, "--prefix", prefix]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("running-1") && !out.contains("done-1"),
        "{out}"
    );

    // Another prefix sees nothing; no store at all is a clear error.
    let out = ok(&["pool", "list"], &url, "other-app");
    assert_eq!(out.lines().count(), 1, "{out}");
    let (code, _, err) = flatmachine(&["pool", "list"]);
    assert_ne!(code, 0);
    assert!(err.contains("no store: pass --store"), "{err}");
}

#[test]
fn operator_commands_over_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("workers.sqlite");
    let store = format!("sqlite:{}", path.display());
    let backends = Backends::sqlite(&path).unwrap();
    let (claimed, _) = rt().block_on(fill(&backends));
    let out = ok(&["pool", "list"], &store, "-");
    assert!(out.lines().any(|l| l.starts_with("jobs")), "{out}");
    let out = ok(&["pool", "jobs", "jobs"], &store, "-");
    assert!(out.contains(&claimed) && out.contains("w1"), "{out}");
    let stats: Value = serde_json::from_str(&ok(&["stats"], &store, "-")).unwrap();
    assert_eq!(stats["pools"][0]["stats"]["poisoned"], json!(1));
    assert_eq!(stats["workers"]["terminated"], json!(1));
    let out = ok(&["pool", "requeue", "jobs", &claimed], &store, "-");
    assert!(out.contains("requeued 1 job(s)"), "{out}");
    let out = ok(&["workers", "remove", "--dead"], &store, "-");
    assert!(out.contains("removed 2 worker(s)"), "{out}");
    let (code, _, err) = flatmachine(&["pool", "list", "--store", "sqlite:/nonexistent/x.sqlite"]);
    assert_ne!(code, 0);
    assert!(err.contains("not found"), "{err}");
}
