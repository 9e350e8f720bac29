//! `wait_for` states: take a signal, or park the run until one arrives.
//!
//! The state's work is one atomic [`SignalBackend::wait`](crate::signals::SignalBackend::wait):
//! the signal this run already holds (a resume), else the oldest one pending on the channel,
//! else a registration as a waiter. With a signal, its data is the state's output (mapped by
//! `output_to_context`) and the loop goes on; the signal is acknowledged once the state's exit
//! is recorded (`state_exit`), so a crash in between repeats the state with the same signal.
//! Without one, the run writes a `waiting` checkpoint (whatever `checkpoint_on` says: the
//! dispatcher and `resume` start from it) and returns [`RunStatus::Waiting`].
//!
//! `timeout` on a `wait_for` state is a deadline, fixed when the state is first entered and
//! stored in the `waiting` checkpoint (`wait_deadline`) and the waiter record, so it survives
//! restarts. A run resumed after it passed with no signal fails the state with
//! [`SIGNAL_TIMEOUT`](crate::signals::SIGNAL_TIMEOUT), routed by `on_error`. A signal that is
//! there when the run resumes wins over an elapsed deadline.

use super::machine::Machine;
use super::result::{RunError, RunResult, RunStatus, Waiting};
use super::step::Run;
use crate::persistence::checkpoint_event;
use crate::signals::{
    self, SIGNAL_ERROR, SIGNAL_TIMEOUT, WaitRequest, iso_from_millis, now_millis,
};
use crate::template::{self, ScopeRef};
use crate::{Context, StateError, Value};

/// What a `wait_for` state's work ended with.
pub(super) enum WaitOutcome {
    /// A signal: its data, the state's output.
    Received(Value),
    /// No signal: the run parks.
    Park(Parked),
}

/// Where a parked run waits.
pub(super) struct Parked {
    channel: String,
    deadline_ms: Option<u64>,
    /// The `machine:`/`foreach` child this run parks for (`None`: its own `wait_for`).
    child: Option<String>,
}

impl Parked {
    /// A parent parked because its child `child` waits: on the child's channel and deadline.
    /// The parent registers no waiter of its own (the signal is the child's); a dispatcher
    /// that resumes the child resumes the parent instead (see [`crate::signals::Dispatcher`]).
    pub(super) fn for_child(child: super::step::WaitingChild) -> Self {
        Self {
            deadline_ms: child
                .waiting
                .deadline
                .as_deref()
                .and_then(signals::millis_from_iso),
            channel: child.waiting.channel,
            child: Some(child.execution_id),
        }
    }
}

/// The channel a `wait_for` template renders to: text (a number or boolean is its text), at
/// most [`MAX_CHANNEL_LEN`](crate::signals::MAX_CHANNEL_LEN) bytes.
fn channel_text(value: Value, state: &str) -> Result<String, StateError> {
    let text = match value {
        Value::String(s) => s,
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        other => {
            return Err(StateError::new(
                crate::error_type::TEMPLATE,
                format!(
                    "`wait_for` of state `{state}` must render to a channel name (text), got {}",
                    crate::expr::type_name(&other)
                ),
            ));
        }
    };
    signals::validate_channel(&text).map_err(|e| {
        StateError::new(SIGNAL_ERROR, format!("`wait_for` of state `{state}`: {e}"))
    })?;
    Ok(text)
}

impl Machine {
    /// The work of the `wait_for` state `index` (see the [module docs](self)).
    pub(super) async fn wait_for_signal(
        &self,
        run: &mut Run,
        index: usize,
        context: &mut Context,
    ) -> Result<WaitOutcome, StateError> {
        let spec = self.inner.spec;
        let state = &spec.states[index];
        let Some(template) = &state.wait_for else {
            return Err(StateError::new(
                SIGNAL_ERROR,
                format!("state `{}` has no `wait_for`", state.name),
            ));
        };
        if self.inner.store.is_none() {
            return Err(StateError::new(
                SIGNAL_ERROR,
                format!(
                    "state `{}` waits for a signal, but machine `{}` runs without checkpoints, so the run could never be resumed: give it a `persistence` section (memory is enough within one process)",
                    state.name, spec.name
                ),
            ));
        }
        let channel = channel_text(
            template::render_with(template, &ScopeRef::for_state(context))?,
            state.name,
        )?;
        let deadline_ms = run.wait_deadline.take().or_else(|| {
            state
                .timeout
                .filter(|t| *t > 0.0 && t.is_finite())
                .map(|t| now_millis().saturating_add((t * 1000.0).min(1e15) as u64))
        });
        let request = WaitRequest {
            execution_id: &run.execution_id,
            channel: &channel,
            machine: spec.name,
            state: state.name,
            step: run.step,
            deadline_ms,
        };
        match self.inner.signals.wait(&request).await? {
            Some(signal) => {
                run.signal_ack = Some(run.step);
                self.output_to_context(state, context, &signal.data)?;
                Ok(WaitOutcome::Received(signal.data))
            }
            None => match deadline_ms {
                Some(deadline) if deadline <= now_millis() => {
                    // Gave up: the registration just made goes, the state fails.
                    if let Err(e) = self.inner.signals.ack(&run.execution_id, run.step).await {
                        tracing::warn!(execution_id = %run.execution_id, error = %e, "could not remove the waiter of a timed-out wait");
                    }
                    Err(StateError::new(
                        SIGNAL_TIMEOUT,
                        format!(
                            "state `{}` waited for a signal on `{channel}` until {} and none came",
                            state.name,
                            iso_from_millis(deadline)
                        ),
                    ))
                }
                _ => Ok(WaitOutcome::Park(Parked {
                    channel,
                    deadline_ms,
                    child: None,
                })),
            },
        }
    }

    /// Parks the run: the `waiting` checkpoint (written whenever there is a store), then the
    /// waiting result. A run parked for a child records the child's channel and deadline in
    /// its checkpoint (what `flatmachine waiting` and `inspect` show) but no waiter.
    pub(super) async fn park(
        &self,
        run: &mut Run,
        index: usize,
        context: Context,
        parked: Parked,
    ) -> Result<RunResult, RunError> {
        let state = &self.inner.spec.states[index];
        let deadline = parked.deadline_ms.map(iso_from_millis);
        if let Some(store) = &self.inner.store {
            self.write_checkpoint_with(
                store,
                run,
                checkpoint_event::WAITING,
                state.name,
                &context,
                None,
                Some((&parked.channel, deadline.as_deref())),
            )
            .await?;
        }
        match &parked.child {
            None => {
                tracing::info!(machine = self.inner.spec.name, execution_id = %run.execution_id, state = state.name, channel = %parked.channel, "waiting for a signal");
            }
            Some(child) => {
                tracing::info!(machine = self.inner.spec.name, execution_id = %run.execution_id, state = state.name, channel = %parked.channel, child = %child, "waiting for a child that waits for a signal");
            }
        }
        Ok(RunResult {
            status: RunStatus::Waiting(Waiting {
                channel: parked.channel,
                state: state.name.to_string(),
                deadline,
                child: parked.child,
            }),
            output: Value::Null,
            execution_id: run.execution_id.clone(),
            final_state: state.name.to_string(),
            steps: run.step,
            total_api_calls: run.api_calls,
            total_cost: run.cost,
            usage: run.usage,
            context,
        })
    }

    /// The signal of the `wait_for` state just left is consumed: its waiter record goes. A
    /// failure is only logged (a dispatcher finds the record stale and removes it).
    pub(super) async fn ack_signal(&self, run: &mut Run) {
        let Some(step) = run.signal_ack.take() else {
            return;
        };
        if let Err(e) = self.inner.signals.ack(&run.execution_id, step).await {
            tracing::warn!(execution_id = %run.execution_id, step, error = %e, "could not acknowledge the signal of a wait_for state");
        }
    }
}
