//! [`MemorySignalBackend`]: signals and waiters in process memory.

use std::collections::{HashMap, VecDeque};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;

use super::clock::{iso_from_millis, millis_after, now_millis};
use super::{
    SendOptions, Signal, SignalBackend, SignalError, WaitRequest, Waiter, encode_data,
    new_signal_id, validate_channel,
};
use crate::Value;

/// Signals and waiters in this process (the reference's `MemorySignalBackend`): for tests and
/// runs that live in one process. One lock makes every operation atomic; a send wakes a
/// dispatcher waiting in [`wait_for_activity`](SignalBackend::wait_for_activity) at once.
#[derive(Debug, Default)]
pub struct MemorySignalBackend {
    inner: Mutex<Inner>,
    activity: tokio::sync::Notify,
}

#[derive(Debug, Default)]
struct Inner {
    /// Live signals per channel, oldest first, with their expiry (ms).
    channels: HashMap<String, VecDeque<(Signal, Option<u64>)>>,
    /// Waiters by execution id, with a registration sequence number (for order).
    waiters: HashMap<String, (u64, Waiter)>,
    next: u64,
}

impl Inner {
    /// Takes the oldest live signal of `channel`, dropping expired ones on the way.
    fn take(&mut self, channel: &str, now: u64) -> Option<Signal> {
        let queue = self.channels.get_mut(channel)?;
        let mut found = None;
        while let Some((signal, expires)) = queue.pop_front() {
            if expires.is_none_or(|e| e > now) {
                found = Some(signal);
                break;
            }
        }
        if queue.is_empty() {
            self.channels.remove(channel);
        }
        found
    }
}

impl MemorySignalBackend {
    /// An empty backend.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[async_trait]
impl SignalBackend for MemorySignalBackend {
    async fn send(
        &self,
        channel: &str,
        data: Value,
        options: SendOptions,
    ) -> Result<Signal, SignalError> {
        validate_channel(channel)?;
        encode_data(&data)?;
        let signal = Signal {
            id: new_signal_id(),
            channel: channel.to_owned(),
            data,
            created_at: iso_from_millis(now_millis()),
        };
        let expires = options.ttl.map(millis_after);
        self.lock()
            .channels
            .entry(channel.to_owned())
            .or_default()
            .push_back((signal.clone(), expires));
        self.activity.notify_one();
        Ok(signal)
    }

    async fn consume(&self, channel: &str) -> Result<Option<Signal>, SignalError> {
        Ok(self.lock().take(channel, now_millis()))
    }

    async fn peek(&self, channel: &str) -> Result<Vec<Signal>, SignalError> {
        let now = now_millis();
        Ok(self
            .lock()
            .channels
            .get(channel)
            .map(|q| {
                q.iter()
                    .filter(|(_, e)| e.is_none_or(|e| e > now))
                    .map(|(s, _)| s.clone())
                    .collect()
            })
            .unwrap_or_default())
    }

    async fn channels(&self) -> Result<Vec<String>, SignalError> {
        let now = now_millis();
        let mut names: Vec<String> = self
            .lock()
            .channels
            .iter()
            .filter(|(_, q)| q.iter().any(|(_, e)| e.is_none_or(|e| e > now)))
            .map(|(c, _)| c.clone())
            .collect();
        names.sort();
        Ok(names)
    }

    async fn wait(&self, request: &WaitRequest<'_>) -> Result<Option<Signal>, SignalError> {
        validate_channel(request.channel)?;
        let now = now_millis();
        let mut inner = self.lock();
        if let Some((_, w)) = inner.waiters.get(request.execution_id)
            && w.step == request.step
            && let Some(signal) = &w.delivered
        {
            return Ok(Some(signal.clone()));
        }
        let taken = inner.take(request.channel, now);
        let mut waiter = request.waiter(now);
        waiter.delivered = taken.clone();
        let seq = inner.next;
        inner.next += 1;
        inner
            .waiters
            .insert(request.execution_id.to_owned(), (seq, waiter));
        Ok(taken)
    }

    async fn ack(&self, execution_id: &str, step: u64) -> Result<(), SignalError> {
        let mut inner = self.lock();
        if inner
            .waiters
            .get(execution_id)
            .is_some_and(|(_, w)| w.step == step)
        {
            inner.waiters.remove(execution_id);
        }
        Ok(())
    }

    async fn waiters(&self, channel: Option<&str>) -> Result<Vec<Waiter>, SignalError> {
        let inner = self.lock();
        let mut list: Vec<&(u64, Waiter)> = inner
            .waiters
            .values()
            .filter(|(_, w)| channel.is_none_or(|c| w.channel == c))
            .collect();
        list.sort_by_key(|(seq, _)| *seq);
        Ok(list.into_iter().map(|(_, w)| w.clone()).collect())
    }

    async fn deliver(&self, channel: &str) -> Result<Vec<String>, SignalError> {
        let now = now_millis();
        let mut inner = self.lock();
        let mut ids: Vec<(u64, String)> = inner
            .waiters
            .iter()
            .filter(|(_, (_, w))| w.channel == channel && w.delivered.is_none())
            .map(|(id, (seq, _))| (*seq, id.clone()))
            .collect();
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let Some(signal) = inner.take(channel, now) else {
            return Ok(Vec::new());
        };
        ids.sort();
        for (_, id) in &ids {
            if let Some((_, w)) = inner.waiters.get_mut(id) {
                w.delivered = Some(signal.clone());
            }
        }
        Ok(ids.into_iter().map(|(_, id)| id).collect())
    }

    async fn claim(
        &self,
        execution_id: &str,
        owner: &str,
        lease: Duration,
    ) -> Result<bool, SignalError> {
        let now = now_millis();
        let mut inner = self.lock();
        match inner.waiters.get_mut(execution_id) {
            Some((_, w)) if w.is_claimable(now, owner) => {
                w.claim = Some((owner.to_owned(), millis_after(lease)));
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    async fn release(&self, execution_id: &str, owner: &str) -> Result<(), SignalError> {
        let mut inner = self.lock();
        if let Some((_, w)) = inner.waiters.get_mut(execution_id)
            && w.claim.as_ref().is_some_and(|(o, _)| o == owner)
        {
            w.claim = None;
        }
        Ok(())
    }

    async fn forget(&self, execution_id: &str) -> Result<(), SignalError> {
        self.lock().waiters.remove(execution_id);
        Ok(())
    }

    async fn purge_expired(&self) -> Result<u64, SignalError> {
        let now = now_millis();
        let mut inner = self.lock();
        let mut removed = 0u64;
        inner.channels.retain(|_, q| {
            let before = q.len();
            q.retain(|(_, e)| e.is_none_or(|e| e > now));
            removed += (before - q.len()) as u64;
            !q.is_empty()
        });
        Ok(removed)
    }

    async fn wait_for_activity(&self, timeout: Duration) {
        let _ = tokio::time::timeout(timeout, self.activity.notified()).await;
    }
}
