//! The FlatMachines compiler: loads machine YAML (and the agent, machine and profile files it
//! references), validates it, and generates Rust that runs on `flatmachine-runtime`.

pub mod diagnostic;
pub mod expr;
pub mod loader;
pub mod model;
pub mod source;
pub mod yaml;
