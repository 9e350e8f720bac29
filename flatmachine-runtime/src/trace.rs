//! Trace records: what a run's checkpoints do not hold, written beside them for the console
//! (`flatmachine ui`, `docs/console.md`).
//!
//! A checkpoint holds the context, not the prompts a model was sent or what it answered. When
//! a machine checkpoints to a store outside this process (files, SQLite, Redis), the engine
//! also writes, through the same [`PersistenceBackend`](crate::persistence::PersistenceBackend):
//!
//! * `{execution_id}/trace/graph.json` — the machine's states and transitions
//!   ([`GraphTrace`]), once per execution;
//! * `{execution_id}/trace/{step:06}_{micros:016}_{n:04}_{kind}.json` — one [`TraceRecord`]
//!   per agent call (the rendered messages of each model call, the reply, usage, cost,
//!   latency, the error), per state error with its `on_error` route, and per run failure.
//!
//! Records are bounded: texts are cut at [`MAX_TEXT`] bytes, a call keeps at most
//! [`MAX_MESSAGES`] messages per model call and [`MAX_EXCHANGES`] model calls, and a record
//! is at most [`MAX_RECORD_BYTES`] of JSON (messages are dropped, then texts cut shorter,
//! until it fits). They are a debugging aid: a record that cannot be written is logged and
//! the run goes on. They go where the execution's checkpoints go (`delete_execution` removes
//! them) and are never read by a resume. `MachineBuilder::trace(false)` turns them off.

use std::future::Future;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::Value;
use crate::agents::{LlmError, LlmRequest, LlmResponse, Usage};
use crate::machine::MachineSpec;
use crate::persistence::{CheckpointStore, PersistenceError, utc_now_isoformat};

/// Longest text kept in a record (prompts, replies, errors), in bytes.
pub const MAX_TEXT: usize = 32 * 1024;
/// Most messages kept per model call (the first two and the newest ones).
pub const MAX_MESSAGES: usize = 64;
/// Most model calls kept per agent call (the newest ones).
pub const MAX_EXCHANGES: usize = 32;
/// Largest record, as JSON.
pub const MAX_RECORD_BYTES: usize = 1 << 20;
/// Most trace records [`load_trace`] reads for one execution (the newest ones).
pub const MAX_RECORDS_READ: usize = 5000;

/// The folder of an execution's trace records, below the execution's own.
pub const TRACE_DIR: &str = "trace";

/// One model call made during an agent call: what was sent and what came back.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelExchange {
    /// The model asked for.
    pub model: String,
    /// The provider, when the request names one.
    #[serde(default)]
    pub provider: Option<String>,
    /// The messages sent (rendered prompts, earlier replies, tool results).
    pub messages: Vec<TracedMessage>,
    /// Messages left out to keep the record bounded.
    #[serde(default)]
    pub omitted_messages: usize,
    /// The names of the tools offered.
    #[serde(default)]
    pub tools: Vec<String>,
    /// The reply, when there was one.
    #[serde(default)]
    pub reply: Option<TracedReply>,
    /// The provider error, when the call failed.
    #[serde(default)]
    pub error: Option<TracedError>,
    /// How long the call took, in milliseconds.
    pub latency_ms: f64,
}

/// A message as sent to a model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TracedMessage {
    /// `system`, `user`, `assistant` or `tool`.
    pub role: String,
    /// The text.
    pub content: String,
    /// Tool calls of an assistant message.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tool_calls: Vec<TracedToolCall>,
    /// The call a tool message answers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_call_id: Option<String>,
}

/// A tool call a model asked for.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TracedToolCall {
    /// The tool's name.
    pub name: String,
    /// The arguments, as the model wrote them.
    pub arguments: String,
}

/// A model's reply.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TracedReply {
    /// The reply text.
    pub content: String,
    /// The tools it asks to call.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tool_calls: Vec<TracedToolCall>,
    /// Why it stopped.
    #[serde(default)]
    pub finish_reason: Option<String>,
    /// The model that answered.
    #[serde(default)]
    pub model: Option<String>,
    /// Token counts.
    #[serde(default)]
    pub usage: Usage,
}

/// An error: its type and message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TracedError {
    /// The error type (`RateLimitError`, `ValueError`, ...).
    pub error_type: String,
    /// The message (cut at [`MAX_TEXT`]).
    pub message: String,
}

/// One agent state's call (all of a `tool_loop` visit's model calls in one record).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AgentCallTrace {
    /// The step (state visit).
    pub step: u64,
    /// The state.
    pub state: String,
    /// The agent.
    pub agent: String,
    /// Whether the state is a `tool_loop`.
    #[serde(default)]
    pub tool_loop: bool,
    /// When the call started, UTC.
    pub started_at: String,
    /// How long the whole call took (retries, samples, rounds), in milliseconds.
    pub latency_ms: f64,
    /// The state's rendered `input`.
    #[serde(default)]
    pub input: Value,
    /// The model calls, oldest first (empty for agents that call no model, such as closures).
    #[serde(default)]
    pub exchanges: Vec<ModelExchange>,
    /// Model calls left out to keep the record bounded.
    #[serde(default)]
    pub omitted_exchanges: usize,
    /// What the state got: the structured output, or `{"content": …}`.
    #[serde(default)]
    pub output: Option<Value>,
    /// Agent calls billed.
    #[serde(default)]
    pub api_calls: u64,
    /// Their cost.
    #[serde(default)]
    pub cost: f64,
    /// Their tokens.
    #[serde(default)]
    pub usage: Usage,
    /// Why the call failed, when it did.
    #[serde(default)]
    pub error: Option<TracedError>,
}

/// A state error and where `on_error` (or the `on_error` hook) sent the run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorTrace {
    /// The step.
    pub step: u64,
    /// The state that failed.
    pub state: String,
    /// The error.
    pub error: TracedError,
    /// The state the run recovered in; `None` when the error ended the run.
    #[serde(default)]
    pub route: Option<String>,
    /// When, UTC.
    pub at: String,
}

/// A run that ended with an error.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FailureTrace {
    /// The step it ended at.
    pub step: u64,
    /// The error.
    pub error: TracedError,
    /// When, UTC.
    pub at: String,
}

/// One trace record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum TraceRecord {
    /// An agent state's call.
    AgentCall(Box<AgentCallTrace>),
    /// A state error and its route.
    Error(ErrorTrace),
    /// The run failed.
    Failure(FailureTrace),
}

impl TraceRecord {
    /// The record's kind, as written in its key.
    pub fn kind(&self) -> &'static str {
        match self {
            TraceRecord::AgentCall(_) => "call",
            TraceRecord::Error(_) => "error",
            TraceRecord::Failure(_) => "failure",
        }
    }

    /// The step it belongs to.
    pub fn step(&self) -> u64 {
        match self {
            TraceRecord::AgentCall(r) => r.step,
            TraceRecord::Error(r) => r.step,
            TraceRecord::Failure(r) => r.step,
        }
    }
}

/// A machine's states and transitions, written once per execution.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GraphTrace {
    /// The machine's name.
    pub machine: String,
    /// Its fingerprint.
    #[serde(default)]
    pub config_hash: Option<String>,
    /// When the execution started (or was first resumed by a build that writes traces), UTC.
    pub started_at: String,
    /// The initial state.
    pub initial: String,
    /// The states, in file order.
    pub states: Vec<GraphState>,
    /// The transitions and error routes.
    pub edges: Vec<GraphEdge>,
}

/// A state of a [`GraphTrace`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GraphState {
    /// The state's name.
    pub name: String,
    /// What it does: `agent`, `tool_loop`, `machine`, `foreach`, `wait`, `launch`, `action`,
    /// `final` or `pass`.
    pub kind: String,
    /// The agent, action, child machines or channel it names.
    #[serde(default)]
    pub detail: Option<String>,
    /// Whether it is final.
    #[serde(default)]
    pub is_final: bool,
    /// Whether it starts child runs (`machine:`, `foreach:`, `launch:`).
    #[serde(default)]
    pub starts_children: bool,
}

/// A transition (or an `on_error` route) of a [`GraphTrace`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GraphEdge {
    /// From this state.
    pub from: String,
    /// To this state.
    pub to: String,
    /// The condition, or the error type of an `on_error` route.
    #[serde(default)]
    pub label: Option<String>,
    /// Whether it is an `on_error` route.
    #[serde(default)]
    pub on_error: bool,
}

impl GraphTrace {
    /// The graph of `spec`.
    pub fn of(spec: &MachineSpec) -> Self {
        let states = spec
            .states
            .iter()
            .map(|s| {
                let (kind, detail) = if s.tool_loop.is_some() {
                    ("tool_loop", s.agent.map(str::to_owned))
                } else if let Some(agent) = s.agent {
                    ("agent", Some(agent.to_owned()))
                } else if s.foreach.is_some() {
                    ("foreach", Some(names(s.machine.iter().map(|c| c.name))))
                } else if !s.machine.is_empty() {
                    ("machine", Some(names(s.machine.iter().map(|c| c.name))))
                } else if s.wait_for.is_some() {
                    ("wait", None)
                } else if !s.launch.is_empty() {
                    ("launch", Some(names(s.launch.iter().copied())))
                } else if let Some(action) = s.action {
                    ("action", Some(action.to_owned()))
                } else if s.is_final {
                    ("final", None)
                } else {
                    ("pass", None)
                };
                GraphState {
                    name: s.name.to_owned(),
                    kind: kind.to_owned(),
                    detail,
                    is_final: s.is_final,
                    starts_children: !s.machine.is_empty() || !s.launch.is_empty(),
                }
            })
            .collect();
        let mut edges = Vec::new();
        for s in spec.states {
            for t in s.transitions {
                if let Some(to) = spec.states.get(t.to) {
                    edges.push(GraphEdge {
                        from: s.name.to_owned(),
                        to: to.name.to_owned(),
                        label: t.condition.map(str::to_owned),
                        on_error: false,
                    });
                }
            }
            for (error, to) in s.on_error {
                if let Some(to) = spec.states.get(*to) {
                    edges.push(GraphEdge {
                        from: s.name.to_owned(),
                        to: to.name.to_owned(),
                        label: Some((*error).to_owned()),
                        on_error: true,
                    });
                }
            }
        }
        GraphTrace {
            machine: spec.name.to_owned(),
            config_hash: (!spec.config_hash.is_empty()).then(|| spec.config_hash.to_owned()),
            started_at: utc_now_isoformat(),
            initial: spec
                .states
                .get(spec.initial)
                .map(|s| s.name.to_owned())
                .unwrap_or_default(),
            states,
            edges,
        }
    }
}

fn names<'a>(names: impl Iterator<Item = &'a str>) -> String {
    names.collect::<Vec<_>>().join(", ")
}

/// The key of an execution's graph record.
pub fn graph_key(execution_id: &str) -> String {
    format!("{execution_id}/{TRACE_DIR}/graph.json")
}

static SEQUENCE: AtomicU32 = AtomicU32::new(0);

/// A new key for a record of `kind` at `step` (ordered by step, then time of writing).
fn record_key(execution_id: &str, step: u64, kind: &str) -> String {
    let micros = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros());
    let n = SEQUENCE.fetch_add(1, Ordering::Relaxed) % 10_000;
    format!("{execution_id}/{TRACE_DIR}/{step:06}_{micros:016}_{n:04}_{kind}.json")
}

/// Writes a record of `execution_id` (bounded to [`MAX_RECORD_BYTES`]).
pub async fn write_record(
    store: &CheckpointStore,
    execution_id: &str,
    mut record: TraceRecord,
) -> Result<(), PersistenceError> {
    let json = bounded_json(&mut record)?;
    let key = record_key(execution_id, record.step(), record.kind());
    store.backend().save_text(&key, &json).await
}

/// The graph record of `spec` for `execution_id`: its key and JSON, for the run to save with
/// its next checkpoint (a fresh execution) or on its own.
pub fn graph_text(
    execution_id: &str,
    spec: &MachineSpec,
) -> Result<(String, String), PersistenceError> {
    let key = graph_key(execution_id);
    let json = serde_json::to_string(&GraphTrace::of(spec)).map_err(|source| {
        PersistenceError::Serialize {
            key: key.clone(),
            source,
        }
    })?;
    Ok((key, json))
}

/// Serializes `record`, shrinking it until it fits in [`MAX_RECORD_BYTES`].
fn bounded_json(record: &mut TraceRecord) -> Result<String, PersistenceError> {
    let serialize = |r: &TraceRecord| {
        serde_json::to_string(r).map_err(|source| PersistenceError::Serialize {
            key: "trace record".to_owned(),
            source,
        })
    };
    let mut json = serialize(record)?;
    let mut limit = MAX_TEXT;
    while json.len() > MAX_RECORD_BYTES && limit > 64 {
        limit /= 4;
        if let TraceRecord::AgentCall(call) = record {
            // Only the newest model call keeps its messages, each cut to `limit`.
            let n = call.exchanges.len();
            for (i, exchange) in call.exchanges.iter_mut().enumerate() {
                if i + 1 < n && !exchange.messages.is_empty() {
                    exchange.omitted_messages += exchange.messages.len();
                    exchange.messages.clear();
                }
                for m in &mut exchange.messages {
                    cut(&mut m.content, limit);
                }
                if let Some(reply) = &mut exchange.reply {
                    cut(&mut reply.content, limit);
                }
            }
            call.input = bounded_value(std::mem::take(&mut call.input), limit);
            call.output = call.output.take().map(|v| bounded_value(v, limit));
        }
        json = serialize(record)?;
    }
    Ok(json)
}

/// `text` cut to at most `limit` bytes (at a character boundary), saying how much was cut.
pub fn cut(text: &mut String, limit: usize) {
    if text.len() <= limit {
        return;
    }
    let mut end = limit;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    let dropped = text.len() - end;
    text.truncate(end);
    text.push_str(&format!("… [{dropped} more bytes]"));
}

fn cut_owned(mut text: String, limit: usize) -> String {
    cut(&mut text, limit);
    text
}

/// `value` as it is when its JSON fits in `limit` bytes, else its JSON text, cut.
pub fn bounded_value(value: Value, limit: usize) -> Value {
    let text = value.to_string();
    if text.len() <= limit {
        return value;
    }
    Value::String(cut_owned(text, limit))
}

impl TracedError {
    /// An error of this type and message (cut at [`MAX_TEXT`]).
    pub fn new(error_type: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            error_type: error_type.into(),
            message: cut_owned(message.into(), MAX_TEXT),
        }
    }
}

fn traced_calls(calls: &[crate::tools::ToolCall]) -> Vec<TracedToolCall> {
    calls
        .iter()
        .take(MAX_MESSAGES)
        .map(|c| TracedToolCall {
            name: cut_owned(c.name.clone(), 256),
            arguments: cut_owned(c.arguments.clone(), MAX_TEXT),
        })
        .collect()
}

impl ModelExchange {
    /// The exchange of `request` and its outcome.
    pub fn new(
        request: &LlmRequest,
        outcome: Result<&LlmResponse, &LlmError>,
        latency: Duration,
    ) -> Self {
        let all = &request.messages;
        // The opening messages (system, first user) and the newest ones.
        let keep_head = 2.min(all.len());
        let keep_tail = (MAX_MESSAGES - keep_head).min(all.len() - keep_head);
        let omitted = all.len() - keep_head - keep_tail;
        let messages = all[..keep_head]
            .iter()
            .chain(&all[all.len() - keep_tail..])
            .map(|m| TracedMessage {
                role: match m.role {
                    crate::agents::Role::System => "system",
                    crate::agents::Role::User => "user",
                    crate::agents::Role::Assistant => "assistant",
                    crate::agents::Role::Tool => "tool",
                }
                .to_owned(),
                content: cut_owned(m.content.clone(), MAX_TEXT),
                tool_calls: traced_calls(&m.tool_calls),
                tool_call_id: m.tool_call_id.clone().map(|id| cut_owned(id, 256)),
            })
            .collect();
        let (reply, error) = match outcome {
            Ok(r) => (
                Some(TracedReply {
                    content: cut_owned(r.content.clone(), MAX_TEXT),
                    tool_calls: traced_calls(&r.tool_calls),
                    finish_reason: r.finish_reason.clone(),
                    model: r.model.clone(),
                    usage: r.usage,
                }),
                None,
            ),
            Err(e) => (
                None,
                Some(TracedError::new(e.kind.type_name(), e.message.clone())),
            ),
        };
        Self {
            model: cut_owned(request.model.clone(), 256),
            provider: request.provider.clone(),
            messages,
            omitted_messages: omitted,
            tools: request
                .tools
                .iter()
                .take(MAX_MESSAGES)
                .map(|t| t.name.clone())
                .collect(),
            reply,
            error,
            latency_ms: latency.as_secs_f64() * 1000.0,
        }
    }
}

type Exchanges = Arc<Mutex<Vec<ModelExchange>>>;

tokio::task_local! {
    static EXCHANGES: Exchanges;
}

/// Runs `future`, collecting the model calls made inside it (by [`observe`]).
pub(crate) async fn collect<F: Future>(future: F) -> (F::Output, Vec<ModelExchange>, usize) {
    let exchanges: Exchanges = Arc::default();
    let output = EXCHANGES.scope(exchanges.clone(), future).await;
    let mut all = std::mem::take(&mut *exchanges.lock().unwrap_or_else(|e| e.into_inner()));
    let omitted = all.len().saturating_sub(MAX_EXCHANGES);
    all.drain(..omitted);
    (output, all, omitted)
}

/// Sends `request` through `call` and, inside [`collect`], records the exchange. Every model
/// call the runtime makes goes through this.
pub(crate) async fn observe<F>(request: &LlmRequest, call: F) -> Result<LlmResponse, LlmError>
where
    F: Future<Output = Result<LlmResponse, LlmError>>,
{
    let started = Instant::now();
    let outcome = call.await;
    let _ = EXCHANGES.try_with(|exchanges| {
        let exchange = ModelExchange::new(request, outcome.as_ref(), started.elapsed());
        let mut list = exchanges.lock().unwrap_or_else(|e| e.into_inner());
        // Keep memory bounded in long loops: the newest calls are the ones kept.
        if list.len() >= MAX_EXCHANGES * 2 {
            list.drain(..MAX_EXCHANGES);
        }
        list.push(exchange);
    });
    outcome
}

/// What [`load_trace`] found for one execution.
#[derive(Debug, Clone, Default, Serialize)]
pub struct TraceSet {
    /// The machine's graph, when written.
    pub graph: Option<GraphTrace>,
    /// The records, in key order (step, then time), at most [`MAX_RECORDS_READ`] (the newest).
    pub records: Vec<TraceRecord>,
    /// Records left out (older than the newest [`MAX_RECORDS_READ`]).
    pub omitted: usize,
    /// Records that could not be read, with the reason.
    pub unreadable: Vec<String>,
}

/// Reads the trace records of `execution_id`. A record that cannot be read is listed in
/// [`TraceSet::unreadable`] instead of failing the whole read.
pub async fn load_trace(
    store: &CheckpointStore,
    execution_id: &str,
) -> Result<TraceSet, PersistenceError> {
    crate::persistence::validate_execution_id(execution_id)?;
    let backend = store.backend();
    let prefix = format!("{execution_id}/{TRACE_DIR}/");
    let mut keys = backend.list(&prefix).await?;
    keys.retain(|k| k.ends_with(".json"));
    let graph_key = graph_key(execution_id);
    let mut set = TraceSet::default();
    if keys.contains(&graph_key) {
        match backend.load_text(&graph_key).await {
            Ok(Some(text)) => match serde_json::from_str(&text) {
                Ok(graph) => set.graph = Some(graph),
                Err(e) => set.unreadable.push(format!("{graph_key}: {e}")),
            },
            Ok(None) => {}
            Err(e) => set.unreadable.push(e.to_string()),
        }
    }
    keys.retain(|k| *k != graph_key);
    set.omitted = keys.len().saturating_sub(MAX_RECORDS_READ);
    let keys = &keys[set.omitted..];
    let loaded: Vec<_> = futures::stream::iter(keys.iter().cloned().map(|key| {
        let backend = backend.clone();
        async move {
            let text = backend.load_text(&key).await;
            (key, text)
        }
    }))
    .buffered(16)
    .collect()
    .await;
    for (key, text) in loaded {
        match text {
            Ok(Some(text)) if text.len() <= MAX_RECORD_BYTES * 2 => {
                match serde_json::from_str::<TraceRecord>(&text) {
                    Ok(record) => set.records.push(record),
                    Err(e) => set.unreadable.push(format!("{key}: {e}")),
                }
            }
            Ok(Some(text)) => set
                .unreadable
                .push(format!("{key}: {} bytes, over the limit", text.len())),
            Ok(None) => {}
            Err(e) => set.unreadable.push(e.to_string()),
        }
    }
    Ok(set)
}

use futures::StreamExt as _;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agents::{Message, Role};

    #[test]
    fn texts_are_cut_at_a_character_boundary() {
        let mut text = "é".repeat(10);
        cut(&mut text, 5);
        assert!(text.starts_with("éé"));
        assert!(text.ends_with("[16 more bytes]"), "{text}");
    }

    #[test]
    fn exchanges_keep_the_opening_and_the_newest_messages() {
        let mut messages = vec![
            Message::new(Role::System, "sys"),
            Message::new(Role::User, "x".repeat(MAX_TEXT + 10)),
        ];
        for i in 0..100 {
            messages.push(Message::new(Role::Assistant, format!("m{i}")));
        }
        let request = LlmRequest::new("m", messages);
        let reply = LlmResponse::text("ok");
        let e = ModelExchange::new(&request, Ok(&reply), Duration::from_millis(3));
        assert_eq!(e.messages.len(), MAX_MESSAGES);
        assert_eq!(e.omitted_messages, 102 - MAX_MESSAGES);
        assert_eq!(e.messages[0].content, "sys");
        assert!(e.messages[1].content.len() < MAX_TEXT + 40);
        assert_eq!(e.messages.last().unwrap().content, "m99");
        assert_eq!(e.reply.unwrap().content, "ok");
    }

    #[test]
    fn a_huge_record_is_shrunk_to_the_limit() {
        let request = LlmRequest::new(
            "m",
            (0..MAX_MESSAGES)
                .map(|_| Message::new(Role::User, "y".repeat(MAX_TEXT)))
                .collect(),
        );
        let reply = LlmResponse::text("z".repeat(MAX_TEXT));
        let exchange = ModelExchange::new(&request, Ok(&reply), Duration::ZERO);
        let mut record = TraceRecord::AgentCall(Box::new(AgentCallTrace {
            step: 1,
            state: "s".into(),
            agent: "a".into(),
            tool_loop: true,
            started_at: utc_now_isoformat(),
            latency_ms: 1.0,
            input: Value::String("i".repeat(MAX_TEXT * 4)),
            exchanges: vec![exchange; 4],
            omitted_exchanges: 0,
            output: None,
            api_calls: 4,
            cost: 0.0,
            usage: Usage::default(),
            error: None,
        }));
        let json = bounded_json(&mut record).unwrap();
        assert!(json.len() <= MAX_RECORD_BYTES, "{}", json.len());
        let back: TraceRecord = serde_json::from_str(&json).unwrap();
        assert_eq!(back.kind(), "call");
    }

    #[tokio::test]
    async fn records_round_trip_through_a_store() {
        let dir = tempfile::tempdir().unwrap();
        let store = CheckpointStore::local(dir.path());
        let record = TraceRecord::Error(ErrorTrace {
            step: 2,
            state: "charge".into(),
            error: TracedError::new("ValueError", "declined"),
            route: Some("refund".into()),
            at: utc_now_isoformat(),
        });
        write_record(&store, "run-1", record.clone()).await.unwrap();
        let set = load_trace(&store, "run-1").await.unwrap();
        assert_eq!(set.records, vec![record]);
        assert!(set.graph.is_none());
        // Trace records are not checkpoints.
        assert!(store.checkpoint_keys("run-1").await.unwrap().is_empty());
    }
}
