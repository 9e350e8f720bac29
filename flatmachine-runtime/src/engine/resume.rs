//! Continuing an execution from its latest checkpoint.

use super::machine::Machine;
use super::result::{RunError, RunResult};
use super::step::{Entry, Run};
use crate::Value;
use crate::persistence::{CheckpointWriter, PersistenceError, checkpoint_event};

impl Machine {
    /// Continue an execution from its latest checkpoint, at exactly the point the checkpoint
    /// was written (see `docs/durability.md`):
    ///
    /// * `machine_start` — runs `on_machine_start`, then the initial state;
    /// * `state_enter` — runs `on_state_enter` and the state (same step number);
    /// * `execute` — runs the state's work again (actions are at-least-once here);
    /// * `state_exit` — does **not** run the state again: runs `on_state_exit`, then its
    ///   transitions (or ends the run if it is final);
    /// * `machine_end` — returns the stored output (nothing runs).
    ///
    /// Step numbers continue from the checkpoint's; none is spent twice.
    ///
    /// Launches recorded in the checkpoint (`pending_launches`) whose child has no result yet
    /// are started again with the same execution id (a child with checkpoints of its own is
    /// resumed instead), so every launched child runs once across a crash.
    pub async fn resume(&self, execution_id: &str) -> Result<RunResult, RunError> {
        let spec = self.inner.spec;
        let store = self
            .inner
            .store
            .as_ref()
            .ok_or_else(|| RunError::UnknownExecution(execution_id.to_string()))?;
        let writer = CheckpointWriter::new(execution_id)?;
        let _guard = self.inner.lock.acquire(execution_id).await?;
        store.clean_execution(execution_id).await?;
        let (key, snap) = store
            .load_latest_entry(execution_id)
            .await?
            .ok_or_else(|| RunError::UnknownExecution(execution_id.to_string()))?;
        let corrupt = |reason: String| {
            RunError::Persistence(PersistenceError::Corrupt {
                path: store.backend().file_path(&key),
                key: key.clone(),
                reason,
            })
        };
        let mut run = Run::new(
            writer,
            snap.parent_execution_id.clone(),
            self.hooks_for_resume(execution_id, snap.parent_execution_id.clone())?,
            None,
        );
        run.fencing_token = _guard.fencing_token();
        run.step = snap.step;
        run.api_calls = snap.total_api_calls.unwrap_or(0);
        run.cost = snap.total_cost.unwrap_or(0.0);
        self.restore_launches(&mut run, &snap).await;
        let event = snap.event.as_deref().unwrap_or(checkpoint_event::UNKNOWN);
        if event == checkpoint_event::MACHINE_END {
            // machine_end records the state as `"end"` (reference layout): take the final
            // state's name from the state_exit checkpoint of the same step, else from the
            // machine when it has a single final state.
            let exit_key = crate::persistence::snapshot_key(execution_id, snap.step, "state_exit");
            let final_state = match store.backend().load(&exit_key).await {
                Ok(Some(exit)) if spec.state(&exit.current_state).is_some() => exit.current_state,
                _ => {
                    let mut finals = spec.states.iter().filter(|s| s.is_final);
                    match (finals.next(), finals.next()) {
                        (Some(only), None) => only.name.to_string(),
                        _ => snap.current_state.clone(),
                    }
                }
            };
            return Ok(RunResult {
                output: Value::Object(snap.output.clone().unwrap_or_default()),
                execution_id: run.execution_id,
                final_state,
                steps: snap.step,
                total_api_calls: run.api_calls,
                total_cost: run.cost,
                usage: run.usage,
                context: snap.context,
            });
        }
        let mut context = snap.context;
        if event == checkpoint_event::MACHINE_START {
            // The reference writes `"start"` as the state of `machine_start` whatever the
            // initial state is called; the run always begins at the initial state.
            if run.hooks_active {
                run.hooks
                    .on_machine_start(&mut context)
                    .await
                    .map_err(|e| RunError::Hook {
                        machine: spec.name.to_string(),
                        execution_id: execution_id.to_string(),
                        message: e.to_string(),
                    })?;
            }
            let result = self
                .run_loop(&mut run, context, spec.initial, Entry::Enter)
                .await;
            run.tools.close().await;
            return result;
        }
        let Some((state, _)) = spec.state(&snap.current_state) else {
            return Err(corrupt(format!(
                "it names state `{}`, which machine `{}` does not have",
                snap.current_state, spec.name
            )));
        };
        let entry = match event {
            checkpoint_event::STATE_ENTER => Entry::AfterEnter,
            // After a tool round the state's work continues: the loop finds its record
            // in the context and goes on after the last recorded round.
            checkpoint_event::EXECUTE | checkpoint_event::TOOL_CALL => Entry::AfterExecute,
            checkpoint_event::STATE_EXIT => Entry::AfterExit(
                snap.output
                    .filter(|_| spec.states[state].is_final)
                    .map(Value::Object),
            ),
            other => {
                return Err(corrupt(format!(
                    "unknown checkpoint event `{other}` (expected one of {})",
                    checkpoint_event::ALL.join(", ")
                )));
            }
        };
        let result = self.run_loop(&mut run, context, state, entry).await;
        run.tools.close().await;
        result
    }
}
