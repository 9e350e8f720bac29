//! Running a state's `action:` through the first handler that takes it.

use super::handlers::{ActionCall, ActionFn};
use super::machine::Machine;
use super::step::Run;
use crate::error::error_type;
use crate::hooks::MachineHooks;
use crate::{Context, StateError};
use std::sync::Arc;

impl Machine {
    /// Runs `action:` through the first handler that takes it — a named handler, the hooks'
    /// `on_action`, the fallback — then tells the hooks (`on_action_done`). The handler
    /// changes the context in place, and its changes stay when it fails.
    pub(super) async fn run_action(
        &self,
        run: &mut Run,
        index: usize,
        action: &'static str,
        context: &mut Context,
    ) -> Result<(), StateError> {
        let state = &self.inner.spec.states[index];
        // The run's call, updated in place (no handler keeps the `Arc`: `current()` copies).
        let mut call = match run.action_call.take() {
            Some(call) => call,
            None => Arc::new(ActionCall {
                action,
                machine: self.inner.spec.name,
                state: state.name,
                execution_id: run.execution_id.clone(),
                parent_execution_id: run.parent_execution_id.clone(),
                step: run.step,
            }),
        };
        {
            let c = Arc::make_mut(&mut call);
            c.action = action;
            c.state = state.name;
            c.step = run.step;
        }
        let hooks = run.hooks_active.then(|| run.hooks.clone());
        let handled = match self.state_action(index) {
            // A named handler (the usual case): its future runs in the scope directly.
            Some(f) => ActionCall::scope(call.clone(), f(context, &call))
                .await
                .map(|()| true),
            None => {
                ActionCall::scope(
                    call.clone(),
                    self.dispatch_action(hooks.as_deref(), &call, context),
                )
                .await
            }
        };
        let result = match handled {
            Ok(true) => Ok(()),
            Ok(false) if self.inner.ignore_unhandled_actions => {
                tracing::warn!(action, "unhandled action");
                Ok(())
            }
            Ok(false) => {
                run.unhandled_action = Some(action);
                Err(StateError::new(
                    error_type::UNHANDLED_ACTION,
                    format!(
                        "no handler for action `{action}`: register one with `MachineBuilder::action_mut` or `fallback_action`, or handle it in `MachineHooks::on_action`"
                    ),
                ))
            }
            Err(e) => Err(e),
        };
        if let Some(hooks) = hooks {
            hooks
                .on_action_done(&call, context, result.as_ref().err())
                .await;
        }
        run.action_call = Some(call);
        result
    }

    /// The named handler of the action of state `index` (the map is read once per machine).
    pub(super) fn state_action(&self, index: usize) -> Option<&ActionFn> {
        self.inner
            .state_actions
            .get_or_init(|| {
                self.inner
                    .spec
                    .states
                    .iter()
                    .map(|s| s.action.and_then(|a| self.inner.actions.get(a).cloned()))
                    .collect()
            })
            .get(index)?
            .as_ref()
    }

    /// An action without a named handler: the hooks' `on_action`, then the fallback.
    pub(super) async fn dispatch_action(
        &self,
        hooks: Option<&dyn MachineHooks>,
        call: &ActionCall,
        context: &mut Context,
    ) -> Result<bool, StateError> {
        if let Some(hooks) = hooks
            && hooks.on_action(call.action, context).await?.is_handled()
        {
            return Ok(true);
        }
        if let Some(f) = &self.inner.fallback {
            return Ok(f(call, context).await?.is_handled());
        }
        Ok(false)
    }
}
