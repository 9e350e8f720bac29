//! Serde types for the FlatMachines 1.0.0 formats: machines, agents and model profiles.
//!
//! Field names follow `flatmachine.d.ts`, `flatagent.d.ts` and `profiles.d.ts` exactly. Unknown
//! fields are accepted (the reference tolerates them); the loader reports them as warnings.
//! A JSON Schema derived from these types (schemars) is what `flatmachine schema` prints.

pub mod agent;
pub mod machine;
pub mod profiles;

pub use agent::*;
pub use machine::*;
pub use profiles::*;

/// The spec version these types describe.
pub const SPEC_VERSION: &str = "1.0.0";

/// A JSON object (string keys, any values), in file order.
pub type JsonMap = serde_json::Map<String, serde_json::Value>;

/// JSON Schema of the machine format (`spec: flatmachine`).
pub fn machine_schema() -> serde_json::Value {
    serde_json::to_value(schemars::schema_for!(MachineWrapper)).unwrap_or_default()
}

/// JSON Schema of the agent format (`spec: flatagent`).
pub fn agent_schema() -> serde_json::Value {
    serde_json::to_value(schemars::schema_for!(AgentWrapper)).unwrap_or_default()
}

/// JSON Schema of the profiles format (`spec: flatprofiles`).
pub fn profiles_schema() -> serde_json::Value {
    serde_json::to_value(schemars::schema_for!(ProfilesWrapper)).unwrap_or_default()
}
