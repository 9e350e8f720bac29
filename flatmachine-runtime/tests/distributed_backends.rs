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

    // Re-registering revives a worker and clears its metadata.
    r.update_status("w1", worker_status::LOST).await.unwrap();
    let again = r.register(reg("w1", &[], "p1")).await.unwrap();
    assert_eq!(again.status, "active");
    assert_eq!(r.get("w1").await.unwrap().unwrap().metadata, None);
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

    // FIFO claims, attempts counted.
    let j = p.claim("w1").await.unwrap().unwrap();
    assert_eq!(
        (j.id.as_str(), j.attempts, j.max_retries),
        (a.as_str(), 1, 3)
    );
    assert_eq!(j.data, json!({"n": 1}));
    assert_eq!(j.status, JobStatus::Claimed);
    assert_eq!(j.claimed_by.as_deref(), Some("w1"));
    assert_eq!(p.size().await.unwrap(), 1);

    // Complete keeps the result; completing again is refused.
    p.complete(&a, Some(json!({"ok": true}))).await.unwrap();
    let done = p.get(&a).await.unwrap().unwrap();
    assert_eq!(done.status, JobStatus::Done);
    assert_eq!(done.result, Some(json!({"ok": true})));
    assert!(matches!(
        p.complete(&a, None).await,
        Err(DistributedError::NotClaimed { .. })
    ));
    assert!(matches!(
        p.complete("missing", None).await,
        Err(DistributedError::JobNotFound(_))
    ));
    assert!(matches!(
        p.fail(&b, None).await,
        Err(DistributedError::NotClaimed { .. })
    ));

    // Fail: pending until max_retries, then poisoned.
    let j = p.claim("w1").await.unwrap().unwrap();
    assert_eq!(j.id, b);
    assert_eq!(p.fail(&b, Some("boom")).await.unwrap(), JobStatus::Pending);
    assert_eq!(p.size().await.unwrap(), 1);
    let j = p.claim("w2").await.unwrap().unwrap();
    assert_eq!(j.attempts, 2);
    assert_eq!(
        p.fail(&b, Some("boom again")).await.unwrap(),
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
    assert_eq!(p.release_by_worker("w8").await.unwrap(), 3);
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

    // complete_many is all or nothing where the backend is transactional; at least it fails.
    let got = p.claim_many("w7", 10).await.unwrap();
    assert_eq!(got.len(), 2);
    p.complete_many(
        got.iter()
            .map(|j| (j.id.clone(), Some(json!(j.data))))
            .collect(),
    )
    .await
    .unwrap();
    assert!(
        p.complete_many(vec![(got[0].id.clone(), None)])
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
                    pool.complete(&j.id, Some(json!(worker))).await.unwrap();
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
                (got[0].id.clone(), None),
                ("missing".to_string(), None),
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
            .complete("py-1", Some(json!(1)))
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
    async fn redis_work() {
        let server = RedisServer::start();
        work_suite(Arc::new(RedisWorkBackend::new(conn(&server, "t")))).await;
        let again = RedisWorkBackend::new(conn(&server, "t"));
        assert_eq!(again.pool("jobs").stats().await.unwrap().done, 3);
        assert_eq!(again.redis_pool("jobs").all().await.unwrap().len(), 7);
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
                (got[0].id.clone(), None),
                ("missing".to_string(), None),
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
            q.complete("job:../x", None).await,
            Err(DistributedError::JobNotFound(_))
        ));
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
    async fn unreachable_server_is_a_storage_error() {
        let server = RedisServer::start();
        let url = server.url();
        drop(server);
        let p = RedisWorkBackend::open(&url, "t").unwrap().pool("p");
        let err = p.size().await.unwrap_err();
        assert!(matches!(err, DistributedError::Storage(_)), "{err}");
    }
}
