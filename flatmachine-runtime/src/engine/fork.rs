//! Forks: a new execution started from any checkpoint of an old one (upstream's
//! `clone_snapshot`), optionally with context edits.
//!
//! The fork gets the source's checkpoints up to the chosen one (so its history reads like the
//! source's up to there), each rewritten for the new execution: new execution id, no
//! `parent_execution_id` (nobody launched the fork), `forked_from: {execution_id, step}` in
//! every checkpoint, and **no `pending_launches`**: the children the source launched belong to
//! the source, and a fork must not start them a second time. A fork from a `waiting`
//! checkpoint becomes an `execute` checkpoint of the same state and step: the fork renders its
//! channel again (from its own, possibly edited, context) and registers as a waiter of its own
//! when it resumes, so it never receives what was meant for the source. Nothing runs until the
//! fork is resumed ([`Machine::resume`]).

use super::machine::Machine;
use super::result::{ResumeOptions, RunError};
use crate::persistence::{
    CheckpointStore, ForkOrigin, MachineSnapshot, PersistenceError, checkpoint_event,
    parse_snapshot_key, utc_now_isoformat, validate_execution_id,
};
use crate::{Context, Value};

/// What to fork and how (see [`Machine::fork`] and [`fork_execution`]).
#[derive(Debug, Clone, Default, PartialEq)]
#[non_exhaustive]
pub struct ForkOptions {
    /// Fork from a checkpoint of this step (default: the latest checkpoint).
    pub step: Option<u64>,
    /// Which checkpoint of that step (`state_enter`, `execute`, `waiting`, `state_exit`, ...);
    /// default: the step's first, so the fork runs the step's state again.
    pub event: Option<String>,
    /// Context changes applied to the fork's starting checkpoint: `key` or `a.b.c` (nested
    /// maps) → value.
    pub set: Vec<(String, Value)>,
    /// The fork's execution id (default: a new UUID).
    pub execution_id: Option<String>,
    /// Fork a checkpoint written by a build of another shape ([`Machine::fork`] only); the
    /// fork then carries this build's fingerprint.
    pub allow_fingerprint_change: bool,
}

impl ForkOptions {
    /// Defaults: the latest checkpoint, no edits, a new id.
    pub fn new() -> Self {
        Self::default()
    }

    /// Fork from step `n` (its first checkpoint unless [`event`](Self::event) says).
    pub fn step(mut self, n: u64) -> Self {
        self.step = Some(n);
        self
    }

    /// Fork from this checkpoint event of the chosen step.
    pub fn event(mut self, event: impl Into<String>) -> Self {
        self.event = Some(event.into());
        self
    }

    /// Set `key` (or a dotted path into nested maps) in the fork's context.
    pub fn set(mut self, key: impl Into<String>, value: Value) -> Self {
        self.set.push((key.into(), value));
        self
    }

    /// Use this execution id for the fork.
    pub fn execution_id(mut self, id: impl Into<String>) -> Self {
        self.execution_id = Some(id.into());
        self
    }

    /// Accept a checkpoint of another shape.
    pub fn allow_fingerprint_change(mut self, yes: bool) -> Self {
        self.allow_fingerprint_change = yes;
        self
    }
}

/// A fork that was made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fork {
    /// The new execution.
    pub execution_id: String,
    /// Where it came from.
    pub from: ForkOrigin,
    /// The key of the source checkpoint it starts from.
    pub checkpoint: String,
    /// The state it starts in (`start` / `end` for `machine_start` / `machine_end`).
    pub state: String,
    /// The event of its starting checkpoint.
    pub event: String,
}

/// Why a fork could not be made.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ForkError {
    /// The source execution has no checkpoint (at that step / event).
    #[error("execution `{execution_id}` has no checkpoint {what}")]
    NoCheckpoint {
        /// The source execution.
        execution_id: String,
        /// What was looked for.
        what: String,
    },
    /// The fork's id is taken.
    #[error("execution `{0}` already has checkpoints: pick another id for the fork")]
    Exists(String),
    /// A `set` path cannot be applied.
    #[error("cannot set `{path}` in the fork's context: {reason}")]
    BadEdit {
        /// The path.
        path: String,
        /// Why.
        reason: String,
    },
    /// Reading or writing checkpoints failed.
    #[error(transparent)]
    Persistence(#[from] PersistenceError),
    /// The machine refused the checkpoint (its fingerprint differs from the build's).
    #[error(transparent)]
    Refused(Box<RunError>),
}

impl From<ForkError> for RunError {
    fn from(e: ForkError) -> Self {
        match e {
            ForkError::Persistence(p) => RunError::Persistence(p),
            ForkError::Refused(e) => *e,
            ForkError::NoCheckpoint { execution_id, .. } => {
                RunError::UnknownExecution(execution_id)
            }
            other => RunError::Persistence(PersistenceError::Other(Box::new(other))),
        }
    }
}

/// Sets `path` (`a.b.c`) in `context` to `value`, creating nested maps as needed.
fn apply_edit(context: &mut Context, path: &str, value: Value) -> Result<(), ForkError> {
    let bad = |reason: &str| ForkError::BadEdit {
        path: path.to_owned(),
        reason: reason.to_owned(),
    };
    let parts: Vec<&str> = path.split('.').collect();
    if parts.iter().any(|p| p.is_empty()) {
        return Err(bad("empty key"));
    }
    let (last, walk) = parts.split_last().ok_or_else(|| bad("empty key"))?;
    let mut map = context;
    for key in walk {
        let entry = map
            .entry((*key).to_owned())
            .or_insert_with(|| Value::Object(Context::new()));
        map = match entry {
            Value::Object(m) => m,
            _ => return Err(bad(&format!("`{key}` is not a map"))),
        };
    }
    map.insert((*last).to_owned(), value);
    Ok(())
}

/// Forks `source` in `store` without a machine (what `flatmachine fork` does): see the
/// [module docs](self). The fingerprint is copied as it is.
pub async fn fork_execution(
    store: &CheckpointStore,
    source: &str,
    options: &ForkOptions,
) -> Result<Fork, ForkError> {
    fork_with(store, source, options, None).await
}

/// A check of the source checkpoint before forking it: the fingerprint it gets, or a refusal.
type SnapshotCheck<'a> = &'a (dyn Fn(&MachineSnapshot) -> Result<Option<String>, RunError> + Sync);

async fn fork_with(
    store: &CheckpointStore,
    source: &str,
    options: &ForkOptions,
    check: Option<SnapshotCheck<'_>>,
) -> Result<Fork, ForkError> {
    validate_execution_id(source).map_err(PersistenceError::from)?;
    let mut keys: Vec<(u64, u8, String)> = store
        .checkpoint_keys(source)
        .await?
        .into_iter()
        .filter_map(|k| {
            let (_, step, event) = parse_snapshot_key(&k)?;
            Some((step, order(event), k.clone()))
        })
        .collect();
    keys.sort();
    let chosen = match options.step {
        None => match store.load_latest_entry(source).await? {
            Some((key, _)) => key,
            None => {
                return Err(ForkError::NoCheckpoint {
                    execution_id: source.to_owned(),
                    what: "at all".into(),
                });
            }
        },
        Some(step) => keys
            .iter()
            .filter(|(s, _, k)| {
                *s == step
                    && options.event.as_deref().is_none_or(|e| {
                        parse_snapshot_key(k).is_some_and(|(_, _, event)| event == e)
                    })
            })
            .map(|(_, _, k)| k.clone())
            .next()
            .ok_or_else(|| ForkError::NoCheckpoint {
                execution_id: source.to_owned(),
                what: match &options.event {
                    Some(e) => format!("`{e}` at step {step}"),
                    None => format!("at step {step}"),
                },
            })?,
    };
    let Some(mut start) = store.backend().load(&chosen).await? else {
        return Err(ForkError::NoCheckpoint {
            execution_id: source.to_owned(),
            what: format!("`{chosen}` (it vanished)"),
        });
    };
    let new_id = match &options.execution_id {
        Some(id) => id.clone(),
        None => uuid::Uuid::new_v4().to_string(),
    };
    validate_execution_id(&new_id).map_err(PersistenceError::from)?;
    if store.latest_checkpoint_key(&new_id).await?.is_some()
        || !store.checkpoint_keys(&new_id).await?.is_empty()
    {
        return Err(ForkError::Exists(new_id));
    }
    let fingerprint = match check {
        Some(check) => check(&start).map_err(|e| ForkError::Refused(Box::new(e)))?,
        None => None,
    };
    let origin = ForkOrigin {
        execution_id: source.to_owned(),
        step: start.step,
    };
    let rewrite = |mut snap: MachineSnapshot| {
        snap.execution_id = new_id.clone();
        snap.parent_execution_id = None;
        snap.pending_launches = None;
        snap.fencing_token = None;
        snap.forked_from = Some(origin.clone());
        snap
    };
    let at = (
        start.step,
        order(start.event.as_deref().unwrap_or(checkpoint_event::UNKNOWN)),
    );
    for (step, rank, key) in &keys {
        if (*step, *rank) >= at {
            break;
        }
        if let Some(snap) = store.backend().load(key).await? {
            store.save(rewrite(snap)).await?;
        }
    }
    for (path, value) in &options.set {
        apply_edit(&mut start.context, path, value.clone())?;
    }
    let mut start = rewrite(start);
    if start.event.as_deref() == Some(checkpoint_event::WAITING) {
        start.event = Some(checkpoint_event::EXECUTE.to_owned());
        start.waiting_channel = None;
        start.wait_deadline = None;
    }
    if let Some(hash) = fingerprint {
        start.config_hash = Some(hash);
    }
    start.created_at = utc_now_isoformat();
    let fork = Fork {
        execution_id: new_id,
        from: origin,
        checkpoint: chosen,
        state: start.current_state.clone(),
        event: start
            .event
            .clone()
            .unwrap_or_else(|| checkpoint_event::UNKNOWN.to_owned()),
    };
    store.save(start).await?;
    Ok(fork)
}

/// An event's place within its step (the `waiting` checkpoint after `execute`).
fn order(event: &str) -> u8 {
    crate::persistence::record::event_order(event)
}

impl Machine {
    /// Forks the execution `source` of this machine: a new execution whose checkpoints are the
    /// source's up to the chosen one (see the [module docs](self) and [`ForkOptions`]). The
    /// source checkpoint's fingerprint must be this build's unless
    /// `allow_fingerprint_change`. Resume the fork to run it.
    pub async fn fork(&self, source: &str, options: ForkOptions) -> Result<Fork, RunError> {
        let store = self
            .inner
            .store
            .as_ref()
            .ok_or_else(|| RunError::UnknownExecution(source.to_string()))?;
        let allow = options.allow_fingerprint_change;
        let ours = self.inner.config_hash();
        let check = move |snap: &MachineSnapshot| -> Result<Option<String>, RunError> {
            if allow {
                return Ok(ours.map(str::to_owned));
            }
            self.check_fingerprint(snap)?;
            Ok(None)
        };
        fork_with(store, source, &options, Some(&check))
            .await
            .map_err(RunError::from)
    }

    /// Forks `source` and resumes the fork at once; returns the fork and how its run ended.
    pub async fn fork_and_run(
        &self,
        source: &str,
        options: ForkOptions,
    ) -> Result<(Fork, super::RunResult), RunError> {
        let allow = options.allow_fingerprint_change;
        let fork = self.fork(source, options).await?;
        let result = self
            .resume_with(
                &fork.execution_id,
                ResumeOptions::new().allow_fingerprint_change(allow),
            )
            .await?;
        Ok((fork, result))
    }
}
