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
use std::sync::atomic::{AtomicBool, Ordering};

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

/// A hold that a checkpoint store in the same *fencing domain* (the same server and key
/// space, see [`PersistenceBackend::fencing_domain`](crate::persistence::PersistenceBackend::fencing_domain))
/// may release in the same operation as the run's last checkpoint, sparing the release its
/// own round trip. Clones share the "released" flag: once a store released the hold
/// ([`mark_released`](Self::mark_released)), the guard's own release does nothing remote.
#[derive(Debug, Clone)]
pub struct FusedRelease {
    domain: Arc<str>,
    token: Arc<str>,
    released: Arc<AtomicBool>,
}

impl FusedRelease {
    /// A hold in `domain` whose lock value is `token` (released only while it still holds it).
    pub fn new(domain: impl Into<Arc<str>>, token: impl Into<Arc<str>>) -> Self {
        Self {
            domain: domain.into(),
            token: token.into(),
            released: Arc::default(),
        }
    }

    /// The fencing domain of the lock.
    pub fn domain(&self) -> &str {
        &self.domain
    }

    /// The value the lock holds while this hold lives.
    pub fn token(&self) -> &str {
        &self.token
    }

    /// Records that a store released the hold (the guard then skips its own release).
    pub fn mark_released(&self) {
        self.released.store(true, Ordering::Release);
    }

    /// Whether a store released the hold.
    pub fn is_released(&self) -> bool {
        self.released.load(Ordering::Acquire)
    }
}

/// Proof of holding an execution lock; releases it when dropped.
#[must_use = "the lock is released as soon as the guard is dropped"]
pub struct LockGuard {
    execution_id: String,
    fencing_token: Option<u64>,
    fused: Option<FusedRelease>,
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
            fused: None,
            release: Some(Box::new(release)),
        }
    }

    /// A guard with nothing to release (used by [`NoOpLock`]).
    pub fn unguarded(execution_id: impl Into<String>) -> Self {
        Self {
            execution_id: execution_id.into(),
            fencing_token: None,
            fused: None,
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

    /// Lets a checkpoint store of the same fencing domain release this hold with the run's
    /// last checkpoint (see [`FusedRelease`]); the `release` closure given to
    /// [`new`](Self::new) should check [`FusedRelease::is_released`].
    pub fn with_fused_release(mut self, fused: FusedRelease) -> Self {
        self.fused = Some(fused);
        self
    }

    /// The hold a store may release with the last checkpoint, if the lock allows it.
    pub fn fused_release(&self) -> Option<&FusedRelease> {
        self.fused.as_ref()
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
