//! The run event stream: typed events a run emits while it goes on, for a UI, a log or a
//! progress bar ([`Machine::stream`](crate::Machine::stream)).
//!
//! Every event names the execution that emitted it, so the events of `machine:`, `foreach:`
//! and `launch:` children reach the parent's stream tagged with their own execution id (and
//! their parent's).
//!
//! # Buffering and a slow consumer
//!
//! Events go through one bounded buffer per stream ([`DEFAULT_CAPACITY`] events unless the
//! caller picks another size). When the buffer is full:
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

#[cfg(feature = "cli")]
pub(crate) mod wire;

use crate::agents::Usage;
use crate::engine::{RunFailure, RunResult, RunTotals};
use crate::{StateError, Value};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context as TaskContext, Poll};
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
    /// When it happened.
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

/// The buffer between a run (and its children) and the [`RunStream`] reading it: one queue of
/// events in emission order, bounded by `capacity` for events that are never dropped.
///
/// Cheaper than a channel send per event: emitting is a short lock and a push, and the
/// consumer is woken once per time it runs dry (not once per event) and takes everything
/// queued in one lock.
#[derive(Debug)]
struct Buffer {
    state: Mutex<BufferState>,
    /// Signalled when the consumer makes room or leaves (a producer waits for it when full).
    room: tokio::sync::Notify,
    capacity: usize,
}

#[derive(Debug, Default)]
struct BufferState {
    queue: std::collections::VecDeque<RunEvent>,
    /// The consumer's waker, while it waits for events.
    waker: Option<std::task::Waker>,
    /// The consumer left: emitting stops.
    closed: bool,
    /// Producers alive ([`RunEvents`] values); none left ends the stream.
    producers: usize,
}

impl Buffer {
    fn lock(&self) -> std::sync::MutexGuard<'_, BufferState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn is_closed(&self) -> bool {
        self.lock().closed
    }

    /// Queues `event`, waiting for room while the queue is full.
    async fn push(&self, event: RunEvent) {
        loop {
            let room = self.room.notified();
            {
                let mut st = self.lock();
                if st.closed {
                    return;
                }
                if st.queue.len() < self.capacity {
                    st.queue.push_back(event);
                    let waker = st.waker.take();
                    drop(st);
                    if let Some(w) = waker {
                        w.wake();
                    }
                    return;
                }
            }
            room.await;
        }
    }

    /// Queues `event` only if there is room; gives it back (`Some`) when the queue is full.
    fn try_push(&self, event: RunEvent) -> Option<RunEvent> {
        let mut st = self.lock();
        if st.closed {
            return None;
        }
        if st.queue.len() >= self.capacity {
            return Some(event);
        }
        st.queue.push_back(event);
        let waker = st.waker.take();
        drop(st);
        if let Some(w) = waker {
            w.wake();
        }
        None
    }

    /// Moves every queued event into `into`; `Ready(false)` once no producer is left and the
    /// queue is empty (the stream ends), `Pending` (waker kept) when there is nothing yet.
    fn poll_drain(
        &self,
        into: &mut std::collections::VecDeque<RunEvent>,
        cx: &mut TaskContext<'_>,
    ) -> Poll<bool> {
        let mut st = self.lock();
        if !st.queue.is_empty() {
            std::mem::swap(into, &mut st.queue);
            drop(st);
            self.room.notify_waiters();
            return Poll::Ready(true);
        }
        if st.producers == 0 {
            return Poll::Ready(false);
        }
        st.waker = Some(cx.waker().clone());
        Poll::Pending
    }

    /// The consumer leaves: queued events go, waiting producers return.
    fn close(&self) {
        let mut st = self.lock();
        st.closed = true;
        st.queue.clear();
        drop(st);
        self.room.notify_waiters();
    }

    fn add_producer(&self) {
        self.lock().producers += 1;
    }

    fn remove_producer(&self) {
        let mut st = self.lock();
        st.producers -= 1;
        let waker = if st.producers == 0 {
            st.waker.take()
        } else {
            None
        };
        drop(st);
        if let Some(w) = waker {
            w.wake();
        }
    }
}

/// Where one execution's events go: the stream's buffer, tagged with the execution.
#[derive(Debug)]
pub(crate) struct RunEvents {
    buffer: Arc<Buffer>,
    execution_id: Arc<str>,
    parent: Option<Arc<str>>,
    machine: &'static str,
    /// Token text waiting for room in the buffer.
    pending: Mutex<String>,
    /// Whether `pending` holds text (read without the lock on every event).
    has_pending: std::sync::atomic::AtomicBool,
}

impl Drop for RunEvents {
    fn drop(&mut self) {
        self.buffer.remove_producer();
    }
}

tokio::task_local! {
    static CURRENT: Arc<RunEvents>;
}

impl RunEvents {
    fn with_buffer(
        buffer: Arc<Buffer>,
        execution_id: Arc<str>,
        parent: Option<Arc<str>>,
        machine: &'static str,
    ) -> Arc<Self> {
        buffer.add_producer();
        Arc::new(Self {
            buffer,
            execution_id,
            parent,
            machine,
            pending: Mutex::new(String::new()),
            has_pending: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// The events of execution `execution_id` of `machine`, sent where the current task's
    /// go (a child run inherits its parent's stream); `None` when nothing listens.
    pub(crate) fn for_run(
        execution_id: &str,
        parent: Option<&str>,
        machine: &'static str,
    ) -> Option<Arc<Self>> {
        let buffer = CURRENT.try_with(|c| c.buffer.clone()).ok()?;
        if buffer.is_closed() {
            return None;
        }
        Some(Self::with_buffer(
            buffer,
            Arc::from(execution_id),
            parent.map(Arc::from),
            machine,
        ))
    }

    /// The stream of the current task, if any (to carry into a spawned task).
    pub(crate) fn current() -> Option<Arc<Self>> {
        CURRENT.try_with(Arc::clone).ok()
    }

    /// Runs `fut` with `events` as the current task's stream (nothing when `None`).
    pub(crate) async fn scope<F: std::future::Future>(
        events: Option<Arc<Self>>,
        fut: F,
    ) -> F::Output {
        match events {
            Some(e) => CURRENT.scope(e, fut).await,
            None => fut.await,
        }
    }

    fn event(&self, kind: EventKind) -> RunEvent {
        RunEvent {
            execution_id: self.execution_id.clone(),
            parent_execution_id: self.parent.clone(),
            machine: self.machine,
            at: std::time::SystemTime::now(),
            kind,
        }
    }

    fn take_pending(&self) -> Option<String> {
        if !self.has_pending.load(std::sync::atomic::Ordering::Acquire) {
            return None;
        }
        let mut p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        self.has_pending
            .store(false, std::sync::atomic::Ordering::Release);
        (!p.is_empty()).then(|| std::mem::take(&mut *p))
    }

    /// Sends an event that is never dropped: waits for room (after the token text kept
    /// aside, so the order holds). A stream whose consumer left takes nothing.
    pub(crate) async fn send(&self, kind: EventKind) {
        if let Some(text) = self.take_pending() {
            self.buffer
                .push(self.event(EventKind::TokenDelta { text }))
                .await;
        }
        // Most events find room: queued without building a wait.
        if let Some(event) = self.buffer.try_push(self.event(kind)) {
            self.buffer.push(event).await;
        }
    }

    /// Re-emits an event of a child run in another process, as it is (never dropped: waits
    /// for room).
    #[cfg(feature = "cli")]
    pub(crate) async fn forward(&self, event: RunEvent) {
        if let Some(event) = self.buffer.try_push(event) {
            self.buffer.push(event).await;
        }
    }

    /// Whether a consumer still reads the stream.
    #[cfg(feature = "cli")]
    pub(crate) fn is_listening(&self) -> bool {
        !self.buffer.is_closed()
    }

    /// Sends token text without waiting: kept aside (and joined) while the buffer is full.
    pub(crate) fn delta(&self, text: &str) {
        if text.is_empty() || self.buffer.is_closed() {
            return;
        }
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        pending.push_str(text);
        let text = std::mem::take(&mut *pending);
        if let Some(event) = self
            .buffer
            .try_push(self.event(EventKind::TokenDelta { text }))
            && let EventKind::TokenDelta { text } = event.kind
        {
            *pending = text;
            self.has_pending
                .store(true, std::sync::atomic::Ordering::Release);
        }
    }
}

/// Emits reply text of the agent call running in the current task (for a streaming
/// [`LlmBackend`](crate::agents::LlmBackend) or an agent closure): a
/// [`EventKind::TokenDelta`] on the run's stream, nothing when no stream listens.
pub fn emit_token_delta(text: &str) {
    let _ = CURRENT.try_with(|c| c.delta(text));
}

/// Whether a stream listens to the run of the current task (a backend may stream only then).
pub fn is_streaming() -> bool {
    CURRENT.try_with(|c| !c.buffer.is_closed()).unwrap_or(false)
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

/// The events of a run as it goes on ([`futures::Stream`] of [`RunEvent`]), and its result.
///
/// The stream ends once the run and every child it launched have finished.
#[derive(Debug)]
pub struct RunStream {
    buffer: Arc<Buffer>,
    /// Events taken from the buffer, not yet handed out.
    ready: std::collections::VecDeque<RunEvent>,
    handle: tokio::task::JoinHandle<Result<RunResult, Box<RunFailure>>>,
}

impl RunStream {
    /// Starts `run` (a run future scoped with a new stream of `capacity` events) as a task.
    pub(crate) fn spawn<F>(capacity: usize, run: F) -> Self
    where
        F: std::future::Future<Output = Result<RunResult, Box<RunFailure>>> + Send + 'static,
    {
        let buffer = Arc::new(Buffer {
            state: Mutex::new(BufferState::default()),
            room: tokio::sync::Notify::new(),
            capacity: capacity.max(1),
        });
        let root = RunEvents::with_buffer(buffer.clone(), Arc::from(""), None, "");
        let handle = tokio::spawn(CURRENT.scope(root, run));
        Self {
            buffer,
            ready: std::collections::VecDeque::new(),
            handle,
        }
    }

    /// Stops reading events and waits for the run's result (the run goes on without
    /// emitting).
    pub async fn result(mut self) -> Result<RunResult, Box<RunFailure>> {
        self.buffer.close();
        self.ready.clear();
        match (&mut self.handle).await {
            Ok(r) => r,
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(e) => Err(RunFailure::early(
                "",
                crate::engine::RunError::Hook {
                    machine: String::new(),
                    execution_id: String::new(),
                    message: format!("the run's task ended early: {e}"),
                },
            )),
        }
    }
}

impl Drop for RunStream {
    fn drop(&mut self) {
        // The run goes on without emitting (and without waiting for room).
        self.buffer.close();
    }
}

impl futures::Stream for RunStream {
    type Item = RunEvent;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Option<RunEvent>> {
        let this = &mut *self;
        if let Some(event) = this.ready.pop_front() {
            return Poll::Ready(Some(event));
        }
        match this.buffer.poll_drain(&mut this.ready, cx) {
            Poll::Ready(true) => Poll::Ready(this.ready.pop_front()),
            Poll::Ready(false) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
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
