//! [`Backends`]: the registration and work backends a machine's `settings.backends` selects.
//!
//! `redis` (feature `redis`) connects to the server named by the `FLATMACHINE_REDIS_URL`
//! environment variable (default `redis://127.0.0.1:6379`; the spec has no URL field), keys
//! under `FLATMACHINE_REDIS_PREFIX` (default `flatmachine`).

use std::sync::Arc;

use super::memory::{MemoryRegistrationBackend, MemoryWorkBackend};
use super::registration::RegistrationBackend;
use super::work::WorkBackend;
use crate::machine::{BackendsSpec, MachineSpec};

/// The default SQLite file of `settings.backends` (the reference's default).
pub const DEFAULT_SQLITE_PATH: &str = "workers.sqlite";

/// Why [`Backends::from_spec`] could not build the backends.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum BackendsError {
    /// The name is not a backend this runtime has (the compiler rejects these; only hand-made
    /// specs get here).
    #[error("{kind} backend `{name}` is not available (available: {})", available.join(", "))]
    Unknown {
        /// `registration` or `work`.
        kind: &'static str,
        /// The name asked for.
        name: String,
        /// What this build has.
        available: Vec<&'static str>,
    },
    /// `sqlite` was chosen but the runtime was built without the `sqlite` feature.
    #[error("{kind} backend `sqlite` needs the `sqlite` feature of flatmachine-runtime")]
    SqliteDisabled {
        /// `registration` or `work`.
        kind: &'static str,
    },
    /// `redis` was chosen but the runtime was built without the `redis` feature.
    #[error("{kind} backend `redis` needs the `redis` feature of flatmachine-runtime")]
    RedisDisabled {
        /// `registration` or `work`.
        kind: &'static str,
    },
    /// The Redis URL or key prefix from the environment cannot be used.
    #[error("redis backend: {0}")]
    RedisSetup(String),
    /// The SQLite file could not be opened.
    #[error(transparent)]
    Open(#[from] super::DistributedError),
}

/// A registration backend and a work backend, shared (cheap to clone).
#[derive(Clone)]
pub struct Backends {
    /// Worker registration.
    pub registration: Arc<dyn RegistrationBackend>,
    /// Work pools.
    pub work: Arc<dyn WorkBackend>,
}

impl std::fmt::Debug for Backends {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Backends").finish_non_exhaustive()
    }
}

impl Backends {
    /// Fresh in-memory backends.
    pub fn memory() -> Self {
        Self {
            registration: Arc::new(MemoryRegistrationBackend::new()),
            work: Arc::new(MemoryWorkBackend::new()),
        }
    }

    /// SQLite backends on one file (feature `sqlite`).
    #[cfg(feature = "sqlite")]
    pub fn sqlite(path: impl AsRef<std::path::Path>) -> Result<Self, super::DistributedError> {
        Ok(Self {
            registration: Arc::new(super::SqliteRegistrationBackend::open(&path)?),
            work: Arc::new(super::SqliteWorkBackend::open(&path)?),
        })
    }

    /// Redis backends on `conn`'s server and prefix (feature `redis`).
    #[cfg(feature = "redis")]
    pub fn redis(conn: crate::redis_backends::RedisConnection) -> Self {
        Self {
            registration: Arc::new(super::RedisRegistrationBackend::new(conn.clone())),
            work: Arc::new(super::RedisWorkBackend::new(conn)),
        }
    }

    /// The backends `machine`'s `settings.backends` names (memory when absent). A relative
    /// `sqlite_path` is relative to the working directory, as in the reference.
    pub fn for_machine(machine: &MachineSpec) -> Result<Self, BackendsError> {
        Self::from_spec(&machine.backends.unwrap_or_default())
    }

    /// The backends `spec` names (`memory` for unset kinds).
    pub fn from_spec(spec: &BackendsSpec) -> Result<Self, BackendsError> {
        let path = spec.sqlite_path.unwrap_or(DEFAULT_SQLITE_PATH);
        let registration: Arc<dyn RegistrationBackend> = match spec.registration.unwrap_or("memory")
        {
            "memory" => Arc::new(MemoryRegistrationBackend::new()),
            "sqlite" => sqlite_registration(path)?,
            "redis" => redis_backends("registration")?.registration,
            other => return Err(unknown("registration", other)),
        };
        let work: Arc<dyn WorkBackend> = match spec.work.unwrap_or("memory") {
            "memory" => Arc::new(MemoryWorkBackend::new()),
            "sqlite" => sqlite_work(path)?,
            "redis" => redis_backends("work")?.work,
            other => return Err(unknown("work", other)),
        };
        Ok(Self { registration, work })
    }
}

fn unknown(kind: &'static str, name: &str) -> BackendsError {
    let available = BackendsSpec::AVAILABLE
        .iter()
        .find(|(k, _)| *k == kind)
        .map(|(_, names)| names.to_vec())
        .unwrap_or_default();
    BackendsError::Unknown {
        kind,
        name: name.to_string(),
        available,
    }
}

#[cfg(feature = "sqlite")]
fn sqlite_registration(path: &str) -> Result<Arc<dyn RegistrationBackend>, BackendsError> {
    Ok(Arc::new(super::SqliteRegistrationBackend::open(path)?))
}

#[cfg(not(feature = "sqlite"))]
fn sqlite_registration(_path: &str) -> Result<Arc<dyn RegistrationBackend>, BackendsError> {
    Err(BackendsError::SqliteDisabled {
        kind: "registration",
    })
}

#[cfg(feature = "sqlite")]
fn sqlite_work(path: &str) -> Result<Arc<dyn WorkBackend>, BackendsError> {
    Ok(Arc::new(super::SqliteWorkBackend::open(path)?))
}

#[cfg(not(feature = "sqlite"))]
fn sqlite_work(_path: &str) -> Result<Arc<dyn WorkBackend>, BackendsError> {
    Err(BackendsError::SqliteDisabled { kind: "work" })
}

#[cfg(feature = "redis")]
fn redis_backends(_kind: &'static str) -> Result<Backends, BackendsError> {
    let conn = crate::redis_backends::RedisConnection::from_env()
        .map_err(|e| BackendsError::RedisSetup(e.to_string()))?;
    Ok(Backends::redis(conn))
}

#[cfg(not(feature = "redis"))]
fn redis_backends(kind: &'static str) -> Result<Backends, BackendsError> {
    Err(BackendsError::RedisDisabled { kind })
}
