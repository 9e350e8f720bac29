//! The execution loop: runs a compiled [`MachineSpec`](crate::machine::MachineSpec) with the reference's order of events.
//!
//! Per step: checkpoint `state_enter` → `on_state_enter` → checkpoint `execute` → run the state
//! (action, launch, machine/foreach, agent, final output — in that order) → checkpoint
//! `state_exit` → `on_state_exit` → stop if final, else pick the transition → `on_transition`
//! (may redirect) → next state. `machine_start` / `machine_end` checkpoints and hooks surround
//! the loop. A state error sets `context.last_error` / `last_error_type` and routes by `on_error`,
//! then by the `on_error` hook, else the run fails with a [`RunError`] naming the state.

mod actions;
mod budget;
mod builder;
mod checkpointing;
mod children;
mod fork;
mod handlers;
mod handover;
mod invoker;
mod launches;
mod machine;
mod required;
mod result;
mod resume;
mod step;
mod tool_loop;
mod traced;
mod wait;

pub use budget::{AgentCallBudget, RunTotals};
pub use builder::{BuildError, MachineBuilder};
pub(crate) use children::child_id;
pub use fork::{Fork, ForkError, ForkOptions, fork_execution};
pub use handlers::{ActionCall, ActionFn, AgentFn, AgentOutput, FallbackActionFn};
pub use invoker::{InProcessInvoker, InvokeRequest, MachineInvoker};
pub use launches::LaunchOutcome;
pub(crate) use launches::launch_id;
pub use machine::Machine;
pub use required::{HandlerKind, MissingHandler};
pub use result::{ResumeOptions, RunError, RunFailure, RunOptions, RunResult, RunStatus, Waiting};
pub use tool_loop::{DEFAULT_TOOL_CONCURRENCY, LOOP_RECORD_KEY, LoopRecord, NEXT_STATE_KEY};

/// Default `max_steps` when neither the machine nor the caller sets one (the reference's).
pub const DEFAULT_MAX_STEPS: u64 = 1000;

/// Default cap on the children one `foreach` / `machine: [..]` state runs at the same time
/// (`settings.max_concurrency`, `MachineBuilder::max_concurrency`). The reference has no cap.
pub const DEFAULT_MAX_CONCURRENCY: usize = 64;

/// Default cap on the items one `foreach:` may yield (`MachineBuilder::max_foreach_items`): a
/// longer list (say, one a model wrote) fails the state with a `ForeachLimitError` before any
/// child starts. The reference has no cap.
pub const DEFAULT_MAX_FOREACH_ITEMS: usize = 10_000;
