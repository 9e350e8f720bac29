//! Runtime for FlatMachines compiled by `flatmachine-build`.
//!
//! The generated code describes a machine (states, compiled conditions, embedded templates);
//! this crate carries all behaviour: the execution loop, templates, hooks, persistence.

pub mod agents;
pub mod cel;
#[cfg(feature = "cli")]
pub mod cli;
#[cfg(feature = "cli")]
mod cli_signals;
#[cfg(feature = "cli")]
mod cli_ui;
#[cfg(feature = "console")]
pub mod console;
pub mod context;
pub mod cost;
pub mod distributed;
pub mod engine;
pub mod error;
pub mod events;
pub mod expr;
#[doc(hidden)]
pub mod generated;
pub mod hooks;
pub mod inspect;
pub mod lock;
#[cfg(feature = "cli")]
pub mod logging;
pub mod machine;
#[cfg(feature = "otel")]
pub mod otel;
pub mod persistence;
pub mod process;
#[cfg(feature = "cli")]
pub mod progress;
#[cfg(feature = "redis")]
pub mod redis_backends;
pub mod results;
pub mod run_tree;
pub mod signals;
#[cfg(feature = "sqlite")]
mod sqlite;
pub mod template;
pub mod tools;
pub mod trace;
pub mod typed;

pub use context::{Context, Value};
pub use engine::{
    ActionCall, AgentCallBudget, AgentOutput, LaunchOutcome, Machine, MachineBuilder,
    ResumeOptions, RunError, RunFailure, RunOptions, RunResult, RunStatus, RunTotals, Waiting,
};
pub use error::{StateError, error_type};
pub use machine::{BackendsSpec, MachineDef, MachineSpec, StateSpec};
pub use typed::{TypedMachine, TypedMachineDef, TypedRun, TypedRunError};

#[cfg(feature = "macros")]
pub use flatmachine_macros::{flatagent, flatmachine};

/// Crates generated code refers to (typed agent outputs derive serde traits through these, so
/// applications need no direct dependency on them).
#[doc(hidden)]
pub mod __private {
    pub use serde;
    pub use serde_json;
}
