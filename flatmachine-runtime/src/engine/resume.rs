//! Continuing an execution from its latest checkpoint.

use super::budget::{AgentCallBudget, RunTotals};
use super::machine::Machine;
use super::result::{ResumeOptions, RunError, RunFailure, RunOptions, RunResult, RunStatus};
use super::step::{Entry, Run};
use crate::Value;
use crate::events::{EventKind, RunEvents};
use crate::persistence::{CheckpointWriter, MachineSnapshot, PersistenceError, checkpoint_event};

impl Machine {
    /// Continue an execution from its latest checkpoint, at exactly the point the checkpoint
    /// was written (see `docs/durability.md`):
    ///
    /// * `machine_start` — runs `on_machine_start`, then the initial state;
    /// * `state_enter` — runs `on_state_enter` and the state (same step number);
    /// * `execute` — runs the state's work again (actions are at-least-once here);
    /// * `tool_call` — continues a `tool_loop` state after its last recorded round (tools whose
    ///   results were recorded do not run again; see `docs/tools.md`);
    /// * `state_exit` — does **not** run the state again: runs `on_state_exit`, then its
    ///   transitions (or ends the run if it is final);
    /// * `machine_end` — returns the stored output (nothing runs).
    ///
    /// Step numbers continue from the checkpoint's; none is spent twice.
    ///
    /// * `waiting` — runs the `wait_for` state's work again: the signal delivered to it (or
    ///   pending on its channel) is taken, else the run waits again (same step, same deadline).
    ///   A run parked for a waiting `machine:`/`foreach` child runs that state again: its
    ///   children continue from their checkpoints, and it parks again while one still waits.
    ///
    /// A distributed worker execution marked superseded (its claim on its job was taken back
    /// and the job runs again elsewhere; see [`crate::distributed::superseded`]) is refused
    /// with a [`SupersededError`](crate::distributed::SupersededError).
    ///
    /// Launches recorded in the checkpoint (`pending_launches`) whose child has no result yet
    /// are started again with the same execution id (a child with checkpoints of its own is
    /// resumed instead), so every launched child runs once across a crash. The `machine:` /
    /// `foreach:` children of a state run again are found by their derived ids: a finished
    /// child returns its recorded result without running, an unfinished one is resumed from
    /// its own checkpoints, and only children that never started start.
    ///
    /// An `execution_id` whose checkpoints name one of this machine's child machines is
    /// resumed with that child; one naming a machine this one does not have is
    /// [`RunError::OtherMachine`]. A checkpoint whose fingerprint (`config_hash`) differs from
    /// this build's is refused with [`RunError::FingerprintMismatch`]; see
    /// [`resume_with`](Self::resume_with). To pass limits again, or to get the context and
    /// totals of a failure, use [`execute`](Self::execute) with [`RunOptions::resume_from`].
    pub async fn resume(&self, execution_id: &str) -> Result<RunResult, RunError> {
        self.resume_with(execution_id, ResumeOptions::default())
            .await
    }

    /// [`resume`](Self::resume) with options: `allow_fingerprint_change` continues a
    /// checkpoint written by a build of another shape.
    pub async fn resume_with(
        &self,
        execution_id: &str,
        options: ResumeOptions,
    ) -> Result<RunResult, RunError> {
        let options = RunOptions::new()
            .resume_from(execution_id)
            .allow_fingerprint_change(options.allow_fingerprint_change);
        self.execute(Value::Null, options)
            .await
            .map_err(|f| f.error)
    }

    /// [`resume`](Self::resume) with the run tree's `budget` and a `max_steps` for this run.
    /// An execution recorded by a child machine of this one (its checkpoints name the child)
    /// is resumed with that child machine.
    pub(super) async fn resume_run(
        &self,
        execution_id: &str,
        max_steps: Option<u64>,
        budget: AgentCallBudget,
        allow_fingerprint_change: bool,
    ) -> Result<RunResult, Box<RunFailure>> {
        let early = |e: RunError| RunFailure::early(execution_id, e);
        let spec = self.inner.spec;
        let store = self
            .inner
            .store
            .as_ref()
            .ok_or_else(|| early(RunError::UnknownExecution(execution_id.to_string())))?;
        let writer = CheckpointWriter::new(execution_id).map_err(|e| early(e.into()))?;
        let guard = self
            .inner
            .lock
            .acquire(execution_id)
            .await
            .map_err(|e| early(e.into()))?;
        store
            .clean_execution(execution_id)
            .await
            .map_err(|e| early(e.into()))?;
        // A worker execution whose job was claimed again elsewhere must not run on.
        crate::distributed::superseded::refuse_if_superseded(store, execution_id)
            .await
            .map_err(|e| early(e.into()))?;
        let (key, snap) = store
            .load_latest_entry(execution_id)
            .await
            .map_err(|e| early(e.into()))?
            .ok_or_else(|| early(RunError::UnknownExecution(execution_id.to_string())))?;
        if !snap.machine_name.is_empty() && snap.machine_name != spec.name {
            // A run of another machine: one of this machine's children (resumed with it),
            // or one this machine does not have (said so, with how to resume it).
            drop(guard);
            return match self.find_in_tree(&snap.machine_name) {
                Some(child) => {
                    Box::pin(child.resume_run(
                        execution_id,
                        max_steps,
                        budget,
                        allow_fingerprint_change,
                    ))
                    .await
                }
                None => Err(early(RunError::OtherMachine {
                    machine: spec.name.to_string(),
                    execution_id: execution_id.to_string(),
                    recorded: snap.machine_name.clone(),
                    parent_execution_id: snap.parent_execution_id.clone(),
                })),
            };
        }
        let corrupt = |reason: String| {
            early(RunError::Persistence(PersistenceError::Corrupt {
                path: store.backend().file_path(&key),
                key: key.clone(),
                reason,
            }))
        };
        if !allow_fingerprint_change {
            self.check_fingerprint(&snap).map_err(early)?;
        }
        let hooks = self
            .hooks_for_resume(execution_id, snap.parent_execution_id.clone())
            .map_err(early)?;
        let mut run = Run::new(
            writer,
            snap.parent_execution_id.clone(),
            hooks,
            max_steps,
            budget,
        );
        run.fencing_token = guard.fencing_token();
        run.store_hold = guard
            .store_hold()
            .filter(|h| self.shares_fencing_domain(Some(h.domain())))
            .cloned();
        run.resumed = true;
        run.config_hash = self.inner.config_hash();
        run.forked_from = snap.forked_from.clone();
        run.step = snap.step;
        run.api_calls = snap.total_api_calls.unwrap_or(0);
        run.cost = snap.total_cost.unwrap_or(0.0);
        run.publish_totals();
        // The calls recorded before the crash count against the tree's budget.
        run.budget.record(run.api_calls);
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
                status: RunStatus::Finished,
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
        let (start, entry) = if event == checkpoint_event::MACHINE_START {
            // The reference writes `"start"` as the state of `machine_start` whatever the
            // initial state is called; the run always begins at the initial state.
            (None, Entry::Enter)
        } else {
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
                checkpoint_event::WAITING if spec.states[state].wait_for.is_some() => {
                    run.wait_deadline = snap
                        .wait_deadline
                        .as_deref()
                        .and_then(crate::signals::millis_from_iso);
                    Entry::AfterExecute
                }
                // Parked for a `machine:`/`foreach` child that waits: the state runs again and
                // its children continue from their own checkpoints (finished ones return their
                // results, a child still without its signal parks again, and so does this run).
                checkpoint_event::WAITING if !spec.states[state].machine.is_empty() => {
                    Entry::AfterExecute
                }
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
            (Some(state), entry)
        };
        // The graph its start wrote stays (with its start time); one is queued only for an
        // execution that has none (tracing was off, or it never saved a checkpoint).
        if let Some(store) = self.inner.trace_store() {
            let key = crate::trace::graph_key(&run.execution_id);
            match Box::pin(store.backend().load_text(&key)).await {
                Ok(Some(_)) => {}
                Ok(None) => match crate::trace::graph_text(&run.execution_id, spec) {
                    Ok(text) => run.pending_texts.push(text),
                    Err(e) => {
                        tracing::warn!(execution_id = %run.execution_id, error = %e, "cannot write the machine's graph");
                    }
                },
                Err(e) => {
                    tracing::warn!(execution_id = %run.execution_id, error = %e, "cannot read the machine's graph");
                }
            }
        }
        let live = run.live.clone();
        run.events = RunEvents::for_run(
            &run.execution_id,
            run.parent_execution_id.as_deref(),
            spec.name,
        );
        let events = run.events.clone();
        let ran = RunEvents::scope(
            events,
            RunTotals::scope(live, async {
                run.emit(|| EventKind::MachineStart { resumed: true }).await;
                let state = match start {
                    Some(state) => state,
                    None => {
                        if run.hooks_active
                            && let Err(e) = run.hooks.on_machine_start(&mut context).await
                        {
                            return Err(self.hook_error(&run, e));
                        }
                        spec.initial
                    }
                };
                self.run_loop(&mut run, &mut context, state, entry).await
            }),
        )
        .await;
        run.tools.close().await;
        drop(guard);
        if let Err(error) = &ran {
            self.trace_failure(&mut run, error).await;
        }
        let outcome = ran.map_err(|error| run.failure(error, context));
        run.emit(|| crate::events::machine_finished(&outcome)).await;
        outcome
    }

    /// Refuses a checkpoint written by a build of another shape. A checkpoint without a
    /// fingerprint (the reference 1.0.0, or a build that does not write it) and one holding
    /// a hash of another kind (the reference 4.2.1's SHA-256 of its config text) are not
    /// comparable and load as they are.
    pub(super) fn check_fingerprint(&self, snap: &MachineSnapshot) -> Result<(), RunError> {
        let ours = self.inner.spec.config_hash;
        let Some(theirs) = snap.config_hash.as_deref() else {
            return Ok(());
        };
        if ours.is_empty() || !comparable(ours, theirs) || ours == theirs {
            return Ok(());
        }
        Err(RunError::FingerprintMismatch {
            machine: self.inner.spec.name.to_string(),
            execution_id: snap.execution_id.clone(),
            checkpoint_hash: theirs.to_string(),
            machine_hash: ours.to_string(),
        })
    }
}

/// Whether two fingerprints are of the same kind (`scheme:` prefix), so comparing means
/// something.
fn comparable(ours: &str, theirs: &str) -> bool {
    match (ours.split_once(':'), theirs.split_once(':')) {
        (Some((a, _)), Some((b, _))) => a == b,
        _ => false,
    }
}
