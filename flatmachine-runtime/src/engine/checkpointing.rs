//! Checkpoints of a run: written at each event `checkpoint_on` selects, deferred for states
//! that do no work and saved with the next one, announced on the event stream.

use super::handover::HandedOver;
use super::machine::Machine;
use super::result::{RunError, RunResult};
use super::step::{DeferredCheckpoint, Run};
use crate::events::EventKind;
use crate::lock::HoldOps;
use crate::persistence::encoded::SnapshotParts;
use crate::persistence::{CheckpointStore, EncodedCheckpoint, PersistenceError, checkpoint_event};
use crate::{Context, Value};

impl Machine {
    /// Writes one checkpoint of `run`: serialized once, straight from the borrowed context, or
    /// as a record sharing the context for a store in memory ([`CheckpointStore::write`]).
    pub(super) async fn write_checkpoint(
        &self,
        store: &CheckpointStore,
        run: &mut Run,
        event: &'static str,
        state: &'static str,
        context: &Context,
        output: Option<&Value>,
    ) -> Result<(), PersistenceError> {
        self.write_checkpoint_with(store, run, event, state, context, output, None)
            .await
    }

    /// [`write_checkpoint`](Self::write_checkpoint), with the channel and deadline of a
    /// `waiting` checkpoint.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn write_checkpoint_with(
        &self,
        store: &CheckpointStore,
        run: &mut Run,
        event: &'static str,
        state: &'static str,
        context: &Context,
        output: Option<&Value>,
        waiting: Option<(&str, Option<&str>)>,
    ) -> Result<(), PersistenceError> {
        let spec = self.inner.spec;
        if !run.pending_launches.is_empty() {
            let launches = &self.inner.launches;
            run.pending_launches
                .retain(|intent| !launches.is_done(&intent.execution_id));
        }
        let empty = Context::new();
        let parts = SnapshotParts {
            execution_id: "",
            machine_name: spec.name,
            spec_version: spec.spec_version,
            current_state: state,
            context,
            step: run.step,
            created_at: "",
            event: Some(event),
            output: output.map(|o| match o {
                Value::Object(m) => m,
                _ => &empty,
            }),
            total_api_calls: Some(run.api_calls),
            total_cost: Some(run.cost),
            parent_execution_id: run.parent_execution_id.as_deref(),
            pending_launches: (!run.pending_launches.is_empty())
                .then_some(run.pending_launches.as_slice()),
            waiting_channel: waiting.map(|(channel, _)| channel),
            config_hash: run.config_hash,
            wait_deadline: waiting.and_then(|(_, deadline)| deadline),
            forked_from: run.forked_from.as_ref(),
            fencing_token: run.fencing_token,
        };
        // A store sharing the lock's fencing domain takes a fresh execution's lock with its
        // first checkpoint and releases it with the last.
        let hold = run
            .store_hold
            .clone()
            .filter(|h| event == checkpoint_event::MACHINE_END || !h.is_acquired());
        // A child whose parent saves its end: left in the parent's hand-over.
        if event == checkpoint_event::MACHINE_END
            && run.events.is_none()
            && let Some(hand_over) = run.hand_over.as_ref().filter(|h| h.accepts(store))
        {
            let checkpoint = run.writer.encode(parts)?;
            let mut checkpoints: Vec<EncodedCheckpoint> = std::mem::take(&mut run.deferred)
                .into_iter()
                .map(|d| d.checkpoint)
                .collect();
            checkpoints.push(checkpoint);
            // Its own children's ends go up with it (its parent's batch, if it still holds
            // it, stays: the parent takes it back).
            if let Some(adopted) = run.adopted.get() {
                for batch in adopted.take() {
                    hand_over.push(batch);
                }
            }
            hand_over.push(HandedOver {
                checkpoints,
                texts: std::mem::take(&mut run.pending_texts),
                hold: run.store_hold.clone(),
                release: true,
                guard: None,
                saved: None,
            });
            run.handed_over = true;
            return Ok(());
        }
        if run.deferred.is_empty()
            && hold.is_none()
            && run.pending_texts.is_empty()
            && !run.has_foreign()
        {
            return store.write(&mut run.writer, parts).await;
        }
        let checkpoint = run.writer.encode(parts)?;
        let deferred = std::mem::take(&mut run.deferred);
        let mut batch: Vec<EncodedCheckpoint> = Vec::with_capacity(deferred.len() + 1);
        batch.extend(deferred.iter().map(|d| d.checkpoint.clone()));
        batch.push(checkpoint);
        let started = std::time::Instant::now();
        let ops = hold.as_ref().map(|hold| HoldOps {
            hold,
            release: event == checkpoint_event::MACHINE_END,
        });
        let texts = std::mem::take(&mut run.pending_texts);
        let adopted = run.take_foreign();
        if adopted.is_empty() {
            store.save_encoded_batch_with(batch, &texts, ops).await?;
        } else {
            Self::save_with_adopted(store, adopted, Some((batch, &texts, ops))).await?;
        }
        Self::announce(run, &deferred, started.elapsed()).await;
        Ok(())
    }

    /// Saves the batches children left in `adopted` (releasing their locks) and `own`, this
    /// run's, in one backend operation; the children's lock guards go after it.
    async fn save_with_adopted(
        store: &CheckpointStore,
        mut adopted: Vec<HandedOver>,
        own: Option<crate::persistence::store::ExecutionBatch<'_>>,
    ) -> Result<(), PersistenceError> {
        let checkpoints: Vec<Vec<EncodedCheckpoint>> = adopted
            .iter_mut()
            .map(|a| std::mem::take(&mut a.checkpoints))
            .collect();
        let mut batches: Vec<_> = adopted
            .iter()
            .zip(checkpoints)
            .map(|(a, checkpoints)| (checkpoints, a.texts.as_slice(), a.lock()))
            .collect();
        batches.extend(own);
        let saved = store.save_encoded_batches_with(batches).await;
        if saved.is_ok() {
            for flag in adopted.iter().filter_map(|a| a.saved.as_ref()) {
                flag.store(true, std::sync::atomic::Ordering::Release);
            }
        }
        drop(adopted);
        saved
    }

    /// Emits `CheckpointSaved` for checkpoints saved late (`latency`: the batch's).
    pub(super) async fn announce(
        run: &Run,
        saved: &[DeferredCheckpoint],
        latency: std::time::Duration,
    ) {
        for d in saved {
            run.emit(|| EventKind::CheckpointSaved {
                event: d.event,
                state: d.state,
                step: d.step,
                latency,
            })
            .await;
        }
    }

    /// The `execute` checkpoint of a state that does no work ([`does_no_work`]), encoded now
    /// and saved with the next checkpoint (one round trip for both on a networked store). A
    /// store that keeps records in memory saves it at once: there is no round trip to spare.
    pub(super) async fn defer_checkpoint(
        &self,
        run: &mut Run,
        state: &'static str,
        context: &Context,
    ) -> Result<(), RunError> {
        let Some(store) = &self.inner.store else {
            return Ok(());
        };
        if store.backend().keeps_records() {
            return self
                .checkpoint(run, checkpoint_event::EXECUTE, state, context, None)
                .await;
        }
        let parts = SnapshotParts {
            execution_id: "",
            machine_name: self.inner.spec.name,
            spec_version: self.inner.spec.spec_version,
            current_state: state,
            context,
            step: run.step,
            created_at: "",
            event: Some(checkpoint_event::EXECUTE),
            output: None,
            total_api_calls: Some(run.api_calls),
            total_cost: Some(run.cost),
            parent_execution_id: run.parent_execution_id.as_deref(),
            pending_launches: (!run.pending_launches.is_empty())
                .then_some(run.pending_launches.as_slice()),
            waiting_channel: None,
            config_hash: run.config_hash,
            wait_deadline: None,
            forked_from: run.forked_from.as_ref(),
            fencing_token: run.fencing_token,
        };
        let checkpoint = run.writer.encode(parts)?;
        run.deferred.push(DeferredCheckpoint {
            checkpoint,
            event: checkpoint_event::EXECUTE,
            state,
            step: run.step,
        });
        Ok(())
    }

    /// Saves the checkpoints still deferred when the loop returned (a run that ended without a
    /// later checkpoint), the last batches its children handed over, and the trace texts no
    /// checkpoint took. A failure to save a
    /// checkpoint fails a run that succeeded; a run that failed keeps its own error (the save
    /// failure is logged). A trace text that cannot be saved is logged only.
    pub(super) async fn settle_deferred(
        &self,
        run: &mut Run,
        result: Result<RunResult, RunError>,
    ) -> Result<RunResult, RunError> {
        let Some(store) = &self.inner.store else {
            return result;
        };
        if run.deferred.is_empty() && !run.has_foreign() {
            self.save_pending_texts(store, run).await;
            return result;
        }
        let deferred = std::mem::take(&mut run.deferred);
        // The texts go with this run's checkpoints when it has some to save, else on their own.
        let texts = match deferred.is_empty() {
            true => Vec::new(),
            false => std::mem::take(&mut run.pending_texts),
        };
        let batch: Vec<EncodedCheckpoint> = deferred.iter().map(|d| d.checkpoint.clone()).collect();
        let started = std::time::Instant::now();
        // A fresh execution whose only checkpoints these are takes its lock with them.
        let hold = run.store_hold.clone().filter(|h| !h.is_acquired());
        let ops = hold.as_ref().map(|hold| HoldOps {
            hold,
            release: false,
        });
        let adopted = run.take_foreign();
        let saved = match adopted.is_empty() {
            true => store.save_encoded_batch_with(batch, &texts, ops).await,
            false => {
                let own = (!batch.is_empty()).then_some((batch, texts.as_slice(), ops));
                Self::save_with_adopted(store, adopted, own).await
            }
        };
        self.save_pending_texts(store, run).await;
        match (saved, result) {
            (Ok(()), result) => {
                Self::announce(run, &deferred, started.elapsed()).await;
                result
            }
            (Err(e), Ok(_)) => Err(e.into()),
            (Err(e), Err(error)) => {
                tracing::warn!(execution_id = %run.execution_id, error = %e, "could not save the last checkpoints of a failed run");
                Err(error)
            }
        }
    }

    /// Saves the trace texts no checkpoint batch took (a run that wrote no checkpoint since
    /// they were queued), each on its own; failures are logged, never the run's.
    pub(super) async fn save_pending_texts(&self, store: &CheckpointStore, run: &mut Run) {
        for (key, text) in std::mem::take(&mut run.pending_texts) {
            if let Err(e) = store.backend().save_text(&key, &text).await {
                tracing::warn!(execution_id = %run.execution_id, key = %key, error = %e, "cannot write a trace record");
            }
        }
    }

    /// Whether `event` gets a checkpoint: there is a store and `checkpoint_on` (if set) lists
    /// it. The run loop asks before calling [`checkpoint`](Self::checkpoint), so a run without
    /// checkpoints builds and polls no checkpoint future.
    #[inline]
    pub(super) fn checkpoints(&self, event: &str) -> bool {
        self.inner.store.is_some()
            && self
                .inner
                .checkpoint_on
                .as_ref()
                .is_none_or(|on| on.iter().any(|e| e == event))
    }

    pub(super) async fn checkpoint(
        &self,
        run: &mut Run,
        event: &'static str,
        state: &'static str,
        context: &Context,
        output: Option<&Value>,
    ) -> Result<(), RunError> {
        let Some(store) = &self.inner.store else {
            return Ok(());
        };
        if !self.checkpoints(event) {
            return Ok(());
        }
        let started = run.events.is_some().then(std::time::Instant::now);
        self.write_checkpoint(store, run, event, state, context, output)
            .await?;
        let step = run.step;
        run.emit(|| EventKind::CheckpointSaved {
            event,
            state,
            step,
            latency: started.map(|s| s.elapsed()).unwrap_or_default(),
        })
        .await;
        Ok(())
    }
}
