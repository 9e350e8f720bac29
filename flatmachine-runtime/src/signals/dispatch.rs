//! [`Dispatcher`]: hands signals to the runs waiting for them and resumes those runs.
//!
//! One round ([`Dispatcher::dispatch_once`]):
//!
//! 1. expired signals are deleted;
//! 2. for every channel with a live signal, the oldest one is handed to every waiter of the
//!    channel that holds none ([`SignalBackend::deliver`], atomic);
//! 3. every waiter holding a signal, or whose deadline has passed, is claimed (a lease, so no
//!    other dispatcher resumes it meanwhile), checked against its run's latest checkpoint, and
//!    resumed — at most [`DispatchOptions::max_concurrency`] at a time.
//!
//! A waiter that is a `machine:`/`foreach` child whose parent parked for it is resumed through
//! that parent (the topmost parked ancestor): the parent runs its state again and the child
//! continues inside it with its signal, so the report holds the parent's result.
//!
//! A waiter whose run has moved on (its latest checkpoint is past the `wait_for` state: the
//! run consumed the signal but could not acknowledge it) is removed. A waiter whose run has
//! not written its `waiting` checkpoint yet (it registers just before) is left for a later
//! round, unless it registered more than [`DispatchOptions::grace`] ago (its process died in
//! between: the resume runs the state again and finds the signal). A run whose lock is held is
//! retried next round; a resume that fails for another reason keeps its claim until the lease
//! ends, so it is retried once per lease, not in a tight loop.
//!
//! [`Dispatcher::run_until`] is the long-running mode: it first registers runs whose `waiting`
//! checkpoint has no waiter (the signal backend was emptied or replaced:
//! [`Dispatcher::recover`]), then runs a round, sleeps until a signal may have arrived, the
//! next deadline, or [`DispatchOptions::poll_interval`], and goes on until its shutdown future
//! completes.

use std::collections::HashSet;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;

use super::clock::now_millis;
use super::{SignalBackend, SignalError, WaitRequest, Waiter};
use crate::engine::{Machine, ResumeOptions, RunError, RunResult};
use crate::lock::LockError;
use crate::persistence::{MachineSnapshot, checkpoint_event};

/// Most parents [`Dispatcher`] climbs from a waiting child to the run it resumes.
const MAX_PARENT_DEPTH: usize = 64;

/// How a [`Dispatcher`] works.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct DispatchOptions {
    /// How long a claim on a waiter lasts (default 5 minutes): another dispatcher may take the
    /// waiter over after that, should this one have died while resuming.
    pub lease: Duration,
    /// Most runs resumed at the same time (default 64).
    pub max_concurrency: usize,
    /// Longest pause between rounds of [`Dispatcher::run_until`] (default 1 second).
    pub poll_interval: Duration,
    /// How long a run may take between registering as a waiter and writing its `waiting`
    /// checkpoint before the dispatcher takes it for dead (default 30 seconds).
    pub grace: Duration,
    /// Resume checkpoints written by a build of another shape (see
    /// [`ResumeOptions::allow_fingerprint_change`]).
    pub allow_fingerprint_change: bool,
}

impl Default for DispatchOptions {
    fn default() -> Self {
        Self {
            lease: Duration::from_secs(300),
            max_concurrency: 64,
            poll_interval: Duration::from_secs(1),
            grace: Duration::from_secs(30),
            allow_fingerprint_change: false,
        }
    }
}

impl DispatchOptions {
    /// The defaults.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets [`lease`](Self::lease).
    pub fn lease(mut self, lease: Duration) -> Self {
        self.lease = lease;
        self
    }

    /// Sets [`max_concurrency`](Self::max_concurrency) (`0` is taken as `1`).
    pub fn max_concurrency(mut self, n: usize) -> Self {
        self.max_concurrency = n.max(1);
        self
    }

    /// Sets [`poll_interval`](Self::poll_interval).
    pub fn poll_interval(mut self, every: Duration) -> Self {
        self.poll_interval = every;
        self
    }

    /// Sets [`grace`](Self::grace).
    pub fn grace(mut self, grace: Duration) -> Self {
        self.grace = grace;
        self
    }

    /// Sets [`allow_fingerprint_change`](Self::allow_fingerprint_change).
    pub fn allow_fingerprint_change(mut self, yes: bool) -> Self {
        self.allow_fingerprint_change = yes;
        self
    }
}

/// What a round did with one waiting run.
#[derive(Debug)]
#[non_exhaustive]
pub enum Dispatched {
    /// Resumed: it finished, or waits again (`result.status`), or its state failed and
    /// `on_error` routed it on to an end.
    Resumed {
        /// The channel it waited on.
        channel: String,
        /// What the resume returned.
        result: Box<RunResult>,
    },
    /// The resume failed (the run failed, or its checkpoint was refused); retried once its
    /// claim expires.
    Failed {
        /// The execution.
        execution_id: String,
        /// The channel it waited on.
        channel: String,
        /// Why.
        error: RunError,
    },
    /// Its execution lock is held (it is running elsewhere); retried next round.
    Busy {
        /// The execution.
        execution_id: String,
    },
    /// Its run had moved past the `wait_for` state: the waiter was removed.
    Stale {
        /// The execution.
        execution_id: String,
    },
}

/// What one [`Dispatcher::dispatch_once`] round did.
#[derive(Debug, Default)]
#[non_exhaustive]
pub struct DispatchReport {
    /// Expired signals deleted.
    pub purged: u64,
    /// Signals handed to waiters (one per waiter).
    pub delivered: usize,
    /// What happened to each waiter the round claimed.
    pub outcomes: Vec<Dispatched>,
    /// The earliest deadline of a waiter still waiting without a signal (ms since the epoch).
    pub next_deadline_ms: Option<u64>,
}

impl DispatchReport {
    /// The results of the runs resumed.
    pub fn resumed(&self) -> impl Iterator<Item = &RunResult> {
        self.outcomes.iter().filter_map(|o| match o {
            Dispatched::Resumed { result, .. } => Some(&**result),
            _ => None,
        })
    }

    /// The resumes that failed: (execution id, error).
    pub fn failures(&self) -> impl Iterator<Item = (&str, &RunError)> {
        self.outcomes.iter().filter_map(|o| match o {
            Dispatched::Failed {
                execution_id,
                error,
                ..
            } => Some((execution_id.as_str(), error)),
            _ => None,
        })
    }
}

/// Delivers signals to waiting runs of a machine (and its children) and resumes them (see
/// the [module docs](self)). Cheap to clone.
#[derive(Clone)]
pub struct Dispatcher {
    machine: Machine,
    signals: Arc<dyn SignalBackend>,
    owner: String,
    options: DispatchOptions,
}

impl std::fmt::Debug for Dispatcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dispatcher")
            .field("machine", &self.machine.spec().name)
            .field("owner", &self.owner)
            .field("options", &self.options)
            .finish()
    }
}

/// How a claimed waiter's run stands.
enum Readiness {
    Ready,
    NotYet,
    Stale,
}

impl Dispatcher {
    /// A dispatcher for `machine`'s runs, on its signal backend, with default options.
    pub fn new(machine: &Machine) -> Self {
        Self::with_options(machine, DispatchOptions::default())
    }

    /// A dispatcher with these options.
    pub fn with_options(machine: &Machine, options: DispatchOptions) -> Self {
        Self {
            signals: machine.signal_backend().clone(),
            machine: machine.clone(),
            owner: format!("dispatcher-{}-{}", std::process::id(), uuid::Uuid::new_v4()),
            options,
        }
    }

    /// The name this dispatcher claims waiters under (unique per instance).
    pub fn owner(&self) -> &str {
        &self.owner
    }

    /// The machine of the tree (the root or a child) whose `data.name` is `name`.
    fn machine_named(&self, name: &str) -> Option<Machine> {
        let mut queue = vec![self.machine.clone()];
        let mut seen: Vec<*const crate::MachineSpec> = Vec::new();
        let mut i = 0;
        while let Some(m) = queue.get(i).cloned() {
            i += 1;
            let spec = m.spec();
            if seen.contains(&(spec as *const _)) {
                continue;
            }
            seen.push(spec as *const _);
            if spec.name == name {
                return Some(m);
            }
            for (child, _) in spec.machines {
                if let Some(c) = m.child_machine(child) {
                    queue.push(c);
                }
            }
        }
        None
    }

    /// One round: deliver every deliverable signal, resume every run that has one or whose
    /// deadline passed. See the [module docs](self).
    pub async fn dispatch_once(&self) -> Result<DispatchReport, SignalError> {
        let mut report = DispatchReport {
            purged: self.signals.purge_expired().await?,
            ..DispatchReport::default()
        };
        for channel in self.signals.channels().await? {
            report.delivered += self.signals.deliver(&channel).await?.len();
        }
        let now = now_millis();
        let mut ready = Vec::new();
        for w in self.signals.waiters(None).await? {
            if w.delivered.is_none() && !w.is_due(now) {
                if let Some(d) = w.deadline_ms {
                    report.next_deadline_ms = Some(report.next_deadline_ms.map_or(d, |n| n.min(d)));
                }
                continue;
            }
            if w.is_claimable(now, &self.owner)
                && let Some(machine) = self.machine_named(&w.machine)
            {
                ready.push((w, machine));
            }
        }
        let cap = self.options.max_concurrency.max(1);
        // Runs resumed this round: waiters of one parked tree (several `foreach` items) share
        // their parent, which is resumed once.
        let resuming = std::sync::Mutex::new(HashSet::new());
        report.outcomes = futures::stream::iter(ready)
            .map(|(w, machine)| self.dispatch_one(w, machine, &resuming))
            .buffer_unordered(cap)
            .filter_map(|o| async move { o })
            .collect()
            .await;
        Ok(report)
    }

    /// Claims, checks and resumes one waiter; `None` when another dispatcher had it or its
    /// run is not parked yet.
    async fn dispatch_one(
        &self,
        w: Waiter,
        machine: Machine,
        resuming: &std::sync::Mutex<HashSet<String>>,
    ) -> Option<Dispatched> {
        let id = w.execution_id.clone();
        match self
            .signals
            .claim(&id, &self.owner, self.options.lease)
            .await
        {
            Ok(true) => {}
            Ok(false) => return None,
            Err(e) => {
                tracing::warn!(execution_id = %id, error = %e, "could not claim a waiter");
                return None;
            }
        }
        let release = || async {
            if let Err(e) = self.signals.release(&id, &self.owner).await {
                tracing::warn!(execution_id = %id, error = %e, "could not release a waiter");
            }
        };
        let latest = match machine.store() {
            Some(store) => store.load_latest(&id).await,
            None => Ok(None),
        };
        let readiness = match &latest {
            Ok(Some(snap)) => self.readiness(&w, snap),
            Ok(None) => Readiness::Stale,
            Err(e) => {
                tracing::warn!(execution_id = %id, error = %e, "cannot read the checkpoint of a waiting run");
                release().await;
                return None;
            }
        };
        match readiness {
            Readiness::NotYet => {
                release().await;
                return None;
            }
            Readiness::Stale => {
                if let Err(e) = self.signals.forget(&id).await {
                    tracing::warn!(execution_id = %id, error = %e, "could not remove a stale waiter");
                }
                return Some(Dispatched::Stale { execution_id: id });
            }
            Readiness::Ready => {}
        }
        let (target, machine) = match &latest {
            Ok(Some(snap)) => self.parked_ancestor(snap, machine).await,
            _ => (id.clone(), machine),
        };
        let first = resuming
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(target.clone());
        if !first {
            // Another waiter of the same tree resumes it this round; this run, holding its
            // signal, continues inside that resume.
            release().await;
            return None;
        }
        tracing::info!(execution_id = %id, resumed = %target, channel = %w.channel, timed_out = w.delivered.is_none(), "resuming a waiting run");
        let options =
            ResumeOptions::new().allow_fingerprint_change(self.options.allow_fingerprint_change);
        let resumed = machine.resume_with(&target, options).await;
        match resumed {
            Ok(result) => {
                release().await;
                Some(Dispatched::Resumed {
                    channel: w.channel,
                    result: Box::new(result),
                })
            }
            Err(RunError::Lock(LockError::Held { .. })) => {
                release().await;
                Some(Dispatched::Busy { execution_id: id })
            }
            Err(error) => {
                tracing::warn!(execution_id = %id, error = %error, "resuming a waiting run failed");
                Some(Dispatched::Failed {
                    execution_id: id,
                    channel: w.channel,
                    error,
                })
            }
        }
    }

    /// The run to resume for a waiter whose latest checkpoint is `snap`: the topmost ancestor
    /// parked for it (a parent whose latest checkpoint is `waiting` in a `machine:`/`foreach`
    /// state, and its parent in turn), so the whole tree goes on — resuming the parent runs
    /// its state again and the child, holding its signal, continues inside it. The waiter's
    /// own run when it has no parked parent this dispatcher knows.
    async fn parked_ancestor(&self, snap: &MachineSnapshot, machine: Machine) -> (String, Machine) {
        let mut target = (snap.execution_id.clone(), machine);
        let Some(store) = self.machine.store() else {
            return target;
        };
        let mut parent = snap.parent_execution_id.clone();
        // Bounded: a corrupt store could hold a cycle of parents.
        for _ in 0..MAX_PARENT_DEPTH {
            let Some(id) = parent.take() else { break };
            let Ok(Some(up)) = store.load_latest(&id).await else {
                break;
            };
            if up.event.as_deref() != Some(checkpoint_event::WAITING) {
                break;
            }
            let Some(m) = self.machine_named(&up.machine_name) else {
                break;
            };
            let parked_for_child = m
                .spec()
                .state(&up.current_state)
                .is_some_and(|(_, st)| st.wait_for.is_none() && !st.machine.is_empty());
            if !parked_for_child {
                break;
            }
            parent = up.parent_execution_id.clone();
            target = (up.execution_id, m);
        }
        target
    }

    /// Whether the run of waiter `w` is parked in its `wait_for` state (see the module docs).
    fn readiness(&self, w: &Waiter, snap: &MachineSnapshot) -> Readiness {
        let event = snap.event.as_deref().unwrap_or(checkpoint_event::UNKNOWN);
        if event == checkpoint_event::MACHINE_END || snap.step > w.step {
            return Readiness::Stale;
        }
        let registered_long_ago = now_millis().saturating_sub(w.registered_ms)
            >= u64::try_from(self.options.grace.as_millis()).unwrap_or(u64::MAX);
        if snap.step < w.step {
            // Checkpoints of the wait's own step were left out (`checkpoint_on`) or not written
            // yet: the run re-enters the state and finds its signal.
            return if registered_long_ago {
                Readiness::Ready
            } else {
                Readiness::NotYet
            };
        }
        if snap.current_state != w.state {
            return Readiness::Stale;
        }
        match event {
            checkpoint_event::WAITING => Readiness::Ready,
            checkpoint_event::STATE_ENTER | checkpoint_event::EXECUTE if registered_long_ago => {
                Readiness::Ready
            }
            checkpoint_event::STATE_ENTER | checkpoint_event::EXECUTE => Readiness::NotYet,
            _ => Readiness::Stale,
        }
    }

    /// Registers the runs whose latest checkpoint is `waiting` but which have no waiter (the
    /// signal backend was emptied or replaced, or the checkpoint was written by the reference
    /// 4.2.1, which keeps no waiter registry). Returns how many were registered.
    pub async fn recover(&self) -> Result<usize, SignalError> {
        let Some(store) = self.machine.store() else {
            return Ok(0);
        };
        let known: HashSet<String> = self
            .signals
            .waiters(None)
            .await?
            .into_iter()
            .map(|w| w.execution_id)
            .collect();
        let ids = store
            .execution_ids()
            .await
            .map_err(|e| SignalError::Storage(e.to_string()))?;
        let mut registered = 0;
        for id in ids.into_iter().filter(|id| !known.contains(id)) {
            let snap = match store.load_latest(&id).await {
                Ok(Some(snap)) => snap,
                Ok(None) => continue,
                Err(e) => {
                    tracing::warn!(execution_id = %id, error = %e, "skipping an unreadable execution");
                    continue;
                }
            };
            let (Some(checkpoint_event::WAITING), Some(channel)) =
                (snap.event.as_deref(), snap.waiting_channel.as_deref())
            else {
                continue;
            };
            // Only runs waiting in a `wait_for` state hold a waiter; a parent parked for its
            // child has none (the child's waiter brings it back).
            let waits_itself = self.machine_named(&snap.machine_name).is_some_and(|m| {
                m.spec()
                    .state(&snap.current_state)
                    .is_some_and(|(_, st)| st.wait_for.is_some())
            });
            if !waits_itself {
                continue;
            }
            let request = WaitRequest {
                execution_id: &id,
                channel,
                machine: &snap.machine_name,
                state: &snap.current_state,
                step: snap.step,
                deadline_ms: snap
                    .wait_deadline
                    .as_deref()
                    .and_then(super::clock::millis_from_iso),
            };
            self.signals.wait(&request).await?;
            registered += 1;
        }
        Ok(registered)
    }

    /// The long-running mode: [`recover`](Self::recover), then rounds until `shutdown`
    /// completes (see the [module docs](self)). A failing round is logged and retried.
    pub async fn run_until(&self, shutdown: impl Future<Output = ()>) -> Result<(), SignalError> {
        let mut shutdown = std::pin::pin!(shutdown);
        match self.recover().await {
            Ok(0) => {}
            Ok(n) => tracing::info!(
                registered = n,
                "registered waiting runs found in checkpoints"
            ),
            Err(e) => tracing::warn!(error = %e, "could not look for waiting runs in checkpoints"),
        }
        loop {
            let mut pause = self.options.poll_interval;
            match self.dispatch_once().await {
                Ok(report) => {
                    if let Some(d) = report.next_deadline_ms {
                        let until = Duration::from_millis(d.saturating_sub(now_millis()));
                        pause = pause.min(until);
                    }
                    if !report.outcomes.is_empty() {
                        tracing::info!(
                            runs = report.outcomes.len(),
                            delivered = report.delivered,
                            "dispatch round"
                        );
                    }
                }
                Err(e) => tracing::warn!(error = %e, "dispatch round failed"),
            }
            tokio::select! {
                () = &mut shutdown => return Ok(()),
                () = self.signals.wait_for_activity(pause) => {}
            }
        }
    }
}
