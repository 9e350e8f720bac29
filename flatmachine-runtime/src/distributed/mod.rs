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

pub mod admin;
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

/// The worker machine in `spec`'s tree (itself, or the first child, breadth-first, whose states
/// run `claim_job`), else `spec`.
pub fn worker_machine_of(spec: &'static crate::MachineSpec) -> &'static crate::MachineSpec {
    hooks::worker_machine(spec).unwrap_or(spec)
}
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

/// The checkpoint events of a worker machine (one whose states run `claim_job`) when its YAML
/// sets no `persistence.checkpoint_on`: each state's `execute` and `machine_end`, not the
/// every-event default. What it gives up: a resume restarts the state it stopped in from its
/// `execute` checkpoint (as with every event), but the `state_enter` / `state_exit` history
/// between states is not kept — `inspect` shows one row per state. Child machines inherit it.
pub const WORKER_CHECKPOINT_ON: &[&str] = &["execute", "machine_end"];

/// How many checkpoints a finished worker execution keeps by default (its final one): see
/// `CheckpointStore::with_keep_finished`.
pub const WORKER_KEEP_FINISHED: usize = 1;
pub use work::{
    Claim, ClaimRequest, ClaimToken, DEFAULT_JOB_LEASE, DEFAULT_MAX_RETRIES, JobStatus,
    PoolCounters, PoolStats, PushOptions, ReleasedJob, WorkBackend, WorkItem, WorkPool,
};
