//! OpenTelemetry traces and metrics of runs (feature `otel`), exported over OTLP/HTTP
//! (protobuf).
//!
//! [`Telemetry`] reads a run's [event stream](crate::events) and turns it into spans and
//! metrics: a run is watched by [`Telemetry::run`] (or any consumer of
//! [`Machine::stream`](crate::Machine::stream) passing each event to
//! [`Telemetry::record`]). Nothing is recorded for runs that are not watched.
//!
//! Spans (names and attributes after the OpenTelemetry GenAI semantic conventions where they
//! have one; every span also has `flatmachine.execution_id`, `flatmachine.machine`, and, below
//! the run, `flatmachine.state` and `flatmachine.step`):
//!
//! - `run {machine}`: one execution, from its start to its end; a child's run span is a child
//!   of the parent's span for the state that started it (`foreach`, `machine:`, `launch:`).
//! - `state {state}`: one state visit, under its run.
//! - `invoke_agent {agent}`: one agent call (retries, samples and votes included), under its
//!   state: `gen_ai.operation.name` = `invoke_agent`, `gen_ai.agent.name`,
//!   `gen_ai.request.model` / `gen_ai.response.model` (the model the agent reports),
//!   `gen_ai.usage.input_tokens`, `gen_ai.usage.output_tokens`, `flatmachine.cost`,
//!   `flatmachine.api_calls`; `error.type` on failure.
//! - `execute_tool {tool}`: one tool call, under the agent's state: `gen_ai.operation.name` =
//!   `execute_tool`, `gen_ai.tool.name`, `gen_ai.tool.call.id`.
//!
//! A span that failed has the status `Error` with the message and `error.type`.
//!
//! Metrics (the reference's names for agents): `flatagents.agent.duration` (histogram, ms),
//! `flatagents.agent.tokens` (counter, `token_type` = `input` / `output`),
//! `flatagents.agent.cost` (counter), `flatagents.agent.executions` (counter, `status`);
//! `flatmachine.state.duration` (histogram, ms, `state`, `status`),
//! `flatmachine.checkpoint.duration` (histogram, ms, `event`), `flatmachine.run.duration`
//! (histogram, ms, `status`). Every point has `flatmachine.machine`.
//!
//! [`Telemetry::from_env`] configures the exporters from the standard variables:
//! `OTEL_EXPORTER_OTLP_ENDPOINT` (or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` /
//! `..._METRICS_ENDPOINT`), `OTEL_EXPORTER_OTLP_HEADERS`, `OTEL_EXPORTER_OTLP_TIMEOUT`,
//! `OTEL_SERVICE_NAME`, `OTEL_RESOURCE_ATTRIBUTES`, `OTEL_METRIC_EXPORT_INTERVAL`; and the
//! reference's `FLATAGENTS_METRICS_ENABLED=false` turns metrics off.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::SystemTime;

use opentelemetry::metrics::{Counter, Histogram, Meter, MeterProvider as _};
use opentelemetry::trace::{
    Span as _, SpanKind, Status, TraceContextExt, Tracer as _, TracerProvider as _,
};
use opentelemetry::{Context, KeyValue};
use opentelemetry_sdk::metrics::SdkMeterProvider;
use opentelemetry_sdk::trace::{SdkTracerProvider, Span, Tracer};

use crate::engine::{RunFailure, RunOptions, RunResult};
use crate::events::{EventKind, RunEvent};
use crate::{Machine, Value};

/// Why telemetry could not be set up.
#[derive(Debug, thiserror::Error)]
#[error("OpenTelemetry: {0}")]
pub struct OtelError(String);

/// Spans and metrics of watched runs, sent to an OTLP/HTTP endpoint.
pub struct Telemetry {
    tracer: Tracer,
    tracer_provider: SdkTracerProvider,
    meter_provider: Option<SdkMeterProvider>,
    instruments: Instruments,
    open: Mutex<HashMap<String, Execution>>,
    /// Launched children not started yet: the context of the state that launched them.
    launched: Mutex<HashMap<String, Context>>,
}

impl std::fmt::Debug for Telemetry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Telemetry")
            .field("metrics", &self.meter_provider.is_some())
            .finish_non_exhaustive()
    }
}

struct Instruments {
    agent_duration: Histogram<f64>,
    agent_tokens: Counter<u64>,
    agent_cost: Counter<f64>,
    agent_executions: Counter<u64>,
    state_duration: Histogram<f64>,
    checkpoint_duration: Histogram<f64>,
    run_duration: Histogram<f64>,
}

impl Instruments {
    fn new(meter: &Meter) -> Self {
        Self {
            agent_duration: meter
                .f64_histogram("flatagents.agent.duration")
                .with_unit("ms")
                .with_description("Agent execution duration")
                .build(),
            agent_tokens: meter
                .u64_counter("flatagents.agent.tokens")
                .with_description("Tokens used by agent")
                .build(),
            agent_cost: meter
                .f64_counter("flatagents.agent.cost")
                .with_description("Estimated cost of agent execution")
                .build(),
            agent_executions: meter
                .u64_counter("flatagents.agent.executions")
                .with_description("Agent execution count by status")
                .build(),
            state_duration: meter
                .f64_histogram("flatmachine.state.duration")
                .with_unit("ms")
                .with_description("State visit duration")
                .build(),
            checkpoint_duration: meter
                .f64_histogram("flatmachine.checkpoint.duration")
                .with_unit("ms")
                .with_description("Checkpoint write duration")
                .build(),
            run_duration: meter
                .f64_histogram("flatmachine.run.duration")
                .with_unit("ms")
                .with_description("Run duration")
                .build(),
        }
    }
}

/// The open spans of one execution.
struct Execution {
    run: Span,
    started: SystemTime,
    state: Option<(Span, &'static str, u64, SystemTime)>,
    agent: Option<(Span, SystemTime)>,
    tools: HashMap<String, Span>,
    /// The context a child started now is parented to.
    child_parent: Context,
}

fn ms(from: SystemTime, to: SystemTime) -> f64 {
    to.duration_since(from).unwrap_or_default().as_secs_f64() * 1000.0
}

fn parent_of(span: &Span) -> Context {
    Context::new().with_remote_span_context(span.span_context().clone())
}

impl Telemetry {
    /// Exporters configured from the `OTEL_*` variables (see the [module docs](self)).
    pub fn from_env() -> Result<Self, OtelError> {
        use opentelemetry_otlp::{Protocol, WithExportConfig};
        let resource = opentelemetry_sdk::Resource::builder()
            .with_service_name(
                std::env::var("OTEL_SERVICE_NAME").unwrap_or_else(|_| "flatmachine".into()),
            )
            .build();
        let spans = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_protocol(Protocol::HttpBinary)
            .build()
            .map_err(|e| OtelError(e.to_string()))?;
        let tracer_provider = SdkTracerProvider::builder()
            .with_batch_exporter(spans)
            .with_resource(resource.clone())
            .build();
        let metrics_on = std::env::var("FLATAGENTS_METRICS_ENABLED")
            .map(|v| !matches!(v.trim().to_ascii_lowercase().as_str(), "false" | "0" | "no"))
            .unwrap_or(true);
        let meter_provider = if metrics_on {
            let metrics = opentelemetry_otlp::MetricExporter::builder()
                .with_http()
                .with_protocol(Protocol::HttpBinary)
                .build()
                .map_err(|e| OtelError(e.to_string()))?;
            Some(
                SdkMeterProvider::builder()
                    .with_periodic_exporter(metrics)
                    .with_resource(resource)
                    .build(),
            )
        } else {
            None
        };
        Ok(Self::with_providers(tracer_provider, meter_provider))
    }

    /// Telemetry recording to these providers (built by the caller, with any exporter).
    pub fn with_providers(
        tracer_provider: SdkTracerProvider,
        meter_provider: Option<SdkMeterProvider>,
    ) -> Self {
        let tracer = tracer_provider.tracer("flatmachine");
        let meter = match &meter_provider {
            Some(p) => p.meter("flatmachine"),
            None => opentelemetry::global::meter_provider().meter("flatmachine-off"),
        };
        Self {
            tracer,
            tracer_provider,
            meter_provider,
            instruments: Instruments::new(&meter),
            open: Mutex::new(HashMap::new()),
            launched: Mutex::new(HashMap::new()),
        }
    }

    /// Runs `machine` watched: its events (its children's included) become spans and metrics.
    pub async fn run(
        &self,
        machine: &Machine,
        input: Value,
        options: RunOptions,
    ) -> Result<RunResult, Box<RunFailure>> {
        use futures::StreamExt;
        let mut stream = machine.stream(input, options);
        while let Some(event) = stream.next().await {
            self.record(&event);
        }
        stream.result().await
    }

    /// Sends every span and metric recorded so far.
    pub fn flush(&self) -> Result<(), OtelError> {
        self.tracer_provider
            .force_flush()
            .map_err(|e| OtelError(e.to_string()))?;
        if let Some(m) = &self.meter_provider {
            m.force_flush().map_err(|e| OtelError(e.to_string()))?;
        }
        Ok(())
    }

    /// Flushes and stops the exporters.
    pub fn shutdown(&self) -> Result<(), OtelError> {
        let traces = self.tracer_provider.shutdown();
        let metrics = self.meter_provider.as_ref().map(|m| m.shutdown());
        traces.map_err(|e| OtelError(e.to_string()))?;
        if let Some(m) = metrics {
            m.map_err(|e| OtelError(e.to_string()))?;
        }
        Ok(())
    }

    /// Records one event of a run's stream.
    pub fn record(&self, event: &RunEvent) {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        let id = &*event.execution_id;
        let machine = KeyValue::new("flatmachine.machine", event.machine);
        let base = |state: Option<(&'static str, u64)>| {
            let mut attrs = vec![
                KeyValue::new("flatmachine.execution_id", id.to_string()),
                machine.clone(),
            ];
            if let Some((state, step)) = state {
                attrs.push(KeyValue::new("flatmachine.state", state));
                attrs.push(KeyValue::new("flatmachine.step", step as i64));
            }
            attrs
        };
        match &event.kind {
            EventKind::MachineStart { resumed } => {
                let launched = self
                    .launched
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(id);
                let parent = launched
                    .or_else(|| {
                        event
                            .parent_execution_id
                            .as_deref()
                            .and_then(|p| open.get(p))
                            .map(|p| p.child_parent.clone())
                    })
                    .unwrap_or_default();
                let mut attrs = base(None);
                attrs.push(KeyValue::new("flatmachine.resumed", *resumed));
                if let Some(p) = &event.parent_execution_id {
                    attrs.push(KeyValue::new(
                        "flatmachine.parent_execution_id",
                        p.to_string(),
                    ));
                }
                let span = self
                    .tracer
                    .span_builder(format!("run {}", event.machine))
                    .with_kind(SpanKind::Internal)
                    .with_start_time(event.at)
                    .with_attributes(attrs)
                    .start_with_context(&self.tracer, &parent);
                let child_parent = parent_of(&span);
                open.insert(
                    id.to_string(),
                    Execution {
                        run: span,
                        started: event.at,
                        state: None,
                        agent: None,
                        tools: HashMap::new(),
                        child_parent,
                    },
                );
            }
            EventKind::StateEnter { state, step } => {
                let Some(ex) = open.get_mut(id) else { return };
                let span = self
                    .tracer
                    .span_builder(format!("state {state}"))
                    .with_start_time(event.at)
                    .with_attributes(base(Some((state, *step))))
                    .start_with_context(&self.tracer, &parent_of(&ex.run));
                ex.child_parent = parent_of(&span);
                if let Some(old) = ex.state.replace((span, state, *step, event.at)) {
                    self.end_state(ex_machine(event), old, event.at, None);
                }
            }
            EventKind::StateExit { .. } | EventKind::Transition { .. } => {
                if matches!(event.kind, EventKind::StateExit { .. }) {
                    return;
                }
                let Some(ex) = open.get_mut(id) else { return };
                if let Some(old) = ex.state.take() {
                    self.end_state(ex_machine(event), old, event.at, None);
                }
                ex.child_parent = parent_of(&ex.run);
            }
            EventKind::Error { error, .. } => {
                let Some(ex) = open.get_mut(id) else { return };
                if let Some(old) = ex.state.take() {
                    self.end_state(ex_machine(event), old, event.at, Some(error));
                }
                ex.child_parent = parent_of(&ex.run);
            }
            EventKind::CheckpointSaved {
                event: which,
                latency,
                ..
            } => {
                self.instruments.checkpoint_duration.record(
                    latency.as_secs_f64() * 1000.0,
                    &[machine.clone(), KeyValue::new("event", *which)],
                );
            }
            EventKind::AgentCallStart { state, agent } => {
                let Some(ex) = open.get_mut(id) else { return };
                let step = ex.state.as_ref().map_or(0, |s| s.2);
                let parent = ex
                    .state
                    .as_ref()
                    .map_or_else(|| parent_of(&ex.run), |s| parent_of(&s.0));
                let mut attrs = base(Some((state, step)));
                attrs.push(KeyValue::new("gen_ai.operation.name", "invoke_agent"));
                attrs.push(KeyValue::new("gen_ai.agent.name", *agent));
                let span = self
                    .tracer
                    .span_builder(format!("invoke_agent {agent}"))
                    .with_kind(SpanKind::Client)
                    .with_start_time(event.at)
                    .with_attributes(attrs)
                    .start_with_context(&self.tracer, &parent);
                ex.agent = Some((span, event.at));
            }
            EventKind::AgentCallEnd {
                agent,
                model,
                usage,
                cost,
                api_calls,
                error,
                ..
            } => {
                let Some(ex) = open.get_mut(id) else { return };
                let Some((mut span, started)) = ex.agent.take() else {
                    return;
                };
                if let Some(model) = model {
                    span.set_attribute(KeyValue::new("gen_ai.request.model", model.clone()));
                    span.set_attribute(KeyValue::new("gen_ai.response.model", model.clone()));
                }
                span.set_attribute(KeyValue::new(
                    "gen_ai.usage.input_tokens",
                    usage.input_tokens as i64,
                ));
                span.set_attribute(KeyValue::new(
                    "gen_ai.usage.output_tokens",
                    usage.output_tokens as i64,
                ));
                span.set_attribute(KeyValue::new("flatmachine.cost", *cost));
                span.set_attribute(KeyValue::new("flatmachine.api_calls", *api_calls as i64));
                let status = if let Some(e) = error {
                    span.set_attribute(KeyValue::new("error.type", e.error_type.clone()));
                    span.set_status(Status::error(e.message.clone()));
                    "failure"
                } else {
                    "success"
                };
                span.end_with_timestamp(event.at);
                let mut attrs = vec![
                    machine.clone(),
                    KeyValue::new("agent_id", *agent),
                    KeyValue::new("status", status),
                ];
                if let Some(model) = model {
                    attrs.push(KeyValue::new("model", model.clone()));
                }
                let i = &self.instruments;
                i.agent_duration.record(ms(started, event.at), &attrs);
                i.agent_executions.add(1, &attrs);
                i.agent_cost.add(*cost, &attrs);
                let mut tokens = attrs.clone();
                tokens.push(KeyValue::new("token_type", "input"));
                i.agent_tokens.add(usage.input_tokens, &tokens);
                tokens.pop();
                tokens.push(KeyValue::new("token_type", "output"));
                i.agent_tokens.add(usage.output_tokens, &tokens);
            }
            EventKind::ToolCall {
                id: call_id, name, ..
            } => {
                let Some(ex) = open.get_mut(id) else { return };
                let (state, step) = ex.state.as_ref().map_or(("", 0), |s| (s.1, s.2));
                let parent = ex
                    .state
                    .as_ref()
                    .map_or_else(|| parent_of(&ex.run), |s| parent_of(&s.0));
                let mut attrs = base(Some((state, step)));
                attrs.push(KeyValue::new("gen_ai.operation.name", "execute_tool"));
                attrs.push(KeyValue::new("gen_ai.tool.name", name.clone()));
                attrs.push(KeyValue::new("gen_ai.tool.call.id", call_id.clone()));
                let span = self
                    .tracer
                    .span_builder(format!("execute_tool {name}"))
                    .with_start_time(event.at)
                    .with_attributes(attrs)
                    .start_with_context(&self.tracer, &parent);
                ex.tools.insert(call_id.clone(), span);
            }
            EventKind::ToolResult {
                id: call_id,
                is_error,
                ..
            } => {
                let Some(ex) = open.get_mut(id) else { return };
                if let Some(mut span) = ex.tools.remove(call_id) {
                    if *is_error {
                        span.set_status(Status::error("the tool failed"));
                    }
                    span.end_with_timestamp(event.at);
                }
            }
            EventKind::MachineEnd { steps, .. } | EventKind::MachineFailed { steps, .. } => {
                let Some(mut ex) = open.remove(id) else {
                    return;
                };
                if let Some(old) = ex.state.take() {
                    self.end_state(ex_machine(event), old, event.at, None);
                }
                ex.run
                    .set_attribute(KeyValue::new("flatmachine.step", *steps as i64));
                let status = match &event.kind {
                    EventKind::MachineFailed { error, .. } => {
                        ex.run
                            .set_attribute(KeyValue::new("error.type", error.error_type.clone()));
                        ex.run.set_status(Status::error(error.message.clone()));
                        "failure"
                    }
                    _ => "success",
                };
                ex.run.end_with_timestamp(event.at);
                self.instruments.run_duration.record(
                    ms(ex.started, event.at),
                    &[machine, KeyValue::new("status", status)],
                );
            }
            EventKind::Launched {
                child_execution_id, ..
            } => {
                let Some(ex) = open.get(id) else { return };
                self.launched
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(child_execution_id.clone(), ex.child_parent.clone());
            }
            EventKind::TokenDelta { .. } | EventKind::Foreach { .. } => {}
        }
    }

    fn end_state(
        &self,
        machine: &'static str,
        (mut span, state, _step, started): (Span, &'static str, u64, SystemTime),
        at: SystemTime,
        error: Option<&crate::StateError>,
    ) {
        let status = match error {
            Some(e) => {
                span.set_attribute(KeyValue::new("error.type", e.error_type.clone()));
                span.set_status(Status::error(e.message.clone()));
                "failure"
            }
            None => "success",
        };
        span.end_with_timestamp(at);
        self.instruments.state_duration.record(
            ms(started, at),
            &[
                KeyValue::new("flatmachine.machine", machine),
                KeyValue::new("state", state),
                KeyValue::new("status", status),
            ],
        );
    }
}

fn ex_machine(event: &RunEvent) -> &'static str {
    event.machine
}
