//! The events of a child machine run in another OS process (`cli::SubprocessInvoker`), carried
//! to the parent's stream.
//!
//! When the parent's run has a stream, the invoker starts the child with
//! [`ENV`]`=<token>` (a fresh random token per call). The child's `cli::main` then streams its
//! run and writes every event as one line on **stderr**: the token, a space, and the event as
//! JSON ([`ParentPipe`]). Stdout keeps carrying the run's output only. The parent reads the
//! child's stderr line by line: lines that start with the token are events ([`ChildEvents`]),
//! everything else (logs, the statistics line, the error) is kept as before. A line that merely
//! looks like an event (a log line quoting a model's reply) cannot pass for one without the
//! token, which only the child's environment holds.
//!
//! The parent treats the lines as untrusted input: each is at most [`MAX_LINE`] bytes, at most
//! [`MAX_EVENTS_PER_SECOND`] are read per second from one child (past a burst of
//! [`BURST`]; a faster child is slowed down, through its pipe, not cut off), and an event is
//! re-emitted only when it is well formed and belongs to the child's run tree: its execution is
//! the child's own, or one started by an execution already seen (a `MachineStart` whose parent
//! is known), of a machine that the parent's spec has at that place, with state, agent and
//! child machine names that machine has. Anything else is dropped with a warning (the first
//! [`WARN_LINES`] of a child one by one, then a count when the child ends).

use std::borrow::Cow;
use std::collections::HashMap;
use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use super::{ErrorRoute, EventKind, RunEvent, RunEvents};
use crate::agents::Usage;
use crate::engine::RunTotals;
use crate::machine::MachineSpec;
use crate::persistence::MAX_EXECUTION_ID_LEN;
use crate::{StateError, Value};

/// The environment variable that asks a child process for its events (its value is the token
/// that starts every event line).
pub(crate) const ENV: &str = "FLATMACHINE_EVENT_STREAM";

/// Most bytes of one event line (the token and the JSON, without the newline): 1 MiB. The child
/// splits longer token text into several deltas and shortens oversized tool arguments and error
/// messages; the parent drops a longer line.
pub const MAX_LINE: usize = 1024 * 1024;

/// Events per second the parent reads from one child process, past [`BURST`].
pub const MAX_EVENTS_PER_SECOND: u32 = 100_000;

/// Events a child may send at once before [`MAX_EVENTS_PER_SECOND`] applies.
pub const BURST: u32 = 20_000;

/// Dropped lines of one child reported one by one; the rest are counted.
pub const WARN_LINES: u64 = 10;

/// Most executions (the child and its own children) the parent follows per child process.
pub const MAX_EXECUTIONS: usize = 100_000;

/// Token text per delta line the child writes (a longer coalesced delta is split).
const DELTA_CHUNK: usize = 256 * 1024;

/// Longest error message or tool-argument text the child writes (longer ones are cut).
const MAX_TEXT: usize = 64 * 1024;

/// A fresh token for one child call.
pub(crate) fn new_token() -> String {
    format!("fm-event-{}", uuid::Uuid::new_v4().simple())
}

/// Whether `token` is one a parent could have made (so a child never writes event lines
/// starting with something that could be a log line).
fn valid_token(token: &str) -> bool {
    (16..=64).contains(&token.len())
        && token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

#[derive(Debug, Serialize, Deserialize)]
struct WireEvent<'a> {
    execution_id: Cow<'a, str>,
    #[serde(default)]
    parent_execution_id: Option<Cow<'a, str>>,
    machine: Cow<'a, str>,
    /// Nanoseconds since the Unix epoch.
    at: u64,
    event: WireKind<'a>,
}

#[derive(Debug, Serialize, Deserialize)]
struct WireError<'a> {
    error_type: Cow<'a, str>,
    message: Cow<'a, str>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "type")]
enum WireKind<'a> {
    MachineStart {
        resumed: bool,
    },
    MachineEnd {
        final_state: Cow<'a, str>,
        steps: u64,
        api_calls: u64,
        cost: f64,
        usage: Usage,
    },
    MachineFailed {
        error: WireError<'a>,
        steps: u64,
    },
    StateEnter {
        state: Cow<'a, str>,
        step: u64,
    },
    StateExit {
        state: Cow<'a, str>,
        step: u64,
    },
    Transition {
        from: Cow<'a, str>,
        to: Cow<'a, str>,
    },
    CheckpointSaved {
        event: Cow<'a, str>,
        state: Cow<'a, str>,
        step: u64,
        latency_ns: u64,
    },
    AgentCallStart {
        state: Cow<'a, str>,
        agent: Cow<'a, str>,
    },
    AgentCallEnd {
        state: Cow<'a, str>,
        agent: Cow<'a, str>,
        model: Option<Cow<'a, str>>,
        usage: Usage,
        cost: f64,
        api_calls: u64,
        latency_ns: u64,
        error: Option<WireError<'a>>,
    },
    TokenDelta {
        text: Cow<'a, str>,
    },
    ToolCall {
        id: Cow<'a, str>,
        name: Cow<'a, str>,
        arguments: Cow<'a, Value>,
    },
    ToolResult {
        id: Cow<'a, str>,
        name: Cow<'a, str>,
        is_error: bool,
    },
    Error {
        state: Cow<'a, str>,
        error: WireError<'a>,
        /// The state the run recovers in; `None`: the run fails.
        recover: Option<Cow<'a, str>>,
    },
    Foreach {
        state: Cow<'a, str>,
        machine: Cow<'a, str>,
        count: u64,
    },
    Launched {
        state: Cow<'a, str>,
        machine: Cow<'a, str>,
        child_execution_id: Cow<'a, str>,
    },
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// `text` cut to at most `max` bytes (at a character boundary), with a note of the cut.
fn cut(text: &str, max: usize) -> Cow<'_, str> {
    if text.len() <= max {
        return Cow::Borrowed(text);
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    Cow::Owned(format!(
        "{}… ({} bytes, cut to forward it)",
        &text[..end],
        text.len()
    ))
}

fn wire_error(e: &StateError, max: usize) -> WireError<'_> {
    WireError {
        error_type: cut(&e.error_type, 256),
        message: cut(&e.message, max),
    }
}

/// The wire form of `kind` (texts cut to `max` bytes).
fn wire_kind(kind: &EventKind, max: usize) -> WireKind<'_> {
    let s = |v: &'static str| Cow::Borrowed(v);
    match kind {
        EventKind::MachineStart { resumed } => WireKind::MachineStart { resumed: *resumed },
        EventKind::MachineEnd {
            final_state,
            steps,
            totals,
        } => WireKind::MachineEnd {
            final_state: Cow::Borrowed(final_state),
            steps: *steps,
            api_calls: totals.api_calls,
            cost: totals.cost,
            usage: totals.usage,
        },
        EventKind::MachineFailed { error, steps } => WireKind::MachineFailed {
            error: wire_error(error, max),
            steps: *steps,
        },
        EventKind::StateEnter { state, step } => WireKind::StateEnter {
            state: s(state),
            step: *step,
        },
        EventKind::StateExit { state, step } => WireKind::StateExit {
            state: s(state),
            step: *step,
        },
        EventKind::Transition { from, to } => WireKind::Transition {
            from: s(from),
            to: s(to),
        },
        EventKind::CheckpointSaved {
            event,
            state,
            step,
            latency,
        } => WireKind::CheckpointSaved {
            event: s(event),
            state: s(state),
            step: *step,
            latency_ns: nanos(*latency),
        },
        EventKind::AgentCallStart { state, agent } => WireKind::AgentCallStart {
            state: s(state),
            agent: s(agent),
        },
        EventKind::AgentCallEnd {
            state,
            agent,
            model,
            usage,
            cost,
            api_calls,
            latency,
            error,
        } => WireKind::AgentCallEnd {
            state: s(state),
            agent: s(agent),
            model: model.as_deref().map(|m| cut(m, 1024)),
            usage: *usage,
            cost: *cost,
            api_calls: *api_calls,
            latency_ns: nanos(*latency),
            error: error.as_ref().map(|e| wire_error(e, max)),
        },
        EventKind::TokenDelta { text } => WireKind::TokenDelta {
            text: Cow::Borrowed(text),
        },
        EventKind::ToolCall {
            id,
            name,
            arguments,
        } => WireKind::ToolCall {
            id: cut(id, 1024),
            name: cut(name, 1024),
            arguments: if serde_json::to_vec(arguments).map_or(usize::MAX, |v| v.len()) <= max {
                Cow::Borrowed(arguments)
            } else {
                Cow::Owned(Value::String(format!(
                    "(arguments too large to forward from a child process, over {max} bytes)"
                )))
            },
        },
        EventKind::ToolResult { id, name, is_error } => WireKind::ToolResult {
            id: cut(id, 1024),
            name: cut(name, 1024),
            is_error: *is_error,
        },
        EventKind::Error {
            state,
            error,
            route,
        } => WireKind::Error {
            state: s(state),
            error: wire_error(error, max),
            recover: match route {
                ErrorRoute::Recover(to) => Some(s(to)),
                ErrorRoute::Fails => None,
            },
        },
        EventKind::Foreach {
            state,
            machine,
            count,
        } => WireKind::Foreach {
            state: s(state),
            machine: s(machine),
            count: u64::try_from(*count).unwrap_or(u64::MAX),
        },
        EventKind::Launched {
            state,
            machine,
            child_execution_id,
        } => WireKind::Launched {
            state: s(state),
            machine: s(machine),
            child_execution_id: Cow::Borrowed(child_execution_id),
        },
    }
}

/// Appends `event` to `out` as event lines (one, or several for a long token delta).
fn encode(token: &str, event: &RunEvent, out: &mut Vec<u8>) {
    let at = event
        .at
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(nanos)
        .unwrap_or(0);
    let line = |kind: WireKind<'_>, out: &mut Vec<u8>| {
        let wire = WireEvent {
            execution_id: Cow::Borrowed(&event.execution_id),
            parent_execution_id: event.parent_execution_id.as_deref().map(Cow::Borrowed),
            machine: Cow::Borrowed(event.machine),
            at,
            event: kind,
        };
        let start = out.len();
        out.extend_from_slice(token.as_bytes());
        out.push(b' ');
        if serde_json::to_writer(&mut *out, &wire).is_err() || out.len() - start > MAX_LINE {
            out.truncate(start);
            return false;
        }
        out.push(b'\n');
        true
    };
    if let EventKind::TokenDelta { text } = &event.kind {
        let mut rest = text.as_str();
        while !rest.is_empty() {
            let mut end = rest.len().min(DELTA_CHUNK);
            while !rest.is_char_boundary(end) {
                end -= 1;
            }
            let (piece, tail) = rest.split_at(end);
            line(
                WireKind::TokenDelta {
                    text: Cow::Borrowed(piece),
                },
                out,
            );
            rest = tail;
        }
        return;
    }
    if !line(wire_kind(&event.kind, MAX_TEXT), out) {
        tracing::warn!(
            execution_id = %event.execution_id,
            "an event too large for the parent process's stream was not sent"
        );
    }
}

/// The child side: writes the run's events on stderr for the parent process that asked for
/// them with [`ENV`].
#[derive(Debug)]
pub(crate) struct ParentPipe {
    token: String,
    buf: Vec<u8>,
}

impl ParentPipe {
    /// The pipe the parent process asked for, if it did (with a well-formed token).
    pub(crate) fn from_env() -> Option<Self> {
        let token = std::env::var(ENV).ok()?;
        if !valid_token(&token) {
            tracing::warn!(
                "{ENV} is set but is not a token this runtime makes; events are not sent"
            );
            return None;
        }
        Some(Self {
            token,
            buf: Vec::new(),
        })
    }

    /// Queues `event` for the next [`flush`](Self::flush).
    pub(crate) fn push(&mut self, event: &RunEvent) {
        encode(&self.token, event, &mut self.buf);
    }

    /// Whether queued lines wait for a flush.
    pub(crate) fn pending(&self) -> usize {
        self.buf.len()
    }

    /// Writes the queued lines in one write on stderr (its lock held, so no other line of
    /// this process lands in the middle). `false` once the parent stopped reading.
    pub(crate) fn flush(&mut self) -> bool {
        if self.buf.is_empty() {
            return true;
        }
        let written = std::io::stderr().lock().write_all(&self.buf);
        self.buf.clear();
        written.is_ok()
    }
}

/// An execution of the child's run tree the parent has seen start.
#[derive(Debug)]
struct Known {
    id: Arc<str>,
    parent: Option<Arc<str>>,
    spec: &'static MachineSpec,
}

/// Why a line was dropped.
type Refusal = Cow<'static, str>;

/// The parent side: reads one child process's event lines and re-emits them on the parent's
/// stream (see the [module docs](self)).
#[derive(Debug)]
pub(crate) struct ChildEvents {
    target: Arc<RunEvents>,
    token: String,
    /// The child machine's name in `machines:` (for warnings).
    child: &'static str,
    executions: HashMap<Arc<str>, Known>,
    tokens: f64,
    refilled: tokio::time::Instant,
    dropped: u64,
}

impl ChildEvents {
    /// A reader of the events of child `child` (its name in `parent`'s `machines:`), run as
    /// execution `execution_id` under `parent_execution_id`, re-emitted on `target`'s stream.
    /// `None` when the parent's build lacks the child's spec.
    pub(crate) fn new(
        target: Arc<RunEvents>,
        token: String,
        parent: &'static MachineSpec,
        child: &'static str,
        execution_id: &str,
        parent_execution_id: Option<&str>,
    ) -> Option<Self> {
        let spec = parent.child(child)?;
        let id: Arc<str> = Arc::from(execution_id);
        let root = Known {
            id: id.clone(),
            parent: parent_execution_id.map(Arc::from),
            spec,
        };
        Some(Self {
            target,
            token,
            child,
            executions: HashMap::from([(id, root)]),
            tokens: f64::from(BURST),
            refilled: tokio::time::Instant::now(),
            dropped: 0,
        })
    }

    /// The token that starts this child's event lines.
    pub(crate) fn token(&self) -> &str {
        &self.token
    }

    /// Waits until the rate limit lets one more event in.
    async fn take_one(&mut self) {
        loop {
            let now = tokio::time::Instant::now();
            let elapsed = now.duration_since(self.refilled).as_secs_f64();
            self.refilled = now;
            self.tokens =
                (self.tokens + elapsed * f64::from(MAX_EVENTS_PER_SECOND)).min(f64::from(BURST));
            if self.tokens >= 1.0 {
                self.tokens -= 1.0;
                return;
            }
            let wait = (1.0 - self.tokens) / f64::from(MAX_EVENTS_PER_SECOND);
            tokio::time::sleep(Duration::from_secs_f64(wait.max(0.000_1))).await;
        }
    }

    /// One event line (without the token and its space, without the newline).
    pub(crate) async fn line(&mut self, line: &[u8]) {
        self.take_one().await;
        match self.accept(line) {
            Ok(event) => self.target.forward(event).await,
            Err(why) => self.drop_line(&why),
        }
    }

    /// An event line longer than [`MAX_LINE`] (dropped).
    pub(crate) fn oversized(&mut self) {
        self.drop_line(&Cow::Owned(format!("longer than {MAX_LINE} bytes")));
    }

    fn drop_line(&mut self, why: &Refusal) {
        self.dropped += 1;
        if self.dropped <= WARN_LINES {
            tracing::warn!(
                child = self.child,
                "dropped an event line from child machine process `{}`: {}",
                self.child,
                crate::inspect::escape_controls(why)
            );
        }
    }

    /// Reports the lines dropped past the first [`WARN_LINES`] (once the child ended).
    pub(crate) fn finish(&self) {
        if self.dropped > WARN_LINES {
            tracing::warn!(
                child = self.child,
                "dropped {} event lines from child machine process `{}` in all",
                self.dropped,
                self.child
            );
        }
    }

    /// The event a line stands for, checked against the run tree and the specs.
    fn accept(&mut self, line: &[u8]) -> Result<RunEvent, Refusal> {
        if line.len() > MAX_LINE {
            return Err(Cow::Owned(format!("longer than {MAX_LINE} bytes")));
        }
        let text = std::str::from_utf8(line).map_err(|_| Cow::Borrowed("not UTF-8"))?;
        // The event and its `event` object, then at most the depth of JSON entering a run.
        let depth = crate::agents::output::MAX_JSON_DEPTH + 2;
        if crate::agents::output::json_depth(text, depth) > depth {
            return Err(Cow::Owned(format!("nests deeper than {depth} levels")));
        }
        let wire: WireEvent<'_> = serde_json::from_str(text).map_err(|e| {
            let why = format!("not an event: {e}");
            Cow::Owned(truncated(&why).to_string())
        })?;
        for id in std::iter::once(&wire.execution_id).chain(&wire.parent_execution_id) {
            if id.is_empty() || id.len() > MAX_EXECUTION_ID_LEN {
                return Err(Cow::Borrowed("an execution id is empty or too long"));
            }
        }
        let (id, parent, spec) = match self.executions.get(&*wire.execution_id) {
            Some(known) => (known.id.clone(), known.parent.clone(), known.spec),
            None => self.start_of(&wire)?,
        };
        if wire.machine != spec.name {
            return Err(Cow::Owned(format!(
                "execution `{id}` runs machine `{}`, not `{}`",
                spec.name,
                truncated(&wire.machine)
            )));
        }
        let kind = kind_of(wire.event, spec)?;
        Ok(RunEvent {
            execution_id: id,
            parent_execution_id: parent,
            machine: spec.name,
            at: SystemTime::UNIX_EPOCH + Duration::from_nanos(wire.at),
            kind,
        })
    }

    /// A new execution: a `MachineStart` under a known execution, of one of its machine's
    /// children.
    #[allow(clippy::type_complexity)]
    fn start_of(
        &mut self,
        wire: &WireEvent<'_>,
    ) -> Result<(Arc<str>, Option<Arc<str>>, &'static MachineSpec), Refusal> {
        if !matches!(wire.event, WireKind::MachineStart { .. }) {
            return Err(Cow::Owned(format!(
                "an event of execution `{}`, which did not start in this child's run tree",
                truncated(&wire.execution_id)
            )));
        }
        let parent = wire
            .parent_execution_id
            .as_deref()
            .and_then(|p| self.executions.get(p))
            .ok_or_else(|| {
                Cow::Owned(format!(
                    "execution `{}` starts outside this child's run tree",
                    truncated(&wire.execution_id)
                ))
            })?;
        let spec = parent
            .spec
            .machines
            .iter()
            .filter_map(|(_, m)| *m)
            .find(|m| m.name == wire.machine)
            .ok_or_else(|| {
                Cow::Owned(format!(
                    "machine `{}` has no child machine `{}`",
                    parent.spec.name,
                    truncated(&wire.machine)
                ))
            })?;
        if self.executions.len() >= MAX_EXECUTIONS {
            return Err(Cow::Owned(format!(
                "more than {MAX_EXECUTIONS} executions in one child process"
            )));
        }
        let parent_id = parent.id.clone();
        let id: Arc<str> = Arc::from(&*wire.execution_id);
        self.executions.insert(
            id.clone(),
            Known {
                id: id.clone(),
                parent: Some(parent_id.clone()),
                spec,
            },
        );
        Ok((id, Some(parent_id), spec))
    }
}

/// `text` cut for a warning.
fn truncated(text: &str) -> &str {
    let mut end = text.len().min(200);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// The state `name` of `spec`.
fn state_of(spec: &'static MachineSpec, name: &str) -> Result<&'static str, Refusal> {
    spec.states
        .iter()
        .map(|s| s.name)
        .find(|s| *s == name)
        .ok_or_else(|| {
            Cow::Owned(format!(
                "machine `{}` has no state `{}`",
                spec.name,
                truncated(name)
            ))
        })
}

/// The agent `name` of `spec` (as states name it).
fn agent_of(spec: &'static MachineSpec, name: &str) -> Result<&'static str, Refusal> {
    spec.states
        .iter()
        .filter_map(|s| s.agent)
        .chain(spec.agents.iter().map(|a| a.name))
        .find(|a| *a == name)
        .ok_or_else(|| {
            Cow::Owned(format!(
                "machine `{}` has no agent `{}`",
                spec.name,
                truncated(name)
            ))
        })
}

/// The child machine `name` (its name in `machines:`) of `spec`.
fn child_of(spec: &'static MachineSpec, name: &str) -> Result<&'static str, Refusal> {
    spec.machines
        .iter()
        .map(|(n, _)| *n)
        .find(|n| *n == name)
        .ok_or_else(|| {
            Cow::Owned(format!(
                "machine `{}` has no child machine `{}`",
                spec.name,
                truncated(name)
            ))
        })
}

fn error_of(e: WireError<'_>) -> StateError {
    StateError::new(e.error_type.into_owned(), e.message.into_owned())
}

/// The typed event of a wire event of a run of `spec`.
fn kind_of(kind: WireKind<'_>, spec: &'static MachineSpec) -> Result<EventKind, Refusal> {
    let state = |name: &str| state_of(spec, name);
    Ok(match kind {
        WireKind::MachineStart { resumed } => EventKind::MachineStart { resumed },
        WireKind::MachineEnd {
            final_state,
            steps,
            api_calls,
            cost,
            usage,
        } => EventKind::MachineEnd {
            final_state: state(&final_state)?.to_string(),
            steps,
            totals: RunTotals {
                api_calls,
                cost,
                usage,
            },
        },
        WireKind::MachineFailed { error, steps } => EventKind::MachineFailed {
            error: error_of(error),
            steps,
        },
        WireKind::StateEnter { state: s, step } => EventKind::StateEnter {
            state: state(&s)?,
            step,
        },
        WireKind::StateExit { state: s, step } => EventKind::StateExit {
            state: state(&s)?,
            step,
        },
        WireKind::Transition { from, to } => EventKind::Transition {
            from: state(&from)?,
            to: state(&to)?,
        },
        WireKind::CheckpointSaved {
            event,
            state: s,
            step,
            latency_ns,
        } => EventKind::CheckpointSaved {
            event: crate::persistence::checkpoint_event::WRITTEN
                .into_iter()
                .find(|e| *e == event)
                .ok_or_else(|| {
                    Cow::Owned(format!("no checkpoint event `{}`", truncated(&event)))
                })?,
            // `machine_end` checkpoints record the state as `end`.
            state: if s == "end" { "end" } else { state(&s)? },
            step,
            latency: Duration::from_nanos(latency_ns),
        },
        WireKind::AgentCallStart { state: s, agent } => EventKind::AgentCallStart {
            state: state(&s)?,
            agent: agent_of(spec, &agent)?,
        },
        WireKind::AgentCallEnd {
            state: s,
            agent,
            model,
            usage,
            cost,
            api_calls,
            latency_ns,
            error,
        } => EventKind::AgentCallEnd {
            state: state(&s)?,
            agent: agent_of(spec, &agent)?,
            model: model.map(Cow::into_owned),
            usage,
            cost,
            api_calls,
            latency: Duration::from_nanos(latency_ns),
            error: error.map(error_of),
        },
        WireKind::TokenDelta { text } => EventKind::TokenDelta {
            text: text.into_owned(),
        },
        WireKind::ToolCall {
            id,
            name,
            arguments,
        } => EventKind::ToolCall {
            id: id.into_owned(),
            name: name.into_owned(),
            arguments: arguments.into_owned(),
        },
        WireKind::ToolResult { id, name, is_error } => EventKind::ToolResult {
            id: id.into_owned(),
            name: name.into_owned(),
            is_error,
        },
        WireKind::Error {
            state: s,
            error,
            recover,
        } => EventKind::Error {
            state: state(&s)?,
            error: error_of(error),
            route: match recover {
                Some(to) => ErrorRoute::Recover(state(&to)?),
                None => ErrorRoute::Fails,
            },
        },
        WireKind::Foreach {
            state: s,
            machine,
            count,
        } => EventKind::Foreach {
            state: state(&s)?,
            machine: child_of(spec, &machine)?,
            count: usize::try_from(count).unwrap_or(usize::MAX),
        },
        WireKind::Launched {
            state: s,
            machine,
            child_execution_id,
        } => {
            if child_execution_id.is_empty() || child_execution_id.len() > MAX_EXECUTION_ID_LEN {
                return Err(Cow::Borrowed(
                    "a launched execution id is empty or too long",
                ));
            }
            EventKind::Launched {
                state: state(&s)?,
                machine: child_of(spec, &machine)?,
                child_execution_id: child_execution_id.into_owned(),
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_checked() {
        assert!(valid_token(&new_token()));
        assert!(!valid_token("short"));
        assert!(!valid_token("fm-event-with a space-0123456789"));
    }

    #[test]
    fn long_deltas_are_split_at_character_boundaries() {
        let text = "é".repeat(DELTA_CHUNK); // 2 bytes each
        let event = RunEvent::new_for_test(
            "c",
            Some("p"),
            "m",
            EventKind::TokenDelta { text: text.clone() },
        );
        let mut out = Vec::new();
        encode("fm-event-0123456789abcdef", &event, &mut out);
        let lines: Vec<&[u8]> = out
            .split(|b| *b == b'\n')
            .filter(|l| !l.is_empty())
            .collect();
        assert_eq!(lines.len(), 2);
        let mut joined = String::new();
        for l in lines {
            assert!(l.len() <= MAX_LINE);
            let json = &l[b"fm-event-0123456789abcdef ".len()..];
            let wire: WireEvent<'_> = serde_json::from_slice(json).unwrap();
            match wire.event {
                WireKind::TokenDelta { text } => joined.push_str(&text),
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(joined, text);
    }

    #[test]
    fn oversized_texts_are_cut_before_sending() {
        let event = RunEvent::new_for_test(
            "c",
            None,
            "m",
            EventKind::Error {
                state: "s",
                error: StateError::new("Boom", "x".repeat(3 * MAX_LINE)),
                route: ErrorRoute::Fails,
            },
        );
        let mut out = Vec::new();
        encode("fm-event-0123456789abcdef", &event, &mut out);
        assert!(out.len() < MAX_TEXT + 1024, "{}", out.len());
        assert!(String::from_utf8_lossy(&out).contains("bytes, cut to forward it"));
    }
}
