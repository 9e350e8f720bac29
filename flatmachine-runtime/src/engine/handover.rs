//! A child machine's last checkpoints, saved with its parent's next ones.
//!
//! A child run in this process whose checkpoints go to its parent's store — one that saves
//! several executions in one operation
//! ([`PersistenceBackend::saves_executions_together`]: Redis) — does not save its
//! `machine_end` batch itself: it leaves it — checkpoints, trace texts, the
//! release of its lock and the lock's guard — in its parent's [`HandOver`], and the parent
//! saves it in the same operation as its own next checkpoint (one script on Redis: a worker
//! job's child costs no round trip for its end). Until then the child's lock stays held (its
//! guard lives in the hand-over). A crash in between loses the child's end as a crash during
//! its last state would: the parent, resumed, continues the child from its checkpoint before.
//!
//! The other way, a parent whose state runs one child saves that state's `execute` checkpoint
//! (with those deferred before it, and the taking of its lock) in the script of the child's
//! first checkpoint, which comes before the child's first work: the child, while it holds its
//! parent's batch, defers no checkpoint but those of states that do no work, and saves it
//! before starting a child of its own (no batch goes two levels down). A child that never
//! saved it gives it back and the parent saves it with its own next checkpoint. A child's end
//! carries its own children's ends up with it.
//!
//! Only runs nobody watches hand over (a watched child announces its `CheckpointSaved` when it
//! is saved), and only to a parent that checkpoints `execute` events, so the parent's next
//! checkpoint comes before its next state's work. A state with a `timeout` (which drops its
//! work when it expires) saves its own `execute` checkpoint before its child starts.

use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex, PoisonError};

use crate::lock::{HoldOps, LockGuard, StoreHold};
use crate::persistence::{CheckpointStore, EncodedCheckpoint, PersistenceBackend};

/// Where the children of a run leave their last batches (shared by the parent's run and the
/// children it starts).
#[derive(Clone)]
pub(crate) struct HandOver {
    backend: Arc<dyn PersistenceBackend>,
    batches: Arc<Mutex<Vec<HandedOver>>>,
}

impl std::fmt::Debug for HandOver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HandOver").finish_non_exhaustive()
    }
}

/// One execution's batch another run of the tree saves: a child's last one (for its parent),
/// or a parent's pending one (for its child's first save).
pub(crate) struct HandedOver {
    pub(crate) checkpoints: Vec<EncodedCheckpoint>,
    pub(crate) texts: Vec<(String, String)>,
    /// The execution's hold of its lock: taken by the save if still pending.
    pub(crate) hold: Option<StoreHold>,
    /// Whether the save releases the hold (a child's end).
    pub(crate) release: bool,
    /// The execution's lock guard, kept until the batch is saved.
    pub(crate) guard: Option<LockGuard>,
    /// Set once the batch is saved (a parent's batch: the parent takes it back otherwise).
    pub(crate) saved: Option<Arc<AtomicBool>>,
}

impl HandedOver {
    /// What the save does to the execution's lock.
    pub(crate) fn lock(&self) -> Option<HoldOps<'_>> {
        self.hold.as_ref().map(|hold| HoldOps {
            hold,
            release: self.release,
        })
    }
}

/// The hand-overs a child run is started with.
#[derive(Debug, Default, Clone)]
pub(crate) struct HandOffs {
    /// Where the child leaves its last batch for the parent.
    pub(crate) to_parent: Option<HandOver>,
    /// The parent's pending batch the child saves with its first checkpoint.
    pub(crate) from_parent: Option<HandOver>,
}

impl HandOver {
    /// A hand-over for the children of a run saving to `store`.
    pub(crate) fn new(store: &CheckpointStore) -> Self {
        HandOver {
            backend: Arc::clone(store.backend()),
            batches: Arc::default(),
        }
    }

    /// Whether a child saving to `store` can hand its batch over (the same backend).
    pub(crate) fn accepts(&self, store: &CheckpointStore) -> bool {
        Arc::ptr_eq(&self.backend, store.backend())
    }

    fn batches(&self) -> std::sync::MutexGuard<'_, Vec<HandedOver>> {
        self.batches.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Leaves a child's batch for the parent.
    pub(crate) fn push(&self, batch: HandedOver) {
        self.batches().push(batch);
    }

    /// Gives the batch of the child `execution_id` the guard of its lock.
    /// (A batch already taken: the guard is dropped, after the lock of the batches.)
    pub(crate) fn keep_guard(&self, execution_id: &str, guard: LockGuard) {
        let unkept = {
            let mut batches = self.batches();
            let batch = batches.iter_mut().rev().find(|b| {
                b.checkpoints.first().map(EncodedCheckpoint::execution_id) == Some(execution_id)
            });
            match batch {
                Some(batch) => batch.guard.replace(guard),
                None => Some(guard),
            }
        };
        drop(unkept);
    }

    /// Takes every batch left so far.
    pub(crate) fn take(&self) -> Vec<HandedOver> {
        std::mem::take(&mut *self.batches())
    }

    /// Whether no batch waits.
    pub(crate) fn is_empty(&self) -> bool {
        self.batches().is_empty()
    }
}

/// A parent's batch given to its child: what the parent takes back if the child did not save
/// it.
pub(crate) struct HandDown {
    pub(crate) slot: HandOver,
    pub(crate) deferred: Vec<super::step::DeferredCheckpoint>,
    pub(crate) texts: Vec<(String, String)>,
    pub(crate) saved: Arc<AtomicBool>,
}

impl HandDown {
    /// After the child returned: a batch the child did not save goes back to the front of
    /// the parent's pending batch (saved with its next checkpoint).
    pub(crate) fn settle(self, run: &mut super::step::Run) {
        drop(self.slot.take());
        if self.saved.load(std::sync::atomic::Ordering::Acquire) {
            return;
        }
        let mut deferred = self.deferred;
        deferred.append(&mut run.deferred);
        run.deferred = deferred;
        let mut texts = self.texts;
        texts.append(&mut run.pending_texts);
        run.pending_texts = texts;
    }
}
