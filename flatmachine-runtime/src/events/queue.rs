//! How events travel from a run to its [`RunStream`]: cheaply for the run, in order, bounded.
//!
//! A run (and the in-process children polled in its task) appends compact records to a
//! batch local to its tokio task: the execution as an index into the batch's table of
//! sources, the raw count of the CPU's time-stamp counter (read through `quanta`, turned into a
//! `SystemTime` only when the consumer takes the event), and the event itself, with the common
//! small kinds (state enter/exit, transition, checkpoint, machine start) stored inline and the
//! rest boxed. Appending takes no lock and touches no shared memory.
//!
//! The batch moves to the stream's shared queue in one lock (waking the consumer once):
//! every [`FLUSH_EVERY`] records, whenever the task is about to wait (its future returned
//! `Pending`: the run waits for a model, a tool, a checkpoint store, a child or room in the
//! queue), and when the task ends. The consumer builds the typed [`RunEvent`]s from the records
//! as it hands them out. Events that do not come from a run's own emitting (token deltas, a
//! child process's forwarded events, events emitted outside a task that set up a batch) go to
//! the shared queue directly, after the task's batch, so the order holds.
//!
//! Back-pressure: once a flush leaves the queue holding `capacity` events or more, the run
//! waits until the consumer takes them (the queue can hold up to `capacity + FLUSH_EVERY`).

use super::{EventKind, RunEvent};
use crate::engine::{RunFailure, RunResult};
use std::cell::RefCell;
use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context as TaskContext, Poll};
use std::time::{Duration, SystemTime};

/// Records a task's batch holds before it moves them to the shared queue.
pub(crate) const FLUSH_EVERY: usize = 64;

/// The process's time-stamp-counter clock (calibrated once, on the first stream).
fn clock() -> &'static quanta::Clock {
    static CLOCK: OnceLock<quanta::Clock> = OnceLock::new();
    CLOCK.get_or_init(quanta::Clock::new)
}

/// What happened, compactly: the frequent small kinds inline, the others boxed.
#[derive(Debug)]
enum What {
    Start(bool),
    Enter(&'static str, u64),
    Exit(&'static str, u64),
    Transition(&'static str, &'static str),
    Checkpoint {
        event: &'static str,
        state: &'static str,
        step: u64,
        latency: Duration,
    },
    Other(Box<EventKind>),
    /// A whole event from elsewhere (a child process's), handed out as it is.
    #[cfg_attr(not(feature = "cli"), allow(dead_code))]
    Event(Box<RunEvent>),
}

impl What {
    // Inlined into each emitting site, the event is built directly in its compact form.
    #[inline(always)]
    fn of(kind: EventKind) -> Self {
        match kind {
            EventKind::StateEnter { state, step } => What::Enter(state, step),
            EventKind::StateExit { state, step } => What::Exit(state, step),
            EventKind::Transition { from, to } => What::Transition(from, to),
            EventKind::CheckpointSaved {
                event,
                state,
                step,
                latency,
            } => What::Checkpoint {
                event,
                state,
                step,
                latency,
            },
            EventKind::MachineStart { resumed } => What::Start(resumed),
            other => What::Other(Box::new(other)),
        }
    }
}

/// One event in a batch: its execution (an index into the batch's sources), when (raw clock
/// count), what.
#[derive(Debug)]
struct Record {
    source: u32,
    raw: u64,
    what: What,
}

/// Records and the executions they name, moved to the shared queue together.
#[derive(Debug, Default)]
struct Chunk {
    sources: Vec<Arc<RunEvents>>,
    records: Vec<Record>,
}

/// A chunk being handed out by the consumer.
#[derive(Debug)]
struct Reading {
    sources: Vec<Arc<RunEvents>>,
    records: std::vec::IntoIter<Record>,
}

/// The queue between a run (and its children) and the [`RunStream`] reading it.
#[derive(Debug)]
struct Buffer {
    state: Mutex<BufferState>,
    /// Signalled when the consumer makes room or leaves (a producer waits for it when full).
    room: tokio::sync::Notify,
    capacity: usize,
    /// The consumer left (`BufferState::closed`, read without the lock on every event).
    closed: AtomicBool,
    clock: &'static quanta::Clock,
    /// The clock's raw count at `anchor`: records' times are `anchor` plus the time since.
    anchor_raw: u64,
    anchor: SystemTime,
}

#[derive(Debug, Default)]
struct BufferState {
    chunks: VecDeque<Chunk>,
    /// Events in `chunks`.
    len: usize,
    /// The consumer's waker, while it waits for events.
    waker: Option<std::task::Waker>,
    /// Producers alive ([`RunEvents`] values); none left ends the stream.
    producers: usize,
    /// The consumer left: nothing is queued any more.
    closed: bool,
}

impl Buffer {
    fn new(capacity: usize) -> Self {
        let clock = clock();
        Self {
            state: Mutex::new(BufferState::default()),
            room: tokio::sync::Notify::new(),
            capacity: capacity.max(1),
            closed: AtomicBool::new(false),
            clock,
            anchor_raw: clock.raw(),
            anchor: SystemTime::now(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BufferState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    #[inline]
    fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// The wall-clock time of raw clock count `raw`.
    fn time_of(&self, raw: u64) -> SystemTime {
        self.anchor + self.clock.delta(self.anchor_raw, raw)
    }

    /// Queues `chunk` whatever the queue holds; `true` when the queue is full afterwards.
    fn append(&self, chunk: Chunk) -> bool {
        let mut st = self.lock();
        if st.closed {
            drop(st);
            // Dropped outside the lock (see `close`).
            drop(chunk);
            return false;
        }
        st.len += chunk.records.len();
        st.chunks.push_back(chunk);
        let full = st.len >= self.capacity;
        let waker = st.waker.take();
        drop(st);
        if let Some(w) = waker {
            w.wake();
        }
        full
    }

    /// Queues `chunk` if the queue has room for it; gives it back when it is full.
    fn try_append(&self, chunk: Chunk) -> Result<(), Chunk> {
        let mut st = self.lock();
        if st.closed {
            drop(st);
            drop(chunk);
            return Ok(());
        }
        if st.len >= self.capacity {
            return Err(chunk);
        }
        st.len += chunk.records.len();
        st.chunks.push_back(chunk);
        let waker = st.waker.take();
        drop(st);
        if let Some(w) = waker {
            w.wake();
        }
        Ok(())
    }

    /// Waits until the queue has room (or the consumer left).
    async fn room(&self) {
        loop {
            let room = self.room.notified();
            if self.is_closed() || self.lock().len < self.capacity {
                return;
            }
            room.await;
        }
    }

    /// Moves every queued chunk into `into`; `Ready(false)` once no producer is left and the
    /// queue is empty (the stream ends), `Pending` (waker kept) when there is nothing yet.
    fn poll_drain(&self, into: &mut VecDeque<Chunk>, cx: &mut TaskContext<'_>) -> Poll<bool> {
        let mut st = self.lock();
        if !st.chunks.is_empty() {
            std::mem::swap(into, &mut st.chunks);
            st.len = 0;
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
        self.closed.store(true, Ordering::Release);
        st.len = 0;
        let chunks = std::mem::take(&mut st.chunks);
        drop(st);
        // Dropped outside the lock: the last reference to a source ends a producer, which
        // takes the lock. (Nothing is queued after this: queued chunks hold their sources,
        // which hold the queue.)
        drop(chunks);
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

/// The records a task appended since its last flush.
#[derive(Debug)]
struct Batch {
    buffer: Arc<Buffer>,
    sources: Vec<Arc<RunEvents>>,
    /// The source of the last record (address of its `RunEvents`) and its index.
    last: Option<(usize, u32)>,
    records: Vec<Record>,
}

impl Batch {
    fn new(buffer: Arc<Buffer>) -> Self {
        Self {
            buffer,
            sources: Vec::new(),
            last: None,
            records: Vec::new(),
        }
    }

    /// The index of `events` in this batch's sources.
    #[inline]
    fn source(&mut self, events: &Arc<RunEvents>) -> u32 {
        let address = Arc::as_ptr(events) as usize;
        if let Some((a, i)) = self.last
            && a == address
        {
            return i;
        }
        let i = match self
            .sources
            .iter()
            .position(|s| Arc::as_ptr(s) as usize == address)
        {
            Some(i) => i,
            None => {
                self.sources.push(events.clone());
                self.sources.len() - 1
            }
        };
        let i = u32::try_from(i).unwrap_or(u32::MAX);
        self.last = Some((address, i));
        i
    }

    /// Moves the records to the shared queue; `true` when it is full afterwards.
    fn flush(&mut self) -> bool {
        if self.records.is_empty() {
            return false;
        }
        self.last = None;
        let chunk = Chunk {
            sources: std::mem::take(&mut self.sources),
            records: std::mem::replace(&mut self.records, Vec::with_capacity(FLUSH_EVERY)),
        };
        self.buffer.append(chunk)
    }
}

tokio::task_local! {
    static CURRENT: Arc<RunEvents>;
    static BATCH: RefCell<Batch>;
}

/// Moves the task's batch to the shared queue whenever the task's future returns (about to
/// wait, or done).
struct Flushing<F> {
    inner: Pin<Box<F>>,
}

impl<F: Future> Future for Flushing<F> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<F::Output> {
        let out = self.inner.as_mut().poll(cx);
        flush_task_batch();
        out
    }
}

/// Moves the current task's batch, if any, to its shared queue.
fn flush_task_batch() -> bool {
    BATCH
        .try_with(|b| b.try_borrow_mut().map(|mut b| b.flush()).unwrap_or(false))
        .unwrap_or(false)
}

/// What happened to an event handed to [`RunEvents::record`].
enum Recorded {
    /// In the task's batch (or dropped: nobody listens).
    Done,
    /// In the batch, which was flushed to a full queue: wait for room.
    Full,
    /// Not recorded: goes the slow way.
    Slow(What),
}

/// Where one execution's events go: the stream's queue, tagged with the execution.
#[derive(Debug)]
pub(crate) struct RunEvents {
    buffer: Arc<Buffer>,
    execution_id: Arc<str>,
    parent: Option<Arc<str>>,
    machine: &'static str,
    /// Token text waiting for room in the queue.
    pending: Mutex<String>,
    /// Whether `pending` holds text (read without the lock on every event).
    has_pending: AtomicBool,
}

impl Drop for RunEvents {
    fn drop(&mut self) {
        self.buffer.remove_producer();
    }
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
            has_pending: AtomicBool::new(false),
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
    pub(crate) async fn scope<F: Future>(events: Option<Arc<Self>>, fut: F) -> F::Output {
        match events {
            Some(e) => CURRENT.scope(e, fut).await,
            None => fut.await,
        }
    }

    /// [`scope`](Self::scope) for the whole future of a new task: its events are batched
    /// (see the [module docs](self)).
    pub(crate) async fn task_scope<F: Future>(events: Option<Arc<Self>>, fut: F) -> F::Output {
        match events {
            Some(e) => {
                let batch = RefCell::new(Batch::new(e.buffer.clone()));
                let inner = Box::pin(CURRENT.scope(e, fut));
                BATCH.scope(batch, Flushing { inner }).await
            }
            None => fut.await,
        }
    }

    /// Whether a consumer still reads the stream.
    pub(crate) fn is_listening(&self) -> bool {
        !self.buffer.is_closed()
    }

    /// Appends the event to the task's batch when it can. (Not inlined: the emitting sites
    /// stay small for runs nobody watches.)
    #[inline(never)]
    fn record(self: &Arc<Self>, what: What) -> Recorded {
        if self.buffer.is_closed() {
            return Recorded::Done;
        }
        if self.has_pending.load(Ordering::Acquire) {
            return Recorded::Slow(what);
        }
        let mut what = Some(what);
        let recorded = BATCH.try_with(|cell| {
            let Ok(mut batch) = cell.try_borrow_mut() else {
                return None;
            };
            if !Arc::ptr_eq(&batch.buffer, &self.buffer) {
                return None;
            }
            let source = batch.source(self);
            let raw = self.buffer.clock.raw();
            batch.records.push(Record {
                source,
                raw,
                what: what.take()?,
            });
            Some(batch.records.len() >= FLUSH_EVERY && batch.flush())
        });
        match (recorded, what) {
            (Ok(Some(true)), _) => Recorded::Full,
            (Ok(Some(false)), _) => Recorded::Done,
            (_, Some(what)) => Recorded::Slow(what),
            (_, None) => Recorded::Done,
        }
    }

    /// A chunk of one event of this execution.
    fn single(self: &Arc<Self>, what: What) -> Chunk {
        Chunk {
            sources: vec![self.clone()],
            records: vec![Record {
                source: 0,
                raw: self.buffer.clock.raw(),
                what,
            }],
        }
    }

    /// Queues `chunk`, waiting for room while the queue is full.
    async fn push(&self, chunk: Chunk) {
        let mut chunk = chunk;
        loop {
            match self.buffer.try_append(chunk) {
                Ok(()) => return,
                Err(back) => chunk = back,
            }
            self.buffer.room().await;
            if self.buffer.is_closed() {
                return;
            }
        }
    }

    fn take_pending(&self) -> Option<String> {
        if !self.has_pending.load(Ordering::Acquire) {
            return None;
        }
        let mut p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        self.has_pending.store(false, Ordering::Release);
        (!p.is_empty()).then(|| std::mem::take(&mut *p))
    }

    /// Sends an event that is never dropped: waits for room (after the token text kept
    /// aside, so the order holds). A stream whose consumer left takes nothing.
    pub(crate) async fn send(self: &Arc<Self>, kind: EventKind) {
        if let Some(wait) = self.try_send(|| kind) {
            wait.await;
        }
    }

    /// [`send`](Self::send) without a future unless it has to wait: the event `kind` builds
    /// is recorded at once, and what is returned (when the queue is full, or the event must
    /// go the slow way) finishes the job. Keeps the caller's future small: a run emits
    /// several events per state.
    #[inline(always)]
    pub(crate) fn try_send(
        self: &Arc<Self>,
        kind: impl FnOnce() -> EventKind,
    ) -> Option<futures::future::BoxFuture<'_, ()>> {
        match self.record(What::of(kind())) {
            Recorded::Done => None,
            Recorded::Full => Some(Box::pin(self.buffer.room())),
            Recorded::Slow(what) => Some(Box::pin(self.send_slow(what))),
        }
    }

    async fn send_slow(self: &Arc<Self>, what: What) {
        flush_task_batch();
        if let Some(text) = self.take_pending() {
            self.push(self.single(What::Other(Box::new(EventKind::TokenDelta { text }))))
                .await;
        }
        self.push(self.single(what)).await;
    }

    /// Re-emits an event of a child run in another process, as it is (never dropped: waits
    /// for room).
    #[cfg(feature = "cli")]
    pub(crate) async fn forward(self: &Arc<Self>, event: RunEvent) {
        if self.buffer.is_closed() {
            return;
        }
        flush_task_batch();
        self.push(self.single(What::Event(Box::new(event)))).await;
    }

    /// Sends token text without waiting: kept aside (and joined) while the queue is full.
    pub(crate) fn delta(self: &Arc<Self>, text: &str) {
        if text.is_empty() || self.buffer.is_closed() {
            return;
        }
        flush_task_batch();
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        pending.push_str(text);
        let text = std::mem::take(&mut *pending);
        let chunk = self.single(What::Other(Box::new(EventKind::TokenDelta { text })));
        if let Err(mut back) = self.buffer.try_append(chunk)
            && let Some(Record {
                what: What::Other(kind),
                ..
            }) = back.records.pop()
            && let EventKind::TokenDelta { text } = *kind
        {
            *pending = text;
            self.has_pending.store(true, Ordering::Release);
        }
    }

    /// Runs `f` with the current task's events, if a stream listens.
    pub(crate) fn with_current<T>(f: impl FnOnce(&Arc<Self>) -> T) -> Option<T> {
        CURRENT.try_with(f).ok()
    }
}

/// The events of a run as it goes on ([`futures::Stream`] of [`RunEvent`]), and its result.
///
/// The stream ends once the run and every child it launched have finished.
#[derive(Debug)]
pub struct RunStream {
    buffer: Arc<Buffer>,
    /// Chunks taken from the queue, not yet handed out.
    ready: VecDeque<Chunk>,
    /// The chunk being handed out.
    reading: Option<Reading>,
    handle: tokio::task::JoinHandle<Result<RunResult, Box<RunFailure>>>,
}

impl RunStream {
    /// Starts `run` (a run future scoped with a new stream of `capacity` events) as a task.
    pub(crate) fn spawn<F>(capacity: usize, run: F) -> Self
    where
        F: Future<Output = Result<RunResult, Box<RunFailure>>> + Send + 'static,
    {
        let buffer = Arc::new(Buffer::new(capacity));
        let root = RunEvents::with_buffer(buffer.clone(), Arc::from(""), None, "");
        let handle = tokio::spawn(RunEvents::task_scope(Some(root), run));
        Self {
            buffer,
            ready: VecDeque::new(),
            reading: None,
            handle,
        }
    }

    /// Stops reading events and waits for the run's result (the run goes on without
    /// emitting).
    pub async fn result(mut self) -> Result<RunResult, Box<RunFailure>> {
        self.buffer.close();
        self.ready.clear();
        self.reading = None;
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

    /// The next record of the chunk being read, as a typed event.
    #[inline(always)]
    fn next_ready(&mut self) -> Option<RunEvent> {
        loop {
            if let Some(reading) = &mut self.reading {
                if let Some(record) = reading.records.next() {
                    let source = &reading.sources[record.source as usize];
                    // Built in place: an event is a few hundred bytes, and every copy of it
                    // shows in the cost of watching a fast run.
                    let kind = match record.what {
                        What::Start(resumed) => EventKind::MachineStart { resumed },
                        What::Enter(state, step) => EventKind::StateEnter { state, step },
                        What::Exit(state, step) => EventKind::StateExit { state, step },
                        What::Transition(from, to) => EventKind::Transition { from, to },
                        What::Checkpoint {
                            event,
                            state,
                            step,
                            latency,
                        } => EventKind::CheckpointSaved {
                            event,
                            state,
                            step,
                            latency,
                        },
                        What::Other(kind) => *kind,
                        What::Event(event) => return Some(*event),
                    };
                    return Some(RunEvent {
                        execution_id: source.execution_id.clone(),
                        parent_execution_id: source.parent.clone(),
                        machine: source.machine,
                        at: self.buffer.time_of(record.raw),
                        kind,
                    });
                }
                self.reading = None;
            }
            let chunk = self.ready.pop_front()?;
            self.reading = Some(Reading {
                sources: chunk.sources,
                records: chunk.records.into_iter(),
            });
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
        if let Some(event) = this.next_ready() {
            return Poll::Ready(Some(event));
        }
        match this.buffer.poll_drain(&mut this.ready, cx) {
            Poll::Ready(true) => Poll::Ready(this.next_ready()),
            Poll::Ready(false) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }
}
