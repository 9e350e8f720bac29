//! Signals: outside events that wake runs waiting in a `wait_for` state.
//!
//! A run that reaches `wait_for: "approval/{{ context.ticket }}"` takes the oldest signal
//! pending on that channel if there is one (its data is the state's output); otherwise it
//! registers as a *waiter* in the [`SignalBackend`], writes a `waiting` checkpoint and returns
//! [`RunStatus::Waiting`](crate::engine::RunStatus::Waiting): no process has to stay up.
//! Someone then [`send`](SignalBackend::send)s a signal on the channel (`flatmachine signal
//! send CHANNEL --data JSON`), and a [`Dispatcher`] delivers it to the waiters and resumes
//! them.
//!
//! # Delivery (what every backend guarantees; `docs/signals.md` has the details)
//!
//! * **Queued until taken.** A signal sent while nobody waits on its channel is kept (in
//!   order) until a run waits there, or until its time to live passes
//!   ([`DEFAULT_SIGNAL_TTL`] unless [`SendOptions`] say otherwise).
//! * **One signal, every current waiter.** Delivering takes the *oldest* live signal of the
//!   channel and hands it to every run waiting there at that moment (one waiter: addressed;
//!   many: broadcast), in one atomic step; each waiter then holds its own copy until its run
//!   has consumed it. Later signals stay queued for the next wait.
//! * **Exactly once.** Taking a signal, registering a waiter and handing signals to waiters are
//!   atomic in every backend (one lock, one `BEGIN IMMEDIATE` transaction, one Lua script), and
//!   a dispatcher must [`claim`](SignalBackend::claim) a waiter (a lease) before it resumes the
//!   run, so two dispatchers never resume the same run with the same signal and no signal is
//!   lost between them. The run acknowledges its copy ([`ack`](SignalBackend::ack)) only after
//!   the checkpoint that records what it did with it; a crash before that repeats the state,
//!   never loses the signal.
//! * **Channels are text.** A channel template that yields a number is the number's text, so
//!   `7` and `"7"` are the same channel on every backend.
//!
//! Backends: [`MemorySignalBackend`] (one process), `SqliteSignalBackend` (feature `sqlite`;
//! many processes on one host; shares the reference's `signals` table) and
//! `RedisSignalBackend` (feature `redis`; many hosts). A machine's `settings.backends.signal`
//! picks one ([`for_machine`]); `MachineBuilder::signal_backend` overrides it.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::Value;

mod clock;
mod dispatch;
mod listing;
mod memory;
#[cfg(feature = "redis")]
mod redis;
#[cfg(feature = "sqlite")]
mod sqlite;

pub use clock::{iso_from_millis, millis_from_iso, now_millis};
pub use dispatch::{DispatchOptions, DispatchReport, Dispatched, Dispatcher};
pub use listing::{ListError, WaitingRun, render_waiting, waiting_runs};
pub use memory::MemorySignalBackend;
#[cfg(feature = "redis")]
pub use redis::RedisSignalBackend;
#[cfg(feature = "sqlite")]
pub use sqlite::SqliteSignalBackend;

/// How long a signal nobody takes is kept by default: 7 days.
pub const DEFAULT_SIGNAL_TTL: Duration = Duration::from_secs(7 * 24 * 3600);

/// Longest channel name, in bytes.
pub const MAX_CHANNEL_LEN: usize = 512;

/// Largest signal payload (its JSON), in bytes.
pub const MAX_SIGNAL_DATA_LEN: usize = 1 << 20;

/// The `error_type` of the state error a `wait_for` state raises when its `timeout` passes
/// with no signal (routed by `on_error`).
pub const SIGNAL_TIMEOUT: &str = "SignalTimeout";

/// The `error_type` of the state error a `machine:` or `foreach` state raises when a child run
/// parks in a `wait_for` state and the parent has no checkpoint store to park in with it
/// (routed by `on_error`; with a store the parent parks instead). The child stays waiting and
/// can be signalled and resumed on its own; see `docs/signals.md`.
pub const CHILD_WAITING: &str = "ChildWaiting";

/// The `error_type` of a signal backend failure raised in a `wait_for` state.
pub const SIGNAL_ERROR: &str = "SignalError";

/// A signal on a named channel (the reference's `Signal`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Signal {
    /// Unique id (a UUID).
    pub id: String,
    /// The channel.
    pub channel: String,
    /// The payload: the `wait_for` state's output.
    pub data: Value,
    /// When it was sent, UTC (`isoformat()` style).
    pub created_at: String,
}

/// How [`SignalBackend::send`] keeps a signal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct SendOptions {
    /// Drop the signal if no run took it within this time (`None`: keep it until taken).
    pub ttl: Option<Duration>,
}

impl Default for SendOptions {
    fn default() -> Self {
        Self {
            ttl: Some(DEFAULT_SIGNAL_TTL),
        }
    }
}

impl SendOptions {
    /// Keep the signal for `ttl`.
    pub fn ttl(ttl: Duration) -> Self {
        Self { ttl: Some(ttl) }
    }

    /// Keep the signal until a run takes it.
    pub fn keep_until_taken() -> Self {
        Self { ttl: None }
    }
}

/// A run waiting on a channel, as its `wait_for` state registered it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Waiter {
    /// The waiting execution.
    pub execution_id: String,
    /// The channel it waits on.
    pub channel: String,
    /// Its machine's name.
    pub machine: String,
    /// Its `wait_for` state.
    pub state: String,
    /// The step of that state.
    pub step: u64,
    /// When it gives up (milliseconds since the Unix epoch, UTC), if its state has a `timeout`.
    pub deadline_ms: Option<u64>,
    /// When it registered (milliseconds since the Unix epoch).
    pub registered_ms: u64,
    /// The signal handed to it, not yet consumed by the run.
    pub delivered: Option<Signal>,
    /// The dispatcher holding it (resuming it) and until when.
    pub claim: Option<(String, u64)>,
}

impl Waiter {
    /// Whether its deadline has passed at `now_ms`.
    pub fn is_due(&self, now_ms: u64) -> bool {
        self.deadline_ms.is_some_and(|d| d <= now_ms)
    }

    /// Whether a dispatcher may claim it at `now_ms` (no live claim of another owner).
    pub fn is_claimable(&self, now_ms: u64, owner: &str) -> bool {
        match &self.claim {
            None => true,
            Some((holder, until)) => holder == owner || *until <= now_ms,
        }
    }
}

/// What a `wait_for` state registers (see [`SignalBackend::wait`]).
#[derive(Debug, Clone, Copy)]
pub struct WaitRequest<'a> {
    /// The execution.
    pub execution_id: &'a str,
    /// The channel.
    pub channel: &'a str,
    /// Its machine's name.
    pub machine: &'a str,
    /// The `wait_for` state.
    pub state: &'a str,
    /// The step of that state.
    pub step: u64,
    /// When it gives up, if ever (milliseconds since the Unix epoch).
    pub deadline_ms: Option<u64>,
}

impl WaitRequest<'_> {
    /// The waiter this request registers, with no signal and no claim.
    pub fn waiter(&self, now_ms: u64) -> Waiter {
        Waiter {
            execution_id: self.execution_id.to_owned(),
            channel: self.channel.to_owned(),
            machine: self.machine.to_owned(),
            state: self.state.to_owned(),
            step: self.step,
            deadline_ms: self.deadline_ms,
            registered_ms: now_ms,
            delivered: None,
            claim: None,
        }
    }
}

/// A signal backend failed, or was given something it refuses.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SignalError {
    /// The channel name cannot be used.
    #[error("invalid signal channel {channel:?}: {reason}")]
    InvalidChannel {
        /// The channel as given.
        channel: String,
        /// Why it is refused.
        reason: &'static str,
    },
    /// The payload is too large or not JSON.
    #[error("invalid signal data: {0}")]
    InvalidData(String),
    /// The storage failed (SQLite, Redis, a corrupt record).
    #[error("signal storage: {0}")]
    Storage(String),
    /// The backend's schema belongs to a newer release.
    #[error("signal storage was written by a newer release: {0}")]
    SchemaTooNew(String),
}

impl From<SignalError> for crate::StateError {
    fn from(error: SignalError) -> Self {
        crate::StateError::new(SIGNAL_ERROR, error.to_string())
    }
}

/// Checks a channel name: 1 to [`MAX_CHANNEL_LEN`] bytes, no control characters.
pub fn validate_channel(channel: &str) -> Result<(), SignalError> {
    let reason = if channel.is_empty() {
        "it is empty"
    } else if channel.len() > MAX_CHANNEL_LEN {
        "it is longer than 512 bytes"
    } else if channel.chars().any(char::is_control) {
        "it contains control characters"
    } else {
        return Ok(());
    };
    Err(SignalError::InvalidChannel {
        channel: channel.chars().take(80).collect(),
        reason,
    })
}

/// The payload as JSON text, refused past [`MAX_SIGNAL_DATA_LEN`].
pub(crate) fn encode_data(data: &Value) -> Result<String, SignalError> {
    let text = serde_json::to_string(data).map_err(|e| SignalError::InvalidData(e.to_string()))?;
    if text.len() > MAX_SIGNAL_DATA_LEN {
        return Err(SignalError::InvalidData(format!(
            "{} bytes of JSON, more than the {MAX_SIGNAL_DATA_LEN} allowed",
            text.len()
        )));
    }
    Ok(text)
}

/// A new signal id.
pub(crate) fn new_signal_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// Durable signal storage and the registry of waiting runs (the reference's `SignalBackend`,
/// plus the waiter registry its dispatcher lacks). Implementations must make every method
/// atomic on its own; [`wait`](Self::wait), [`deliver`](Self::deliver) and
/// [`claim`](Self::claim) are what make delivery exactly-once (see the [module docs](self)).
/// Times are this process's [`now_millis`].
#[async_trait]
pub trait SignalBackend: Send + Sync {
    /// Stores a signal on `channel`; it is kept until a run takes it or its time to live
    /// passes. Returns the stored signal (its id and `created_at`).
    async fn send(
        &self,
        channel: &str,
        data: Value,
        options: SendOptions,
    ) -> Result<Signal, SignalError>;

    /// Takes (removes) the oldest live signal of `channel` (the reference's `consume`).
    async fn consume(&self, channel: &str) -> Result<Option<Signal>, SignalError>;

    /// The live signals of `channel`, oldest first, without taking them.
    async fn peek(&self, channel: &str) -> Result<Vec<Signal>, SignalError>;

    /// The channels that have live signals, sorted.
    async fn channels(&self) -> Result<Vec<String>, SignalError>;

    /// What a `wait_for` state calls, atomically: if the execution's waiter record for this
    /// step already holds a signal, returns it (a resumed run); else takes the oldest live
    /// signal of the channel, records it as the waiter's and returns it; else registers the
    /// waiter (replacing any older record of the execution) and returns `None`.
    async fn wait(&self, request: &WaitRequest<'_>) -> Result<Option<Signal>, SignalError>;

    /// The run consumed the signal of its `wait_for` state at `step` (or gave up waiting):
    /// removes its waiter record if it is that step's.
    async fn ack(&self, execution_id: &str, step: u64) -> Result<(), SignalError>;

    /// The registered waiters (of one channel, or all), oldest first.
    async fn waiters(&self, channel: Option<&str>) -> Result<Vec<Waiter>, SignalError>;

    /// Hands the oldest live signal of `channel` to every waiter of the channel that holds
    /// none, atomically; returns those waiters' execution ids (empty when there is no waiter
    /// without a signal, or no signal).
    async fn deliver(&self, channel: &str) -> Result<Vec<String>, SignalError>;

    /// Takes the waiter of `execution_id` for `owner` until `lease` from now, if no other
    /// owner holds a live claim; `false` when someone else does or there is no waiter.
    async fn claim(
        &self,
        execution_id: &str,
        owner: &str,
        lease: Duration,
    ) -> Result<bool, SignalError>;

    /// Gives a claim back (only `owner`'s).
    async fn release(&self, execution_id: &str, owner: &str) -> Result<(), SignalError>;

    /// Removes the waiter record of `execution_id` whatever it holds (a run that will not
    /// resume there: it moved on, or was deleted). A signal it held is lost with it.
    async fn forget(&self, execution_id: &str) -> Result<(), SignalError>;

    /// Deletes signals whose time to live has passed; returns how many.
    async fn purge_expired(&self) -> Result<u64, SignalError>;

    /// Returns when a signal may have arrived, or after `timeout` at most: the long-running
    /// [`Dispatcher`]'s pause between rounds. The default sleeps `timeout`; a backend that
    /// learns of sends (the memory backend) returns as soon as one happens.
    async fn wait_for_activity(&self, timeout: Duration) {
        tokio::time::sleep(timeout).await;
    }
}

/// The signal backend `settings.backends.signal` names (`memory` when unset): SQLite on
/// `settings.backends.sqlite_path` (default `workers.sqlite`, relative to the working
/// directory), Redis on `FLATMACHINE_REDIS_URL`.
pub fn for_machine(spec: &crate::MachineSpec) -> Result<Arc<dyn SignalBackend>, SignalError> {
    let backends = spec.backends.unwrap_or_default();
    let path = backends
        .sqlite_path
        .unwrap_or(crate::distributed::DEFAULT_SQLITE_PATH);
    from_name(backends.signal.unwrap_or("memory"), path)
}

/// The signal backend called `name` (`memory`, `sqlite` on `sqlite_path`, `redis`).
pub fn from_name(name: &str, sqlite_path: &str) -> Result<Arc<dyn SignalBackend>, SignalError> {
    match name {
        "memory" => Ok(Arc::new(MemorySignalBackend::new())),
        #[cfg(feature = "sqlite")]
        "sqlite" => Ok(Arc::new(SqliteSignalBackend::open(sqlite_path)?)),
        #[cfg(feature = "redis")]
        "redis" => {
            let conn = crate::redis_backends::RedisConnection::from_env()
                .map_err(|e| SignalError::Storage(e.to_string()))?;
            Ok(Arc::new(RedisSignalBackend::new(conn)))
        }
        #[cfg(not(feature = "sqlite"))]
        "sqlite" => {
            let _ = sqlite_path;
            Err(SignalError::Storage(
                "signal backend `sqlite` needs the `sqlite` feature of flatmachine-runtime".into(),
            ))
        }
        #[cfg(not(feature = "redis"))]
        "redis" => Err(SignalError::Storage(
            "signal backend `redis` needs the `redis` feature of flatmachine-runtime".into(),
        )),
        other => Err(SignalError::Storage(format!(
            "signal backend `{other}` is not available (available: memory, sqlite, redis)"
        ))),
    }
}
