//! Result backends: how machines hand results to each other, addressed by
//! `flatagents://{execution_id}/{path}` URIs (`path` is usually `result`).
//!
//! A launched child writes its output to `flatagents://{child_id}/result`; the parent reads it,
//! optionally waiting until it is written. [`InMemoryResultBackend`] serves runs inside one
//! process; share one instance (behind an `Arc`) between a run and its children.

use std::collections::HashMap;
use std::error::Error as StdError;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::Notify;

use crate::{StateError, Value, error_type};

/// The URI scheme prefix.
pub const URI_SCHEME: &str = "flatagents://";

/// The path used when a URI has none (`flatagents://{id}` means `flatagents://{id}/result`).
pub const DEFAULT_PATH: &str = "result";

/// The `error_type` given to a non-timeout [`ResultError`] converted into a [`StateError`]
/// (a timeout becomes [`error_type::TIMEOUT`]).
pub const RESULT_ERROR_TYPE: &str = "ResultError";

/// An error of a result backend.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ResultError {
    /// The URI is not `flatagents://{execution_id}/{path}`.
    #[error("invalid result URI {uri:?}: {reason} (expected `flatagents://<execution_id>/<path>`)")]
    InvalidUri {
        /// The rejected URI.
        uri: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A blocking read waited `timeout` without the URI being written.
    #[error("timed out after {timeout:?} waiting for a result at {uri}")]
    Timeout {
        /// The URI read.
        uri: String,
        /// How long the read waited.
        timeout: Duration,
    },
    /// Any other failure (for custom backends).
    #[error("result backend error: {0}")]
    Other(Box<dyn StdError + Send + Sync>),
}

impl From<ResultError> for StateError {
    fn from(error: ResultError) -> Self {
        let kind = match error {
            ResultError::Timeout { .. } => error_type::TIMEOUT,
            _ => RESULT_ERROR_TYPE,
        };
        StateError::new(kind, error.to_string())
    }
}

/// `flatagents://{execution_id}/{path}`.
pub fn make_uri(execution_id: &str, path: &str) -> String {
    format!("{URI_SCHEME}{execution_id}/{path}")
}

/// Splits a URI into `(execution_id, path)`. A URI without a path gets [`DEFAULT_PATH`]
/// (reference behaviour); a wrong scheme, an empty execution id or an empty path after the
/// `/` is [`ResultError::InvalidUri`].
pub fn parse_uri(uri: &str) -> Result<(&str, &str), ResultError> {
    let invalid = |reason| ResultError::InvalidUri {
        uri: uri.to_owned(),
        reason,
    };
    let rest = uri
        .strip_prefix(URI_SCHEME)
        .ok_or_else(|| invalid("it does not start with `flatagents://`"))?;
    let (execution_id, path) = rest.split_once('/').unwrap_or((rest, DEFAULT_PATH));
    if execution_id.is_empty() {
        return Err(invalid("the execution id is empty"));
    }
    if path.is_empty() {
        return Err(invalid("the path after the execution id is empty"));
    }
    Ok((execution_id, path))
}

/// URI-addressed storage for results exchanged between machines.
#[async_trait]
pub trait ResultBackend: Send + Sync {
    /// Stores `data` at `uri` (replacing what was there) and wakes every reader waiting on it.
    async fn write(&self, uri: &str, data: Value) -> Result<(), ResultError>;

    /// Reads the data at `uri`. With `block == false`, returns `Ok(None)` when nothing is
    /// there. With `block == true`, waits until something is written — forever when `timeout`
    /// is `None`, else at most `timeout`, then [`ResultError::Timeout`].
    async fn read(
        &self,
        uri: &str,
        block: bool,
        timeout: Option<Duration>,
    ) -> Result<Option<Value>, ResultError>;

    /// Whether data is stored at `uri`.
    async fn exists(&self, uri: &str) -> Result<bool, ResultError>;

    /// Deletes the data at `uri`; not an error if there is none.
    async fn delete(&self, uri: &str) -> Result<(), ResultError>;
}

/// In-process result backend (the reference's `InMemoryResultBackend`): values in a map,
/// blocked readers woken by the write (no polling).
#[derive(Debug, Default)]
pub struct InMemoryResultBackend {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    values: HashMap<String, Value>,
    /// One `Notify` per key that readers are waiting on; removed when notified.
    waiters: HashMap<String, Arc<Notify>>,
}

impl InMemoryResultBackend {
    /// An empty backend.
    pub fn new() -> Self {
        Self::default()
    }

    fn inner(&self) -> MutexGuard<'_, Inner> {
        // Every critical section is a few map operations; a poisoned lock is still consistent.
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn key(uri: &str) -> Result<String, ResultError> {
        let (execution_id, path) = parse_uri(uri)?;
        Ok(format!("{execution_id}/{path}"))
    }

    async fn wait_for(&self, key: &str) -> Value {
        loop {
            let notify = {
                let mut inner = self.inner();
                if let Some(value) = inner.values.get(key) {
                    return value.clone();
                }
                Arc::clone(inner.waiters.entry(key.to_owned()).or_default())
            };
            let notified = notify.notified();
            tokio::pin!(notified);
            // Register before re-checking, so a write in between cannot be missed.
            notified.as_mut().enable();
            if let Some(value) = self.inner().values.get(key) {
                return value.clone();
            }
            notified.await;
        }
    }
}

#[async_trait]
impl ResultBackend for InMemoryResultBackend {
    async fn write(&self, uri: &str, data: Value) -> Result<(), ResultError> {
        let key = Self::key(uri)?;
        let notify = {
            let mut inner = self.inner();
            let notify = inner.waiters.remove(&key);
            inner.values.insert(key, data);
            notify
        };
        if let Some(notify) = notify {
            notify.notify_waiters();
        }
        Ok(())
    }

    async fn read(
        &self,
        uri: &str,
        block: bool,
        timeout: Option<Duration>,
    ) -> Result<Option<Value>, ResultError> {
        let key = Self::key(uri)?;
        if !block {
            return Ok(self.inner().values.get(&key).cloned());
        }
        let Some(limit) = timeout else {
            return Ok(Some(self.wait_for(&key).await));
        };
        match tokio::time::timeout(limit, self.wait_for(&key)).await {
            Ok(value) => Ok(Some(value)),
            Err(_) => {
                // Drop the waiter entry if no other reader uses it.
                let mut inner = self.inner();
                if inner
                    .waiters
                    .get(&key)
                    .is_some_and(|notify| Arc::strong_count(notify) == 1)
                {
                    inner.waiters.remove(&key);
                }
                Err(ResultError::Timeout {
                    uri: uri.to_owned(),
                    timeout: limit,
                })
            }
        }
    }

    async fn exists(&self, uri: &str) -> Result<bool, ResultError> {
        let key = Self::key(uri)?;
        Ok(self.inner().values.contains_key(&key))
    }

    async fn delete(&self, uri: &str) -> Result<(), ResultError> {
        let key = Self::key(uri)?;
        self.inner().values.remove(&key);
        Ok(())
    }
}
