//! The execution loop: runs a compiled [`MachineSpec`](crate::machine::MachineSpec) with the reference's order of events.
//!
//! Per step: checkpoint `state_enter` → `on_state_enter` → checkpoint `execute` → run the state
//! (action, launch, machine/foreach, agent, final output — in that order) → checkpoint
//! `state_exit` → `on_state_exit` → stop if final, else pick the transition → `on_transition`
//! (may redirect) → next state. `machine_start` / `machine_end` checkpoints and hooks surround
//! the loop. A state error sets `context.last_error` / `last_error_type` and routes by `on_error`,
//! then by the `on_error` hook, else the run fails with a [`RunError`] naming the state.

mod builder;
mod handlers;
mod run;

pub use builder::{BuildError, MachineBuilder};
pub use handlers::{ActionFn, AgentFn, AgentOutput};
pub use run::{Machine, RunError, RunOptions, RunResult};

/// Default `max_steps` when neither the machine nor the caller sets one (the reference's).
pub const DEFAULT_MAX_STEPS: u64 = 1000;
