//! Execution locks in Redis: leases with renewal, owner-only release and fencing tokens.
//!
//! `acquire` runs one script: `SET F:lock:{id} <random token> NX PX <lease>` and, when that
//! succeeds, `INCR F:lock-fence:{id}` — the fencing token, which only grows. The guard carries
//! the token ([`LockGuard::fencing_token`]); the engine writes it into every checkpoint, and
//! [`RedisPersistence`] refuses a checkpoint whose token is older than
//! the newest one issued. While the guard lives a task renews the lease (`PEXPIRE` if the key
//! still holds this token) every `renew_every`; dropping the guard stops it and deletes the key
//! only if it still holds this token (compare-and-delete).
//!
//! A lease can still expire under a live runner (a process paused longer than the lease, a
//! network partition): another runner may then acquire the lock. Fencing is what keeps the
//! first runner from overwriting the second one's checkpoints when it wakes.

use std::sync::{Arc, LazyLock};
use std::time::Duration;

use async_trait::async_trait;
use redis::Script;

use super::{RedisConnection, RedisPersistence, RedisSetupError};
use crate::lock::{ExecutionLock, LockError, LockGuard, StoreHold};
use crate::persistence::validate_execution_id;

/// KEYS = lock key, fence counter; ARGV = token, lease ms. The new fencing token, or 0 if held.
/// A lock that already holds this token is this hold (a repeated acquire whose reply was
/// lost): its fencing token is returned again (no acquire can have run since, the key being
/// held).
static ACQUIRE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  return redis.call('INCR', KEYS[2])
end
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return tonumber(redis.call('GET', KEYS[2]) or '0')
end
return 0
",
    )
});

/// KEYS = lock key; ARGV = token, lease ms. 1 if renewed, 0 if the lock is not ours any more.
static RENEW: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
",
    )
});

/// KEYS = lock key; ARGV = token. Deletes the key only if it holds the token.
static RELEASE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
",
    )
});

/// The key of `execution_id`'s lock.
pub(crate) fn lock_key(conn: &RedisConnection, execution_id: &str) -> String {
    conn.key(&format!("lock:{execution_id}"))
}

/// Lease settings of a [`RedisLock`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RedisLockOptions {
    /// How long the lock lives without renewal (default 30 s).
    pub lease: Duration,
    /// How often a held lock is renewed (default 10 s, a third of the lease). `None` disables
    /// renewal: the lock then expires `lease` after the acquire whatever the holder does (what a
    /// holder paused for longer than the lease experiences; useful to test fencing).
    pub renew_every: Option<Duration>,
}

impl Default for RedisLockOptions {
    fn default() -> Self {
        Self {
            lease: Duration::from_secs(30),
            renew_every: Some(Duration::from_secs(10)),
        }
    }
}

/// Execution locks on a Redis server (see the [module docs](self)).
#[derive(Debug, Clone)]
pub struct RedisLock {
    conn: RedisConnection,
    options: RedisLockOptions,
}

fn other(e: impl std::error::Error + Send + Sync + 'static) -> LockError {
    LockError::Other(Box::new(e))
}

impl RedisLock {
    /// Locks on `conn`'s server with the default lease (30 s, renewed every 10 s).
    pub fn new(conn: RedisConnection) -> Self {
        Self::with_options(conn, RedisLockOptions::default())
    }

    /// Locks on `conn`'s server with these lease settings (a zero lease counts as 1 ms).
    pub fn with_options(conn: RedisConnection, options: RedisLockOptions) -> Self {
        Self { conn, options }
    }

    /// Locks on the server at `url`, keys under `prefix`, default lease.
    pub fn open(url: &str, prefix: &str) -> Result<Self, RedisSetupError> {
        Ok(Self::new(RedisConnection::open(url, prefix)?))
    }

    fn lock_key(&self, execution_id: &str) -> String {
        lock_key(&self.conn, execution_id)
    }

    fn lease_ms(&self) -> u64 {
        u64::try_from(self.options.lease.as_millis())
            .unwrap_or(u64::MAX)
            .max(1)
    }
}

#[async_trait]
impl ExecutionLock for RedisLock {
    async fn acquire(&self, execution_id: &str) -> Result<LockGuard, LockError> {
        validate_execution_id(execution_id)?;
        let key = self.lock_key(execution_id);
        let token = uuid::Uuid::new_v4().to_string();
        let lease = self.lease_ms();
        let mut inv = ACQUIRE.prepare_invoke();
        inv.key(&key)
            .key(RedisPersistence::lock_fence_key(&self.conn, execution_id))
            .arg(&token)
            .arg(lease);
        let inv = &inv;
        let fence: u64 = self
            .conn
            .run("lock acquire", |mut c, _| async move {
                inv.invoke_async(&mut c).await
            })
            .await
            .map_err(other)?;
        if fence == 0 {
            return Err(LockError::Held {
                execution_id: execution_id.to_owned(),
            });
        }
        // The run's last checkpoint may release the lock in the same script (same domain).
        let hold = StoreHold::held(self.conn.domain(), token.clone());
        let renewal: Renewal = Arc::default();
        if let Some(every) = self.options.renew_every {
            renewal.start(self.renewal(execution_id, &key, &token, every, &hold));
        }
        Ok(self
            .guard(execution_id, key, token, renewal, &hold)
            .with_fencing_token(fence)
            .with_store_hold(hold))
    }

    /// A fresh execution's lock, taken by its first checkpoint (one script for both, see
    /// [`ExecutionLock::acquire_fresh`]): the guard's fencing token is 1, its hold pending;
    /// renewals start once the checkpoint took the lock.
    async fn acquire_fresh(&self, execution_id: &str) -> Result<LockGuard, LockError> {
        validate_execution_id(execution_id)?;
        let key = self.lock_key(execution_id);
        let token = uuid::Uuid::new_v4().to_string();
        let renewal: Renewal = Arc::default();
        // The renewal task watches the hold it renews (to stop once a store released it).
        let slot: Arc<std::sync::OnceLock<StoreHold>> = Arc::default();
        let hold = StoreHold::pending(self.conn.domain(), token.clone(), self.lease_ms(), {
            let this = self.clone();
            let (id, key, token, renewal, slot) = (
                execution_id.to_owned(),
                key.clone(),
                token.clone(),
                renewal.clone(),
                slot.clone(),
            );
            move || {
                if let (Some(every), Some(hold)) = (this.options.renew_every, slot.get()) {
                    renewal.start(this.renewal(&id, &key, &token, every, hold));
                }
            }
        });
        let _ = slot.set(hold.clone());
        Ok(self
            .guard(execution_id, key, token, renewal, &hold)
            .with_fencing_token(1)
            .with_store_hold(hold))
    }

    fn fencing_domain(&self) -> Option<String> {
        Some(self.conn.domain())
    }
}

/// The renewal task of a hold, once started.
type Renewal = Arc<std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>>;

trait RenewalSlot {
    fn start(&self, task: tokio::task::JoinHandle<()>);
    fn stop(&self);
}

impl RenewalSlot for Renewal {
    fn start(&self, task: tokio::task::JoinHandle<()>) {
        let mut slot = self
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(old) = slot.replace(task) {
            old.abort();
        }
    }

    fn stop(&self) {
        if let Some(task) = self
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take()
        {
            task.abort();
        }
    }
}

impl RedisLock {
    /// The task renewing the lease of `key` while it holds `token`, every `every`; it stops
    /// once a store released the hold, or the lock is found held by another runner.
    fn renewal(
        &self,
        execution_id: &str,
        key: &str,
        token: &str,
        every: Duration,
        hold: &StoreHold,
    ) -> tokio::task::JoinHandle<()> {
        let (conn, key, token, id, hold) = (
            self.conn.clone(),
            key.to_owned(),
            token.to_owned(),
            execution_id.to_owned(),
            hold.clone(),
        );
        let lease = self.lease_ms();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                if hold.is_released() {
                    break;
                }
                let renewed: Result<i64, _> = conn
                    .run("lock renewal", |mut c, _| {
                        let mut inv = RENEW.prepare_invoke();
                        inv.key(&key).arg(&token).arg(lease);
                        async move { inv.invoke_async(&mut c).await }
                    })
                    .await;
                match renewed {
                    Ok(1) => {}
                    Ok(_) if hold.is_released() => break,
                    Ok(_) => {
                        tracing::warn!(
                            execution_id = %id,
                            "the Redis lock lease expired and is held by another runner; its checkpoints will be refused"
                        );
                        break;
                    }
                    Err(e) => {
                        tracing::warn!(execution_id = %id, error = %e, "could not renew the Redis lock lease; retrying");
                    }
                }
            }
        })
    }

    /// The guard of a hold: dropping it stops the renewals and deletes the key if it still
    /// holds `token` — unless a store released the hold already, or never took it.
    fn guard(
        &self,
        execution_id: &str,
        key: String,
        token: String,
        renewal: Renewal,
        hold: &StoreHold,
    ) -> LockGuard {
        let conn = self.conn.clone();
        let hold = hold.clone();
        LockGuard::new(execution_id, move || {
            renewal.stop();
            if !hold.is_acquired() {
                hold.abandon();
                return;
            }
            if hold.is_released() {
                return;
            }
            if let Ok(handle) = tokio::runtime::Handle::try_current() {
                handle.spawn(async move {
                    let released: Result<i64, _> = conn
                        .run("lock release", |mut c, _| {
                            let mut inv = RELEASE.prepare_invoke();
                            inv.key(&key).arg(&token);
                            async move { inv.invoke_async(&mut c).await }
                        })
                        .await;
                    if let Err(e) = released {
                        tracing::warn!(error = %e, "could not release a Redis lock; it expires with its lease");
                    }
                });
            }
        })
    }
}
