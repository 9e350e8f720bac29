//! Execution locks: at most one run of an execution id at a time.
//!
//! The reference's `ExecutionLock` has `acquire(key) -> bool` and `release(key)`. Here
//! [`ExecutionLock::acquire`] returns a [`LockGuard`] (or [`LockError::Held`] when another
//! holder has the lock), and the lock is released when the guard is dropped or
//! [`released`](LockGuard::release) — so an early return or a panic cannot leak it.
//!
//! * [`NoOpLock`] — always succeeds (locking disabled or handled elsewhere).
//! * [`LocalFileLock`] — an exclusive, non-blocking `flock` on `<dir>/<execution_id>.lock`
//!   (default dir `.locks`, like the reference). It works across processes and within one
//!   process (every acquire opens the file anew), and the operating system releases it when
//!   the holder exits or crashes. Lock files are left in place after release, as in the
//!   reference. They are created `0600` in a `0700` directory (Unix), never through a symlink.

use std::error::Error as StdError;
use std::fmt;
use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use async_trait::async_trait;

use crate::StateError;
use crate::persistence::{InvalidKey, validate_execution_id};

/// The `error_type` given to a [`LockError`] converted into a [`StateError`].
pub const LOCK_ERROR_TYPE: &str = "LockError";

/// An error acquiring an execution lock.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LockError {
    /// The lock is held by another holder (another process, or another run in this one).
    #[error(
        "execution `{execution_id}` is already running: its lock is held by another run or process"
    )]
    Held {
        /// The execution id whose lock is held.
        execution_id: String,
    },
    /// The execution id cannot name a lock file.
    #[error("invalid execution id for locking: {0}")]
    InvalidId(#[from] InvalidKey),
    /// A file-system operation failed.
    #[error("could not {op} lock file {}: {source}", path.display())]
    Io {
        /// What was being done.
        op: &'static str,
        /// The path involved.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// Any other failure (for custom lock implementations).
    #[error("lock error: {0}")]
    Other(Box<dyn StdError + Send + Sync>),
}

impl From<LockError> for StateError {
    fn from(error: LockError) -> Self {
        StateError::new(LOCK_ERROR_TYPE, error.to_string())
    }
}

/// A hold of an execution lock that a checkpoint store in the same *fencing domain* (the
/// same server and key space, see
/// [`PersistenceBackend::fencing_domain`](crate::persistence::PersistenceBackend::fencing_domain))
/// may act on in the same operation as a batch of checkpoints, sparing the lock its own round
/// trips:
///
/// * **release** with the run's last checkpoint ([`mark_released`](Self::mark_released): the
///   guard's own release then does nothing remote);
/// * **acquire** with the first checkpoint of a fresh execution
///   ([`ExecutionLock::acquire_fresh`]): the hold starts *pending* and the store's script takes
///   the lock (with the fencing token the guard announced) before it writes anything, then
///   calls [`mark_acquired`](Self::mark_acquired).
///
/// Clones share the state.
#[derive(Clone)]
pub struct StoreHold {
    inner: Arc<HoldInner>,
}

struct HoldInner {
    domain: Arc<str>,
    token: Arc<str>,
    lease_ms: u64,
    /// 0 pending (not acquired yet), 1 held, 2 released by a store.
    state: std::sync::atomic::AtomicU8,
    on_acquired: std::sync::Mutex<Option<Box<dyn FnOnce() + Send>>>,
}

impl fmt::Debug for StoreHold {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StoreHold")
            .field("domain", &self.inner.domain)
            .field("acquired", &self.is_acquired())
            .field("released", &self.is_released())
            .finish_non_exhaustive()
    }
}

const PENDING: u8 = 0;
const HELD: u8 = 1;
const RELEASED: u8 = 2;

impl StoreHold {
    fn with_state(
        domain: impl Into<Arc<str>>,
        token: impl Into<Arc<str>>,
        lease_ms: u64,
        state: u8,
        on_acquired: Option<Box<dyn FnOnce() + Send>>,
    ) -> Self {
        Self {
            inner: Arc::new(HoldInner {
                domain: domain.into(),
                token: token.into(),
                lease_ms,
                state: std::sync::atomic::AtomicU8::new(state),
                on_acquired: std::sync::Mutex::new(on_acquired),
            }),
        }
    }

    /// A hold already taken, in `domain`, whose lock value is `token` (a store releases it
    /// only while the lock still holds that value).
    pub fn held(domain: impl Into<Arc<str>>, token: impl Into<Arc<str>>) -> Self {
        Self::with_state(domain, token, 0, HELD, None)
    }

    /// A hold not taken yet: the first checkpoint batch of the execution takes the lock with
    /// value `token` and a lease of `lease_ms`, then runs `on_acquired` (e.g. to start renewing
    /// the lease).
    pub fn pending(
        domain: impl Into<Arc<str>>,
        token: impl Into<Arc<str>>,
        lease_ms: u64,
        on_acquired: impl FnOnce() + Send + 'static,
    ) -> Self {
        Self::with_state(
            domain,
            token,
            lease_ms,
            PENDING,
            Some(Box::new(on_acquired)),
        )
    }

    /// The fencing domain of the lock.
    pub fn domain(&self) -> &str {
        &self.inner.domain
    }

    /// The value the lock holds while this hold lives.
    pub fn token(&self) -> &str {
        &self.inner.token
    }

    /// The lease a pending hold is taken with, in milliseconds.
    pub fn lease_ms(&self) -> u64 {
        self.inner.lease_ms
    }

    /// Records that a store took the lock (runs the `on_acquired` of [`pending`](Self::pending)).
    pub fn mark_acquired(&self) {
        if self
            .inner
            .state
            .compare_exchange(PENDING, HELD, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            let callback = self
                .inner
                .on_acquired
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .take();
            if let Some(callback) = callback {
                callback();
            }
        }
    }

    /// Drops the `on_acquired` callback of a pending hold that will not be taken any more (a
    /// lock's guard calls it when dropped before any checkpoint took the hold).
    pub fn abandon(&self) {
        self.inner
            .on_acquired
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
    }

    /// Whether the lock was taken (always, for a hold made [`held`](Self::held)).
    pub fn is_acquired(&self) -> bool {
        self.inner.state.load(Ordering::Acquire) != PENDING
    }

    /// Records that a store released the hold (the guard then skips its own release).
    pub fn mark_released(&self) {
        self.inner.state.store(RELEASED, Ordering::Release);
    }

    /// Whether a store released the hold.
    pub fn is_released(&self) -> bool {
        self.inner.state.load(Ordering::Acquire) == RELEASED
    }
}

/// What a batch of checkpoints does to its execution's lock (see
/// [`PersistenceBackend::save_encoded_batch`](crate::persistence::PersistenceBackend::save_encoded_batch)):
/// take `hold` first if it is still pending, and release it after the checkpoints when
/// `release`.
#[derive(Debug, Clone, Copy)]
pub struct HoldOps<'a> {
    /// The hold.
    pub hold: &'a StoreHold,
    /// Release it after the batch (the run's last checkpoint).
    pub release: bool,
}

/// Proof of holding an execution lock; releases it when dropped.
#[must_use = "the lock is released as soon as the guard is dropped"]
pub struct LockGuard {
    execution_id: String,
    fencing_token: Option<u64>,
    hold: Option<StoreHold>,
    release: Option<Box<dyn FnOnce() + Send + Sync>>,
}

impl LockGuard {
    /// A guard that runs `release` once, when dropped or released (for custom locks; a lock
    /// needing async release can spawn a task from it).
    pub fn new(
        execution_id: impl Into<String>,
        release: impl FnOnce() + Send + Sync + 'static,
    ) -> Self {
        Self {
            execution_id: execution_id.into(),
            fencing_token: None,
            hold: None,
            release: Some(Box::new(release)),
        }
    }

    /// A guard with nothing to release (used by [`NoOpLock`]).
    pub fn unguarded(execution_id: impl Into<String>) -> Self {
        Self {
            execution_id: execution_id.into(),
            fencing_token: None,
            hold: None,
            release: None,
        }
    }

    /// The locked execution id.
    pub fn execution_id(&self) -> &str {
        &self.execution_id
    }

    /// Attaches a fencing token: a number that grows with every acquire of this execution's
    /// lock, written into checkpoints so a store can refuse writes from a holder whose lock
    /// expired (see `RedisLock`).
    pub fn with_fencing_token(mut self, token: u64) -> Self {
        self.fencing_token = Some(token);
        self
    }

    /// The fencing token of this hold, if the lock issues them.
    pub fn fencing_token(&self) -> Option<u64> {
        self.fencing_token
    }

    /// Lets a checkpoint store of the same fencing domain release (or, pending, take) this
    /// hold with the run's checkpoints (see [`StoreHold`]); the `release` closure given to
    /// [`new`](Self::new) should check [`StoreHold::is_released`] and
    /// [`StoreHold::is_acquired`].
    pub fn with_store_hold(mut self, hold: StoreHold) -> Self {
        self.hold = Some(hold);
        self
    }

    /// The hold a checkpoint store may act on, if the lock allows it.
    pub fn store_hold(&self) -> Option<&StoreHold> {
        self.hold.as_ref()
    }

    /// Releases the lock now (same as dropping the guard).
    pub fn release(self) {
        drop(self);
    }
}

impl Drop for LockGuard {
    fn drop(&mut self) {
        if let Some(release) = self.release.take() {
            release();
        }
    }
}

impl fmt::Debug for LockGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LockGuard")
            .field("execution_id", &self.execution_id)
            .finish_non_exhaustive()
    }
}

/// Concurrency control for runs: one holder per execution id at a time.
#[async_trait]
pub trait ExecutionLock: Send + Sync {
    /// Takes the lock for `execution_id` without waiting: a guard if it was free,
    /// [`LockError::Held`] if another holder has it.
    async fn acquire(&self, execution_id: &str) -> Result<LockGuard, LockError>;

    /// Takes the lock of an execution no checkpoint names yet (a run that just made up its
    /// id). A lock whose keys live with the checkpoints (the same
    /// [`fencing_domain`](Self::fencing_domain) as the store) may return a guard whose
    /// [`StoreHold`] is still pending: the execution's first checkpoint batch takes the lock
    /// in the same operation, with fencing token 1 (the guard's), and fails if the lock is
    /// held or has issued tokens before. Nothing can race for the lock before that: no one
    /// knows the id until a checkpoint names it. The default calls [`acquire`](Self::acquire).
    async fn acquire_fresh(&self, execution_id: &str) -> Result<LockGuard, LockError> {
        self.acquire(execution_id).await
    }

    /// The fencing domain of this lock (see
    /// [`PersistenceBackend::fencing_domain`](crate::persistence::PersistenceBackend::fencing_domain));
    /// `None` (the default): no store shares it.
    fn fencing_domain(&self) -> Option<String> {
        None
    }
}

/// A lock that always succeeds (the reference's `NoOpLock`; the default without
/// `persistence: {backend: local}`).
#[derive(Debug, Clone, Copy, Default)]
pub struct NoOpLock;

#[async_trait]
impl ExecutionLock for NoOpLock {
    async fn acquire(&self, execution_id: &str) -> Result<LockGuard, LockError> {
        Ok(LockGuard::unguarded(execution_id))
    }
}

/// `flock`-based lock files in a directory (the reference's `LocalFileLock`): see the
/// [module docs](self). Works on local file systems; not meant for network or object storage.
#[derive(Debug, Clone)]
pub struct LocalFileLock {
    dir: PathBuf,
}

impl Default for LocalFileLock {
    /// Lock files in `.locks` (relative to the current directory), like the reference.
    fn default() -> Self {
        Self::new(Self::DEFAULT_DIR)
    }
}

impl LocalFileLock {
    /// The directory the reference uses, relative to the current directory.
    pub const DEFAULT_DIR: &'static str = ".locks";

    /// Lock files in `dir` (created on the first acquire).
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    /// The lock directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The lock file of an execution: `<dir>/<execution_id>.lock` (after validating the id).
    pub fn lock_path(&self, execution_id: &str) -> Result<PathBuf, LockError> {
        validate_execution_id(execution_id)?;
        Ok(self.dir.join(format!("{execution_id}.lock")))
    }
}

#[async_trait]
impl ExecutionLock for LocalFileLock {
    async fn acquire(&self, execution_id: &str) -> Result<LockGuard, LockError> {
        let path = self.lock_path(execution_id)?;
        let dir = self.dir.clone();
        let id = execution_id.to_owned();
        tokio::task::spawn_blocking(move || lock_file(&dir, &path, id))
            .await
            .map_err(|error| LockError::Other(Box::new(error)))?
    }
}

fn lock_file(dir: &Path, path: &Path, execution_id: String) -> Result<LockGuard, LockError> {
    crate::persistence::create_private_dir_all(dir).map_err(|source| LockError::Io {
        op: "create the directory of",
        path: path.to_owned(),
        source,
    })?;
    let mut options = OpenOptions::new();
    options.read(true).append(true).create(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        // Owner-only, and never through a symlink planted at the lock's name.
        options.mode(0o600);
        options.custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32);
    }
    let file = options.open(path).map_err(|source| LockError::Io {
        op: "open",
        path: path.to_owned(),
        source,
    })?;
    // Fully qualified: newer std has inherent `File::try_lock`/`unlock` with other signatures.
    match fs4::FileExt::try_lock(&file) {
        Ok(()) => Ok(LockGuard::new(execution_id, move || {
            // Closing the descriptor releases the lock even if the explicit unlock fails.
            let _ = fs4::FileExt::unlock(&file);
            drop(file);
        })),
        Err(fs4::TryLockError::WouldBlock) => Err(LockError::Held { execution_id }),
        Err(fs4::TryLockError::Error(source)) => Err(LockError::Io {
            op: "lock",
            path: path.to_owned(),
            source,
        }),
    }
}
