//! Execution locks through the public API.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use flatmachine_runtime::StateError;
use flatmachine_runtime::lock::{ExecutionLock, LocalFileLock, LockError, LockGuard, NoOpLock};

const HOLDER_ENV: &str = "FLATMACHINE_TEST_LOCK_HOLDER_DIR";
const HELD_MARKER: &str = "FLATMACHINE-TEST-LOCK-HELD";

#[tokio::test]
async fn noop_lock_always_acquires() {
    let lock = NoOpLock;
    let a = lock.acquire("e").await.unwrap();
    let b = lock.acquire("e").await.unwrap();
    assert_eq!((a.execution_id(), b.execution_id()), ("e", "e"));
}

#[tokio::test]
async fn second_holder_is_refused_until_the_first_drops() {
    let dir = tempfile::tempdir().unwrap();
    let first = LocalFileLock::new(dir.path());
    let second = LocalFileLock::new(dir.path());

    let guard = first.acquire("exec-1").await.unwrap();
    assert_eq!(guard.execution_id(), "exec-1");
    assert!(dir.path().join("exec-1.lock").is_file());

    let err = second.acquire("exec-1").await.unwrap_err();
    match &err {
        LockError::Held { execution_id } => assert_eq!(execution_id, "exec-1"),
        other => panic!("{other}"),
    }
    assert!(err.to_string().contains("exec-1"), "{err}");
    // The same instance is refused too (every acquire is a new holder).
    assert!(matches!(
        first.acquire("exec-1").await,
        Err(LockError::Held { .. })
    ));
    // Other ids are independent.
    let other = second.acquire("exec-2").await.unwrap();

    drop(guard);
    let again = second.acquire("exec-1").await.unwrap();
    assert!(matches!(
        first.acquire("exec-1").await,
        Err(LockError::Held { .. })
    ));
    again.release();
    first.acquire("exec-1").await.unwrap().release();
    drop(other);
    // Lock files stay (as in the reference).
    assert!(dir.path().join("exec-1.lock").is_file());
}

#[tokio::test]
async fn concurrent_acquires_have_exactly_one_winner() {
    let dir = tempfile::tempdir().unwrap();
    let lock = Arc::new(LocalFileLock::new(dir.path().join("nested/locks")));
    let mut tasks = Vec::new();
    for _ in 0..16 {
        let lock = Arc::clone(&lock);
        tasks.push(tokio::spawn(async move { lock.acquire("same").await }));
    }
    let mut winners = Vec::new();
    let mut held = 0;
    for task in tasks {
        match task.await.unwrap() {
            Ok(guard) => winners.push(guard),
            Err(LockError::Held { .. }) => held += 1,
            Err(other) => panic!("{other}"),
        }
    }
    assert_eq!((winners.len(), held), (1, 15));
}

#[tokio::test]
async fn invalid_execution_ids_are_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let lock = LocalFileLock::new(dir.path().join("locks"));
    for id in ["", "..", "../x", "a/b", "/abs", ".hidden", "a\\b", "a\0b"] {
        let err = lock.acquire(id).await.unwrap_err();
        assert!(matches!(err, LockError::InvalidId(_)), "{id:?}: {err}");
        assert!(lock.lock_path(id).is_err());
    }
    assert_eq!(
        lock.lock_path("abc").unwrap(),
        dir.path().join("locks").join("abc.lock")
    );
    assert!(!dir.path().join("x.lock").exists());
}

#[test]
fn defaults_and_error_conversion() {
    assert_eq!(LocalFileLock::default().dir(), Path::new(".locks"));
    assert_eq!(LocalFileLock::DEFAULT_DIR, ".locks");
    let state: StateError = LockError::Held {
        execution_id: "e".into(),
    }
    .into();
    assert_eq!(state.error_type, "LockError");
    assert!(state.message.contains("`e`"));
}

#[test]
fn custom_guard_releases_exactly_once() {
    let count = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&count);
    let guard = LockGuard::new("e", move || {
        counter.fetch_add(1, Ordering::SeqCst);
    });
    assert!(format!("{guard:?}").contains("\"e\""));
    guard.release();
    assert_eq!(count.load(Ordering::SeqCst), 1);
    drop(LockGuard::unguarded("e"));
}

/// Not a test on its own: when started by `lock_of_a_killed_process_is_released` (with
/// `FLATMACHINE_TEST_LOCK_HOLDER_DIR` set), takes the lock, prints [`HELD_MARKER`] and waits to be
/// killed. Without the variable it does nothing.
#[tokio::test]
async fn lock_holder_child_process() {
    let Ok(dir) = std::env::var(HOLDER_ENV) else {
        return;
    };
    let _guard = LocalFileLock::new(dir).acquire("crashy").await.unwrap();
    println!("{HELD_MARKER}");
    // Killed long before this ends; the timeout only bounds an orphan.
    std::thread::sleep(Duration::from_secs(60));
}

#[tokio::test]
async fn lock_of_a_killed_process_is_released() {
    let dir = tempfile::tempdir().unwrap();
    let exe = match std::env::current_exe() {
        Ok(exe) => exe,
        Err(error) => {
            eprintln!("skipped: cannot find the test binary to re-execute: {error}");
            return;
        }
    };
    let spawned = Command::new(exe)
        .args([
            "--exact",
            "lock_holder_child_process",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(HOLDER_ENV, dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn();
    let mut child = match spawned {
        Ok(child) => child,
        Err(error) => {
            eprintln!("skipped: cannot spawn a child process: {error}");
            return;
        }
    };
    let stdout = child.stdout.take().unwrap();
    let saw_locked = BufReader::new(stdout)
        .lines()
        .map_while(Result::ok)
        .any(|line| line.contains(HELD_MARKER));
    if !saw_locked {
        let _ = child.kill();
        let _ = child.wait();
        panic!("the child process never reported holding the lock");
    }

    let lock = LocalFileLock::new(dir.path());
    let err = lock.acquire("crashy").await.unwrap_err();
    assert!(matches!(err, LockError::Held { .. }), "{err}");

    child.kill().unwrap(); // SIGKILL: no destructor runs in the child
    child.wait().unwrap();
    let guard = lock
        .acquire("crashy")
        .await
        .expect("released by the OS when the holder died");
    assert_eq!(guard.execution_id(), "crashy");
}
