//! In-memory backends, for tests and single-process runs.

use async_trait::async_trait;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use super::registration::{RegistrationBackend, WorkerFilter, WorkerRecord, WorkerRegistration};
use super::time::{iso_ms, now_ms};
use super::work::{
    Claim, ClaimRequest, JobStatus, PoolCounters, PoolStats, PushOptions, ReleasedJob, WorkBackend,
    WorkItem, WorkPool,
};
use super::{DistributedError, now_iso};
use crate::Value;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Worker registry in process memory.
#[derive(Debug, Default)]
pub struct MemoryRegistrationBackend {
    /// Records, and the order they were first registered in.
    workers: Mutex<(HashMap<String, WorkerRecord>, Vec<String>)>,
}

impl MemoryRegistrationBackend {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }
}

#[async_trait]
impl RegistrationBackend for MemoryRegistrationBackend {
    async fn register(&self, worker: WorkerRegistration) -> Result<WorkerRecord, DistributedError> {
        let record = WorkerRecord::from_registration(&worker, now_iso());
        let mut guard = lock(&self.workers);
        let (map, order) = &mut *guard;
        if map
            .insert(worker.worker_id.clone(), record.clone())
            .is_none()
        {
            order.push(worker.worker_id);
        }
        Ok(record)
    }

    async fn heartbeat(
        &self,
        worker_id: &str,
        metadata: Option<serde_json::Map<String, Value>>,
    ) -> Result<(), DistributedError> {
        let mut guard = lock(&self.workers);
        let record = guard
            .0
            .get_mut(worker_id)
            .ok_or_else(|| DistributedError::WorkerNotFound(worker_id.to_string()))?;
        record.last_heartbeat = now_iso();
        if let Some(metadata) = metadata {
            record
                .metadata
                .get_or_insert_with(Default::default)
                .extend(metadata);
        }
        Ok(())
    }

    async fn update_status(&self, worker_id: &str, status: &str) -> Result<(), DistributedError> {
        let mut guard = lock(&self.workers);
        let record = guard
            .0
            .get_mut(worker_id)
            .ok_or_else(|| DistributedError::WorkerNotFound(worker_id.to_string()))?;
        record.status = status.to_string();
        Ok(())
    }

    async fn get(&self, worker_id: &str) -> Result<Option<WorkerRecord>, DistributedError> {
        Ok(lock(&self.workers).0.get(worker_id).cloned())
    }

    async fn list(&self, filter: &WorkerFilter) -> Result<Vec<WorkerRecord>, DistributedError> {
        let cutoff = filter.stale_cutoff();
        let guard = lock(&self.workers);
        let (map, order) = &*guard;
        Ok(order
            .iter()
            .filter_map(|id| map.get(id))
            .filter(|r| filter.matches(r, cutoff.as_deref()))
            .cloned()
            .collect())
    }

    async fn remove(&self, worker_id: &str) -> Result<bool, DistributedError> {
        let mut guard = lock(&self.workers);
        let (map, order) = &mut *guard;
        if map.remove(worker_id).is_none() {
            return Ok(false);
        }
        order.retain(|id| id != worker_id);
        Ok(true)
    }
}

#[derive(Debug, Default)]
struct PoolState {
    next_seq: u64,
    /// Job id → its entry.
    items: HashMap<String, Entry>,
    /// Pending jobs by insertion sequence (claims take the oldest).
    pending: BTreeMap<u64, String>,
    counters: PoolCounters,
}

#[derive(Debug)]
struct Entry {
    /// Insertion sequence (a failed or released job goes back to its old place).
    seq: u64,
    item: WorkItem,
    /// Lease end of the current claim (ms since the epoch).
    lease_until_ms: u64,
}

/// One in-memory pool.
#[derive(Debug)]
pub struct MemoryWorkPool {
    name: String,
    state: Mutex<PoolState>,
}

impl MemoryWorkPool {
    /// An empty pool called `name`.
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            state: Mutex::new(PoolState::default()),
        }
    }
}

/// The entry `claim` holds, or why it does not hold one.
fn held_mut<'a>(
    state: &'a mut PoolState,
    claim: &Claim,
) -> Result<&'a mut Entry, DistributedError> {
    let entry = state
        .items
        .get_mut(&claim.job_id)
        .ok_or_else(|| DistributedError::JobNotFound(claim.job_id.clone()))?;
    if entry.item.status != JobStatus::Claimed {
        return Err(DistributedError::NotClaimed {
            id: claim.job_id.clone(),
            status: entry.item.status.to_string(),
        });
    }
    if entry.item.claim_token.as_ref() != Some(&claim.token) {
        return Err(DistributedError::NotHolder {
            id: claim.job_id.clone(),
            holder: entry.item.claimed_by.clone(),
        });
    }
    Ok(entry)
}

/// Takes a claimed entry back: pending again, or poisoned when its attempts are used up.
fn take_back(state: &mut PoolState, id: &str, why: &str) -> Option<ReleasedJob> {
    let entry = state.items.get_mut(id)?;
    let item = &mut entry.item;
    let released = ReleasedJob {
        id: item.id.clone(),
        worker_id: item.claimed_by.clone(),
        execution_id: item.execution_id.take(),
        status: JobStatus::Pending,
    };
    item.claim_token = None;
    item.lease_expires_at = None;
    if released.execution_id.is_some() {
        item.previous_execution_id
            .clone_from(&released.execution_id);
    }
    if item.attempts >= item.max_retries {
        item.status = JobStatus::Poisoned;
        item.error = Some(why.to_string());
        return Some(ReleasedJob {
            status: JobStatus::Poisoned,
            ..released
        });
    }
    item.status = JobStatus::Pending;
    item.claimed_by = None;
    item.claimed_at = None;
    let seq = entry.seq;
    state.pending.insert(seq, id.to_string());
    Some(released)
}

#[async_trait]
impl WorkPool for MemoryWorkPool {
    fn name(&self) -> &str {
        &self.name
    }

    async fn push(&self, data: Value, options: PushOptions) -> Result<String, DistributedError> {
        let id = uuid::Uuid::new_v4().to_string();
        let item = WorkItem {
            id: id.clone(),
            data,
            claimed_by: None,
            claimed_at: None,
            attempts: 0,
            max_retries: options.max_retries,
            status: JobStatus::Pending,
            created_at: now_iso(),
            result: None,
            error: None,
            claim_token: None,
            lease_expires_at: None,
            execution_id: None,
            previous_execution_id: None,
        };
        let mut state = lock(&self.state);
        let seq = state.next_seq;
        state.next_seq += 1;
        state.items.insert(
            id.clone(),
            Entry {
                seq,
                item,
                lease_until_ms: 0,
            },
        );
        state.pending.insert(seq, id.clone());
        Ok(id)
    }

    async fn claim_with(&self, request: &ClaimRequest) -> Result<Vec<WorkItem>, DistributedError> {
        let now = now_ms();
        let until = now.saturating_add(request.lease_ms());
        let mut state = lock(&self.state);
        let mut out = Vec::new();
        while out.len() < request.limit {
            let Some((_, id)) = state.pending.pop_first() else {
                break;
            };
            let Some(entry) = state.items.get_mut(&id) else {
                continue;
            };
            let item = &mut entry.item;
            item.status = JobStatus::Claimed;
            item.claimed_by = Some(request.worker_id.clone());
            item.claimed_at = Some(iso_ms(now));
            item.attempts += 1;
            item.claim_token = Some(request.token.clone());
            item.lease_expires_at = Some(iso_ms(until));
            item.execution_id.clone_from(&request.execution_id);
            entry.lease_until_ms = until;
            out.push(item.clone());
        }
        Ok(out)
    }

    async fn complete(&self, claim: &Claim, result: Option<Value>) -> Result<(), DistributedError> {
        let mut state = lock(&self.state);
        let item = &mut held_mut(&mut state, claim)?.item;
        item.status = JobStatus::Done;
        item.result = result;
        item.error = None;
        item.lease_expires_at = None;
        Ok(())
    }

    async fn fail(
        &self,
        claim: &Claim,
        error: Option<&str>,
    ) -> Result<JobStatus, DistributedError> {
        let mut state = lock(&self.state);
        let entry = held_mut(&mut state, claim)?;
        let seq = entry.seq;
        let item = &mut entry.item;
        item.error = error.map(str::to_string);
        item.lease_expires_at = None;
        item.execution_id = None;
        if item.attempts >= item.max_retries {
            item.status = JobStatus::Poisoned;
            Ok(JobStatus::Poisoned)
        } else {
            item.status = JobStatus::Pending;
            item.claimed_by = None;
            item.claimed_at = None;
            item.claim_token = None;
            let id = item.id.clone();
            state.pending.insert(seq, id);
            Ok(JobStatus::Pending)
        }
    }

    async fn heartbeat(
        &self,
        claim: &Claim,
        extend_lease: Option<Duration>,
    ) -> Result<(), DistributedError> {
        let mut state = lock(&self.state);
        let entry = held_mut(&mut state, claim)?;
        if let Some(extend) = extend_lease {
            let ms = u64::try_from(extend.as_millis()).unwrap_or(u64::MAX);
            let until = now_ms().saturating_add(ms);
            if until > entry.lease_until_ms {
                entry.lease_until_ms = until;
                entry.item.lease_expires_at = Some(iso_ms(until));
            }
        }
        Ok(())
    }

    async fn size(&self) -> Result<u64, DistributedError> {
        Ok(lock(&self.state).pending.len() as u64)
    }

    async fn release_worker(&self, worker_id: &str) -> Result<Vec<ReleasedJob>, DistributedError> {
        let mut state = lock(&self.state);
        let mut held: Vec<(u64, String)> = state
            .items
            .values()
            .filter(|e| {
                e.item.status == JobStatus::Claimed
                    && e.item.claimed_by.as_deref() == Some(worker_id)
            })
            .map(|e| (e.seq, e.item.id.clone()))
            .collect();
        held.sort();
        let why = format!("worker `{worker_id}` was lost");
        let released: Vec<ReleasedJob> = held
            .iter()
            .filter_map(|(_, id)| take_back(&mut state, id, &why))
            .collect();
        state.counters.released += released.len() as u64;
        Ok(released)
    }

    async fn reclaim_expired(&self) -> Result<Vec<ReleasedJob>, DistributedError> {
        let now = now_ms();
        let mut state = lock(&self.state);
        let mut expired: Vec<(u64, String)> = state
            .items
            .values()
            .filter(|e| e.item.status == JobStatus::Claimed && e.lease_until_ms <= now)
            .map(|e| (e.lease_until_ms, e.item.id.clone()))
            .collect();
        expired.sort();
        let released: Vec<ReleasedJob> = expired
            .iter()
            .filter_map(|(_, id)| take_back(&mut state, id, "its lease expired"))
            .collect();
        state.counters.expired += released.len() as u64;
        Ok(released)
    }

    async fn get(&self, item_id: &str) -> Result<Option<WorkItem>, DistributedError> {
        Ok(lock(&self.state).items.get(item_id).map(|e| e.item.clone()))
    }

    async fn jobs(
        &self,
        status: JobStatus,
        limit: usize,
    ) -> Result<Vec<WorkItem>, DistributedError> {
        let state = lock(&self.state);
        let mut found: Vec<(u64, &Entry)> = state
            .items
            .values()
            .filter(|e| e.item.status == status)
            .map(|e| {
                let order = if status == JobStatus::Claimed {
                    e.lease_until_ms
                } else {
                    e.seq
                };
                (order, e)
            })
            .collect();
        found.sort_by_key(|(order, e)| (*order, e.seq));
        Ok(found
            .into_iter()
            .take(limit)
            .map(|(_, e)| e.item.clone())
            .collect())
    }

    async fn requeue(&self, ids: &[String]) -> Result<Vec<ReleasedJob>, DistributedError> {
        let mut state = lock(&self.state);
        let mut out = Vec::new();
        for id in ids {
            let Some(entry) = state.items.get_mut(id) else {
                continue;
            };
            let seq = entry.seq;
            let item = &mut entry.item;
            let was = item.status;
            if !matches!(was, JobStatus::Poisoned | JobStatus::Claimed) {
                continue;
            }
            let execution_id = item.execution_id.take();
            if execution_id.is_some() {
                item.previous_execution_id.clone_from(&execution_id);
            }
            out.push(ReleasedJob {
                id: id.clone(),
                worker_id: item.claimed_by.take(),
                execution_id,
                status: JobStatus::Pending,
            });
            if was == JobStatus::Poisoned {
                item.attempts = 0;
            }
            item.status = JobStatus::Pending;
            item.claimed_at = None;
            item.claim_token = None;
            item.lease_expires_at = None;
            state.pending.insert(seq, id.clone());
        }
        state.counters.requeued += out.len() as u64;
        Ok(out)
    }

    async fn remove_poisoned(&self, ids: &[String]) -> Result<u64, DistributedError> {
        let mut state = lock(&self.state);
        let mut n = 0;
        for id in ids {
            if state
                .items
                .get(id)
                .is_some_and(|e| e.item.status == JobStatus::Poisoned)
            {
                state.items.remove(id);
                n += 1;
            }
        }
        state.counters.removed += n;
        Ok(n)
    }

    async fn stats(&self) -> Result<PoolStats, DistributedError> {
        let state = lock(&self.state);
        let mut stats = PoolStats::default();
        for entry in state.items.values() {
            match entry.item.status {
                JobStatus::Pending => stats.pending += 1,
                JobStatus::Claimed => stats.claimed += 1,
                JobStatus::Done => stats.done += 1,
                JobStatus::Poisoned => stats.poisoned += 1,
            }
        }
        Ok(stats)
    }

    async fn counters(&self) -> Result<PoolCounters, DistributedError> {
        Ok(lock(&self.state).counters)
    }
}

/// Named in-memory pools.
#[derive(Debug, Default)]
pub struct MemoryWorkBackend {
    pools: Mutex<HashMap<String, Arc<MemoryWorkPool>>>,
}

impl MemoryWorkBackend {
    /// No pools yet.
    pub fn new() -> Self {
        Self::default()
    }
}

#[async_trait]
impl WorkBackend for MemoryWorkBackend {
    fn pool(&self, name: &str) -> Arc<dyn WorkPool> {
        lock(&self.pools)
            .entry(name.to_string())
            .or_insert_with(|| Arc::new(MemoryWorkPool::new(name)))
            .clone()
    }

    async fn pool_names(&self) -> Result<Vec<String>, DistributedError> {
        let mut names: Vec<String> = lock(&self.pools).keys().cloned().collect();
        names.sort();
        Ok(names)
    }
}
