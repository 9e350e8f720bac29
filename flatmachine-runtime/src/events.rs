//! The run event stream: typed events a run emits while it goes on, for a UI, a log or a
//! progress bar ([`Machine::stream`](crate::Machine::stream)).
//!
//! Every event names the execution that emitted it, so the events of `machine:`, `foreach:`
//! and `launch:` children reach the parent's stream tagged with their own execution id (and
//! their parent's) — also when `cli::SubprocessInvoker` runs them as other processes (they send
//! their events back on stderr, checked before they are re-emitted).
//!
//! # Buffering and a slow consumer
//!
//! Events go through one bounded buffer per stream ([`DEFAULT_CAPACITY`] events unless the
//! caller picks another size; a run hands its events over in batches of up to 64, so the
//! buffer can hold that many more). When the buffer is full:
//!
//! - [`EventKind::TokenDelta`] events are **coalesced**: the run does not wait; the text is
//!   kept aside and sent, joined into one larger delta, as soon as there is room (at the
//!   latest before the next event of the same execution). No text is lost and the order is
//!   kept; only the number of deltas changes.
//! - Every other event (machine, state, transition, checkpoint, agent call, tool, error,
//!   launch) is **never dropped nor coalesced**: the run waits until the consumer makes room
//!   (back-pressure), so a consumer that stops reading pauses the run at its next event.
//!
//! A consumer that drops the stream (or calls [`RunStream::result`]) stops the events: the run
//! goes on without emitting. With no stream at all, a run builds no event.

mod queue;
#[cfg(feature = "cli")]
pub(crate) mod wire;

pub(crate) use queue::RunEvents;
pub use queue::RunStream;

use crate::agents::Usage;
use crate::engine::{RunFailure, RunResult, RunTotals};
use crate::{StateError, Value};
use std::sync::Arc;
use std::time::Duration;

/// Events a stream buffers before the policy above applies.
pub const DEFAULT_CAPACITY: usize = 256;

/// One event of a run (or of one of its children).
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct RunEvent {
    /// The execution that emitted the event.
    pub execution_id: Arc<str>,
    /// Its parent's execution id, for a child (`machine:`, `foreach:`, `launch:`).
    pub parent_execution_id: Option<Arc<str>>,
    /// The machine (`data.name`) of that execution.
    pub machine: &'static str,
    /// When it happened: read from the CPU's time-stamp counter (through `quanta`; the
    /// monotonic clock where there is no usable one) and placed on the system clock as read
    /// when the stream started.
    pub at: std::time::SystemTime,
    /// What happened.
    pub kind: EventKind,
}

impl RunEvent {
    #[cfg(test)]
    pub(crate) fn new_for_test(
        id: &str,
        parent: Option<&str>,
        machine: &'static str,
        kind: EventKind,
    ) -> Self {
        Self {
            execution_id: Arc::from(id),
            parent_execution_id: parent.map(Arc::from),
            machine,
            at: std::time::SystemTime::now(),
            kind,
        }
    }
}

/// What happened, with what it is about.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum EventKind {
    /// The run started (`resumed`: it continues an execution from its checkpoints).
    MachineStart {
        /// Whether the run continues an earlier execution.
        resumed: bool,
    },
    /// The run reached a final state.
    MachineEnd {
        /// The final state.
        final_state: String,
        /// State visits.
        steps: u64,
        /// Agent calls, cost and tokens (children included).
        totals: RunTotals,
    },
    /// The run failed.
    MachineFailed {
        /// The error, as a state error (`error_type`, `message`).
        error: StateError,
        /// State visits before the failure.
        steps: u64,
    },
    /// A state was entered (`step` counts state visits from 1).
    StateEnter {
        /// The state.
        state: &'static str,
        /// The step.
        step: u64,
    },
    /// A state finished its work without error.
    StateExit {
        /// The state.
        state: &'static str,
        /// The step.
        step: u64,
    },
    /// The run moves from one state to the next (after the `on_transition` hook).
    Transition {
        /// The state left.
        from: &'static str,
        /// The state entered next.
        to: &'static str,
    },
    /// A checkpoint was written.
    CheckpointSaved {
        /// The checkpoint event (`machine_start`, `state_enter`, `execute`, `state_exit`,
        /// `machine_end`).
        event: &'static str,
        /// The state it records.
        state: &'static str,
        /// The step it records.
        step: u64,
        /// How long writing it took.
        latency: Duration,
    },
    /// An agent call (with its retries, samples or votes) starts.
    AgentCallStart {
        /// The state making the call.
        state: &'static str,
        /// The agent's name in the machine.
        agent: &'static str,
    },
    /// An agent call ended (successfully or not).
    AgentCallEnd {
        /// The state that made the call.
        state: &'static str,
        /// The agent's name in the machine.
        agent: &'static str,
        /// The model that answered, when the agent reports one.
        model: Option<String>,
        /// Tokens used (billed ones of a failed call included).
        usage: Usage,
        /// Cost.
        cost: f64,
        /// Provider calls made.
        api_calls: u64,
        /// Wall time of the call.
        latency: Duration,
        /// The error, when the call failed.
        error: Option<StateError>,
    },
    /// Reply text as it arrives from a streaming model (see the buffering policy: deltas may
    /// be coalesced, never lost). Follows the `AgentCallStart` of the same execution.
    TokenDelta {
        /// The text.
        text: String,
    },
    /// A tool call a model asked for ([`emit_tool_call`]).
    ToolCall {
        /// The call's id, as the model gave it.
        id: String,
        /// The tool.
        name: String,
        /// Its arguments.
        arguments: Value,
    },
    /// A tool call's result ([`emit_tool_result`]).
    ToolResult {
        /// The call's id.
        id: String,
        /// The tool.
        name: String,
        /// Whether the tool failed.
        is_error: bool,
    },
    /// A state failed; `route` says where the run goes.
    Error {
        /// The state that failed.
        state: &'static str,
        /// The error.
        error: StateError,
        /// Where the run continues.
        route: ErrorRoute,
    },
    /// A `foreach:` state starts `count` children (their own events follow, tagged with
    /// their ids; a `mode: any` foreach, which keeps only the first to finish, has none).
    Foreach {
        /// The state.
        state: &'static str,
        /// The child machine (its name in `machines:`).
        machine: &'static str,
        /// The children it starts.
        count: usize,
    },
    /// A `launch:` child is about to start (its own events follow, tagged with its id).
    Launched {
        /// The launching state.
        state: &'static str,
        /// The child machine (its name in `machines:`).
        machine: &'static str,
        /// The child's execution id.
        child_execution_id: String,
    },
}

/// Where a failed state sends the run.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ErrorRoute {
    /// The run recovers in this state (the state's `on_error`, or the `on_error` hook).
    Recover(&'static str),
    /// Nothing recovers: the run fails.
    Fails,
}

impl EventKind {
    /// Whether the buffering policy may coalesce this event (only token deltas).
    pub fn is_coalescable(&self) -> bool {
        matches!(self, EventKind::TokenDelta { .. })
    }
}

/// Emits reply text of the agent call running in the current task (for a streaming
/// [`LlmBackend`](crate::agents::LlmBackend) or an agent closure): a
/// [`EventKind::TokenDelta`] on the run's stream, nothing when no stream listens.
pub fn emit_token_delta(text: &str) {
    let _ = RunEvents::with_current(|c| c.delta(text));
}

/// Whether a stream listens to the run of the current task (a backend may stream only then).
pub fn is_streaming() -> bool {
    RunEvents::with_current(|c| c.is_listening()).unwrap_or(false)
}

/// Emits a [`EventKind::ToolCall`] on the current run's stream (for a tool loop).
pub async fn emit_tool_call(id: &str, name: &str, arguments: &Value) {
    if let Some(c) = RunEvents::current() {
        c.send(EventKind::ToolCall {
            id: id.to_string(),
            name: name.to_string(),
            arguments: arguments.clone(),
        })
        .await;
    }
}

/// Emits a [`EventKind::ToolResult`] on the current run's stream (for a tool loop).
pub async fn emit_tool_result(id: &str, name: &str, is_error: bool) {
    if let Some(c) = RunEvents::current() {
        c.send(EventKind::ToolResult {
            id: id.to_string(),
            name: name.to_string(),
            is_error,
        })
        .await;
    }
}

/// The [`EventKind::AgentCallEnd`] of a call that started at `started` and ended with
/// `outcome`.
pub(crate) fn agent_call_end(
    state: &'static str,
    agent: &'static str,
    outcome: &Result<crate::agents::AgentResult, StateError>,
    started: std::time::Instant,
) -> EventKind {
    let latency = started.elapsed();
    match outcome {
        Ok(r) => EventKind::AgentCallEnd {
            state,
            agent,
            model: r
                .raw
                .as_ref()
                .and_then(|raw| raw.get("model"))
                .and_then(Value::as_str)
                .map(str::to_string),
            usage: r.usage,
            cost: r.cost,
            api_calls: r.api_calls,
            latency,
            error: None,
        },
        Err(e) => {
            let billed = e.billed.as_ref();
            EventKind::AgentCallEnd {
                state,
                agent,
                model: None,
                usage: billed.map(|b| b.usage).unwrap_or_default(),
                cost: billed.map_or(0.0, |b| b.cost),
                api_calls: billed.map_or(0, |b| b.api_calls),
                latency,
                error: Some(e.clone()),
            }
        }
    }
}

/// The event that ends a run's own events: [`EventKind::MachineEnd`] or
/// [`EventKind::MachineFailed`].
pub(crate) fn machine_finished(outcome: &Result<RunResult, Box<RunFailure>>) -> EventKind {
    match outcome {
        Ok(r) => EventKind::MachineEnd {
            final_state: r.final_state.clone(),
            steps: r.steps,
            totals: RunTotals {
                api_calls: r.total_api_calls,
                cost: r.total_cost,
                usage: r.usage,
            },
        },
        Err(f) => EventKind::MachineFailed {
            error: f.error.to_state_error(),
            steps: f.steps,
        },
    }
}
