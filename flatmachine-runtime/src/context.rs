//! The machine context: a JSON object threaded through every state.

/// A JSON value, as used for context fields, inputs and outputs.
pub type Value = serde_json::Value;

/// The machine context: always a JSON object (field name → value).
pub type Context = serde_json::Map<String, Value>;
