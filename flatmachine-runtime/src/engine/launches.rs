//! `launch:` children: the outbox, fire-and-forget tasks, joining them.

use super::budget::AgentCallBudget;
use super::invoker::InvokeRequest;
use super::machine::Machine;
use super::step::Run;
use crate::error::error_type;
use crate::events::{EventKind, RunEvents};
use crate::machine::StateSpec;
use crate::persistence::{LaunchIntent, MachineSnapshot, checkpoint_event};
use crate::results::{DEFAULT_PATH, make_uri};
use crate::template::{self, ScopeRef};
use crate::{Context, StateError, Value};
use std::collections::HashSet;

/// Children started with `launch:` by a machine and its children, until joined.
#[derive(Default)]
pub(crate) struct Launches {
    tasks: std::sync::Mutex<Vec<LaunchTask>>,
    /// Launched executions that finished (their result is written): dropped from the
    /// `pending_launches` of later checkpoints.
    done: std::sync::Mutex<HashSet<String>>,
}

pub(super) struct LaunchTask {
    pub(super) execution_id: String,
    pub(super) machine: String,
    pub(super) handle: tokio::task::JoinHandle<Result<Value, StateError>>,
}

impl Launches {
    pub(super) fn is_done(&self, id: &str) -> bool {
        self.done
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(id)
    }

    pub(super) fn mark_done(&self, id: &str) {
        self.done
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id.to_string());
    }

    pub(super) fn push(&self, task: LaunchTask) {
        self.tasks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(task);
    }

    pub(super) fn take(&self) -> Vec<LaunchTask> {
        std::mem::take(&mut *self.tasks.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

/// A child started with `launch:` that finished (see [`Machine::join_launched`]).
#[derive(Debug, Clone, PartialEq)]
pub struct LaunchOutcome {
    /// The child's execution id (its result is at `flatagents://{execution_id}/result`).
    pub execution_id: String,
    /// The child machine's name in the parent's `machines:`.
    pub machine: String,
    /// The child's output, or its error (a panic in the child is an error too).
    pub result: Result<Value, StateError>,
}

/// The execution id of the `position`-th child launched by `state` at `step` of `parent`:
/// a UUID (v4 layout) derived from those four, so a resumed parent finds the launches it
/// recorded before a crash.
pub(crate) fn launch_id(parent: &str, step: u64, state: &str, position: usize) -> String {
    derive_id(&[
        parent.as_bytes(),
        &step.to_le_bytes(),
        state.as_bytes(),
        &(position as u64).to_le_bytes(),
    ])
}

/// A UUID (v4 layout) derived from `parts` (each length-prefixed, so no two lists of parts
/// collide by concatenation): FNV-1a over them, two independent 64-bit halves.
pub(super) fn derive_id(parts: &[&[u8]]) -> String {
    let mut text = Vec::new();
    for part in parts {
        text.extend_from_slice(&(part.len() as u64).to_le_bytes());
        text.extend_from_slice(part);
    }
    let fnv = |offset: u64| {
        text.iter().fold(offset, |h, b| {
            (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
        })
    };
    let hi = fnv(0xcbf2_9ce4_8422_2325);
    let lo = fnv(0x6c62_272e_07bb_0142);
    let mut bytes = [0u8; 16];
    bytes[..8].copy_from_slice(&hi.to_be_bytes());
    bytes[8..].copy_from_slice(&lo.to_be_bytes());
    uuid::Builder::from_random_bytes(bytes)
        .into_uuid()
        .to_string()
}

impl Machine {
    /// Waits for every child started with `launch:` by this machine (and its children, in any
    /// of their runs) that was not joined yet, and returns how each ended, in launch order.
    /// Children launched while waiting are waited for too.
    ///
    /// `run` does not wait for launched children (they run on as tokio tasks); a process that
    /// exits without joining them ends them, and a later `resume` of the parent starts them
    /// again from the outbox (`pending_launches`). Every launched child also writes its
    /// result to the [`result_backend`](Self::result_backend).
    pub async fn join_launched(&self) -> Vec<LaunchOutcome> {
        let mut out = Vec::new();
        loop {
            let tasks = self.inner.launches.take();
            if tasks.is_empty() {
                return out;
            }
            for task in tasks {
                let result = match task.handle.await {
                    Ok(r) => r,
                    Err(e) => Err(StateError::new(
                        error_type::MACHINE,
                        format!("launched machine `{}` did not finish: {e}", task.machine),
                    )),
                };
                out.push(LaunchOutcome {
                    execution_id: task.execution_id,
                    machine: task.machine,
                    result,
                });
            }
        }
    }

    /// The outbox write: this step's `execute` checkpoint again (same key, the context as at
    /// `execute`) with the current `pending_launches`. Written whenever there is a store, also
    /// when `checkpoint_on` leaves `execute` out.
    pub(super) async fn record_launches(
        &self,
        run: &mut Run,
        state: &StateSpec,
    ) -> Result<(), StateError> {
        let Some(store) = &self.inner.store else {
            return Ok(());
        };
        let saved = run.step_context.take();
        let empty = Context::new();
        let written = self
            .write_checkpoint(
                store,
                run,
                checkpoint_event::EXECUTE,
                state.name,
                saved.as_ref().unwrap_or(&empty),
                None,
            )
            .await;
        run.step_context = saved;
        written?;
        Ok(())
    }

    /// `launch:`: start children without waiting for them, through the outbox. For each
    /// child: record the intent in the checkpoint, start it, record it as launched.
    pub(super) async fn launch(
        &self,
        run: &mut Run,
        index: usize,
        context: &mut Context,
    ) -> Result<(), StateError> {
        let state = &self.inner.spec.states[index];
        let input = match &state.launch_input {
            Some(tv) => template::render_with(tv, &ScopeRef::for_state(context))?,
            None => Value::Object(Context::new()),
        };
        let input_map = match &input {
            Value::Object(m) => m.clone(),
            _ => Context::new(),
        };
        // Launch ids are derived from (execution, step, state, position): a state re-entered
        // by `resume` derives the ids of the visit that crashed and finds its launches.
        let (origin, resumed) = match run.launch_origin {
            Some((i, step)) if i == index => (step, true),
            _ => (run.step, false),
        };
        for (i, name) in state.launch.iter().enumerate() {
            let id = launch_id(&run.execution_id, origin, state.name, i);
            let mut resume_child = false;
            if resumed {
                if run.pending_launches.iter().any(|p| p.execution_id == id)
                    || self.inner.launches.is_done(&id)
                {
                    // Recorded before the crash: `resume` already started it again.
                    continue;
                }
                // Started before the crash, then dropped from the outbox when it finished.
                if let Some(store) = &self.inner.store
                    && store.latest_checkpoint_key(&id).await?.is_some()
                {
                    resume_child = true;
                }
            }
            run.pending_launches
                .push(LaunchIntent::new(id.clone(), *name, input_map.clone()));
            self.record_launches(run, state).await?;
            // Before the child starts, so its events follow this one.
            let child_execution_id = id.clone();
            run.emit(|| EventKind::Launched {
                state: state.name,
                machine: name,
                child_execution_id,
            })
            .await;
            self.spawn_launch(
                name,
                id.clone(),
                input.clone(),
                run.execution_id.clone(),
                resume_child,
                run.budget.clone(),
            );
            if let Some(intent) = run
                .pending_launches
                .iter_mut()
                .find(|p| p.execution_id == id)
            {
                intent.launched = true;
            }
            self.record_launches(run, state).await?;
        }
        Ok(())
    }

    /// Starts a launched child as a task: it runs through the invoker, writes its result (or
    /// `{_error, _error_type}`) to `flatagents://{id}/result`, and is joined by
    /// [`join_launched`](Self::join_launched).
    pub(super) fn spawn_launch(
        &self,
        machine: &str,
        execution_id: String,
        input: Value,
        parent: String,
        resume: bool,
        budget: AgentCallBudget,
    ) {
        let Some(name) = self
            .inner
            .spec
            .machines
            .iter()
            .map(|(n, _)| *n)
            .find(|n| *n == machine)
        else {
            tracing::error!(machine, "launch of an unknown child machine");
            return;
        };
        let request = InvokeRequest {
            parent: self.clone(),
            machine: name,
            execution_id: execution_id.clone(),
            parent_execution_id: Some(parent),
            input,
            resume,
            agent_calls: budget,
            hand_offs: Default::default(),
        };
        let invoker = self.inner.invoker.clone();
        let results = self.inner.results.clone();
        let launches = self.inner.launches.clone();
        let id = execution_id.clone();
        // A launched child's events go to its parent's stream, if one listens.
        let events = RunEvents::current();
        let handle = tokio::spawn(RunEvents::task_scope(events, async move {
            let outcome = invoker.invoke(request).await;
            let value = match &outcome {
                Ok(r) => r.output.clone(),
                Err(e) => serde_json::json!({"_error": e.message, "_error_type": e.error_type}),
            };
            if let Err(e) = results.write(&make_uri(&id, DEFAULT_PATH), value).await {
                tracing::error!(execution_id = %id, error = %e, "cannot write the launched machine's result");
            }
            launches.mark_done(&id);
            if let Err(e) = &outcome {
                tracing::error!(machine = name, execution_id = %id, error = %e, "launched machine failed");
            }
            outcome.map(|r| r.output)
        }));
        self.inner.launches.push(LaunchTask {
            execution_id,
            machine: name.to_string(),
            handle,
        });
    }

    /// On resume: restore the outbox, start again every recorded launch whose child has no
    /// result yet, and remember which step's launches the re-entered state must not repeat.
    pub(super) async fn restore_launches(&self, run: &mut Run, snap: &MachineSnapshot) {
        run.pending_launches = snap.pending_launches.clone().unwrap_or_default();
        for intent in &mut run.pending_launches {
            let uri = make_uri(&intent.execution_id, DEFAULT_PATH);
            if matches!(self.inner.results.exists(&uri).await, Ok(true)) {
                self.inner.launches.mark_done(&intent.execution_id);
                continue;
            }
            tracing::info!(machine = %intent.machine, execution_id = %intent.execution_id, "resuming launch");
            self.spawn_launch(
                &intent.machine,
                intent.execution_id.clone(),
                Value::Object(intent.input.clone()),
                run.execution_id.clone(),
                true,
                run.budget.clone(),
            );
            intent.launched = true;
        }
        let event = snap.event.as_deref();
        if matches!(
            event,
            Some(checkpoint_event::EXECUTE) | Some(checkpoint_event::STATE_EXIT)
        ) && let Some((index, state)) = self.inner.spec.state(&snap.current_state)
            && !state.launch.is_empty()
        {
            let origin = self
                .launch_origin(&snap.execution_id, snap.step, state.name)
                .await;
            run.launch_origin = Some((index, origin));
        }
    }

    /// The step at which the visit of `state` that a resume continues began: earlier steps
    /// that entered the same state without leaving it were resumed visits of it too.
    pub(super) async fn launch_origin(&self, execution_id: &str, step: u64, state: &str) -> u64 {
        let Some(store) = &self.inner.store else {
            return step;
        };
        let backend = store.backend();
        let mut origin = step;
        while origin > 1 {
            let k = origin - 1;
            let exit =
                crate::persistence::snapshot_key(execution_id, k, checkpoint_event::STATE_EXIT);
            if !matches!(backend.load(&exit).await, Ok(None)) {
                break;
            }
            let enter =
                crate::persistence::snapshot_key(execution_id, k, checkpoint_event::STATE_ENTER);
            match backend.load(&enter).await {
                Ok(Some(s)) if s.current_state == state => origin = k,
                _ => break,
            }
        }
        origin
    }
}
