//! What a run gives back: its result, its error, and per-run options.

use super::budget::RunTotals;
use crate::agents::Usage;
use crate::error::error_type;
use crate::lock::LockError;
use crate::persistence::PersistenceError;
use crate::{Context, StateError, Value};

/// What a run that stopped without an error returns: it finished, or it waits for a signal
/// (see [`RunStatus`]; waiting is not an error).
#[derive(Debug, Clone, PartialEq)]
pub struct RunResult {
    /// Whether the run finished or waits for a signal.
    pub status: RunStatus,
    /// The final output (`{}` when the final state has no `output`); `null` while the run
    /// waits.
    pub output: Value,
    /// The run's execution id.
    pub execution_id: String,
    /// The state the run stopped in: the final state, or the `wait_for` state it waits in.
    pub final_state: String,
    /// State visits, the final state included.
    pub steps: u64,
    /// Agent calls made, those of child machines (`machine:` / `foreach`) included.
    pub total_api_calls: u64,
    /// Agent cost, child machines included.
    pub total_cost: f64,
    /// Tokens used by agent calls in this run, child machines included (not restored by
    /// `resume`: checkpoints hold only `total_api_calls` and `total_cost`, as the
    /// reference's do).
    pub usage: Usage,
    /// The context at the end.
    pub context: Context,
}

impl RunResult {
    /// Whether the run reached a final state.
    pub fn is_finished(&self) -> bool {
        matches!(self.status, RunStatus::Finished)
    }

    /// Whether the run waits for a signal.
    pub fn is_waiting(&self) -> bool {
        matches!(self.status, RunStatus::Waiting(_))
    }

    /// What the run waits for, if it waits.
    pub fn waiting(&self) -> Option<&Waiting> {
        match &self.status {
            RunStatus::Waiting(w) => Some(w),
            RunStatus::Finished => None,
        }
    }
}

/// How a run that returned without an error stopped.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum RunStatus {
    /// It reached a final state; `output` is the final output.
    Finished,
    /// It reached a `wait_for` state and no signal was there: it is checkpointed (`waiting`)
    /// and nothing runs for it. Send a signal on the channel, then dispatch it
    /// ([`Dispatcher`](crate::signals::Dispatcher)) or [`resume`](super::Machine::resume) it.
    Waiting(Waiting),
}

/// Where a waiting run waits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Waiting {
    /// The channel (the state's `wait_for`, rendered; for a run parked for a child, the
    /// channel that child waits on).
    pub channel: String,
    /// The `wait_for` state (for a run parked for a child, its `machine:`/`foreach` state).
    pub state: String,
    /// When it gives up (`timeout`), UTC `isoformat()` text.
    pub deadline: Option<String>,
    /// When this run is parked because a `machine:`/`foreach` child waits: the execution id
    /// of the child that waits (the deepest one, through nested children). `None` when this
    /// run itself waits in a `wait_for` state.
    pub child: Option<String>,
}

/// Why a run did not finish. Every variant about one execution names it (`execution_id`;
/// [`RunError::execution_id`] reads it from any variant that has one).
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// A state failed and neither `on_error` nor the `on_error` hook recovered.
    #[error("machine `{machine}` (execution {execution_id}): state `{state}` failed: {error}")]
    State {
        /// The machine.
        machine: String,
        /// The execution.
        execution_id: String,
        /// The state.
        state: String,
        /// The error.
        error: StateError,
    },
    /// An `action:` no handler accepted (no named handler, no hook's `on_action`, no fallback),
    /// and the state's `on_error` did not route its `UnhandledActionError`.
    #[error(
        "machine `{machine}` (execution {execution_id}): no handler for action `{action}` in state `{state}`: register one with `MachineBuilder::action_mut` or `fallback_action`, or handle it in `MachineHooks::on_action`"
    )]
    UnhandledAction {
        /// The machine.
        machine: String,
        /// The execution.
        execution_id: String,
        /// The state.
        state: String,
        /// The action name.
        action: String,
    },
    /// `max_steps` was reached before a final state.
    #[error(
        "machine `{machine}` (execution {execution_id}): reached max_steps ({limit}) before a final state (next state: `{next}`)"
    )]
    MaxSteps {
        /// The machine.
        machine: String,
        /// The execution.
        execution_id: String,
        /// The limit.
        limit: u64,
        /// The state that would have run next.
        next: String,
    },
    /// `max_agent_calls` was reached.
    #[error(
        "machine `{machine}` (execution {execution_id}): reached max_agent_calls ({limit}) in state `{state}`"
    )]
    MaxAgentCalls {
        /// The machine.
        machine: String,
        /// The execution.
        execution_id: String,
        /// The limit.
        limit: u64,
        /// The state the run was in.
        state: String,
    },
    /// A non-final state had no transition whose condition held.
    #[error(
        "machine `{machine}` (execution {execution_id}): no transition of state `{state}` matched, and it is not final"
    )]
    NoTransition {
        /// The machine.
        machine: String,
        /// The execution.
        execution_id: String,
        /// The state.
        state: String,
    },
    /// A hook redirected to, or a checkpoint named, a state the machine does not have.
    #[error("machine `{machine}` (execution {execution_id}): unknown state `{state}`")]
    UnknownState {
        /// The machine.
        machine: String,
        /// The execution.
        execution_id: String,
        /// The name.
        state: String,
    },
    /// `resume` was given the id of an execution another machine recorded, and that machine is
    /// not this one nor one of its child machines (a child run is resumed with its own
    /// machine when this machine has it).
    #[error(
        "execution `{execution_id}` is a run of machine `{recorded}`{}, not of `{machine}`, which has no child machine `{recorded}`: resume it with the program that runs `{recorded}` (an app built on `cli::main`: `app resume {execution_id} --machine <its name in machines:>`); its checkpoints are left as they are", .parent_execution_id.as_ref().map(|p| format!(" (a child of execution `{p}`)")).unwrap_or_default()
    )]
    OtherMachine {
        /// This machine.
        machine: String,
        /// The execution.
        execution_id: String,
        /// The machine its checkpoints name.
        recorded: String,
        /// The execution that started it, if recorded.
        parent_execution_id: Option<String>,
    },
    /// `resume` was given an execution id with no checkpoint.
    #[error("no checkpoint for execution `{0}`")]
    UnknownExecution(String),
    /// The checkpoint was written by a build of this machine with another shape (states,
    /// transitions, actions or agent outputs changed): resuming, signalling or forking it
    /// needs [`ResumeOptions::allow_fingerprint_change`].
    #[error(
        "execution `{execution_id}` of machine `{machine}` was checkpointed by a build with shape {checkpoint_hash}, but this build's shape is {machine_hash}: its states, transitions, actions or agent outputs changed since. Use the build that wrote it, or opt in to continuing with this one (`ResumeOptions::allow_fingerprint_change`, `--allow-fingerprint-change`)"
    )]
    FingerprintMismatch {
        /// The machine.
        machine: String,
        /// The execution.
        execution_id: String,
        /// The `config_hash` of the checkpoint.
        checkpoint_hash: String,
        /// This build's `config_hash`.
        machine_hash: String,
    },
    /// Checkpoint storage failed (a corrupt snapshot names its file).
    #[error(transparent)]
    Persistence(#[from] PersistenceError),
    /// The execution is locked by another runner.
    #[error(transparent)]
    Lock(#[from] LockError),
    /// A hook failed outside a state (`on_machine_start`, `on_machine_end`, building hooks).
    #[error("machine `{machine}` (execution {execution_id}): hook failed: {message}")]
    Hook {
        /// The machine.
        machine: String,
        /// The execution.
        execution_id: String,
        /// What failed.
        message: String,
    },
    /// The initial context or final output could not be rendered.
    #[error("machine `{machine}` (execution {execution_id}): {error}")]
    Template {
        /// The machine.
        machine: String,
        /// The execution.
        execution_id: String,
        /// The error.
        error: StateError,
    },
}

impl RunError {
    /// The error as a state error (for a parent machine routing a child's failure).
    pub fn to_state_error(&self) -> StateError {
        match self {
            RunError::State { error, .. } => error.clone(),
            RunError::UnhandledAction { .. } => {
                StateError::new(error_type::UNHANDLED_ACTION, self.to_string())
            }
            RunError::Lock(e) => StateError::new(crate::lock::LOCK_ERROR_TYPE, e.to_string()),
            // A limit of the whole run tree: the parent does not route it either.
            RunError::MaxAgentCalls { .. } => {
                StateError::new(error_type::MAX_AGENT_CALLS, self.to_string())
            }
            other => StateError::new(error_type::MACHINE, other.to_string()),
        }
    }

    /// The execution that failed, when the error is about one (every variant but
    /// `Persistence` and `Lock`, whose messages name the key or execution themselves).
    pub fn execution_id(&self) -> Option<&str> {
        match self {
            RunError::State { execution_id, .. }
            | RunError::UnhandledAction { execution_id, .. }
            | RunError::MaxSteps { execution_id, .. }
            | RunError::MaxAgentCalls { execution_id, .. }
            | RunError::NoTransition { execution_id, .. }
            | RunError::UnknownState { execution_id, .. }
            | RunError::Hook { execution_id, .. }
            | RunError::Template { execution_id, .. }
            | RunError::OtherMachine { execution_id, .. }
            | RunError::FingerprintMismatch { execution_id, .. } => Some(execution_id),
            RunError::UnknownExecution(id) => Some(id),
            RunError::Persistence(_) | RunError::Lock(_) => None,
        }
    }
}

/// Per-run settings for [`Machine::run_with`](super::Machine::run_with) and
/// [`Machine::execute`](super::Machine::execute).
#[derive(Debug, Clone, Default, PartialEq)]
#[non_exhaustive]
pub struct RunOptions {
    /// The execution id (default: a new UUID v4). A plain name: no `/`, no `..`.
    pub execution_id: Option<String>,
    /// The execution that started this one (written as `parent_execution_id` in checkpoints).
    pub parent_execution_id: Option<String>,
    /// Most state visits in this run (overrides the builder's and `settings.max_steps`).
    pub max_steps: Option<u64>,
    /// Most agent calls in this run tree — this run and every child it starts (overrides
    /// [`MachineBuilder::max_agent_calls`](super::MachineBuilder::max_agent_calls)).
    pub max_agent_calls: Option<u64>,
    /// Continue `execution_id` from its latest checkpoint instead of starting it
    /// ([`Machine::execute`](super::Machine::execute) then ignores the input).
    pub resume: bool,
    /// Resuming: continue a checkpoint written by a build of another shape (its
    /// `config_hash` differs from this build's) instead of refusing it.
    pub allow_fingerprint_change: bool,
}

impl RunOptions {
    /// Defaults: a new execution id, the machine's `max_steps`.
    pub fn new() -> Self {
        Self::default()
    }

    /// Use this execution id.
    pub fn execution_id(mut self, id: impl Into<String>) -> Self {
        self.execution_id = Some(id.into());
        self
    }

    /// Record this parent execution id (lineage) in the run's checkpoints.
    pub fn parent_execution_id(mut self, id: impl Into<String>) -> Self {
        self.parent_execution_id = Some(id.into());
        self
    }

    /// Limit this run to `n` state visits.
    pub fn max_steps(mut self, n: u64) -> Self {
        self.max_steps = Some(n);
        self
    }

    /// Limit this run tree to `n` agent calls (the reference's `execute(max_agent_calls=)`).
    pub fn max_agent_calls(mut self, n: u64) -> Self {
        self.max_agent_calls = Some(n);
        self
    }

    /// Resume execution `id` from its latest checkpoint (the reference's
    /// `execute(resume_from=)`): sets [`execution_id`](Self::execution_id) and
    /// [`resume`](Self::resume).
    pub fn resume_from(mut self, id: impl Into<String>) -> Self {
        self.execution_id = Some(id.into());
        self.resume = true;
        self
    }

    /// Resuming, accept a checkpoint written by a build of another shape (see
    /// [`ResumeOptions`]).
    pub fn allow_fingerprint_change(mut self, yes: bool) -> Self {
        self.allow_fingerprint_change = yes;
        self
    }
}

/// A run that did not finish, with what it left: the error, and — when the run got as far as
/// having a context — the context at the failure (`last_error` / `last_error_type` set when a
/// state failed), the totals and the steps taken. Returned by
/// [`Machine::execute`](super::Machine::execute); `run*` and `resume` return only the
/// [`error`](Self::error).
#[derive(Debug, thiserror::Error)]
#[error("{error}")]
#[non_exhaustive]
pub struct RunFailure {
    /// Why the run did not finish.
    pub error: RunError,
    /// The execution.
    pub execution_id: String,
    /// The context when the run stopped; `None` when it failed before having one (a held
    /// lock, an invalid id, hooks that could not be built, an unreadable checkpoint).
    pub context: Option<Context>,
    /// Agent calls, cost and tokens up to the failure, finished children included.
    pub totals: RunTotals,
    /// State visits made (for a resume: counted from the start of the execution).
    pub steps: u64,
}

impl RunFailure {
    /// A failure before the run had a context.
    pub(crate) fn early(execution_id: &str, error: RunError) -> Box<Self> {
        Box::new(Self {
            error,
            execution_id: execution_id.to_string(),
            context: None,
            totals: RunTotals::default(),
            steps: 0,
        })
    }
}

/// Per-call settings for [`Machine::resume_with`](super::Machine::resume_with) (and the
/// dispatcher and forks, which resume too).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ResumeOptions {
    /// Continue a checkpoint written by a build of another shape (its `config_hash` differs
    /// from this build's); later checkpoints carry this build's fingerprint.
    pub allow_fingerprint_change: bool,
}

impl ResumeOptions {
    /// Defaults: a checkpoint of another shape is refused.
    pub fn new() -> Self {
        Self::default()
    }

    /// Accept a checkpoint written by a build of another shape.
    pub fn allow_fingerprint_change(mut self, yes: bool) -> Self {
        self.allow_fingerprint_change = yes;
        self
    }
}
