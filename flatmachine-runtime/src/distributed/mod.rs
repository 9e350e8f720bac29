//! Distributed workers: worker registration, named work pools with atomic claims, and the
//! ready-made actions that drive the checker / worker / reaper machines.
//!
//! * [`RegistrationBackend`] — worker lifecycle (register, heartbeat, status, stale listing);
//! * [`WorkBackend`] / [`WorkPool`] — named pools of JSON jobs with atomic claiming, retries and
//!   poisoning;
//! * [`DistributedWorkerHooks`] — the reference's `DistributedWorkerHooks` actions
//!   (`claim_job`, `reap_stale_workers`, `spawn_workers`, ...) over any pair of backends;
//! * [`WorkerSpawner`] — how `spawn_workers` starts worker processes ([`CommandSpawner`] runs a
//!   command line);
//! * [`Backends`] — the backends a machine's `settings.backends` section selects;
//! * [`superseded`] — worker executions whose claim was taken back, which must not resume;
//! * [`metrics`] — this process's counters (claims, lost claims, storage retries, ...).
//!
//! In-memory backends are always available; the SQLite ones (`SqliteRegistrationBackend`,
//! `SqliteWorkBackend`) need the `sqlite` cargo feature. Both traits are free of SQL: ids are
//! strings, payloads JSON values, and a claim returns an owned [`WorkItem`], so a networked
//! implementation (Redis) fits the same traits. See `docs/distributed.md`.

mod config;
mod error;
mod hooks;
mod memory;
mod metrics;
mod registration;
mod spawn;
#[cfg(feature = "sqlite")]
mod sqlite;
pub mod superseded;
pub(crate) mod time;
mod work;

#[cfg(feature = "redis")]
pub use crate::redis_backends::{RedisRegistrationBackend, RedisWorkBackend, RedisWorkPool};
pub use config::{Backends, BackendsError, DEFAULT_SQLITE_PATH};
pub use error::{CLAIM_LOST_ERROR_TYPE, DISTRIBUTED_ERROR_TYPE, DistributedError};
pub use hooks::{
    BUILTIN_ACTIONS, DEFAULT_HEARTBEAT_INTERVAL, DistributedWorkerHooks, JobAction,
    is_worker_machine,
};
pub use memory::{MemoryRegistrationBackend, MemoryWorkBackend, MemoryWorkPool};
pub use metrics::{METRICS_METADATA_KEY, MetricsSnapshot, WorkerMetrics, metrics};
pub use registration::{
    RegistrationBackend, StatusFilter, WorkerFilter, WorkerRecord, WorkerRegistration,
    worker_status,
};
pub use spawn::{CommandSpawner, SpawnRequest, WorkerSpawner};
#[cfg(feature = "sqlite")]
pub use sqlite::{SqliteOptions, SqliteRegistrationBackend, SqliteWorkBackend, SqliteWorkPool};
pub use superseded::{SupersededError, SupersededMark};
pub use time::now_iso;
pub use work::{
    Claim, ClaimRequest, ClaimToken, DEFAULT_JOB_LEASE, DEFAULT_MAX_RETRIES, JobStatus,
    PoolCounters, PoolStats, PushOptions, ReleasedJob, WorkBackend, WorkItem, WorkPool,
};
