//! In-memory backends, for tests and single-process runs.

use async_trait::async_trait;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};

use super::registration::{RegistrationBackend, WorkerFilter, WorkerRecord, WorkerRegistration};
use super::work::{JobStatus, PoolStats, PushOptions, WorkBackend, WorkItem, WorkPool};
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
}

#[derive(Debug, Default)]
struct PoolState {
    next_seq: u64,
    /// Job id → (insertion sequence, job).
    items: HashMap<String, (u64, WorkItem)>,
    /// Pending jobs by insertion sequence (claims take the oldest).
    pending: BTreeMap<u64, String>,
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

fn claimed_mut<'a>(
    state: &'a mut PoolState,
    item_id: &str,
) -> Result<&'a mut (u64, WorkItem), DistributedError> {
    let entry = state
        .items
        .get_mut(item_id)
        .ok_or_else(|| DistributedError::JobNotFound(item_id.to_string()))?;
    if entry.1.status != JobStatus::Claimed {
        return Err(DistributedError::NotClaimed {
            id: item_id.to_string(),
            status: entry.1.status.to_string(),
        });
    }
    Ok(entry)
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
        };
        let mut state = lock(&self.state);
        let seq = state.next_seq;
        state.next_seq += 1;
        state.items.insert(id.clone(), (seq, item));
        state.pending.insert(seq, id.clone());
        Ok(id)
    }

    async fn claim(&self, worker_id: &str) -> Result<Option<WorkItem>, DistributedError> {
        let mut state = lock(&self.state);
        let Some((_, id)) = state.pending.pop_first() else {
            return Ok(None);
        };
        let Some((_, item)) = state.items.get_mut(&id) else {
            return Ok(None);
        };
        item.status = JobStatus::Claimed;
        item.claimed_by = Some(worker_id.to_string());
        item.claimed_at = Some(now_iso());
        item.attempts += 1;
        Ok(Some(item.clone()))
    }

    async fn complete(&self, item_id: &str, result: Option<Value>) -> Result<(), DistributedError> {
        let mut state = lock(&self.state);
        let (_, item) = claimed_mut(&mut state, item_id)?;
        item.status = JobStatus::Done;
        item.result = result;
        item.error = None;
        Ok(())
    }

    async fn fail(
        &self,
        item_id: &str,
        error: Option<&str>,
    ) -> Result<JobStatus, DistributedError> {
        let mut state = lock(&self.state);
        let (seq, item) = claimed_mut(&mut state, item_id)?;
        let seq = *seq;
        item.error = error.map(str::to_string);
        if item.attempts >= item.max_retries {
            item.status = JobStatus::Poisoned;
            Ok(JobStatus::Poisoned)
        } else {
            item.status = JobStatus::Pending;
            item.claimed_by = None;
            item.claimed_at = None;
            let id = item.id.clone();
            state.pending.insert(seq, id);
            Ok(JobStatus::Pending)
        }
    }

    async fn size(&self) -> Result<u64, DistributedError> {
        Ok(lock(&self.state).pending.len() as u64)
    }

    async fn release_by_worker(&self, worker_id: &str) -> Result<u64, DistributedError> {
        let mut guard = lock(&self.state);
        let state = &mut *guard;
        let mut released = 0;
        for (seq, item) in state.items.values_mut() {
            if item.status == JobStatus::Claimed && item.claimed_by.as_deref() == Some(worker_id) {
                released += 1;
                if item.attempts >= item.max_retries {
                    item.status = JobStatus::Poisoned;
                    item.error = Some(format!("worker `{worker_id}` was lost"));
                } else {
                    item.status = JobStatus::Pending;
                    item.claimed_by = None;
                    item.claimed_at = None;
                    state.pending.insert(*seq, item.id.clone());
                }
            }
        }
        Ok(released)
    }

    async fn get(&self, item_id: &str) -> Result<Option<WorkItem>, DistributedError> {
        Ok(lock(&self.state).items.get(item_id).map(|(_, i)| i.clone()))
    }

    async fn stats(&self) -> Result<PoolStats, DistributedError> {
        let state = lock(&self.state);
        let mut stats = PoolStats::default();
        for (_, item) in state.items.values() {
            match item.status {
                JobStatus::Pending => stats.pending += 1,
                JobStatus::Claimed => stats.claimed += 1,
                JobStatus::Done => stats.done += 1,
                JobStatus::Poisoned => stats.poisoned += 1,
            }
        }
        Ok(stats)
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

impl WorkBackend for MemoryWorkBackend {
    fn pool(&self, name: &str) -> Arc<dyn WorkPool> {
        lock(&self.pools)
            .entry(name.to_string())
            .or_insert_with(|| Arc::new(MemoryWorkPool::new(name)))
            .clone()
    }
}
