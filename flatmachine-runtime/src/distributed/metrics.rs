//! Counters of this process's distributed work: claims, completions, lost claims, heartbeats,
//! storage errors and retries, checkpoint latency.
//!
//! One set per process ([`metrics`]), updated by the backends and by `DistributedWorkerHooks`
//! with relaxed atomics (a few nanoseconds each). [`WorkerMetrics::snapshot`] reads them into a
//! plain, serialisable [`MetricsSnapshot`]: what a worker publishes in its heartbeat metadata
//! (key [`METRICS_METADATA_KEY`]), what `flatmachine stats` adds up across workers, and what an
//! exporter (OpenTelemetry, Prometheus) can turn into counters and gauges — every field is a
//! monotonic counter except the `*_max` ones, which are high-water marks.

use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// The heartbeat metadata key under which a worker publishes its [`MetricsSnapshot`].
pub const METRICS_METADATA_KEY: &str = "metrics";

/// This process's counters (see the [module docs](self)).
#[derive(Debug, Default)]
pub struct WorkerMetrics {
    claims: AtomicU64,
    completions: AtomicU64,
    failures: AtomicU64,
    claims_lost: AtomicU64,
    heartbeats: AtomicU64,
    heartbeat_failures: AtomicU64,
    reaped_workers: AtomicU64,
    reclaimed_jobs: AtomicU64,
    storage_errors: AtomicU64,
    storage_retries: AtomicU64,
    storage_gave_up: AtomicU64,
    checkpoint_saves: AtomicU64,
    checkpoint_micros: AtomicU64,
    checkpoint_micros_max: AtomicU64,
}

/// The counters of a [`WorkerMetrics`] at one moment (or summed over several processes).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct MetricsSnapshot {
    /// Jobs claimed.
    pub claims: u64,
    /// Jobs completed.
    pub completions: u64,
    /// Jobs failed (back to the pool or poisoned).
    pub failures: u64,
    /// Claims found taken back while the job was being processed (the job then moved to
    /// another worker; see `docs/many-hosts.md`, "Recovery").
    pub claims_lost: u64,
    /// Heartbeats sent (worker registry).
    pub heartbeats: u64,
    /// Heartbeats that failed (after retries).
    pub heartbeat_failures: u64,
    /// Workers the reaper marked lost.
    pub reaped_workers: u64,
    /// Jobs the reaper took back (from lost workers or expired leases).
    pub reclaimed_jobs: u64,
    /// Storage calls that failed (each failed attempt counts; most are retried).
    pub storage_errors: u64,
    /// Storage calls retried after a failure.
    pub storage_retries: u64,
    /// Storage calls given up on once the retry budget was spent.
    pub storage_gave_up: u64,
    /// Checkpoints saved through a backend that measures them (Redis).
    pub checkpoint_saves: u64,
    /// Total time spent saving them, in microseconds.
    pub checkpoint_micros: u64,
    /// The slowest save, in microseconds (a high-water mark).
    pub checkpoint_micros_max: u64,
}

impl MetricsSnapshot {
    /// Adds `other` (counters summed, high-water marks maxed).
    pub fn add(&mut self, other: &MetricsSnapshot) {
        self.claims += other.claims;
        self.completions += other.completions;
        self.failures += other.failures;
        self.claims_lost += other.claims_lost;
        self.heartbeats += other.heartbeats;
        self.heartbeat_failures += other.heartbeat_failures;
        self.reaped_workers += other.reaped_workers;
        self.reclaimed_jobs += other.reclaimed_jobs;
        self.storage_errors += other.storage_errors;
        self.storage_retries += other.storage_retries;
        self.storage_gave_up += other.storage_gave_up;
        self.checkpoint_saves += other.checkpoint_saves;
        self.checkpoint_micros += other.checkpoint_micros;
        self.checkpoint_micros_max = self.checkpoint_micros_max.max(other.checkpoint_micros_max);
    }

    /// Mean checkpoint save time in milliseconds (`None` before the first save).
    pub fn checkpoint_mean_ms(&self) -> Option<f64> {
        (self.checkpoint_saves > 0)
            .then(|| self.checkpoint_micros as f64 / self.checkpoint_saves as f64 / 1000.0)
    }
}

/// This process's counters.
pub fn metrics() -> &'static WorkerMetrics {
    static METRICS: WorkerMetrics = WorkerMetrics {
        claims: AtomicU64::new(0),
        completions: AtomicU64::new(0),
        failures: AtomicU64::new(0),
        claims_lost: AtomicU64::new(0),
        heartbeats: AtomicU64::new(0),
        heartbeat_failures: AtomicU64::new(0),
        reaped_workers: AtomicU64::new(0),
        reclaimed_jobs: AtomicU64::new(0),
        storage_errors: AtomicU64::new(0),
        storage_retries: AtomicU64::new(0),
        storage_gave_up: AtomicU64::new(0),
        checkpoint_saves: AtomicU64::new(0),
        checkpoint_micros: AtomicU64::new(0),
        checkpoint_micros_max: AtomicU64::new(0),
    };
    &METRICS
}

fn bump(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Ordering::Relaxed);
}

impl WorkerMetrics {
    /// The counters now.
    pub fn snapshot(&self) -> MetricsSnapshot {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        MetricsSnapshot {
            claims: get(&self.claims),
            completions: get(&self.completions),
            failures: get(&self.failures),
            claims_lost: get(&self.claims_lost),
            heartbeats: get(&self.heartbeats),
            heartbeat_failures: get(&self.heartbeat_failures),
            reaped_workers: get(&self.reaped_workers),
            reclaimed_jobs: get(&self.reclaimed_jobs),
            storage_errors: get(&self.storage_errors),
            storage_retries: get(&self.storage_retries),
            storage_gave_up: get(&self.storage_gave_up),
            checkpoint_saves: get(&self.checkpoint_saves),
            checkpoint_micros: get(&self.checkpoint_micros),
            checkpoint_micros_max: get(&self.checkpoint_micros_max),
        }
    }

    pub(crate) fn claimed(&self, n: usize) {
        bump(&self.claims, n as u64);
    }
    pub(crate) fn completed(&self) {
        bump(&self.completions, 1);
    }
    pub(crate) fn failed(&self) {
        bump(&self.failures, 1);
    }
    pub(crate) fn claim_lost(&self) {
        bump(&self.claims_lost, 1);
    }
    pub(crate) fn heartbeat(&self, ok: bool) {
        bump(
            if ok {
                &self.heartbeats
            } else {
                &self.heartbeat_failures
            },
            1,
        );
    }
    pub(crate) fn reaped(&self, workers: u64, jobs: u64) {
        bump(&self.reaped_workers, workers);
        bump(&self.reclaimed_jobs, jobs);
    }
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) fn storage_error(&self) {
        bump(&self.storage_errors, 1);
    }
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) fn storage_retry(&self) {
        bump(&self.storage_retries, 1);
    }
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) fn storage_gave_up(&self) {
        bump(&self.storage_gave_up, 1);
    }
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) fn checkpoint_saved(&self, took: Duration) {
        let micros = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
        bump(&self.checkpoint_saves, 1);
        bump(&self.checkpoint_micros, micros);
        self.checkpoint_micros_max
            .fetch_max(micros, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshots_add_up() {
        let m = WorkerMetrics::default();
        m.claimed(3);
        m.checkpoint_saved(Duration::from_micros(700));
        m.checkpoint_saved(Duration::from_micros(300));
        let mut total = m.snapshot();
        assert_eq!((total.claims, total.checkpoint_micros_max), (3, 700));
        assert_eq!(total.checkpoint_mean_ms(), Some(0.5));
        let other = MetricsSnapshot {
            claims: 2,
            checkpoint_micros_max: 900,
            ..MetricsSnapshot::default()
        };
        total.add(&other);
        assert_eq!((total.claims, total.checkpoint_micros_max), (5, 900));
        let json = serde_json::to_value(total).unwrap();
        let back: MetricsSnapshot = serde_json::from_value(json).unwrap();
        assert_eq!(back, total);
        assert_eq!(MetricsSnapshot::default().checkpoint_mean_ms(), None);
    }
}
