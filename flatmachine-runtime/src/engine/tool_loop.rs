//! `tool_loop` states: call the model, run the tools it asks for (several at once, bounded),
//! feed the results back, and repeat until it stops asking or a limit, a hook or a transition
//! ends the loop. `docs/tools.md` describes the loop, its limits and where it departs from the
//! reference.
//!
//! The conversation and the loop's counters live in a [`LoopRecord`] that is written into the
//! context under [`LOOP_RECORD_KEY`] for every round's `tool_call` checkpoint, so a resumed run
//! continues the same conversation after the last recorded round (tools whose results were
//! recorded do not run again). The record is removed when the visit ends.

use super::budget::Budgeted;
use super::machine::Machine;
use super::step::Run;
use crate::agents::tool_agent::not_a_tool_agent;
use crate::agents::{AgentResult, Message, Role, ToolAgent, ToolChoice};
use crate::error::error_type;
use crate::events::{self, EventKind};
use crate::hooks::{PendingToolCall, ToolLoopControl, ToolResultRecord};
use crate::machine::{StateSpec, ToolLoopSpec};
use crate::persistence::checkpoint_event;
use crate::template::{self, ScopeRef, TemplateValue};
use crate::tools::{
    InlineTool, ToolCall, ToolDefinition, ToolFilter, ToolInvocation, ToolOutput, ToolSet,
    ToolSource,
};
use crate::{Context, StateError, Value};
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The context key holding a running loop's [`LoopRecord`] (removed when the visit ends).
pub const LOOP_RECORD_KEY: &str = "_tool_loop";
/// The context key naming the state a loop left for when a transition's condition held
/// mid-loop (taken by the run loop instead of evaluating the transitions again).
pub const NEXT_STATE_KEY: &str = "_tool_loop_next_state";
/// Context keys the loop keeps up to date for conditions and hooks (the reference's names),
/// cleared when a visit starts.
const PROGRESS_KEYS: [&str; 5] = [
    "_tool_loop_turns",
    "_tool_calls_count",
    "_tool_loop_cost",
    "_tool_loop_content",
    "_tool_loop_stop",
];

/// Default number of one reply's tool calls run at the same time
/// (`MachineBuilder::tool_concurrency`).
pub const DEFAULT_TOOL_CONCURRENCY: usize = 8;

/// The message the model gets before its final answer when a turn or tool-call limit ended
/// the loop.
const LIMIT_NOTICE: &str = "[System: the tool-use limit of this task was reached. Give your final answer now, using the information gathered so far, without calling tools.]";

/// A running loop: the conversation so far and its counters, as checkpointed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoopRecord {
    /// The state running the loop.
    pub state: String,
    /// Its agent.
    pub agent: String,
    /// The step (state visit) the loop belongs to: a later visit starts a new conversation.
    pub step: u64,
    /// The conversation: opening messages, then each reply and its tool results.
    pub messages: Vec<Message>,
    /// Model calls made.
    pub turns: u64,
    /// Tool calls run.
    pub tool_calls: u64,
    /// Cost of the model calls.
    pub cost: f64,
    /// Milliseconds the visit has run (for `total_timeout` across a resume).
    pub elapsed_ms: u64,
}

/// The state's limits, rendered for this visit (`None`: no limit).
#[derive(Debug, Default)]
struct Limits {
    max_turns: Option<u64>,
    max_tool_calls: Option<u64>,
    max_cost: Option<f64>,
    tool_timeout: Option<Duration>,
    total_timeout: Option<Duration>,
}

impl Limits {
    fn render(spec: &ToolLoopSpec, context: &Context) -> Result<Self, StateError> {
        let scope = ScopeRef::for_state(context);
        let number = |field: &str, tv: &Option<TemplateValue>| -> Result<Option<f64>, StateError> {
            let Some(tv) = tv else { return Ok(None) };
            let value = template::render_with(tv, &scope)?;
            let n = match &value {
                Value::Null => return Ok(None),
                Value::Number(n) => n.as_f64(),
                Value::String(s) if s.trim().is_empty() => return Ok(None),
                Value::String(s) => s.trim().parse::<f64>().ok(),
                _ => None,
            };
            match n {
                Some(n) if n.is_finite() && n >= 0.0 => Ok((n > 0.0).then_some(n)),
                _ => Err(StateError::new(
                    error_type::TOOL,
                    format!("`tool_loop.{field}` must be a number of at least 0, got {value}"),
                )),
            }
        };
        let count = |f: Option<f64>| f.map(|n| n.ceil() as u64);
        let seconds = |f: Option<f64>| f.and_then(|s| Duration::try_from_secs_f64(s).ok());
        Ok(Limits {
            max_turns: count(number("max_turns", &spec.max_turns)?),
            max_tool_calls: count(number("max_tool_calls", &spec.max_tool_calls)?),
            max_cost: number("max_cost", &spec.max_cost)?,
            tool_timeout: seconds(number("tool_timeout", &spec.tool_timeout)?),
            total_timeout: seconds(number("total_timeout", &spec.total_timeout)?),
        })
    }
}

/// Why a loop ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stop {
    Complete,
    MaxTurns,
    MaxToolCalls,
    Aborted,
    Transition(usize),
}

impl Stop {
    fn as_str(self) -> &'static str {
        match self {
            Stop::Complete => "complete",
            Stop::MaxTurns => "max_turns",
            Stop::MaxToolCalls => "max_tool_calls",
            Stop::Aborted => "aborted",
            Stop::Transition(_) => "transition",
        }
    }
}

impl Machine {
    /// Runs the `tool_loop` of state `index`; returns the state's output (before
    /// `output_to_context`, which the caller applies).
    pub(super) async fn run_tool_loop(
        &self,
        run: &mut Run,
        index: usize,
        context: &mut Context,
    ) -> Result<Value, StateError> {
        let result = self.tool_loop_visit(run, index, context).await;
        if result.is_err() {
            context.remove(LOOP_RECORD_KEY);
        }
        result
    }

    async fn tool_loop_visit(
        &self,
        run: &mut Run,
        index: usize,
        context: &mut Context,
    ) -> Result<Value, StateError> {
        let spec = self.inner.spec;
        let state = &spec.states[index];
        let Some(tl) = &state.tool_loop else {
            return Err(StateError::new(
                error_type::TOOL,
                format!("state `{}` has no tool_loop", state.name),
            ));
        };
        let Some(agent_name) = state.agent else {
            return Err(StateError::new(
                error_type::TOOL,
                format!("state `{}` has `tool_loop` but no agent", state.name),
            ));
        };
        let executor = self.executor(agent_name)?;
        let agent = executor
            .tool_agent()
            .ok_or_else(|| not_a_tool_agent(agent_name, state.name))?;
        let limits = Limits::render(tl, context)?;
        for key in PROGRESS_KEYS {
            context.remove(key);
        }
        context.remove(NEXT_STATE_KEY);
        let saved = context.remove(LOOP_RECORD_KEY).and_then(|v| {
            serde_json::from_value::<LoopRecord>(v)
                .ok()
                .filter(|r| r.state == state.name && r.agent == agent_name && r.step == run.step)
        });
        let tools = self.tool_set(run, agent, tl).await?;
        let definitions = tools.definitions();
        let mut record = match saved {
            Some(record) => record,
            None => {
                let input = self.render_state_input(state, context)?;
                let messages =
                    agent.opening_messages(state.name, &input, &tools_variable(&tools))?;
                LoopRecord {
                    state: state.name.to_string(),
                    agent: agent_name.to_string(),
                    step: run.step,
                    messages,
                    turns: 0,
                    tool_calls: 0,
                    cost: 0.0,
                    elapsed_ms: 0,
                }
            }
        };
        let started = Instant::now()
            .checked_sub(Duration::from_millis(record.elapsed_ms))
            .unwrap_or_else(Instant::now);
        let concurrency = self.inner.tool_concurrency.max(1);

        let stop = loop {
            if let Some(max) = limits.max_turns
                && record.turns >= max
            {
                break Stop::MaxTurns;
            }
            if let Some(max) = limits.max_cost
                && record.cost >= max
            {
                return Err(StateError::new(
                    error_type::TOOL_LOOP_LIMIT,
                    format!(
                        "state `{}`: the tool loop's cost ({:.6}) reached `max_cost` ({max}) after {} turn(s)",
                        state.name, record.cost, record.turns
                    ),
                ));
            }
            let turn = ModelTurn {
                state,
                agent_name,
                agent,
                tools: &definitions,
                choice: ToolChoice::Auto,
                limits: &limits,
                started,
            };
            let reply = self.model_turn(run, &turn, &record.messages).await?;
            record.turns += 1;
            record.cost = crate::cost::add(record.cost, reply.cost);
            let content = reply.content.unwrap_or_default();
            let calls = reply.tool_calls;
            record.messages.push(Message::assistant_with_tools(
                content.clone(),
                calls.clone(),
            ));
            progress(context, &record, Some(&content));
            if calls.is_empty() {
                break Stop::Complete;
            }
            // One `ToolCall` event per call the model asked for, each answered by one
            // `ToolResult` (a call that does not run is answered with an error result).
            for call in &calls {
                events::emit_tool_call(&call.id, &call.name, &call.arguments_value()).await;
            }
            if let Some(max) = limits.max_tool_calls
                && record.tool_calls + calls.len() as u64 > max
            {
                let note =
                    format!("Not run: the limit of {max} tool calls for this task was reached.");
                for call in &calls {
                    record
                        .messages
                        .push(Message::tool_result(&call.id, &note, true));
                    events::emit_tool_result(&call.id, &call.name, true).await;
                }
                break Stop::MaxToolCalls;
            }

            // on_tool_calls: edit, veto, or abort.
            let mut pending: Vec<PendingToolCall> = calls
                .iter()
                .map(|c| PendingToolCall {
                    call: c.clone(),
                    veto: None,
                })
                .collect();
            let mut control = ToolLoopControl::Continue;
            if run.hooks_active {
                control = run
                    .hooks
                    .on_tool_calls(state.name, &mut pending, context)
                    .await?;
                // Ids stay the model's; an edited call is what the conversation records.
                for (p, original) in pending.iter_mut().zip(&calls) {
                    p.call.id = original.id.clone();
                }
                if let Some(last) = record.messages.last_mut() {
                    last.tool_calls = pending.iter().map(|p| p.call.clone()).collect();
                }
            }
            if control == ToolLoopControl::Abort {
                for p in &pending {
                    record.messages.push(Message::tool_result(
                        &p.call.id,
                        "Not run: the tool loop was stopped.",
                        true,
                    ));
                    events::emit_tool_result(&p.call.id, &p.call.name, true).await;
                }
                progress(context, &record, Some(&content));
                self.checkpoint_round(run, state, context, &mut record, started)
                    .await?;
                break Stop::Aborted;
            }

            // Run the calls that were not vetoed, at most `concurrency` at a time.
            let invocations: Vec<(usize, ToolInvocation)> = pending
                .iter()
                .enumerate()
                .filter(|(_, p)| p.veto.is_none())
                .map(|(i, p)| {
                    (
                        i,
                        ToolInvocation::for_run(&p.call, spec.name, state.name, &run.execution_id),
                    )
                })
                .collect();
            let calls: Vec<(usize, ToolCall, ToolInvocation)> = invocations
                .into_iter()
                .map(|(i, inv)| (i, pending[i].call.clone(), inv))
                .collect();
            let ran = within_total(
                &limits,
                started,
                state.name,
                run_calls(&tools, calls, limits.tool_timeout, concurrency),
            )
            .await?;
            record.tool_calls += ran.len() as u64;

            // Results in the model's order; on_tool_result for each call that ran.
            let mut outputs = ran.into_iter().peekable();
            let mut abort = false;
            for (i, p) in pending.into_iter().enumerate() {
                let output = match outputs.peek() {
                    Some((j, _)) if *j == i => outputs.next().map(|(_, o)| o),
                    _ => None,
                };
                let message = match output {
                    Some(output) => {
                        let mut result = ToolResultRecord {
                            call: p.call,
                            output,
                        };
                        if run.hooks_active
                            && run
                                .hooks
                                .on_tool_result(state.name, &mut result, context)
                                .await?
                                == ToolLoopControl::Abort
                        {
                            abort = true;
                        }
                        let output = result.output.bounded();
                        events::emit_tool_result(
                            &result.call.id,
                            &result.call.name,
                            output.is_error,
                        )
                        .await;
                        Message::tool_result(&result.call.id, output.content, output.is_error)
                    }
                    None => {
                        events::emit_tool_result(&p.call.id, &p.call.name, true).await;
                        Message::tool_result(
                            &p.call.id,
                            format!(
                                "Not run: {}",
                                p.veto.as_deref().unwrap_or("the call was refused")
                            ),
                            true,
                        )
                    }
                };
                record.messages.push(message);
            }
            progress(context, &record, Some(&content));
            self.checkpoint_round(run, state, context, &mut record, started)
                .await?;
            if abort {
                break Stop::Aborted;
            }
            if let Some(next) = conditional_transition(state, context)? {
                break Stop::Transition(next);
            }
        };

        // A turn or tool-call limit: one more call, without tools, for the final answer.
        let last_text = last_assistant_text(&record.messages);
        if matches!(stop, Stop::MaxTurns | Stop::MaxToolCalls) && last_text.trim().is_empty() {
            record.messages.push(Message::new(Role::User, LIMIT_NOTICE));
            let turn = ModelTurn {
                state,
                agent_name,
                agent,
                tools: &definitions,
                choice: ToolChoice::None,
                limits: &limits,
                started,
            };
            let reply = self.model_turn(run, &turn, &record.messages).await?;
            record.turns += 1;
            record.cost = crate::cost::add(record.cost, reply.cost);
            // Calls the model asks for despite `tool_choice: none` are dropped: nothing answers
            // them, and a reply with unanswered calls would make the conversation invalid.
            record.messages.push(Message::new(
                Role::Assistant,
                reply.content.unwrap_or_default(),
            ));
        }
        let content = last_assistant_text(&record.messages).to_string();
        progress(context, &record, Some(&content));
        context.insert("_tool_loop_stop".into(), Value::from(stop.as_str()));
        if let Stop::Transition(next) = stop {
            context.insert(NEXT_STATE_KEY.into(), Value::from(spec.states[next].name));
        }
        let mut output = serde_json::Map::new();
        if matches!(stop, Stop::Complete | Stop::MaxTurns | Stop::MaxToolCalls)
            && let Some(parsed) = agent.final_output(&content)?
        {
            // What passed the agent's `output` schema is its typed output (docs/typed.md).
            crate::typed::record_agent_output(spec, state.name, &parsed);
            if let Value::Object(fields) = parsed {
                output.extend(fields);
            }
        }
        output.insert("content".into(), Value::String(content));
        output.insert("_tool_calls_count".into(), Value::from(record.tool_calls));
        output.insert("_tool_loop_turns".into(), Value::from(record.turns));
        output.insert("_tool_loop_cost".into(), Value::from(record.cost));
        output.insert("_tool_loop_stop".into(), Value::from(stop.as_str()));
        output.insert(
            "messages".into(),
            serde_json::to_value(&record.messages).unwrap_or(Value::Null),
        );
        Ok(Value::Object(output))
    }

    /// One model call of a loop: drawn from the run tree's `max_agent_calls` budget (refused
    /// calls fail the run with `MaxAgentCalls`, as a plain agent state's would), cut off at
    /// the visit's `total_timeout`, reported as `AgentCallStart` / `AgentCallEnd` events, and
    /// added to the run's totals.
    async fn model_turn(
        &self,
        run: &mut Run,
        turn: &ModelTurn<'_>,
        messages: &[Message],
    ) -> Result<AgentResult, StateError> {
        let state = turn.state.name;
        let agent = turn.agent_name;
        run.emit(|| EventKind::AgentCallStart { state, agent })
            .await;
        let began = Instant::now();
        let outcome = if run.budget.try_reserve() {
            let outcome = within_total(turn.limits, turn.started, state, async {
                turn.agent
                    .turn(state, messages, turn.tools, turn.choice.clone())
                    .await
            })
            .await;
            // The reservation becomes the calls made (a failure without billing keeps it).
            match &outcome {
                Ok(reply) => run.budget.settle(reply.api_calls),
                Err(e) => {
                    if let Some(b) = &e.billed {
                        run.budget.settle(b.api_calls);
                    }
                }
            }
            outcome
        } else {
            Err(Budgeted::refused(&run.budget))
        };
        run.emit(|| events::agent_call_end(state, agent, &outcome, began))
            .await;
        match &outcome {
            Ok(reply) => run.add_agent(reply),
            Err(e) => {
                if let Some(b) = &e.billed {
                    run.add_billed(b.api_calls, b.cost, b.usage);
                }
            }
        }
        outcome
    }

    /// The tools of one visit: the agent's inline tools (with their handlers), the Rust tools,
    /// and the agent's MCP tools (started on first use in the run), minus those the state's
    /// `allowed_tools` / `denied_tools` leave out.
    async fn tool_set(
        &self,
        run: &mut Run,
        agent: &dyn ToolAgent,
        spec: &ToolLoopSpec,
    ) -> Result<ToolSet, StateError> {
        let config_error = |message: String| StateError::new(error_type::TOOL, message);
        let mut set = ToolSet::new();
        for tool in agent.inline_tools() {
            let handler = self.inner.tool_handlers.get(tool.name).ok_or_else(|| {
                config_error(format!(
                    "inline tool `{}` of agent `{}` has no handler: register one with `MachineBuilder::tool_handler(\"{}\", ..)`",
                    tool.name,
                    agent.name(),
                    tool.name
                ))
            })?;
            set.add(
                Arc::new(InlineTool::new(tool.definition(), handler.clone())),
                ToolSource::Inline,
            )
            .map_err(config_error)?;
        }
        for tool in self.inner.rust_tools.iter() {
            set.add(tool.clone(), ToolSource::Rust)
                .map_err(config_error)?;
        }
        if let Some(mcp) = agent.mcp() {
            for (tool, server) in run.tools.mcp_tools(agent.name(), mcp).await? {
                set.add(tool, ToolSource::Mcp { server })
                    .map_err(config_error)?;
            }
        }
        set.retain(&ToolFilter::new(
            spec.allowed_tools.iter().copied(),
            spec.denied_tools.iter().copied(),
        ));
        Ok(set)
    }

    /// Writes the round's `tool_call` checkpoint, with the loop's record in the context.
    async fn checkpoint_round(
        &self,
        run: &mut Run,
        state: &StateSpec,
        context: &mut Context,
        record: &mut LoopRecord,
        started: Instant,
    ) -> Result<(), StateError> {
        if !self.checkpoints(checkpoint_event::TOOL_CALL) {
            return Ok(());
        }
        record.elapsed_ms = started.elapsed().as_millis().min(u128::from(u64::MAX)) as u64;
        let value = serde_json::to_value(&*record).map_err(|e| {
            StateError::new(
                error_type::TOOL,
                format!("cannot record the tool loop: {e}"),
            )
        })?;
        context.insert(LOOP_RECORD_KEY.into(), value);
        let written = self
            .checkpoint(run, checkpoint_event::TOOL_CALL, state.name, context, None)
            .await;
        context.remove(LOOP_RECORD_KEY);
        written.map_err(|e| e.to_state_error())
    }
}

/// What one model call of a loop needs besides the conversation.
struct ModelTurn<'a> {
    state: &'static StateSpec,
    agent_name: &'static str,
    agent: &'a dyn ToolAgent,
    tools: &'a [ToolDefinition],
    choice: ToolChoice,
    limits: &'a Limits,
    started: Instant,
}

/// Runs `calls` on `tools`, at most `concurrency` at a time; the outputs in call order.
async fn run_calls(
    tools: &ToolSet,
    calls: Vec<(usize, ToolCall, ToolInvocation)>,
    timeout: Option<Duration>,
    concurrency: usize,
) -> Result<Vec<(usize, ToolOutput)>, StateError> {
    let futures: Vec<futures::future::BoxFuture<'_, (usize, ToolOutput)>> = calls
        .into_iter()
        .map(|(i, call, invocation)| {
            let fut: futures::future::BoxFuture<'_, (usize, ToolOutput)> =
                Box::pin(async move { (i, tools.call(&call, &invocation, timeout).await) });
            fut
        })
        .collect();
    let mut outputs: Vec<(usize, ToolOutput)> = futures::stream::iter(futures)
        .buffer_unordered(concurrency)
        .collect()
        .await;
    outputs.sort_by_key(|(i, _)| *i);
    Ok(outputs)
}

/// The state a tool loop left for (and forgets it), when its visit ended through a
/// transition whose condition held mid-loop.
pub(super) fn take_next_state(
    spec: &'static crate::machine::MachineSpec,
    context: &mut Context,
) -> Option<usize> {
    if !context.contains_key(NEXT_STATE_KEY) {
        return None;
    }
    let name = context.remove(NEXT_STATE_KEY)?;
    spec.state(name.as_str()?).map(|(i, _)| i)
}

/// `fut`, cut off at the visit's `total_timeout` (a `TimeoutError`).
async fn within_total<T>(
    limits: &Limits,
    started: Instant,
    state: &str,
    fut: impl std::future::Future<Output = Result<T, StateError>>,
) -> Result<T, StateError> {
    let Some(total) = limits.total_timeout else {
        return fut.await;
    };
    let timed_out = || {
        StateError::new(
            error_type::TIMEOUT,
            format!(
                "state `{state}`: the tool loop ran past its `total_timeout` of {}s",
                total.as_secs_f64()
            ),
        )
    };
    let left = total.checked_sub(started.elapsed()).ok_or_else(timed_out)?;
    tokio::time::timeout(left, fut)
        .await
        .map_err(|_| timed_out())?
}

/// The loop's progress, where conditions and hooks read it (the reference's keys).
fn progress(context: &mut Context, record: &LoopRecord, content: Option<&str>) {
    context.insert("_tool_loop_turns".into(), Value::from(record.turns));
    context.insert("_tool_calls_count".into(), Value::from(record.tool_calls));
    context.insert("_tool_loop_cost".into(), Value::from(record.cost));
    if let Some(content) = content {
        context.insert("_tool_loop_content".into(), Value::from(content));
    }
}

/// The text of the last assistant message.
fn last_assistant_text(messages: &[Message]) -> &str {
    messages
        .iter()
        .rev()
        .find(|m| m.role == Role::Assistant)
        .map_or("", |m| m.content.as_str())
}

/// The first transition of `state` with a condition that holds now (unconditional ones are the
/// loop's normal exit and are not considered mid-loop).
fn conditional_transition(
    state: &StateSpec,
    context: &Context,
) -> Result<Option<usize>, StateError> {
    for t in state.transitions {
        if t.condition.is_some() && t.guard.eval(t.condition, context)? {
            return Ok(Some(t.to));
        }
    }
    Ok(None)
}

/// The `tools` prompt variable: each offered tool as `{name, description, parameters,
/// inputSchema, server}` (`inputSchema` is MCP's name for `parameters`).
fn tools_variable(tools: &ToolSet) -> Value {
    Value::Array(
        tools
            .tools()
            .map(|(d, source): (&ToolDefinition, &ToolSource)| {
                serde_json::json!({
                    "name": d.name,
                    "description": d.description,
                    "parameters": d.parameters,
                    "inputSchema": d.parameters,
                    "server": source.server(),
                })
            })
            .collect(),
    )
}
