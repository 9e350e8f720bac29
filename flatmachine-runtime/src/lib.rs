//! Runtime for FlatMachines compiled by `flatmachine-build`.
//!
//! The generated code describes a machine (states, compiled conditions, embedded templates);
//! this crate carries all behaviour: the execution loop, templates, hooks, persistence.

pub mod agents;
pub mod cel;
#[cfg(feature = "cli")]
pub mod cli;
pub mod context;
pub mod distributed;
pub mod engine;
pub mod error;
pub mod expr;
#[doc(hidden)]
pub mod generated;
pub mod hooks;
pub mod inspect;
pub mod lock;
pub mod machine;
pub mod persistence;
#[cfg(feature = "redis")]
pub mod redis_backends;
pub mod results;
#[cfg(feature = "sqlite")]
mod sqlite;
pub mod template;
pub mod tools;

pub use context::{Context, Value};
pub use engine::{
    ActionCall, AgentOutput, LaunchOutcome, Machine, MachineBuilder, RunError, RunOptions,
    RunResult,
};
pub use error::{StateError, error_type};
pub use machine::{BackendsSpec, MachineDef, MachineSpec, StateSpec};

#[cfg(feature = "macros")]
pub use flatmachine_macros::flatmachine;

/// Crates generated code refers to (typed agent outputs derive serde traits through these, so
/// applications need no direct dependency on them).
#[doc(hidden)]
pub mod __private {
    pub use serde;
    pub use serde_json;
}
