//! [`CompositeHooks`]: several hooks called in order.

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;

use super::{
    ActionOutcome, HookError, MachineHooks, PendingToolCall, ToolLoopControl, ToolResultRecord,
};
use crate::engine::ActionCall;
use crate::{Context, StateError, Value};

/// An ordered list of hooks, called one after the other (the reference's `CompositeHooks`).
///
/// * `on_machine_start`, `on_state_enter`: each hook sees the context as left by the previous one.
/// * `on_machine_end`, `on_state_exit`: the output passes through each hook in turn.
/// * `on_transition`: each hook gets the target returned by the previous one (redirects chain);
///   the last answer wins.
/// * `on_error`: hooks are asked in order; the first `Some(state)` is returned and the later
///   hooks are not called.
/// * `on_action`: **every** hook is called in order, each seeing the context left by the previous
///   one (as the reference, which chains `on_action` through all hooks); the outcome is
///   [`ActionOutcome::Handled`] if any hook handled the action.
///
/// * `on_tool_calls`, `on_tool_result`: every hook is called in order, each seeing the calls
///   (or result) and context as left by the previous one; the loop is aborted if any hook
///   asks for it.
///
/// The first hook that fails stops the chain and its error is returned.
#[derive(Clone, Default)]
pub struct CompositeHooks {
    hooks: Vec<Arc<dyn MachineHooks>>,
}

impl fmt::Debug for CompositeHooks {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CompositeHooks")
            .field("len", &self.hooks.len())
            .finish()
    }
}

impl CompositeHooks {
    /// A composite of `hooks`, called in the given order.
    pub fn new(hooks: impl IntoIterator<Item = Arc<dyn MachineHooks>>) -> Self {
        Self {
            hooks: hooks.into_iter().collect(),
        }
    }

    /// Appends `hook` (called after the ones already there); builder style.
    pub fn with(mut self, hook: Arc<dyn MachineHooks>) -> Self {
        self.hooks.push(hook);
        self
    }

    /// Appends `hook` (called after the ones already there).
    pub fn push(&mut self, hook: Arc<dyn MachineHooks>) {
        self.hooks.push(hook);
    }

    /// The hooks, in call order.
    pub fn hooks(&self) -> &[Arc<dyn MachineHooks>] {
        &self.hooks
    }

    /// Number of hooks.
    pub fn len(&self) -> usize {
        self.hooks.len()
    }

    /// `true` when there are no hooks (every method then passes through).
    pub fn is_empty(&self) -> bool {
        self.hooks.is_empty()
    }
}

#[async_trait]
impl MachineHooks for CompositeHooks {
    async fn on_machine_start(&self, context: &mut Context) -> Result<(), HookError> {
        for hook in &self.hooks {
            hook.on_machine_start(context).await?;
        }
        Ok(())
    }

    async fn on_machine_end(&self, context: &Context, output: &mut Value) -> Result<(), HookError> {
        for hook in &self.hooks {
            hook.on_machine_end(context, output).await?;
        }
        Ok(())
    }

    async fn on_state_enter(&self, state: &str, context: &mut Context) -> Result<(), HookError> {
        for hook in &self.hooks {
            hook.on_state_enter(state, context).await?;
        }
        Ok(())
    }

    async fn on_state_exit(
        &self,
        state: &str,
        context: &mut Context,
        output: &mut Option<Value>,
    ) -> Result<(), HookError> {
        for hook in &self.hooks {
            hook.on_state_exit(state, context, output).await?;
        }
        Ok(())
    }

    async fn on_transition(
        &self,
        from: &str,
        to: &str,
        context: &mut Context,
    ) -> Result<String, HookError> {
        let mut target = to.to_string();
        for hook in &self.hooks {
            target = hook.on_transition(from, &target, context).await?;
        }
        Ok(target)
    }

    async fn on_error(
        &self,
        state: &str,
        error: &StateError,
        context: &mut Context,
    ) -> Result<Option<String>, HookError> {
        for hook in &self.hooks {
            if let Some(recovery) = hook.on_error(state, error, context).await? {
                return Ok(Some(recovery));
            }
        }
        Ok(None)
    }

    async fn on_action_done(
        &self,
        call: &ActionCall,
        context: &Context,
        error: Option<&StateError>,
    ) {
        for hook in &self.hooks {
            hook.on_action_done(call, context, error).await;
        }
    }

    async fn on_tool_calls(
        &self,
        state: &str,
        calls: &mut [PendingToolCall],
        context: &mut Context,
    ) -> Result<ToolLoopControl, HookError> {
        let mut control = ToolLoopControl::Continue;
        for hook in &self.hooks {
            if hook.on_tool_calls(state, calls, context).await? == ToolLoopControl::Abort {
                control = ToolLoopControl::Abort;
            }
        }
        Ok(control)
    }

    async fn on_tool_result(
        &self,
        state: &str,
        result: &mut ToolResultRecord,
        context: &mut Context,
    ) -> Result<ToolLoopControl, HookError> {
        let mut control = ToolLoopControl::Continue;
        for hook in &self.hooks {
            if hook.on_tool_result(state, result, context).await? == ToolLoopControl::Abort {
                control = ToolLoopControl::Abort;
            }
        }
        Ok(control)
    }

    async fn on_action(
        &self,
        action: &str,
        context: &mut Context,
    ) -> Result<ActionOutcome, HookError> {
        let mut outcome = ActionOutcome::NotHandled;
        for hook in &self.hooks {
            if hook.on_action(action, context).await?.is_handled() {
                outcome = ActionOutcome::Handled;
            }
        }
        Ok(outcome)
    }
}
