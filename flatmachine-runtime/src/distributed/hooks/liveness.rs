//! What keeps a worker visibly alive while it works, and tells it early when it lost a job:
//! one heartbeat task per worker id registered through the hooks in this process.
//!
//! Every `heartbeat_interval` the task refreshes the worker's registry heartbeat (with this
//! process's [`MetricsSnapshot`](crate::distributed::MetricsSnapshot) as metadata) and checks
//! each claim the worker holds ([`WorkPool::heartbeat`] with its token). A claim found taken
//! back is recorded as lost: the hooks then refuse every further action of the execution that
//! made it (and of its child machines), and the execution is marked superseded.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use serde_json::json;

use crate::distributed::metrics::{METRICS_METADATA_KEY, metrics};
use crate::distributed::superseded::{SupersededMark, add_superseded};
use crate::distributed::{Claim, DistributedError, RegistrationBackend, WorkBackend, now_iso};
use crate::persistence::CheckpointStore;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A claim a worker of this process holds.
#[derive(Debug, Clone)]
pub(super) struct HeldClaim {
    pub pool: String,
    pub claim: Claim,
    pub execution_id: Option<String>,
}

/// A claim found taken back.
#[derive(Debug, Clone)]
pub(super) struct LostClaim {
    pub pool: String,
    pub job_id: String,
    pub worker_id: String,
    pub error: DistributedError,
}

/// The most lost claims remembered (oldest forgotten first).
const MAX_LOST: usize = 4096;

/// Shared by the hooks and their heartbeat tasks.
#[derive(Default)]
pub(super) struct Liveness {
    workers: Mutex<HashMap<String, WorkerLife>>,
    /// Workers registered through these hooks and not deregistered since, with the
    /// registration time the registry recorded: `register_worker` skips the write for them
    /// while their heartbeat task runs (one registration per worker per process).
    registered: Mutex<HashMap<String, serde_json::Value>>,
    /// Lost claims by the execution that made them, in the order found.
    lost: Mutex<(
        HashMap<String, LostClaim>,
        std::collections::VecDeque<String>,
    )>,
}

struct WorkerLife {
    task: tokio::task::JoinHandle<()>,
    claims: Arc<Mutex<Vec<HeldClaim>>>,
}

impl Drop for Liveness {
    fn drop(&mut self) {
        for (_, life) in lock(&self.workers).drain() {
            life.task.abort();
        }
    }
}

/// What a heartbeat task needs.
pub(super) struct Beat {
    pub registration: Arc<dyn RegistrationBackend>,
    pub work: Arc<dyn WorkBackend>,
    pub store: Option<CheckpointStore>,
    pub interval: Duration,
}

impl Liveness {
    /// Starts the heartbeat task of `worker_id` unless one is running.
    pub(super) fn start(self: &Arc<Self>, worker_id: &str, beat: Beat) {
        let mut workers = lock(&self.workers);
        if workers
            .get(worker_id)
            .is_some_and(|life| !life.task.is_finished())
        {
            return;
        }
        let claims: Arc<Mutex<Vec<HeldClaim>>> = workers
            .remove(worker_id)
            .map(|life| life.claims)
            .unwrap_or_default();
        let task = tokio::spawn(heartbeat_loop(
            Arc::downgrade(self),
            worker_id.to_string(),
            Arc::clone(&claims),
            beat,
        ));
        workers.insert(worker_id.to_string(), WorkerLife { task, claims });
    }

    /// Stops the heartbeat task of `worker_id` and forgets its claims and its registration
    /// (the next `register_worker` writes it again).
    pub(super) fn stop(&self, worker_id: &str) {
        if let Some(life) = lock(&self.workers).remove(worker_id) {
            life.task.abort();
        }
        self.forget_registration(worker_id);
    }

    /// Records that `worker_id` is registered (at `registered_at`) by this process.
    pub(super) fn registered(&self, worker_id: &str, registered_at: serde_json::Value) {
        lock(&self.registered).insert(worker_id.to_string(), registered_at);
    }

    /// The registration time of `worker_id` if this process registered it and its heartbeat
    /// task still runs (so the registry record is being kept alive).
    pub(super) fn registration(&self, worker_id: &str) -> Option<serde_json::Value> {
        let at = lock(&self.registered).get(worker_id).cloned()?;
        self.running(worker_id).then_some(at)
    }

    /// Forgets that `worker_id` is registered (it must be registered again).
    pub(super) fn forget_registration(&self, worker_id: &str) {
        lock(&self.registered).remove(worker_id);
    }

    /// The workers this process registered and has not stopped.
    pub(super) fn registered_workers(&self) -> Vec<String> {
        lock(&self.registered).keys().cloned().collect()
    }

    /// Whether a heartbeat task runs for `worker_id`.
    pub(super) fn running(&self, worker_id: &str) -> bool {
        lock(&self.workers)
            .get(worker_id)
            .is_some_and(|life| !life.task.is_finished())
    }

    /// Records a claim `worker_id` now holds (checked by its heartbeats).
    pub(super) fn hold(&self, worker_id: &str, held: HeldClaim) {
        if let Some(life) = lock(&self.workers).get(worker_id) {
            lock(&life.claims).push(held);
        }
    }

    /// Forgets a claim (completed or failed).
    pub(super) fn release(&self, worker_id: &str, claim: &Claim) {
        if let Some(life) = lock(&self.workers).get(worker_id) {
            lock(&life.claims).retain(|h| h.claim != *claim);
        }
    }

    /// Records that the claim `execution_id` made was taken back.
    pub(super) fn lost(&self, execution_id: &str, lost: LostClaim) {
        let mut guard = lock(&self.lost);
        let (map, order) = &mut *guard;
        if map.insert(execution_id.to_string(), lost).is_none() {
            order.push_back(execution_id.to_string());
            while order.len() > MAX_LOST {
                if let Some(old) = order.pop_front() {
                    map.remove(&old);
                }
            }
        }
    }

    /// The lost claim of any of these executions.
    pub(super) fn lost_for<'a>(
        &self,
        executions: impl IntoIterator<Item = &'a str>,
    ) -> Option<LostClaim> {
        let guard = lock(&self.lost);
        executions.into_iter().find_map(|e| guard.0.get(e).cloned())
    }
}

/// Whether `error` says the claim is gone (rather than the storage failing).
pub(super) fn claim_gone(error: &DistributedError) -> bool {
    matches!(
        error,
        DistributedError::NotHolder { .. }
            | DistributedError::NotClaimed { .. }
            | DistributedError::JobNotFound(_)
    )
}

/// The superseded mark for a claim of `worker_id` refused with `error`.
pub(super) fn mark_for(
    held: &HeldClaim,
    worker_id: &str,
    error: &DistributedError,
) -> Option<SupersededMark> {
    let execution_id = held.execution_id.clone()?;
    let holder = match error {
        DistributedError::NotHolder { holder, .. } => holder.clone(),
        _ => None,
    };
    Some(SupersededMark {
        execution_id,
        pool: held.pool.clone(),
        job_id: held.claim.job_id.clone(),
        worker_id: Some(worker_id.to_string()),
        reason: format!("found by the worker: {error}"),
        holder,
        holder_execution_id: None,
        at: now_iso(),
    })
}

/// Adds `mark` if there is a store (an existing mark only learns the holder); a failure is
/// logged (the mark is a courtesy to whoever resumes; the claim token already keeps the
/// execution from finishing the job).
pub(super) async fn write_mark(store: Option<&CheckpointStore>, mark: Option<SupersededMark>) {
    if let (Some(store), Some(mark)) = (store, mark)
        && let Err(e) = add_superseded(store, mark.clone()).await
    {
        tracing::warn!(execution_id = %mark.execution_id, error = %e, "could not mark a worker execution superseded");
    }
}

async fn heartbeat_loop(
    live: std::sync::Weak<Liveness>,
    worker_id: String,
    claims: Arc<Mutex<Vec<HeldClaim>>>,
    beat: Beat,
) {
    let mut ticks = tokio::time::interval(beat.interval.max(Duration::from_millis(10)));
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticks.tick().await;
    loop {
        ticks.tick().await;
        let mut metadata = serde_json::Map::new();
        metadata.insert(
            METRICS_METADATA_KEY.to_string(),
            json!(metrics().snapshot()),
        );
        match beat
            .registration
            .heartbeat(&worker_id, Some(metadata))
            .await
        {
            Ok(()) => {
                metrics().heartbeat(true);
                // Registered once per process: if the reaper marked the worker `lost` while
                // this process was paused, the next `register_worker` must make it `active`
                // again (a `lost` worker is never reaped again, so a later crash would leave
                // its job to the lease).
                if let Some(live) = live.upgrade()
                    && live.registration(&worker_id).is_some()
                    && let Ok(Some(record)) = beat.registration.get(&worker_id).await
                    && record.status != crate::distributed::worker_status::ACTIVE
                {
                    tracing::warn!(worker_id = %worker_id, status = %record.status, "this worker was marked inactive while alive; it registers again at its next run");
                    live.forget_registration(&worker_id);
                }
            }
            // A worker that never registered (or whose record an operator removed) still
            // gets its claims checked; its next `register_worker` writes the record again.
            Err(DistributedError::WorkerNotFound(_)) => {
                if let Some(live) = live.upgrade() {
                    live.forget_registration(&worker_id);
                }
            }
            Err(e) => {
                metrics().heartbeat(false);
                tracing::warn!(worker_id = %worker_id, error = %e, "heartbeat failed");
            }
        }
        let held: Vec<HeldClaim> = lock(&claims).clone();
        for h in held {
            let Err(error) = beat.work.pool(&h.pool).heartbeat(&h.claim, None).await else {
                continue;
            };
            if !claim_gone(&error) {
                tracing::warn!(worker_id = %worker_id, job_id = %h.claim.job_id, error = %error, "could not check a claim");
                continue;
            }
            // Completed or failed by the worker while the check was on its way (`complete_job`
            // forgets the claim before it settles it): not lost.
            if !lock(&claims).iter().any(|c| c.claim == h.claim) {
                continue;
            }
            tracing::warn!(
                worker_id = %worker_id,
                job_id = %h.claim.job_id,
                error = %error,
                "this worker's claim was taken back: its execution stops at its next action"
            );
            metrics().claim_lost();
            lock(&claims).retain(|c| c.claim != h.claim);
            let Some(live) = live.upgrade() else { return };
            if let Some(execution) = &h.execution_id {
                live.lost(
                    execution,
                    LostClaim {
                        pool: h.pool.clone(),
                        job_id: h.claim.job_id.clone(),
                        worker_id: worker_id.clone(),
                        error: error.clone(),
                    },
                );
            }
            let mut mark = mark_for(&h, &worker_id, &error);
            if let Some(m) = mark.as_mut()
                && m.holder.is_none()
                && let Ok(Some(job)) = beat.work.pool(&h.pool).get(&h.claim.job_id).await
            {
                m.holder = job.claimed_by.filter(|w| *w != worker_id);
                m.holder_execution_id = job.execution_id;
            }
            write_mark(beat.store.as_ref(), mark).await;
        }
        if live.strong_count() == 0 {
            return;
        }
    }
}
