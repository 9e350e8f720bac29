//! Registration and work backends: one behaviour suite (`registration_suite`, `work_suite`,
//! `claim_race`) run over the memory backends, the SQLite ones (feature `sqlite`) and the Redis
//! ones (feature `redis`, each test on its own real `redis-server`), plus in-process
//! concurrent claim races.

use flatmachine_runtime::distributed::*;
use serde_json::json;
use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

fn reg(id: &str, caps: &[&str], pool: &str) -> WorkerRegistration {
    WorkerRegistration {
        capabilities: Some(caps.iter().map(|c| c.to_string()).collect()),
        pool_id: Some(pool.to_string()),
        host: Some("h".into()),
        pid: Some(42),
        ..WorkerRegistration::new(id)
    }
}

async fn registration_suite(r: Arc<dyn RegistrationBackend>) {
    let rec = r.register(reg("w1", &["gpu", "x"], "p1")).await.unwrap();
    assert_eq!(rec.status, worker_status::ACTIVE);
    r.register(reg("w2", &["cpu"], "p1")).await.unwrap();
    r.register(reg("w3", &["gpu"], "p2")).await.unwrap();

    let got = r.get("w1").await.unwrap().unwrap();
    assert_eq!(got.pid, Some(42));
    assert_eq!(
        got.capabilities.as_deref(),
        Some(&["gpu".to_string(), "x".to_string()][..])
    );
    assert!(r.get("nope").await.unwrap().is_none());

    // Heartbeat merges metadata (new keys win, old kept).
    let m1 = json!({"a": 1, "b": 1}).as_object().unwrap().clone();
    let m2 = json!({"b": 2, "c": 3}).as_object().unwrap().clone();
    r.heartbeat("w1", Some(m1)).await.unwrap();
    r.heartbeat("w1", Some(m2)).await.unwrap();
    r.heartbeat("w1", None).await.unwrap();
    let got = r.get("w1").await.unwrap().unwrap();
    assert_eq!(json!(got.metadata), json!({"a": 1, "b": 2, "c": 3}));
    assert!(got.last_heartbeat >= rec.last_heartbeat);
    assert!(matches!(
        r.heartbeat("nope", None).await,
        Err(DistributedError::WorkerNotFound(_))
    ));

    r.update_status("w2", worker_status::TERMINATING)
        .await
        .unwrap();
    assert!(matches!(
        r.update_status("nope", "lost").await,
        Err(DistributedError::WorkerNotFound(_))
    ));

    let ids = |v: Vec<WorkerRecord>| v.into_iter().map(|w| w.worker_id).collect::<Vec<_>>();
    assert_eq!(
        ids(r.list(&WorkerFilter::all()).await.unwrap()),
        ["w1", "w2", "w3"]
    );
    assert_eq!(
        ids(r.list(&WorkerFilter::status("active")).await.unwrap()),
        ["w1", "w3"]
    );
    let any = WorkerFilter {
        status: Some(StatusFilter::Any(vec!["terminating".into(), "lost".into()])),
        ..WorkerFilter::default()
    };
    assert_eq!(ids(r.list(&any).await.unwrap()), ["w2"]);
    let gpu = WorkerFilter {
        capability: Some("gpu".into()),
        ..WorkerFilter::default()
    };
    assert_eq!(ids(r.list(&gpu).await.unwrap()), ["w1", "w3"]);
    // A capability with LIKE wildcards matches only itself.
    let wild = WorkerFilter {
        capability: Some("%".into()),
        ..WorkerFilter::default()
    };
    assert!(r.list(&wild).await.unwrap().is_empty());
    let pool = WorkerFilter {
        pool_id: Some("p2".into()),
        ..WorkerFilter::default()
    };
    assert_eq!(ids(r.list(&pool).await.unwrap()), ["w3"]);

    // Staleness: nothing is 60 s old; after a pause all are older than 10 ms except one that
    // heartbeats.
    assert!(r.list(&WorkerFilter::stale(60.0)).await.unwrap().is_empty());
    tokio::time::sleep(Duration::from_millis(60)).await;
    r.heartbeat("w3", None).await.unwrap();
    assert_eq!(
        ids(r.list(&WorkerFilter::stale(0.04)).await.unwrap()),
        ["w1"]
    );
    assert_eq!(
        WorkerFilter::stale_for_heartbeat(30.0).stale_threshold_seconds,
        Some(60.0)
    );

    // A worker no longer active is not stale; active again, it is listed again.
    r.update_status("w1", worker_status::TERMINATED)
        .await
        .unwrap();
    let stale_ids = |v: Vec<WorkerRecord>| ids(v).contains(&"w1".to_string());
    assert!(!stale_ids(
        r.list(&WorkerFilter::stale(0.04)).await.unwrap()
    ));
    r.update_status("w1", worker_status::ACTIVE).await.unwrap();
    assert!(stale_ids(r.list(&WorkerFilter::stale(0.04)).await.unwrap()));

    // Re-registering revives a worker and clears its metadata.
    r.update_status("w1", worker_status::LOST).await.unwrap();
    let again = r.register(reg("w1", &[], "p1")).await.unwrap();
    assert_eq!(again.status, "active");
    assert_eq!(r.get("w1").await.unwrap().unwrap().metadata, None);

    // Removing a record (an operator cleaning up dead workers).
    r.register(reg("gone", &[], "p1")).await.unwrap();
    assert!(r.remove("gone").await.unwrap());
    assert!(!r.remove("gone").await.unwrap());
    assert!(r.get("gone").await.unwrap().is_none());
    assert_eq!(
        ids(r.list(&WorkerFilter::all()).await.unwrap()),
        ["w1", "w2", "w3"]
    );
    assert!(
        !ids(r.list(&WorkerFilter::status("active")).await.unwrap()).contains(&"gone".to_string())
    );
}

async fn work_suite(w: Arc<dyn WorkBackend>) {
    let p = w.pool("jobs");
    let other = w.pool("other");
    assert_eq!(p.name(), "jobs");
    let a = p
        .push(json!({"n": 1}), PushOptions::default())
        .await
        .unwrap();
    let b = p
        .push(json!({"n": 2}), PushOptions { max_retries: 2 })
        .await
        .unwrap();
    other
        .push(json!("x"), PushOptions::default())
        .await
        .unwrap();
    assert_eq!(p.size().await.unwrap(), 2);
    assert_eq!(other.size().await.unwrap(), 1);
    assert_eq!(w.pool_names().await.unwrap(), ["jobs", "other"]);

    // FIFO claims, attempts counted, a token and a lease per claim.
    let j = p.claim("w1").await.unwrap().unwrap();
    assert_eq!(
        (j.id.as_str(), j.attempts, j.max_retries),
        (a.as_str(), 1, 3)
    );
    assert_eq!(j.data, json!({"n": 1}));
    assert_eq!(j.status, JobStatus::Claimed);
    assert_eq!(j.claimed_by.as_deref(), Some("w1"));
    assert!(j.lease_expires_at.is_some() && j.claim_token.is_some());
    assert_eq!(p.size().await.unwrap(), 1);
    let ca = j.claim().unwrap();
    p.heartbeat(&ca, None).await.unwrap();

    // Complete keeps the result; completing again is refused.
    p.complete(&ca, Some(json!({"ok": true}))).await.unwrap();
    let done = p.get(&a).await.unwrap().unwrap();
    assert_eq!(done.status, JobStatus::Done);
    assert_eq!(done.result, Some(json!({"ok": true})));
    assert_eq!(
        done.claim_token,
        Some(ca.token.clone()),
        "done keeps the completing token"
    );
    assert!(matches!(
        p.complete(&ca, None).await,
        Err(DistributedError::NotClaimed { .. })
    ));
    assert!(matches!(
        p.heartbeat(&ca, None).await,
        Err(DistributedError::NotClaimed { .. })
    ));
    let missing = Claim::new("missing", ClaimToken::generate());
    assert!(matches!(
        p.complete(&missing, None).await,
        Err(DistributedError::JobNotFound(_))
    ));
    assert!(matches!(
        p.fail(&Claim::new(b.clone(), ClaimToken::generate()), None)
            .await,
        Err(DistributedError::NotClaimed { .. })
    ));

    // Fail: pending until max_retries, then poisoned.
    let j = p.claim("w1").await.unwrap().unwrap();
    assert_eq!(j.id, b);
    assert_eq!(
        p.fail(&j.claim().unwrap(), Some("boom")).await.unwrap(),
        JobStatus::Pending
    );
    assert_eq!(p.size().await.unwrap(), 1);
    let j = p.claim("w2").await.unwrap().unwrap();
    assert_eq!(j.attempts, 2);
    assert_eq!(
        p.fail(&j.claim().unwrap(), Some("boom again"))
            .await
            .unwrap(),
        JobStatus::Poisoned
    );
    let poisoned = p.get(&b).await.unwrap().unwrap();
    assert_eq!(poisoned.status, JobStatus::Poisoned);
    assert_eq!(poisoned.error.as_deref(), Some("boom again"));
    assert!(p.claim("w1").await.unwrap().is_none());

    // Release: back to pending, or poisoned when the attempts are used up.
    let ids = p
        .push_many(
            vec![json!(1), json!(2), json!(3)],
            PushOptions { max_retries: 1 },
        )
        .await
        .unwrap();
    assert_eq!(ids.len(), 3);
    let got = p.claim_many("w9", 2).await.unwrap();
    assert_eq!(
        got.iter().map(|j| j.id.clone()).collect::<Vec<_>>(),
        ids[..2].to_vec()
    );
    assert_eq!(p.release_by_worker("w9").await.unwrap(), 2);
    assert_eq!(
        p.get(&ids[0]).await.unwrap().unwrap().status,
        JobStatus::Poisoned
    );
    let ids2 = p
        .push_many(vec![json!(4), json!(5)], PushOptions::default())
        .await
        .unwrap();
    let got = p.claim_many("w8", 10).await.unwrap();
    assert_eq!(got.len(), 3); // ids[2], ids2[0], ids2[1]
    // ids[2] had one attempt of one allowed: poisoned; the others go back.
    let released = p.release_worker("w8").await.unwrap();
    assert_eq!(released.len(), 3);
    assert_eq!(released[0].id, ids[2]);
    assert_eq!(released[0].status, JobStatus::Poisoned);
    assert_eq!(released[1].status, JobStatus::Pending);
    assert_eq!(released[1].worker_id.as_deref(), Some("w8"));
    assert_eq!(
        p.get(&ids[2]).await.unwrap().unwrap().status,
        JobStatus::Poisoned
    );
    assert_eq!(p.release_by_worker("w8").await.unwrap(), 0);
    assert_eq!(
        p.get(&ids2[0]).await.unwrap().unwrap().status,
        JobStatus::Pending
    );
    assert_eq!(p.get(&ids2[0]).await.unwrap().unwrap().claimed_by, None);
    // A released claim's token no longer works.
    assert!(matches!(
        p.complete(&got[1].claim().unwrap(), None).await,
        Err(DistributedError::NotClaimed { .. })
    ));

    // complete_many is all or nothing where the backend is transactional; at least it fails.
    let got = p.claim_many("w7", 10).await.unwrap();
    assert_eq!(got.len(), 2);
    p.complete_many(
        got.iter()
            .map(|j| (j.claim().unwrap(), Some(json!(j.data))))
            .collect(),
    )
    .await
    .unwrap();
    assert!(
        p.complete_many(vec![(got[0].claim().unwrap(), None)])
            .await
            .is_err()
    );

    let stats = p.stats().await.unwrap();
    assert_eq!(
        stats,
        PoolStats {
            pending: 0,
            claimed: 0,
            done: 3,
            poisoned: 4,
        }
    );
    assert_eq!(stats.total(), 7);
    assert_eq!(other.stats().await.unwrap().pending, 1);
    assert!(p.claim_many("w1", 0).await.unwrap().is_empty());
    assert_eq!(
        p.counters().await.unwrap(),
        PoolCounters {
            released: 5,
            ..PoolCounters::default()
        }
    );

    // Operator actions: list poisoned jobs, requeue some (attempts reset), delete the rest.
    let poisoned: Vec<String> = p
        .jobs(JobStatus::Poisoned, 100)
        .await
        .unwrap()
        .into_iter()
        .map(|j| j.id)
        .collect();
    assert_eq!(
        poisoned,
        [b.clone(), ids[0].clone(), ids[1].clone(), ids[2].clone()]
    );
    assert_eq!(p.jobs(JobStatus::Poisoned, 2).await.unwrap().len(), 2);
    assert_eq!(p.jobs(JobStatus::Done, 100).await.unwrap().len(), 3);
    let requeued = p
        .requeue(&[b.clone(), a.clone(), "missing".into()])
        .await
        .unwrap();
    assert_eq!(requeued.len(), 1, "done and unknown jobs are left alone");
    let again = p.get(&b).await.unwrap().unwrap();
    assert_eq!((again.status, again.attempts), (JobStatus::Pending, 0));
    assert_eq!(
        p.remove_poisoned(&[ids[0].clone(), a.clone()])
            .await
            .unwrap(),
        1
    );
    assert!(p.get(&ids[0]).await.unwrap().is_none());
    assert_eq!(p.get(&a).await.unwrap().unwrap().status, JobStatus::Done);
    let counters = p.counters().await.unwrap();
    assert_eq!((counters.requeued, counters.removed), (1, 1));
    assert_eq!(
        p.stats().await.unwrap(),
        PoolStats {
            pending: 1,
            claimed: 0,
            done: 3,
            poisoned: 2,
        }
    );
}

/// The stale-worker cases: a worker whose claim was taken back cannot complete, fail or
/// heartbeat the job another worker now holds, nor can a worker that never held it.
async fn stale_worker_suite(w: Arc<dyn WorkBackend>) {
    let p = w.pool("stale");
    let id = p.push(json!("job"), PushOptions::default()).await.unwrap();
    let a = p
        .claim_with(&ClaimRequest::new("A").execution_id("exec-a"))
        .await
        .unwrap()
        .pop()
        .unwrap();
    assert_eq!(a.execution_id.as_deref(), Some("exec-a"));
    let claim_a = a.claim().unwrap();
    // A is reaped; B claims the job again.
    let released = p.release_worker("A").await.unwrap();
    assert_eq!(released[0].execution_id.as_deref(), Some("exec-a"));
    let b = p
        .claim_with(&ClaimRequest::new("B").execution_id("exec-b"))
        .await
        .unwrap()
        .pop()
        .unwrap();
    assert_eq!((b.id.as_str(), b.attempts), (id.as_str(), 2));
    assert_eq!(b.previous_execution_id.as_deref(), Some("exec-a"));
    let claim_b = b.claim().unwrap();
    assert_ne!(claim_a.token, claim_b.token);

    // A's late calls are refused, naming the holder; nothing changes.
    for err in [
        p.complete(&claim_a, Some(json!("A's result")))
            .await
            .unwrap_err(),
        p.fail(&claim_a, Some("A")).await.unwrap_err(),
        p.heartbeat(&claim_a, Some(Duration::from_secs(60)))
            .await
            .unwrap_err(),
    ] {
        match &err {
            DistributedError::NotHolder { id: got, holder } => {
                assert_eq!((got.as_str(), holder.as_deref()), (id.as_str(), Some("B")));
            }
            other => panic!("expected NotHolder, got {other:?}"),
        }
        assert!(err.to_string().contains("worker `B`"), "{err}");
    }
    // A worker that never held the job cannot fail it back to the pool either.
    let forged = Claim::new(id.clone(), ClaimToken::generate());
    assert!(matches!(
        p.fail(&forged, Some("not mine")).await,
        Err(DistributedError::NotHolder { .. })
    ));
    let now = p.get(&id).await.unwrap().unwrap();
    assert_eq!(
        (now.status, now.claimed_by.as_deref(), now.attempts),
        (JobStatus::Claimed, Some("B"), 2)
    );

    // B finishes; A still cannot, and the result is B's.
    p.heartbeat(&claim_b, None).await.unwrap();
    p.complete(&claim_b, Some(json!("B's result")))
        .await
        .unwrap();
    assert!(matches!(
        p.complete(&claim_a, Some(json!("A's result"))).await,
        Err(DistributedError::NotClaimed { .. })
    ));
    let done = p.get(&id).await.unwrap().unwrap();
    assert_eq!(done.result, Some(json!("B's result")));
    assert_eq!(done.claimed_by.as_deref(), Some("B"));
    assert!(ClaimToken::parse("").is_err() && ClaimToken::parse("a b").is_err());
}

/// Leases: a claim whose lease ended is taken back even though nobody reaped its worker;
/// extending the lease keeps it.
async fn lease_suite(w: Arc<dyn WorkBackend>) {
    let p = w.pool("leases");
    let ids = p
        .push_many(vec![json!(1), json!(2)], PushOptions { max_retries: 1 })
        .await
        .unwrap();
    let short = ClaimRequest::new("slow")
        .lease(Duration::from_millis(300))
        .execution_id("exec-slow");
    let got = p.claim_with(&short.clone().limit(2)).await.unwrap();
    assert_eq!(got.len(), 2);
    assert!(p.reclaim_expired().await.unwrap().is_empty(), "not yet");
    let kept = got[1].claim().unwrap();
    p.heartbeat(&kept, Some(Duration::from_secs(60)))
        .await
        .unwrap();
    assert!(
        p.get(&ids[1]).await.unwrap().unwrap().lease_expires_at > got[1].lease_expires_at,
        "extended"
    );
    tokio::time::sleep(Duration::from_millis(450)).await;
    let expired = p.reclaim_expired().await.unwrap();
    assert_eq!(expired.len(), 1);
    assert_eq!(expired[0].id, ids[0]);
    assert_eq!(expired[0].worker_id.as_deref(), Some("slow"));
    assert_eq!(expired[0].execution_id.as_deref(), Some("exec-slow"));
    // Its one attempt is used up: poisoned, with the reason.
    assert_eq!(expired[0].status, JobStatus::Poisoned);
    let job = p.get(&ids[0]).await.unwrap().unwrap();
    assert_eq!(job.status, JobStatus::Poisoned);
    assert_eq!(job.error.as_deref(), Some("its lease expired"));
    assert!(p.complete(&got[0].claim().unwrap(), None).await.is_err());
    assert_eq!(p.counters().await.unwrap().expired, 1);
    // The extended one is still held, and listed as claimed.
    let claimed = p.jobs(JobStatus::Claimed, 10).await.unwrap();
    assert_eq!(claimed.len(), 1);
    assert_eq!(claimed[0].id, ids[1]);
    // An operator requeue takes a claim back too.
    let requeued = p.requeue(std::slice::from_ref(&ids[1])).await.unwrap();
    assert_eq!(requeued[0].worker_id.as_deref(), Some("slow"));
    assert!(matches!(
        p.complete(&kept, None).await,
        Err(DistributedError::NotClaimed { .. })
    ));
    assert_eq!(p.size().await.unwrap(), 1);
}

/// 16 tasks race for 1,000 jobs through `pools` (several handles on the same store): every job
/// is claimed exactly once.
async fn claim_race(pools: Vec<Arc<dyn WorkPool>>) {
    let ids: HashSet<String> = pools[0]
        .push_many(
            (0..1000).map(|i| json!(i)).collect(),
            PushOptions::default(),
        )
        .await
        .unwrap()
        .into_iter()
        .collect();
    let mut tasks = Vec::new();
    for t in 0..16 {
        let pool = Arc::clone(&pools[t % pools.len()]);
        tasks.push(tokio::spawn(async move {
            let worker = format!("w{t}");
            let mut mine = Vec::new();
            loop {
                let batch = if t % 2 == 0 {
                    pool.claim(&worker).await.unwrap().into_iter().collect()
                } else {
                    pool.claim_many(&worker, 7).await.unwrap()
                };
                if batch.is_empty() {
                    break;
                }
                for j in batch {
                    assert_eq!(j.claimed_by.as_deref(), Some(worker.as_str()));
                    pool.complete(&j.claim().unwrap(), Some(json!(worker)))
                        .await
                        .unwrap();
                    mine.push(j.id);
                }
            }
            mine
        }));
    }
    let mut seen = HashSet::new();
    for t in tasks {
        for id in t.await.unwrap() {
            assert!(seen.insert(id), "a job was claimed twice");
        }
    }
    assert_eq!(seen, ids);
    assert_eq!(pools[0].stats().await.unwrap().done, 1000);
}

#[tokio::test]
async fn memory_registration() {
    registration_suite(Arc::new(MemoryRegistrationBackend::new())).await;
}

#[tokio::test]
async fn memory_work() {
    work_suite(Arc::new(MemoryWorkBackend::new())).await;
}

#[tokio::test]
async fn memory_stale_workers_cannot_finish_jobs() {
    stale_worker_suite(Arc::new(MemoryWorkBackend::new())).await;
}

#[tokio::test]
async fn memory_leases() {
    lease_suite(Arc::new(MemoryWorkBackend::new())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn memory_concurrent_claims() {
    let backend = MemoryWorkBackend::new();
    claim_race(vec![backend.pool("race")]).await;
}

#[tokio::test]
async fn backends_from_spec() {
    let b = Backends::from_spec(&flatmachine_runtime::BackendsSpec::default()).unwrap();
    b.work
        .pool("p")
        .push(json!(1), PushOptions::default())
        .await
        .unwrap();
    let bad = flatmachine_runtime::BackendsSpec {
        work: Some("mongodb"),
        ..Default::default()
    };
    let err = Backends::from_spec(&bad).unwrap_err().to_string();
    assert!(
        err.contains("mongodb") && err.contains("memory, sqlite, redis"),
        "{err}"
    );
}

#[cfg(feature = "sqlite")]
mod sqlite {
    use super::*;

    #[tokio::test]
    async fn sqlite_registration() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nested/dir/w.sqlite");
        registration_suite(Arc::new(SqliteRegistrationBackend::open(&path).unwrap())).await;
        // Reopening sees the same data.
        let again = SqliteRegistrationBackend::open(&path).unwrap();
        assert_eq!(again.list(&WorkerFilter::all()).await.unwrap().len(), 3);
    }

    #[tokio::test]
    async fn sqlite_work() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.sqlite");
        work_suite(Arc::new(SqliteWorkBackend::open(&path).unwrap())).await;
        // Registration and work share one file.
        let r = SqliteRegistrationBackend::open(&path).unwrap();
        r.register(WorkerRegistration::new("x")).await.unwrap();
        let b = Backends::sqlite(&path).unwrap();
        assert_eq!(b.work.pool("jobs").stats().await.unwrap().done, 3);
    }

    #[tokio::test]
    async fn sqlite_stale_workers_cannot_finish_jobs() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.sqlite");
        stale_worker_suite(Arc::new(SqliteWorkBackend::open(&path).unwrap())).await;
    }

    #[tokio::test]
    async fn sqlite_leases() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.sqlite");
        lease_suite(Arc::new(SqliteWorkBackend::open(&path).unwrap())).await;
    }

    #[tokio::test]
    async fn sqlite_complete_many_is_atomic() {
        let dir = tempfile::tempdir().unwrap();
        let w = SqliteWorkBackend::open(dir.path().join("w.sqlite")).unwrap();
        let p = w.pool("p");
        p.push_many(vec![json!(1), json!(2)], PushOptions::default())
            .await
            .unwrap();
        let got = p.claim_many("w", 2).await.unwrap();
        let err = p
            .complete_many(vec![
                (got[0].claim().unwrap(), None),
                (Claim::new("missing", ClaimToken::generate()), None),
            ])
            .await;
        assert!(matches!(err, Err(DistributedError::JobNotFound(_))));
        assert_eq!(p.stats().await.unwrap().claimed, 2, "rolled back");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn sqlite_concurrent_claims_across_connections() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("race.sqlite");
        // Four backend instances = four connections racing on one file.
        let pools: Vec<Arc<dyn WorkPool>> = (0..4)
            .map(|_| SqliteWorkBackend::open(&path).unwrap().pool("race"))
            .collect();
        claim_race(pools).await;
    }

    #[tokio::test]
    async fn sqlite_schema_versions() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v.sqlite");
        SqliteWorkBackend::open(&path).unwrap();
        {
            let c = rusqlite::Connection::open(&path).unwrap();
            c.execute(
                "UPDATE flatmachine_schema SET version = 99 WHERE component = 'work_pool'",
                [],
            )
            .unwrap();
        }
        let err = SqliteWorkBackend::open(&path).unwrap_err();
        assert!(
            matches!(err, DistributedError::SchemaTooNew { found: 99, .. }),
            "{err}"
        );
        // The registry is versioned separately and still opens.
        SqliteRegistrationBackend::open(&path).unwrap();
    }

    /// A file written by the Python reference (its exact schema and rows) opens and works.
    #[tokio::test]
    async fn sqlite_opens_reference_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ref.sqlite");
        {
            let c = rusqlite::Connection::open(&path).unwrap();
            c.execute_batch(
                "CREATE TABLE work_pool (
                    item_id TEXT PRIMARY KEY, pool_name TEXT NOT NULL, data TEXT NOT NULL,
                    status TEXT NOT NULL DEFAULT 'pending', claimed_by TEXT, claimed_at TEXT,
                    attempts INTEGER NOT NULL DEFAULT 0, max_retries INTEGER NOT NULL DEFAULT 3,
                    created_at TEXT NOT NULL, error TEXT);
                 INSERT INTO work_pool (item_id, pool_name, data, status, attempts, max_retries, created_at)
                 VALUES ('py-1', 'default', '{\"x\": 1}', 'pending', 0, 3, '2024-01-01T00:00:00+00:00');
                 CREATE TABLE worker_registry (
                    worker_id TEXT PRIMARY KEY, status TEXT NOT NULL DEFAULT 'active',
                    last_heartbeat TEXT NOT NULL, host TEXT, pid INTEGER, capabilities TEXT,
                    started_at TEXT, current_task_id TEXT, metadata TEXT);
                 INSERT INTO worker_registry (worker_id, status, last_heartbeat, capabilities)
                 VALUES ('py-w', 'active', '2024-01-01T00:00:00+00:00', '[\"gpu\"]');",
            )
            .unwrap();
        }
        let b = Backends::sqlite(&path).unwrap();
        let j = b.work.pool("default").claim("rs").await.unwrap().unwrap();
        assert_eq!((j.id.as_str(), j.data.clone()), ("py-1", json!({"x": 1})));
        b.work
            .pool("default")
            .complete(&j.claim().unwrap(), Some(json!(1)))
            .await
            .unwrap();
        let stale = b
            .registration
            .list(&WorkerFilter::stale(60.0))
            .await
            .unwrap();
        assert_eq!(stale[0].worker_id, "py-w");
        assert_eq!(
            stale[0].capabilities.as_deref(),
            Some(&["gpu".to_string()][..])
        );
    }
}

#[cfg(feature = "redis")]
#[path = "support/redis_server.rs"]
mod redis_server;

#[cfg(feature = "redis")]
mod redis {
    use super::redis_server::RedisServer;
    use super::*;
    use flatmachine_runtime::redis_backends::RedisConnection;

    fn conn(server: &RedisServer, prefix: &str) -> RedisConnection {
        RedisConnection::open(&server.url(), prefix).unwrap()
    }

    #[tokio::test]
    async fn redis_registration() {
        let server = RedisServer::start();
        registration_suite(Arc::new(RedisRegistrationBackend::new(conn(&server, "t")))).await;
        // A new connection sees the same data; another prefix sees nothing.
        let again = RedisRegistrationBackend::new(conn(&server, "t"));
        assert_eq!(again.list(&WorkerFilter::all()).await.unwrap().len(), 3);
        let other = RedisRegistrationBackend::new(conn(&server, "other-app"));
        assert!(other.list(&WorkerFilter::all()).await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn redis_stale_listing_reads_only_active_workers() {
        let server = RedisServer::start();
        let r = RedisRegistrationBackend::new(conn(&server, "t"));
        for i in 0..50 {
            let id = format!("old-{i}");
            r.register(WorkerRegistration::new(id.clone()))
                .await
                .unwrap();
            r.update_status(&id, worker_status::TERMINATED)
                .await
                .unwrap();
        }
        r.register(WorkerRegistration::new("live")).await.unwrap();
        tokio::time::sleep(Duration::from_millis(60)).await;
        let stale = r.list(&WorkerFilter::stale(0.04)).await.unwrap();
        assert_eq!(stale.len(), 1);
        assert_eq!(stale[0].worker_id, "live");
        // The index holds only the active worker.
        let mut c = ::redis::Client::open(server.url())
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap();
        let n: u64 = ::redis::cmd("ZCARD")
            .arg("t:workers:active")
            .query_async(&mut c)
            .await
            .unwrap();
        assert_eq!(n, 1);
    }

    #[tokio::test]
    async fn redis_work() {
        let server = RedisServer::start();
        work_suite(Arc::new(RedisWorkBackend::new(conn(&server, "t")))).await;
        let again = RedisWorkBackend::new(conn(&server, "t"));
        assert_eq!(again.pool("jobs").stats().await.unwrap().done, 3);
        assert_eq!(again.redis_pool("jobs").all().await.unwrap().len(), 6);
        let other = RedisWorkBackend::new(conn(&server, "other-app"));
        assert_eq!(other.pool("jobs").stats().await.unwrap().total(), 0);
    }

    #[tokio::test]
    async fn redis_complete_many_is_atomic_and_names_are_escaped() {
        let server = RedisServer::start();
        let w = RedisWorkBackend::new(conn(&server, "t"));
        let p = w.pool("p");
        p.push_many(vec![json!(1), json!(2)], PushOptions::default())
            .await
            .unwrap();
        let got = p.claim_many("w", 2).await.unwrap();
        let err = p
            .complete_many(vec![
                (got[0].claim().unwrap(), None),
                (Claim::new("missing", ClaimToken::generate()), None),
            ])
            .await;
        assert!(matches!(err, Err(DistributedError::JobNotFound(_))));
        assert_eq!(p.stats().await.unwrap().claimed, 2, "nothing completed");
        // Pool, worker and job names with `:` and `%` stay inside their own keys.
        let q = w.pool("p:job:x%3A");
        let id = q.push(json!("q"), PushOptions::default()).await.unwrap();
        assert_eq!(q.size().await.unwrap(), 1);
        assert_eq!(p.size().await.unwrap(), 0);
        assert!(p.get(&id).await.unwrap().is_none());
        let j = q.claim("worker:with:colons").await.unwrap().unwrap();
        assert_eq!(q.release_by_worker("worker:with:colons").await.unwrap(), 1);
        assert_eq!(
            q.get(&j.id).await.unwrap().unwrap().status,
            JobStatus::Pending
        );
        assert!(matches!(
            q.complete(&Claim::new("job:../x", ClaimToken::generate()), None)
                .await,
            Err(DistributedError::JobNotFound(_))
        ));
    }

    #[tokio::test]
    async fn redis_stale_workers_cannot_finish_jobs() {
        let server = RedisServer::start();
        stale_worker_suite(Arc::new(RedisWorkBackend::new(conn(&server, "t")))).await;
    }

    #[tokio::test]
    async fn redis_leases() {
        let server = RedisServer::start();
        lease_suite(Arc::new(RedisWorkBackend::new(conn(&server, "t")))).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn redis_concurrent_claims_across_connections() {
        let server = RedisServer::start();
        // Four connections racing on one server.
        let pools: Vec<Arc<dyn WorkPool>> = (0..4)
            .map(|_| RedisWorkBackend::new(conn(&server, "race")).pool("race"))
            .collect();
        claim_race(pools).await;
    }

    #[tokio::test]
    async fn unreachable_server_is_a_storage_error_once_the_retry_budget_is_spent() {
        let server = RedisServer::start();
        let url = server.url();
        drop(server);
        let retry = flatmachine_runtime::redis_backends::RetryPolicy {
            budget: Duration::from_millis(300),
            ..Default::default()
        };
        let conn = RedisConnection::open(&url, "t").unwrap().with_retry(retry);
        let p = RedisWorkBackend::new(conn).pool("p");
        let started = std::time::Instant::now();
        let err = p.size().await.unwrap_err();
        assert!(matches!(err, DistributedError::Storage(_)), "{err}");
        let text = err.to_string();
        assert!(
            text.contains("gave up after") && text.contains("FLATMACHINE_REDIS_RETRY_SECONDS"),
            "{text}"
        );
        assert!(
            started.elapsed() >= Duration::from_millis(200),
            "it retried"
        );
        // No retries: the first failure.
        let once = RedisConnection::open(&url, "t")
            .unwrap()
            .with_retry(flatmachine_runtime::redis_backends::RetryPolicy::none());
        let err = RedisWorkBackend::new(once)
            .pool("p")
            .size()
            .await
            .unwrap_err();
        assert!(!err.to_string().contains("gave up"), "{err}");
    }

    /// A call in flight across a server restart is retried and succeeds, and the process keeps
    /// one connection for every role.
    #[tokio::test]
    async fn calls_survive_a_restart_and_connections_are_shared() {
        let mut server = RedisServer::start();
        let url = server.url();
        let a = RedisConnection::shared(&url, "shared").unwrap();
        let b = RedisConnection::shared(&url, "shared").unwrap();
        assert!(a.same_connection(&b));
        assert!(!a.same_connection(&RedisConnection::open(&url, "shared").unwrap()));
        let pool = RedisWorkBackend::new(a).pool("p");
        pool.push(json!(1), PushOptions::default()).await.unwrap();
        tokio::time::sleep(Duration::from_millis(1100)).await; // AOF everysec
        let before = metrics().snapshot().storage_retries;
        server.kill();
        let restart = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(400));
            server.restart();
            server
        });
        // Issued while the server is down: retried until it is back.
        let job = pool.claim("w").await.unwrap().expect("the pushed job");
        let _server = restart.join().unwrap();
        pool.complete(&job.claim().unwrap(), None).await.unwrap();
        assert!(metrics().snapshot().storage_retries > before);
    }
}
