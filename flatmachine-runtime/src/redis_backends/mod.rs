//! Redis backends (cargo feature `redis`) for runs that span many hosts: every role of the
//! spec's `BackendConfig` on one Redis server.
//!
//! * [`RedisWorkBackend`] / [`RedisWorkPool`] — work pools ([`WorkBackend`](crate::distributed::WorkBackend));
//! * [`RedisRegistrationBackend`] — worker registry ([`RegistrationBackend`](crate::distributed::RegistrationBackend));
//! * [`RedisPersistence`] — checkpoints ([`PersistenceBackend`](crate::persistence::PersistenceBackend));
//! * [`RedisLock`] — execution locks with leases and fencing tokens ([`ExecutionLock`](crate::lock::ExecutionLock));
//! * [`RedisResults`] — write-once results with blocking reads ([`ResultBackend`](crate::results::ResultBackend)).
//!
//! All of them share a [`RedisConnection`]: a URL, a key prefix (so several applications can
//! share one server) and one auto-reconnecting multiplexed connection, opened on first use.
//! Every multi-key change is one Lua script, so it is atomic on the server. Scripts touch keys
//! they derive from their arguments, so the backends need a single Redis server (or a primary
//! with replicas), not Redis Cluster. See `docs/many-hosts.md`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use tokio::sync::OnceCell;

pub mod lock;
pub mod persistence;
pub mod registration;
pub mod results;
pub mod work;

pub use lock::{RedisLock, RedisLockOptions};
pub use persistence::{FencingError, RedisPersistence};
pub use registration::RedisRegistrationBackend;
pub use results::{AlreadyWritten, RedisResults};
pub use work::{RedisWorkBackend, RedisWorkPool};

/// The environment variable naming the Redis server (`settings.backends` has no URL field).
pub const REDIS_URL_ENV: &str = "FLATMACHINE_REDIS_URL";

/// The server used when [`REDIS_URL_ENV`] is not set.
pub const DEFAULT_REDIS_URL: &str = "redis://127.0.0.1:6379";

/// The environment variable giving the key prefix (default [`DEFAULT_PREFIX`]).
pub const REDIS_PREFIX_ENV: &str = "FLATMACHINE_REDIS_PREFIX";

/// The key prefix used when none is given.
pub const DEFAULT_PREFIX: &str = "flatmachine";

/// A Redis error, or a prefix that cannot be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RedisSetupError {
    /// The URL could not be parsed.
    #[error("invalid Redis URL: {0}")]
    Url(#[from] redis::RedisError),
    /// The key prefix is empty or contains whitespace.
    #[error("invalid Redis key prefix {0:?}: it must be non-empty and contain no whitespace")]
    Prefix(String),
    /// `FLATMACHINE_REDIS_RETRY_SECONDS` is not a number of seconds between 0 and 86400.
    #[error("invalid {REDIS_RETRY_ENV} {0:?}: expected a number of seconds between 0 and 86400")]
    Retry(String),
}

/// The environment variable giving the retry budget in seconds (default 30; `0` disables
/// retries).
pub const REDIS_RETRY_ENV: &str = "FLATMACHINE_REDIS_RETRY_SECONDS";

/// How the Redis backends retry a call that failed because the connection broke or the server
/// was not ready (restarting, loading its AOF, refusing connections): with exponential backoff
/// from `first_delay` up to `max_delay`, until `budget` has passed since the first attempt.
/// Then the call fails with a [`RedisCallError`] saying how long it tried.
///
/// Only calls that are safe to repeat are retried — which is every call the backends make:
/// checkpoint saves (same key, same bytes, fencing check passes again), lock acquire (a lock
/// already held with this hold's token is this hold), renewals, heartbeats, claims (a claim
/// repeated with its token returns the jobs it claimed), completions and failures (a repeat
/// of one that went through is recognised by its claim token), pushes (ids are made before the
/// first attempt), result writes (write-once, same value accepted). Errors the server reports
/// for the command itself (a script error, a wrong type) are not retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// How long to keep trying (default 30 s, `FLATMACHINE_REDIS_RETRY_SECONDS`). Zero: no
    /// retries.
    pub budget: Duration,
    /// The first wait (default 25 ms).
    pub first_delay: Duration,
    /// The longest wait between attempts (default 1 s).
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            budget: Duration::from_secs(30),
            first_delay: Duration::from_millis(25),
            max_delay: Duration::from_secs(1),
        }
    }
}

impl RetryPolicy {
    /// No retries: the first failure is returned.
    pub fn none() -> Self {
        Self {
            budget: Duration::ZERO,
            ..Self::default()
        }
    }

    /// The default policy with the budget from `FLATMACHINE_REDIS_RETRY_SECONDS` when set.
    pub fn from_env() -> Result<Self, RedisSetupError> {
        let Ok(text) = std::env::var(REDIS_RETRY_ENV) else {
            return Ok(Self::default());
        };
        let seconds: f64 = text
            .trim()
            .parse()
            .ok()
            .filter(|s: &f64| s.is_finite() && *s >= 0.0 && *s <= 86_400.0)
            .ok_or_else(|| RedisSetupError::Retry(text.clone()))?;
        Ok(Self {
            budget: Duration::from_secs_f64(seconds),
            ..Self::default()
        })
    }
}

/// A Redis call that failed: at once (an error the server reported for the command), or after
/// the [`RetryPolicy`] budget was spent on connection errors.
#[derive(Debug, thiserror::Error)]
#[error("{}", self.describe())]
pub struct RedisCallError {
    /// What was being done (`claim`, `checkpoint save`, ...).
    pub operation: &'static str,
    /// Attempts made.
    pub attempts: u32,
    /// Time from the first attempt to giving up.
    pub elapsed: Duration,
    /// The retry budget in force.
    pub budget: Duration,
    /// Whether the error was one worth retrying and the budget ran out (rather than an error
    /// about the command itself).
    pub gave_up: bool,
    /// The last error.
    #[source]
    pub source: redis::RedisError,
}

impl RedisCallError {
    fn describe(&self) -> String {
        if !self.gave_up {
            return format!("redis {}: {}", self.operation, self.source);
        }
        format!(
            "redis {}: gave up after {} attempt(s) over {:.1} s (retry budget {:.1} s, {REDIS_RETRY_ENV}): {}",
            self.operation,
            self.attempts,
            self.elapsed.as_secs_f64(),
            self.budget.as_secs_f64(),
            self.source
        )
    }
}

/// Whether a failed call may succeed if repeated (connection broken or refused, server loading
/// or not ready), as opposed to an error about the command itself.
fn transient(e: &redis::RedisError) -> bool {
    use redis::RetryMethod;
    e.is_io_error()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || e.is_timeout()
        || matches!(
            e.retry_method(),
            RetryMethod::Reconnect
                | RetryMethod::WaitAndRetry
                | RetryMethod::RetryImmediately
                | RetryMethod::ReconnectFromInitialConnections
        )
}

/// A Redis server and key prefix shared by the Redis backends. Cheap to clone; clones share the
/// connection.
///
/// The connection is a `redis` [`ConnectionManager`]: one multiplexed TCP connection that
/// reconnects (with backoff) after the server restarts or the network drops. Calls that fail
/// on the way are retried by the backends according to the connection's [`RetryPolicy`].
/// [`RedisConnection::from_env`] and [`RedisConnection::shared`] hand out one connection per
/// server and prefix for the whole process, so every role (checkpoints, lock, results,
/// registry, pools) shares it.
#[derive(Clone)]
pub struct RedisConnection {
    inner: Arc<Inner>,
    retry: RetryPolicy,
}

struct Inner {
    client: redis::Client,
    prefix: String,
    manager: OnceCell<ConnectionManager>,
}

impl std::fmt::Debug for RedisConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisConnection")
            .field("server", &self.inner.client.get_connection_info().addr)
            .field("prefix", &self.inner.prefix)
            .field("retry", &self.retry)
            .finish()
    }
}

/// The process's shared connections, by (URL, prefix).
fn shared_connections() -> &'static Mutex<HashMap<(String, String), RedisConnection>> {
    static SHARED: OnceLock<Mutex<HashMap<(String, String), RedisConnection>>> = OnceLock::new();
    SHARED.get_or_init(Mutex::default)
}

impl RedisConnection {
    /// A new connection to the server at `url` (`redis://host:port/db`), keys under `prefix`,
    /// the default [`RetryPolicy`]. Does not connect yet: the first command does (and later
    /// ones reconnect as needed). Prefer [`shared`](Self::shared) in applications.
    pub fn open(url: &str, prefix: &str) -> Result<Self, RedisSetupError> {
        if prefix.is_empty() || prefix.chars().any(char::is_whitespace) {
            return Err(RedisSetupError::Prefix(prefix.to_owned()));
        }
        Ok(Self {
            inner: Arc::new(Inner {
                client: redis::Client::open(url)?,
                prefix: prefix.to_owned(),
                manager: OnceCell::new(),
            }),
            retry: RetryPolicy::default(),
        })
    }

    /// The process's connection to `url` under `prefix`: opened (with the
    /// `FLATMACHINE_REDIS_RETRY_SECONDS` policy) on the first call, the same one after.
    pub fn shared(url: &str, prefix: &str) -> Result<Self, RedisSetupError> {
        let key = (url.to_owned(), prefix.to_owned());
        let mut map = shared_connections()
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(conn) = map.get(&key) {
            return Ok(conn.clone());
        }
        let conn = Self::open(url, prefix)?.with_retry(RetryPolicy::from_env()?);
        map.insert(key, conn.clone());
        Ok(conn)
    }

    /// The process's connection to the server named by `FLATMACHINE_REDIS_URL` (default
    /// `redis://127.0.0.1:6379`), keys under `FLATMACHINE_REDIS_PREFIX` (default
    /// `flatmachine`), retry budget from `FLATMACHINE_REDIS_RETRY_SECONDS` (default 30 s).
    pub fn from_env() -> Result<Self, RedisSetupError> {
        let url = std::env::var(REDIS_URL_ENV).unwrap_or_else(|_| DEFAULT_REDIS_URL.to_owned());
        let prefix = std::env::var(REDIS_PREFIX_ENV).unwrap_or_else(|_| DEFAULT_PREFIX.to_owned());
        Self::shared(&url, &prefix)
    }

    /// This connection with another retry policy (the connection itself is shared).
    pub fn with_retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    /// The retry policy.
    pub fn retry_policy(&self) -> RetryPolicy {
        self.retry
    }

    /// The key prefix.
    pub fn prefix(&self) -> &str {
        &self.inner.prefix
    }

    /// The `redis` client (for dedicated connections: pub/sub, blocking commands).
    pub fn client(&self) -> &redis::Client {
        &self.inner.client
    }

    /// The fencing domain of the backends on this connection: server address, database and
    /// key prefix. A [`RedisLock`] and a [`RedisPersistence`] with the same domain keep the
    /// lock and the checkpoints' fencing records side by side, so the last checkpoint of a
    /// run can release the lock in the same script.
    pub fn domain(&self) -> String {
        let info = self.inner.client.get_connection_info();
        format!(
            "redis {} db {} prefix {}",
            info.addr, info.redis.db, self.inner.prefix
        )
    }

    /// Whether two handles share one connection.
    pub fn same_connection(&self, other: &RedisConnection) -> bool {
        Arc::ptr_eq(&self.inner, &other.inner)
    }

    /// The shared connection, connecting on first use.
    pub async fn manager(&self) -> Result<ConnectionManager, redis::RedisError> {
        let manager = self
            .inner
            .manager
            .get_or_try_init(|| async {
                let config = ConnectionManagerConfig::new()
                    .set_connection_timeout(Duration::from_secs(5))
                    .set_response_timeout(Duration::from_secs(20))
                    // Few retries inside the manager: `run` retries whole calls.
                    .set_number_of_retries(1)
                    .set_max_delay(200);
                ConnectionManager::new_with_config(self.inner.client.clone(), config).await
            })
            .await?;
        Ok(manager.clone())
    }

    /// Runs `call` (given the connection and the attempt number, 0 first) until it succeeds,
    /// fails with an error about the command itself, or the retry budget is spent. Every
    /// backend call goes through here, and every one is safe to repeat (see [`RetryPolicy`]).
    pub(crate) async fn run<T, F, Fut>(
        &self,
        operation: &'static str,
        mut call: F,
    ) -> Result<T, RedisCallError>
    where
        F: FnMut(ConnectionManager, u32) -> Fut,
        Fut: std::future::Future<Output = Result<T, redis::RedisError>>,
    {
        let metrics = crate::distributed::metrics();
        let started = tokio::time::Instant::now();
        let mut delay = self.retry.first_delay.max(Duration::from_millis(1));
        let mut attempt = 0u32;
        loop {
            let result = match self.manager().await {
                Ok(conn) => call(conn, attempt).await,
                Err(e) => Err(e),
            };
            let error = match result {
                Ok(value) => return Ok(value),
                Err(e) => e,
            };
            attempt += 1;
            metrics.storage_error();
            let elapsed = started.elapsed();
            let retryable = transient(&error);
            if !retryable || elapsed + delay > self.retry.budget {
                if retryable {
                    metrics.storage_gave_up();
                }
                return Err(RedisCallError {
                    operation,
                    attempts: attempt,
                    elapsed,
                    budget: self.retry.budget,
                    gave_up: retryable && !self.retry.budget.is_zero(),
                    source: error,
                });
            }
            if attempt == 1 {
                tracing::warn!(operation, error = %error, "redis call failed; retrying");
            }
            metrics.storage_retry();
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(self.retry.max_delay.max(Duration::from_millis(1)));
        }
    }

    /// `{prefix}:{rest}`.
    pub(crate) fn key(&self, rest: &str) -> String {
        format!("{}:{rest}", self.inner.prefix)
    }
}

/// What a machine's YAML asks of Redis, for the builder: checkpoints + lock for
/// `persistence: {backend: redis}` (or `settings.backends.persistence: redis` without a
/// `persistence:` section), a lock for `settings.backends.locking: redis`, results for
/// `settings.backends.results: redis`. All on [`RedisConnection::from_env`].
pub(crate) struct ChosenByYaml {
    /// The checkpoint store.
    pub store: Option<crate::persistence::CheckpointStore>,
    /// The execution lock.
    pub lock: Option<Arc<dyn crate::lock::ExecutionLock>>,
    /// The result backend.
    pub results: Option<Arc<dyn crate::results::ResultBackend>>,
}

impl ChosenByYaml {
    pub(crate) fn for_spec(spec: &crate::MachineSpec) -> Result<Self, RedisSetupError> {
        let settings = spec.backends.unwrap_or_default();
        let persistence = match &spec.persistence {
            Some(p) => p.enabled && p.backend == "redis",
            None => settings.persistence == Some("redis"),
        };
        let lock = persistence || settings.locking == Some("redis");
        let results = settings.results == Some("redis");
        if !(persistence || lock || results) {
            return Ok(Self {
                store: None,
                lock: None,
                results: None,
            });
        }
        let conn = RedisConnection::from_env()?;
        Ok(Self {
            store: persistence.then(|| {
                crate::persistence::CheckpointStore::new(Arc::new(RedisPersistence::new(
                    conn.clone(),
                )))
            }),
            lock: lock.then(|| {
                Arc::new(RedisLock::new(conn.clone())) as Arc<dyn crate::lock::ExecutionLock>
            }),
            results: results.then(|| {
                Arc::new(RedisResults::new(conn)) as Arc<dyn crate::results::ResultBackend>
            }),
        })
    }
}

/// A user-supplied name (pool, worker id, job id) as one key segment: `%` and `:` are
/// percent-encoded so no name can reach into another's keys. The Lua scripts use the same
/// encoding ([`LUA_ESC`]).
pub(crate) fn seg(name: &str) -> String {
    if !name.contains(['%', ':']) {
        return name.to_owned();
    }
    name.replace('%', "%25").replace(':', "%3A")
}

/// [`seg`] in Lua, prepended to the scripts that derive keys from stored ids.
pub(crate) const LUA_ESC: &str = r"
local function esc(s)
  s = string.gsub(s, '%%', '%%25')
  s = string.gsub(s, ':', '%%3A')
  return s
end
";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_are_escaped() {
        assert_eq!(seg("plain-id"), "plain-id");
        assert_eq!(seg("a:b%c"), "a%3Ab%25c");
        assert!(RedisConnection::open("redis://127.0.0.1:1", "").is_err());
        assert!(RedisConnection::open("redis://127.0.0.1:1", "a b").is_err());
        assert!(RedisConnection::open("not a url", "p").is_err());
        let c = RedisConnection::open("redis://127.0.0.1:1", "app").unwrap();
        assert_eq!(c.key("x"), "app:x");
    }
}
