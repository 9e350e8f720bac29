//! The signal backends against one contract (memory, SQLite, Redis on a real server), and what
//! only shared storage can show: runs parked by one process and resumed by another, deadlines
//! across a real restart (both on SQLite and on Redis), dispatchers racing across processes
//! (SQLite) and connections (Redis), forks and fingerprint checks on both stores, 1,000 runs
//! resumed by one dispatcher, and signals the reference wrote into its `signals` table.
//!
//! Child processes are this test binary run again on one test (`--exact`) with
//! `FM_SIGNALS_CHILD` set: the `child_*` tests do nothing without it.

#[path = "support/redis_server.rs"]
mod redis_server;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use flatmachine_runtime::engine::{ForkOptions, fork_execution};
use flatmachine_runtime::persistence::{CheckpointStore, checkpoint_event};
use flatmachine_runtime::redis_backends::RedisConnection;
use flatmachine_runtime::signals::{
    Dispatcher, MemorySignalBackend, RedisSignalBackend, SendOptions, SignalBackend, SignalError,
    SqliteSignalBackend, WaitRequest,
};
use flatmachine_runtime::{Machine, ResumeOptions, RunError, Value};
use redis_server::RedisServer;
use serde_json::json;

flatmachine_runtime::flatmachine!("tests/machines/signals/approval.yml");
flatmachine_runtime::flatmachine!("tests/machines/signals/race.yml");
flatmachine_runtime::flatmachine!("tests/machines/signals/timed_short.yml");

/// `approval.yml` after an edit that changes its shape (same machine name).
mod edited {
    flatmachine_runtime::flatmachine!("tests/machines/signals/approval_v2.yml");
}

const CHILD: &str = "FM_SIGNALS_CHILD";

fn request<'a>(id: &'a str, channel: &'a str, step: u64) -> WaitRequest<'a> {
    WaitRequest {
        execution_id: id,
        channel,
        machine: "m",
        state: "wait",
        step,
        deadline_ms: None,
    }
}

/// What every backend must do (see `flatmachine_runtime::signals`).
async fn contract(b: Arc<dyn SignalBackend>) {
    let keep = SendOptions::default;
    // A signal sent before anyone waits is kept, and taken by the first wait.
    b.send("c/1", json!({"a": 1}), keep()).await.unwrap();
    assert_eq!(b.channels().await.unwrap(), vec!["c/1"]);
    let got = b.wait(&request("e1", "c/1", 4)).await.unwrap().unwrap();
    assert_eq!(got.data, json!({"a": 1}));
    assert_eq!(got.channel, "c/1");
    assert!(b.channels().await.unwrap().is_empty());
    // The run holds it until it acknowledges: a wait of the same step gets it again.
    let again = b.wait(&request("e1", "c/1", 4)).await.unwrap().unwrap();
    assert_eq!(again.id, got.id);
    b.ack("e1", 3).await.unwrap(); // another step: nothing happens
    assert_eq!(b.waiters(None).await.unwrap().len(), 1);
    b.ack("e1", 4).await.unwrap();
    assert!(b.waiters(None).await.unwrap().is_empty());

    // No signal: the wait registers; delivering needs a signal.
    assert!(b.wait(&request("e2", "c/2", 1)).await.unwrap().is_none());
    assert!(b.deliver("c/2").await.unwrap().is_empty());
    let w = &b.waiters(Some("c/2")).await.unwrap()[0];
    assert_eq!((w.execution_id.as_str(), w.step), ("e2", 1));
    assert!(w.delivered.is_none());
    b.send("c/2", json!("x"), keep()).await.unwrap();
    b.send("c/2", json!("y"), keep()).await.unwrap();
    assert_eq!(b.deliver("c/2").await.unwrap(), vec!["e2"]);
    // One signal per waiter: the second stays queued.
    assert!(b.deliver("c/2").await.unwrap().is_empty());
    assert_eq!(b.peek("c/2").await.unwrap().len(), 1);
    let held = b.wait(&request("e2", "c/2", 1)).await.unwrap().unwrap();
    assert_eq!(held.data, json!("x"));
    b.ack("e2", 1).await.unwrap();
    // Waiting again (a later step) takes the queued one at once.
    let next = b.wait(&request("e2", "c/2", 3)).await.unwrap().unwrap();
    assert_eq!(next.data, json!("y"));
    b.ack("e2", 3).await.unwrap();

    // Several waiters on one channel: one signal goes to all of them.
    for id in ["b1", "b2", "b3"] {
        assert!(b.wait(&request(id, "c/all", 2)).await.unwrap().is_none());
    }
    b.send("c/all", json!(1), keep()).await.unwrap();
    b.send("c/all", json!(2), keep()).await.unwrap();
    let mut woken = b.deliver("c/all").await.unwrap();
    woken.sort();
    assert_eq!(woken, vec!["b1", "b2", "b3"]);
    for w in b.waiters(Some("c/all")).await.unwrap() {
        assert_eq!(w.delivered.unwrap().data, json!(1));
    }
    assert_eq!(b.peek("c/all").await.unwrap()[0].data, json!(2));

    // Claims: one owner at a time, until released or expired.
    assert!(b.claim("b1", "d1", Duration::from_secs(60)).await.unwrap());
    assert!(!b.claim("b1", "d2", Duration::from_secs(60)).await.unwrap());
    assert!(b.claim("b1", "d1", Duration::from_secs(60)).await.unwrap());
    b.release("b1", "d2").await.unwrap(); // not d2's: nothing happens
    assert!(!b.claim("b1", "d2", Duration::from_secs(60)).await.unwrap());
    b.release("b1", "d1").await.unwrap();
    assert!(b.claim("b1", "d2", Duration::from_secs(60)).await.unwrap());
    assert!(b.claim("b2", "d1", Duration::ZERO).await.unwrap());
    assert!(b.claim("b2", "d2", Duration::from_secs(60)).await.unwrap());
    assert!(
        !b.claim("nobody", "d1", Duration::from_secs(60))
            .await
            .unwrap()
    );
    let claimed = b
        .waiters(Some("c/all"))
        .await
        .unwrap()
        .into_iter()
        .find(|w| w.execution_id == "b1")
        .unwrap();
    assert_eq!(claimed.claim.unwrap().0, "d2");

    // A new registration of an execution replaces its old one (and its channel).
    assert!(
        b.wait(&request("b3", "c/other", 5))
            .await
            .unwrap()
            .is_none()
    );
    assert_eq!(b.waiters(Some("c/all")).await.unwrap().len(), 2);
    assert_eq!(b.waiters(Some("c/other")).await.unwrap().len(), 1);
    b.forget("b3").await.unwrap();
    b.forget("b1").await.unwrap();
    b.forget("b2").await.unwrap();
    assert!(b.waiters(None).await.unwrap().is_empty());
    assert_eq!(b.consume("c/all").await.unwrap().unwrap().data, json!(2));

    // Order: oldest first; consume is the reference's plain take.
    for n in 0..5 {
        b.send("c/order", json!(n), keep()).await.unwrap();
    }
    let peeked: Vec<Value> = b
        .peek("c/order")
        .await
        .unwrap()
        .into_iter()
        .map(|s| s.data)
        .collect();
    assert_eq!(peeked, (0..5).map(|n| json!(n)).collect::<Vec<_>>());
    for n in 0..5 {
        assert_eq!(b.consume("c/order").await.unwrap().unwrap().data, json!(n));
    }
    assert!(b.consume("c/order").await.unwrap().is_none());

    // Retention: an expired signal is never delivered and is purged.
    b.send(
        "c/ttl",
        json!("old"),
        SendOptions::ttl(Duration::from_millis(30)),
    )
    .await
    .unwrap();
    b.send(
        "c/ttl2",
        json!("old"),
        SendOptions::ttl(Duration::from_millis(30)),
    )
    .await
    .unwrap();
    b.send("c/forever", json!("kept"), SendOptions::keep_until_taken())
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(80)).await;
    assert!(b.peek("c/ttl").await.unwrap().is_empty());
    assert_eq!(b.channels().await.unwrap(), vec!["c/forever"]);
    assert!(b.wait(&request("t1", "c/ttl", 1)).await.unwrap().is_none());
    assert_eq!(b.purge_expired().await.unwrap(), 1);
    assert_eq!(
        b.consume("c/forever").await.unwrap().unwrap().data,
        json!("kept")
    );
    b.forget("t1").await.unwrap();

    // Numbers keep every digit; bad input is refused, nothing stored.
    let big = json!({"n": 12345678901234567u64, "f": 0.1, "s": "ünï"});
    b.send("c/num", big.clone(), keep()).await.unwrap();
    assert_eq!(b.consume("c/num").await.unwrap().unwrap().data, big);
    for bad in ["", "a\nb"] {
        assert!(matches!(
            b.send(bad, json!(1), keep()).await,
            Err(SignalError::InvalidChannel { .. })
        ));
    }
    let huge = json!("x".repeat(flatmachine_runtime::signals::MAX_SIGNAL_DATA_LEN + 1));
    assert!(matches!(
        b.send("c/huge", huge, keep()).await,
        Err(SignalError::InvalidData(_))
    ));
    // Names with separators stay one channel.
    b.send("a:b%c/d", json!(1), keep()).await.unwrap();
    assert!(b.peek("a:b").await.unwrap().is_empty());
    assert_eq!(b.consume("a:b%c/d").await.unwrap().unwrap().data, json!(1));
    assert!(b.channels().await.unwrap().is_empty());
}

#[tokio::test]
async fn memory_backend_keeps_the_contract() {
    contract(Arc::new(MemorySignalBackend::new())).await;
}

#[tokio::test]
async fn sqlite_backend_keeps_the_contract() {
    let dir = tempfile::tempdir().unwrap();
    contract(Arc::new(
        SqliteSignalBackend::open(dir.path().join("s.sqlite")).unwrap(),
    ))
    .await;
}

#[tokio::test]
async fn redis_backend_keeps_the_contract() {
    let server = RedisServer::start();
    let conn = RedisConnection::open(&server.url(), "sigtest").unwrap();
    contract(Arc::new(RedisSignalBackend::new(conn))).await;
}

#[tokio::test]
async fn signals_the_reference_wrote_are_taken() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("flatmachines.sqlite");
    {
        // The reference's schema and rows (`SQLiteSignalBackend`), before we open the file.
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.execute_batch(
            "CREATE TABLE signals (id TEXT PRIMARY KEY, channel TEXT NOT NULL,
                data_json TEXT NOT NULL, created_at TEXT NOT NULL);
             CREATE INDEX idx_signals_channel ON signals(channel, created_at ASC);
             INSERT INTO signals VALUES ('p1', 'approval/py', '{\"decision\": \"approve\", \"by\": \"py\"}',
                '2026-01-01T00:00:00+00:00');",
        )
        .unwrap();
    }
    let signals: Arc<dyn SignalBackend> = Arc::new(SqliteSignalBackend::open(&path).unwrap());
    assert_eq!(signals.channels().await.unwrap(), vec!["approval/py"]);
    let machine = Machine::of::<approval::Machine>()
        .persistence(CheckpointStore::memory())
        .signal_backend(signals.clone())
        .build()
        .unwrap();
    let done = machine
        .run_with_id("from-py", json!({"ticket": "py"}))
        .await
        .unwrap();
    assert_eq!(done.output, json!({"decision": "approve", "by": "py"}));
    // And a signal we send is a row the reference reads (`data_json`, `created_at`).
    signals
        .send("to/py", json!({"k": 1}), SendOptions::default())
        .await
        .unwrap();
    let conn = rusqlite::Connection::open(&path).unwrap();
    let (data, at): (String, String) = conn
        .query_row(
            "SELECT data_json, created_at FROM signals WHERE channel = 'to/py'",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!(
        serde_json::from_str::<Value>(&data).unwrap(),
        json!({"k": 1})
    );
    assert!(at.ends_with("+00:00"), "{at}");
}

/// One shared setup: checkpoints and signals in SQLite in `dir`, or on the Redis server at
/// `redis` (keys under one prefix); locks and notes in `dir`.
struct Shared {
    dir: PathBuf,
    redis: Option<String>,
}

impl Shared {
    fn new(dir: &Path) -> Self {
        Self {
            dir: dir.to_path_buf(),
            redis: None,
        }
    }

    fn redis(dir: &Path, url: &str) -> Self {
        Self {
            dir: dir.to_path_buf(),
            redis: Some(url.to_string()),
        }
    }

    fn redis_conn(&self) -> Option<RedisConnection> {
        self.redis
            .as_deref()
            .map(|url| RedisConnection::open(url, "sigproc").unwrap())
    }

    fn db(&self) -> PathBuf {
        self.dir.join("app.sqlite")
    }

    fn store(&self) -> CheckpointStore {
        match self.redis_conn() {
            Some(conn) => CheckpointStore::new(Arc::new(
                flatmachine_runtime::redis_backends::RedisPersistence::new(conn),
            )),
            None => CheckpointStore::sqlite(self.db()).unwrap(),
        }
    }

    fn signals(&self) -> Arc<dyn SignalBackend> {
        match self.redis_conn() {
            Some(conn) => Arc::new(RedisSignalBackend::new(conn)),
            None => Arc::new(SqliteSignalBackend::open(self.db()).unwrap()),
        }
    }

    /// The race machine: `note` appends `execution_id got pid` to `notes.txt`.
    fn race_machine(&self) -> Machine {
        let notes = self.dir.join("notes.txt");
        Machine::of::<race::Machine>()
            .persistence(self.store())
            .signal_backend(self.signals())
            .lock_dir(self.dir.join("locks"))
            .action_mut("note", move |ctx, call| {
                let line = format!(
                    "{} {} {}\n",
                    call.execution_id,
                    ctx.get("got").cloned().unwrap_or(Value::Null),
                    std::process::id()
                );
                let notes = notes.clone();
                Box::pin(async move {
                    use std::io::Write;
                    let mut f = std::fs::OpenOptions::new()
                        .create(true)
                        .append(true)
                        .open(notes)
                        .map_err(|e| {
                            flatmachine_runtime::StateError::new("IoError", e.to_string())
                        })?;
                    f.write_all(line.as_bytes())
                        .map_err(|e| flatmachine_runtime::StateError::new("IoError", e.to_string()))
                })
            })
            .build()
            .unwrap()
    }

    fn timed_machine(&self) -> Machine {
        Machine::of::<timed_short::Machine>()
            .persistence(self.store())
            .signal_backend(self.signals())
            .lock_dir(self.dir.join("locks"))
            .build()
            .unwrap()
    }
}

/// Runs `test` of this binary in a child process with `FM_SIGNALS_CHILD=role` on `shared`.
fn child(test: &str, role: &str, shared: &Shared) -> std::process::Child {
    let mut command = Command::new(std::env::current_exe().unwrap());
    command
        .args([test, "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD, role)
        .env("FM_SIGNALS_DIR", &shared.dir);
    match &shared.redis {
        Some(url) => command.env("FM_SIGNALS_REDIS", url),
        None => command.env_remove("FM_SIGNALS_REDIS"),
    };
    command.spawn().unwrap()
}

fn child_env() -> Option<(String, Shared)> {
    let role = std::env::var(CHILD).ok()?;
    let dir = std::env::var("FM_SIGNALS_DIR").ok()?;
    let shared = match std::env::var("FM_SIGNALS_REDIS") {
        Ok(url) => Shared::redis(Path::new(&dir), &url),
        Err(_) => Shared::new(Path::new(&dir)),
    };
    Some((role, shared))
}

/// Child process: `park` runs `p-0`…`p-9` until they wait, then exits; `dispatch` runs
/// dispatch rounds until no waiter is left; `timed` starts the short-timeout run.
#[tokio::test]
async fn child_process() {
    let Some((role, shared)) = child_env() else {
        return;
    };
    match role.as_str() {
        "park" => {
            let machine = shared.race_machine();
            for i in 0..10 {
                let r = machine
                    .run_with_id(format!("p-{i}"), json!({"id": i}))
                    .await
                    .unwrap();
                assert!(r.is_waiting());
            }
        }
        "dispatch" => {
            let machine = shared.race_machine();
            let dispatcher = Dispatcher::new(&machine);
            let signals = machine.signal_backend().clone();
            let deadline = std::time::Instant::now() + Duration::from_secs(120);
            while !signals.waiters(None).await.unwrap().is_empty() {
                assert!(
                    std::time::Instant::now() < deadline,
                    "dispatching took too long"
                );
                dispatcher.dispatch_once().await.unwrap();
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
        "timed" => {
            let r = shared
                .timed_machine()
                .run_with_id("tm", json!({"id": "x"}))
                .await
                .unwrap();
            assert!(r.waiting().unwrap().deadline.is_some());
        }
        other => panic!("unknown child role {other}"),
    }
}

#[tokio::test]
async fn runs_parked_by_one_process_are_resumed_by_another() {
    let dir = tempfile::tempdir().unwrap();
    parked_then_resumed_by_another_process(Shared::new(dir.path())).await;
}

#[tokio::test]
async fn redis_runs_parked_by_one_process_are_resumed_by_another() {
    let server = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    parked_then_resumed_by_another_process(Shared::redis(dir.path(), &server.url())).await;
}

async fn parked_then_resumed_by_another_process(shared: Shared) {
    let status = child("child_process", "park", &shared).wait().unwrap();
    assert!(status.success());
    // The parking process is gone; this one sees ten waiting runs and resumes them.
    let machine = shared.race_machine();
    let runs = flatmachine_runtime::signals::waiting_runs(
        machine.store().unwrap(),
        Some(machine.signal_backend().as_ref()),
    )
    .await
    .unwrap();
    assert_eq!(runs.len(), 10);
    assert!(runs.iter().all(|r| r.registered == Some(true)));
    for i in 0..10 {
        machine
            .signal_backend()
            .send(&format!("job/{i}"), json!(i * 10), SendOptions::default())
            .await
            .unwrap();
    }
    let report = Dispatcher::new(&machine).dispatch_once().await.unwrap();
    assert_eq!(report.resumed().filter(|r| r.is_finished()).count(), 10);
    let notes = std::fs::read_to_string(shared.dir.join("notes.txt")).unwrap();
    assert_eq!(notes.lines().count(), 10);
}

#[tokio::test]
async fn dispatchers_in_three_processes_consume_each_signal_once() {
    let dir = tempfile::tempdir().unwrap();
    let shared = Shared::new(dir.path());
    let machine = shared.race_machine();
    let n = 60;
    for i in 0..n {
        machine
            .run_with_id(format!("r-{i}"), json!({"id": i}))
            .await
            .unwrap();
    }
    // Two signals per channel: each run must take exactly the first, the second stays.
    for i in 0..n {
        for k in 0..2 {
            machine
                .signal_backend()
                .send(
                    &format!("job/{i}"),
                    json!(format!("{i}-{k}")),
                    SendOptions::default(),
                )
                .await
                .unwrap();
        }
    }
    let children: Vec<_> = (0..3)
        .map(|_| child("child_process", "dispatch", &shared))
        .collect();
    for mut c in children {
        assert!(c.wait().unwrap().success());
    }
    let notes = std::fs::read_to_string(dir.path().join("notes.txt")).unwrap();
    let mut lines: Vec<(String, String)> = notes
        .lines()
        .map(|l| {
            let mut parts = l.split(' ');
            (
                parts.next().unwrap().to_string(),
                parts.next().unwrap().to_string(),
            )
        })
        .collect();
    lines.sort();
    let expected: Vec<(String, String)> = {
        let mut v: Vec<_> = (0..n)
            .map(|i| (format!("r-{i}"), format!("\"{i}-0\"")))
            .collect();
        v.sort();
        v
    };
    assert_eq!(lines, expected, "every run once, with its first signal");
    let pids: std::collections::HashSet<&str> =
        notes.lines().filter_map(|l| l.split(' ').nth(2)).collect();
    eprintln!("runs resumed by {} processes", pids.len());
    for i in 0..n {
        let left = machine
            .signal_backend()
            .peek(&format!("job/{i}"))
            .await
            .unwrap();
        assert_eq!(left.len(), 1);
        assert_eq!(left[0].data, json!(format!("{i}-1")));
        let latest = machine
            .store()
            .unwrap()
            .load_latest(&format!("r-{i}"))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(latest.event.as_deref(), Some(checkpoint_event::MACHINE_END));
    }
}

#[tokio::test]
async fn a_deadline_survives_a_real_restart() {
    let dir = tempfile::tempdir().unwrap();
    deadline_across_a_restart(Shared::new(dir.path())).await;
}

#[tokio::test]
async fn redis_a_deadline_survives_a_real_restart() {
    let server = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    deadline_across_a_restart(Shared::redis(dir.path(), &server.url())).await;
}

/// A run parks with a deadline in a process that then exits; this process resumes it before
/// the deadline (it waits again, same deadline) and dispatches until the deadline routes it.
async fn deadline_across_a_restart(shared: Shared) {
    assert!(
        child("child_process", "timed", &shared)
            .wait()
            .unwrap()
            .success()
    );
    let machine = shared.timed_machine();
    let parked = machine
        .store()
        .unwrap()
        .load_latest("tm")
        .await
        .unwrap()
        .unwrap();
    let deadline = parked.wait_deadline.clone().unwrap();
    // Resumed before the deadline: it waits again, with the same deadline.
    let again = machine.resume("tm").await.unwrap();
    assert_eq!(
        again.waiting().unwrap().deadline.as_deref(),
        Some(deadline.as_str())
    );
    let dispatcher = Dispatcher::new(&machine);
    let mut finished = None;
    let start = std::time::Instant::now();
    while finished.is_none() {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the deadline never fired"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
        let report = dispatcher.dispatch_once().await.unwrap();
        finished = report.resumed().next().cloned();
    }
    let done = finished.unwrap();
    assert_eq!(done.final_state, "timed_out");
    assert_eq!(done.output, json!({"error": "SignalTimeout"}));
    let now = flatmachine_runtime::signals::now_millis();
    assert!(now >= flatmachine_runtime::signals::millis_from_iso(&deadline).unwrap());
}

#[tokio::test]
async fn sqlite_a_thousand_waiting_runs_are_resumed_by_one_dispatcher() {
    let dir = tempfile::tempdir().unwrap();
    let shared = Shared::new(dir.path());
    let machine = Machine::of::<approval::Machine>()
        .persistence(shared.store())
        .signal_backend(shared.signals())
        .lock(Arc::new(flatmachine_runtime::lock::NoOpLock))
        .build()
        .unwrap();
    for i in 0..1000 {
        let r = machine
            .run_with_id(format!("k-{i}"), json!({"ticket": i}))
            .await
            .unwrap();
        assert!(r.is_waiting());
        machine
            .signal_backend()
            .send(
                &format!("approval/{i}"),
                json!({"decision": "approve", "by": i}),
                SendOptions::default(),
            )
            .await
            .unwrap();
    }
    let report = Dispatcher::new(&machine).dispatch_once().await.unwrap();
    assert_eq!(report.delivered, 1000);
    assert_eq!(report.resumed().filter(|r| r.is_finished()).count(), 1000);
    assert!(
        machine
            .signal_backend()
            .waiters(None)
            .await
            .unwrap()
            .is_empty()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_dispatchers_on_separate_connections_consume_each_signal_once() {
    let server = RedisServer::start();
    let notes = Arc::new(std::sync::Mutex::new(Vec::<(String, Value)>::new()));
    let store = CheckpointStore::new(Arc::new(
        flatmachine_runtime::redis_backends::RedisPersistence::new(
            RedisConnection::open(&server.url(), "sigrace").unwrap(),
        ),
    ));
    let build = |notes: Arc<std::sync::Mutex<Vec<(String, Value)>>>| {
        let conn = RedisConnection::open(&server.url(), "sigrace").unwrap();
        Machine::of::<race::Machine>()
            .persistence(store.clone())
            .signal_backend(Arc::new(RedisSignalBackend::new(conn.clone())))
            .lock(Arc::new(
                flatmachine_runtime::redis_backends::RedisLock::new(conn),
            ))
            .action_mut("note", move |ctx, call| {
                let got = ctx.get("got").cloned().unwrap_or(Value::Null);
                notes
                    .lock()
                    .unwrap()
                    .push((call.execution_id.to_string(), got));
                Box::pin(async { Ok(()) })
            })
            .build()
            .unwrap()
    };
    let a = build(notes.clone());
    let b = build(notes.clone());
    let n = 100;
    for i in 0..n {
        let r = a
            .run_with_id(format!("r-{i}"), json!({"id": i}))
            .await
            .unwrap();
        assert!(r.is_waiting());
        for k in 0..2 {
            a.signal_backend()
                .send(
                    &format!("job/{i}"),
                    json!(format!("{i}-{k}")),
                    SendOptions::default(),
                )
                .await
                .unwrap();
        }
    }
    let run = |m: Machine| {
        tokio::spawn(async move {
            let dispatcher = Dispatcher::new(&m);
            let start = std::time::Instant::now();
            while !m.signal_backend().waiters(None).await.unwrap().is_empty() {
                assert!(start.elapsed() < Duration::from_secs(120));
                dispatcher.dispatch_once().await.unwrap();
            }
        })
    };
    let (ra, rb) = tokio::join!(run(a.clone()), run(b.clone()));
    ra.unwrap();
    rb.unwrap();
    let mut got = notes.lock().unwrap().clone();
    got.sort_by(|x, y| x.0.cmp(&y.0));
    let mut expected: Vec<(String, Value)> = (0..n)
        .map(|i| (format!("r-{i}"), json!(format!("{i}-0"))))
        .collect();
    expected.sort_by(|x, y| x.0.cmp(&y.0));
    assert_eq!(got, expected, "every run once, with its first signal");
    for i in 0..n {
        let left = a.signal_backend().peek(&format!("job/{i}")).await.unwrap();
        assert_eq!(left.len(), 1);
        assert_eq!(left[0].data, json!(format!("{i}-1")));
    }
}

/// Fingerprint checks and forks on shared storage: a build of another shape is refused (resume,
/// dispatch, fork) naming both hashes; a fork from a waiting run records its origin, waits on
/// its own channel and gets none of the source's signal; opting in lets the new build go on.
async fn fork_and_fingerprint(store: CheckpointStore, signals: Arc<dyn SignalBackend>) {
    let v1 = Machine::of::<approval::Machine>()
        .persistence(store.clone())
        .signal_backend(signals.clone())
        .lock(Arc::new(flatmachine_runtime::lock::NoOpLock))
        .build()
        .unwrap();
    let v2 = Machine::of::<edited::approval::Machine>()
        .persistence(store.clone())
        .signal_backend(signals.clone())
        .lock(Arc::new(flatmachine_runtime::lock::NoOpLock))
        .build()
        .unwrap();
    assert!(
        v1.run_with_id("fp-1", json!({"ticket": "one"}))
            .await
            .unwrap()
            .is_waiting()
    );
    let latest = store.load_latest("fp-1").await.unwrap().unwrap();
    assert_eq!(
        latest.config_hash.as_deref(),
        Some(approval::SPEC.config_hash)
    );

    let err = v2.resume("fp-1").await.unwrap_err();
    let text = err.to_string();
    assert!(
        matches!(err, RunError::FingerprintMismatch { .. }),
        "{text}"
    );
    assert!(text.contains(approval::SPEC.config_hash), "{text}");
    assert!(text.contains(edited::approval::SPEC.config_hash), "{text}");
    assert!(matches!(
        v2.fork("fp-1", ForkOptions::new()).await.unwrap_err(),
        RunError::FingerprintMismatch { .. }
    ));

    let fork = fork_execution(
        &store,
        "fp-1",
        &ForkOptions::new()
            .set("ticket", json!("two"))
            .execution_id("fp-fork"),
    )
    .await
    .unwrap();
    assert_eq!(fork.from.execution_id, "fp-1");
    let forked = v1.resume("fp-fork").await.unwrap();
    assert_eq!(forked.waiting().unwrap().channel, "approval/two");
    let snap = store.load_latest("fp-fork").await.unwrap().unwrap();
    let origin = snap.forked_from.expect("the fork records its origin");
    assert_eq!(
        (origin.execution_id.as_str(), origin.step),
        ("fp-1", fork.from.step)
    );
    assert_eq!(snap.parent_execution_id, None);

    // The source's signal wakes the source only.
    signals
        .send(
            "approval/one",
            json!({"decision": "approve", "by": "src"}),
            SendOptions::default(),
        )
        .await
        .unwrap();
    let report = Dispatcher::new(&v1).dispatch_once().await.unwrap();
    let ids: Vec<&str> = report.resumed().map(|r| r.execution_id.as_str()).collect();
    assert_eq!(ids, vec!["fp-1"]);
    assert_eq!(signals.waiters(None).await.unwrap().len(), 1);

    // The fork's signal, through v2's dispatcher: refused, then taken once opted in.
    signals
        .send(
            "approval/two",
            json!({"decision": "approve", "by": "v2"}),
            SendOptions::default(),
        )
        .await
        .unwrap();
    let refused = Dispatcher::new(&v2).dispatch_once().await.unwrap();
    assert!(matches!(
        refused.failures().next().unwrap().1,
        RunError::FingerprintMismatch { .. }
    ));
    let done = v2
        .resume_with(
            "fp-fork",
            ResumeOptions::new().allow_fingerprint_change(true),
        )
        .await
        .unwrap();
    assert_eq!(done.output, json!({"decision": "approve", "by": "v2"}));
    let latest = store.load_latest("fp-fork").await.unwrap().unwrap();
    assert_eq!(
        latest.config_hash.as_deref(),
        Some(edited::approval::SPEC.config_hash)
    );
}

#[tokio::test]
async fn sqlite_forks_and_fingerprint_checks() {
    let dir = tempfile::tempdir().unwrap();
    let shared = Shared::new(dir.path());
    fork_and_fingerprint(shared.store(), shared.signals()).await;
}

#[tokio::test]
async fn redis_forks_and_fingerprint_checks() {
    let server = RedisServer::start();
    let conn = RedisConnection::open(&server.url(), "sigfork").unwrap();
    let store = CheckpointStore::new(Arc::new(
        flatmachine_runtime::redis_backends::RedisPersistence::new(conn.clone()),
    ));
    fork_and_fingerprint(store, Arc::new(RedisSignalBackend::new(conn))).await;
}

#[tokio::test]
async fn redis_a_thousand_waiting_runs_are_resumed_by_one_dispatcher() {
    let server = RedisServer::start();
    let conn = RedisConnection::open(&server.url(), "sig1000").unwrap();
    let store = CheckpointStore::new(Arc::new(
        flatmachine_runtime::redis_backends::RedisPersistence::new(conn.clone()),
    ));
    let machine = Machine::of::<approval::Machine>()
        .persistence(store)
        .signal_backend(Arc::new(RedisSignalBackend::new(conn)))
        .lock(Arc::new(flatmachine_runtime::lock::NoOpLock))
        .build()
        .unwrap();
    for i in 0..1000 {
        let r = machine
            .run_with_id(format!("k-{i}"), json!({"ticket": i}))
            .await
            .unwrap();
        assert!(r.is_waiting());
        machine
            .signal_backend()
            .send(
                &format!("approval/{i}"),
                json!({"decision": "approve", "by": i}),
                SendOptions::default(),
            )
            .await
            .unwrap();
    }
    let report = Dispatcher::new(&machine).dispatch_once().await.unwrap();
    assert_eq!(report.delivered, 1000);
    let finished: Vec<_> = report.resumed().filter(|r| r.is_finished()).collect();
    assert_eq!(finished.len(), 1000);
    assert!(
        finished
            .iter()
            .all(|r| r.output["decision"] == json!("approve"))
    );
    assert!(
        machine
            .signal_backend()
            .waiters(None)
            .await
            .unwrap()
            .is_empty()
    );
}
