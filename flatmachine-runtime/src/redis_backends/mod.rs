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

use std::sync::Arc;
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use tokio::sync::OnceCell;

mod lock;
mod persistence;
mod registration;
mod results;
mod work;

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
}

/// A Redis server and key prefix shared by the Redis backends. Cheap to clone; clones share the
/// connection.
///
/// The connection is a `redis` [`ConnectionManager`]: one multiplexed TCP connection that
/// reconnects (with backoff) after the server restarts or the network drops. A command in flight
/// when the connection breaks fails with a storage error and is not retried by the backend,
/// because it may have run: the caller decides (see `docs/many-hosts.md`).
#[derive(Clone)]
pub struct RedisConnection {
    inner: Arc<Inner>,
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
            .finish()
    }
}

impl RedisConnection {
    /// The server at `url` (`redis://host:port/db`), keys under `prefix`. Does not connect yet:
    /// the first command does (and later ones reconnect as needed).
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
        })
    }

    /// The server named by `FLATMACHINE_REDIS_URL` (default `redis://127.0.0.1:6379`), keys
    /// under `FLATMACHINE_REDIS_PREFIX` (default `flatmachine`).
    pub fn from_env() -> Result<Self, RedisSetupError> {
        let url = std::env::var(REDIS_URL_ENV).unwrap_or_else(|_| DEFAULT_REDIS_URL.to_owned());
        let prefix = std::env::var(REDIS_PREFIX_ENV).unwrap_or_else(|_| DEFAULT_PREFIX.to_owned());
        Self::open(&url, &prefix)
    }

    /// The key prefix.
    pub fn prefix(&self) -> &str {
        &self.inner.prefix
    }

    /// The `redis` client (for dedicated connections: pub/sub, blocking commands).
    pub fn client(&self) -> &redis::Client {
        &self.inner.client
    }

    /// The shared connection, connecting on first use.
    pub async fn manager(&self) -> Result<ConnectionManager, redis::RedisError> {
        let manager = self
            .inner
            .manager
            .get_or_try_init(|| async {
                let config = ConnectionManagerConfig::new()
                    .set_connection_timeout(Duration::from_secs(5))
                    .set_response_timeout(Duration::from_secs(30))
                    .set_number_of_retries(5)
                    .set_max_delay(1_000);
                ConnectionManager::new_with_config(self.inner.client.clone(), config).await
            })
            .await?;
        Ok(manager.clone())
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
