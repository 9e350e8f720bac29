//! Trace records of a run for the console: agent calls (tool-loop rounds included) and
//! state errors with their route, written beside the checkpoints.

use super::machine::Machine;
use super::result::RunError;
use super::step::Run;
use crate::agents::Usage;
use crate::persistence::CheckpointStore;
use crate::{Context, StateError, Value};

impl Machine {
    /// Records a run's failure for the console (when its store keeps trace records); a record
    /// that cannot be written is logged, never an error of the run.
    pub(super) async fn trace_failure(&self, run: &mut Run, error: &RunError) {
        let Some(store) = self.inner.trace_store() else {
            return;
        };
        self.save_pending_texts(store, run).await;
        let record = crate::trace::TraceRecord::Failure(crate::trace::FailureTrace {
            step: run.step,
            error: crate::trace::TracedError::new(
                error.to_state_error().error_type,
                error.to_string(),
            ),
            at: crate::persistence::utc_now_isoformat(),
        });
        if let Err(e) = Box::pin(crate::trace::write_record(store, &run.execution_id, record)).await
        {
            tracing::warn!(execution_id = %run.execution_id, error = %e, "cannot write a trace record");
        }
    }

    /// [`run_tool_loop`](Self::run_tool_loop), its model calls recorded as one trace record.
    pub(super) async fn traced_tool_loop(
        &self,
        store: CheckpointStore,
        run: &mut Run,
        index: usize,
        context: &mut Context,
    ) -> Result<Value, StateError> {
        let state = &self.inner.spec.states[index];
        let input = self.render_state_input(state, context).unwrap_or_default();
        let before = TotalsMark::of(run);
        let started_at = crate::persistence::utc_now_isoformat();
        let started = std::time::Instant::now();
        let (outcome, exchanges, omitted) =
            crate::trace::collect(self.run_tool_loop(run, index, context)).await;
        let call = CallTrace {
            state: state.name,
            agent: state.agent.unwrap_or_default(),
            tool_loop: true,
            started_at,
            started,
            input,
            exchanges,
            omitted,
            before,
        };
        call.write(&store, run, outcome.as_ref().map(Some)).await;
        outcome
    }

    /// Records a state error and where it was routed.
    pub(super) async fn trace_error(
        &self,
        store: &CheckpointStore,
        run: &Run,
        state: usize,
        error: &StateError,
        routed: &Result<usize, RunError>,
    ) {
        let spec = self.inner.spec;
        let record = crate::trace::TraceRecord::Error(crate::trace::ErrorTrace {
            step: run.step,
            state: spec.states[state].name.to_owned(),
            error: crate::trace::TracedError::new(error.error_type.clone(), error.message.clone()),
            route: routed
                .as_ref()
                .ok()
                .map(|i| spec.states[*i].name.to_owned()),
            at: crate::persistence::utc_now_isoformat(),
        });
        if let Err(e) = crate::trace::write_record(store, &run.execution_id, record).await {
            tracing::warn!(execution_id = %run.execution_id, error = %e, "cannot write a trace record");
        }
    }
}

/// The run's totals before a traced agent call (the call's share is the difference).
#[derive(Clone, Copy)]
pub(super) struct TotalsMark {
    pub(super) api_calls: u64,
    pub(super) cost: f64,
    pub(super) usage: Usage,
}

impl TotalsMark {
    pub(super) fn of(run: &Run) -> Self {
        Self {
            api_calls: run.api_calls,
            cost: run.cost,
            usage: run.usage,
        }
    }
}

/// What a traced agent call collected, written as a [`crate::trace::AgentCallTrace`].
pub(super) struct CallTrace {
    pub(super) state: &'static str,
    pub(super) agent: &'static str,
    pub(super) tool_loop: bool,
    pub(super) started_at: String,
    pub(super) started: std::time::Instant,
    pub(super) input: Value,
    pub(super) exchanges: Vec<crate::trace::ModelExchange>,
    pub(super) omitted: usize,
    pub(super) before: TotalsMark,
}

impl CallTrace {
    /// Writes the record; the call's billing is what the run's totals grew by.
    pub(super) async fn write(
        self,
        store: &CheckpointStore,
        run: &Run,
        outcome: Result<Option<&Value>, &StateError>,
    ) {
        let billed = crate::agents::Billing {
            api_calls: run.api_calls.saturating_sub(self.before.api_calls),
            cost: run.cost - self.before.cost,
            usage: Usage {
                input_tokens: run
                    .usage
                    .input_tokens
                    .saturating_sub(self.before.usage.input_tokens),
                output_tokens: run
                    .usage
                    .output_tokens
                    .saturating_sub(self.before.usage.output_tokens),
                cached_tokens: run
                    .usage
                    .cached_tokens
                    .saturating_sub(self.before.usage.cached_tokens),
            },
        };
        self.write_billed(store, run, outcome, billed).await;
    }

    /// Writes the record with this billing. A record that cannot be written is logged.
    pub(super) async fn write_billed(
        self,
        store: &CheckpointStore,
        run: &Run,
        outcome: Result<Option<&Value>, &StateError>,
        billed: crate::agents::Billing,
    ) {
        use crate::trace::{AgentCallTrace, MAX_TEXT, TraceRecord, TracedError, bounded_value};
        let (output, error) = match outcome {
            Ok(output) => (output.map(|v| bounded_value(v.clone(), MAX_TEXT)), None),
            Err(e) => (
                None,
                Some(TracedError::new(e.error_type.clone(), e.message.clone())),
            ),
        };
        let record = TraceRecord::AgentCall(Box::new(AgentCallTrace {
            step: run.step,
            state: self.state.to_owned(),
            agent: self.agent.to_owned(),
            tool_loop: self.tool_loop,
            started_at: self.started_at,
            latency_ms: self.started.elapsed().as_secs_f64() * 1000.0,
            input: bounded_value(self.input, MAX_TEXT),
            exchanges: self.exchanges,
            omitted_exchanges: self.omitted,
            output,
            api_calls: billed.api_calls,
            cost: billed.cost,
            usage: billed.usage,
            error,
        }));
        if let Err(e) = crate::trace::write_record(store, &run.execution_id, record).await {
            tracing::warn!(execution_id = %run.execution_id, error = %e, "cannot write a trace record");
        }
    }
}
