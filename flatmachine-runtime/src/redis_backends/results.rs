//! Results in Redis: `flatagents://{execution_id}/{path}` written once, read with a blocking
//! wait that wakes on the write.
//!
//! The value (JSON text) lives at `F:result:{execution_id}/{path}`. A write is one script:
//! `SET … NX`, then `PUBLISH F:result-ch:{execution_id}/{path}`. Writing the same value again is
//! accepted (a re-run child writes the result it wrote before); a different value is refused,
//! so a result, once read, never changes. A blocking read subscribes to the channel on its own
//! connection, then reads the key (so a write between the two is not missed) and waits for the
//! message — no polling — up to its timeout.

use std::sync::LazyLock;
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;
use redis::Script;
use tokio::time::Instant;

use super::{RedisConnection, RedisSetupError};
use crate::Value;
use crate::results::{ResultBackend, ResultError, parse_uri};

/// KEYS = value key, channel; ARGV = JSON. 1 written (or the same value already there), 0 a
/// different value is already there.
static WRITE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
if redis.call('SET', KEYS[1], ARGV[1], 'NX') then
  redis.call('PUBLISH', KEYS[2], '1')
  return 1
end
if redis.call('GET', KEYS[1]) == ARGV[1] then return 1 end
return 0
",
    )
});

/// A result that was already written with a different value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("result {uri} was already written with a different value (results are write-once)")]
pub struct AlreadyWritten {
    /// The URI written.
    pub uri: String,
}

/// Result backend on a Redis server (see the [module docs](self)).
#[derive(Debug, Clone)]
pub struct RedisResults {
    conn: RedisConnection,
}

fn other(e: impl std::error::Error + Send + Sync + 'static) -> ResultError {
    ResultError::Other(Box::new(e))
}

impl RedisResults {
    /// Results on `conn`'s server, under its prefix.
    pub fn new(conn: RedisConnection) -> Self {
        Self { conn }
    }

    /// Results on the server at `url`, keys under `prefix`.
    pub fn open(url: &str, prefix: &str) -> Result<Self, RedisSetupError> {
        Ok(Self::new(RedisConnection::open(url, prefix)?))
    }

    fn keys(&self, uri: &str) -> Result<(String, String), ResultError> {
        let (execution_id, path) = parse_uri(uri)?;
        Ok((
            self.conn.key(&format!("result:{execution_id}/{path}")),
            self.conn.key(&format!("result-ch:{execution_id}/{path}")),
        ))
    }

    async fn get(&self, key: &str) -> Result<Option<Value>, ResultError> {
        let text: Option<String> = self
            .conn
            .run("result read", |mut c, _| async move {
                redis::cmd("GET").arg(key).query_async(&mut c).await
            })
            .await
            .map_err(other)?;
        text.map(|t| serde_json::from_str(&t).map_err(other))
            .transpose()
    }

    /// Waits until `key` has a value (or `deadline`).
    async fn wait(
        &self,
        key: &str,
        channel: &str,
        deadline: Option<Instant>,
    ) -> Result<Option<Value>, ResultError> {
        loop {
            let mut pubsub = self.conn.client().get_async_pubsub().await.map_err(other)?;
            pubsub.subscribe(channel).await.map_err(other)?;
            if let Some(v) = self.get(key).await? {
                return Ok(Some(v));
            }
            let mut messages = pubsub.on_message();
            loop {
                let next = match deadline {
                    Some(d) => match tokio::time::timeout_at(d, messages.next()).await {
                        Ok(m) => m,
                        Err(_) => return Ok(None),
                    },
                    None => messages.next().await,
                };
                if next.is_none() {
                    // The subscription connection closed (server restart): subscribe again.
                    break;
                }
                if let Some(v) = self.get(key).await? {
                    return Ok(Some(v));
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

#[async_trait]
impl ResultBackend for RedisResults {
    async fn write(&self, uri: &str, data: Value) -> Result<(), ResultError> {
        let (key, channel) = self.keys(uri)?;
        let text = serde_json::to_string(&data).map_err(other)?;
        let mut inv = WRITE.prepare_invoke();
        inv.key(key).key(channel).arg(text);
        let inv = &inv;
        let written: i64 = self
            .conn
            .run("result write", |mut c, _| async move {
                inv.invoke_async(&mut c).await
            })
            .await
            .map_err(other)?;
        if written == 0 {
            return Err(other(AlreadyWritten {
                uri: uri.to_owned(),
            }));
        }
        Ok(())
    }

    async fn read(
        &self,
        uri: &str,
        block: bool,
        timeout: Option<Duration>,
    ) -> Result<Option<Value>, ResultError> {
        let (key, channel) = self.keys(uri)?;
        if !block {
            return self.get(&key).await;
        }
        let deadline = timeout.map(|t| Instant::now() + t);
        match self.wait(&key, &channel, deadline).await? {
            Some(v) => Ok(Some(v)),
            None => Err(ResultError::Timeout {
                uri: uri.to_owned(),
                timeout: timeout.unwrap_or_default(),
            }),
        }
    }

    async fn exists(&self, uri: &str) -> Result<bool, ResultError> {
        let (key, _) = self.keys(uri)?;
        let key = &key;
        self.conn
            .run("result exists", |mut c, _| async move {
                redis::cmd("EXISTS").arg(key).query_async(&mut c).await
            })
            .await
            .map_err(other)
    }

    async fn delete(&self, uri: &str) -> Result<(), ResultError> {
        let (key, _) = self.keys(uri)?;
        let key = &key;
        self.conn
            .run("result delete", |mut c, _| async move {
                redis::cmd("DEL").arg(key).query_async::<()>(&mut c).await
            })
            .await
            .map_err(other)
    }
}
