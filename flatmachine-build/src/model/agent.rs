//! The agent format (`spec: flatagent`), after `flatagent.d.ts`.

use super::JsonMap;
use indexmap::IndexMap;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// An agent file: `spec: flatagent`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct AgentWrapper {
    /// Always `flatagent`.
    pub spec: String,
    /// Semver of the spec the file was written for.
    pub spec_version: String,
    /// The agent.
    pub data: AgentData,
    /// Free-form metadata.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<JsonMap>,
}

/// The agent itself.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct AgentData {
    /// Agent name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// A profile name, a profile with overrides, or an inline model config; without it, the
    /// `default` profile of the `profiles.yml` that applies (as in the reference).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<ModelRef>,
    /// System prompt (template); without it, "You are a helpful assistant." (the reference's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system: Option<String>,
    /// User prompt (template).
    pub user: String,
    /// Appended to the prompt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instruction_suffix: Option<String>,
    /// Structured output fields.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<IndexMap<String, OutputFieldDef>>,
    /// Tool servers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mcp: Option<McpConfig>,
    /// Tools written inline, in the OpenAI function format (later specs' `tools`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tools: Option<Vec<ToolDefinitionDef>>,
}

/// An inline tool: `{type: function, function: {name, description, parameters}}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ToolDefinitionDef {
    /// Always `function`.
    #[serde(rename = "type", default = "function_type")]
    pub kind: String,
    /// The function the model may call.
    pub function: FunctionDef,
}

fn function_type() -> String {
    "function".into()
}

/// The function of an inline tool.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct FunctionDef {
    /// The name the model calls it by.
    pub name: String,
    /// What it does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// JSON Schema of the arguments object.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parameters: Option<JsonMap>,
}

/// `model:` — a profile name or a config.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum ModelRef {
    /// A profile name from `profiles.yml`.
    Profile(String),
    /// An inline config, or `{profile: ..., <overrides>}`.
    Config(ModelConfig),
}

/// Defines a struct holding the model settings that inline model configs and profiles share
/// (one list, so the two formats cannot drift apart), after the struct's own fields.
macro_rules! model_settings {
    (
        $(#[$meta:meta])*
        pub struct $name:ident { $($own:tt)* }
    ) => {
        $(#[$meta])*
        pub struct $name {
            $($own)*
            /// Provider (`openai`, `anthropic`, `cerebras`, ...; see `flatmachine_providers`).
            #[serde(default, skip_serializing_if = "Option::is_none")]
            pub provider: Option<String>,
            /// Sampling temperature.
            #[serde(default, skip_serializing_if = "Option::is_none")]
            pub temperature: Option<f64>,
            /// Most tokens to generate.
            #[serde(default, skip_serializing_if = "Option::is_none")]
            pub max_tokens: Option<u64>,
            /// Nucleus sampling.
            #[serde(default, skip_serializing_if = "Option::is_none")]
            pub top_p: Option<f64>,
            /// Top-k sampling.
            #[serde(default, skip_serializing_if = "Option::is_none")]
            pub top_k: Option<u64>,
            /// Frequency penalty.
            #[serde(default, skip_serializing_if = "Option::is_none")]
            pub frequency_penalty: Option<f64>,
            /// Presence penalty.
            #[serde(default, skip_serializing_if = "Option::is_none")]
            pub presence_penalty: Option<f64>,
            /// Sampling seed.
            #[serde(default, skip_serializing_if = "Option::is_none")]
            pub seed: Option<i64>,
            /// Provider endpoint.
            #[serde(default, skip_serializing_if = "Option::is_none")]
            pub base_url: Option<String>,
            /// Stream responses (accepted; responses are read whole).
            #[serde(default, skip_serializing_if = "Option::is_none")]
            pub stream: Option<bool>,
            /// Extension (not in FlatAgents 1.0.0): the environment variable holding the API key.
            #[serde(default, skip_serializing_if = "Option::is_none")]
            pub api_key_env: Option<String>,
            /// Extension (LiteLLM's name): price of one prompt token, for cost accounting.
            #[serde(default, skip_serializing_if = "Option::is_none")]
            pub input_cost_per_token: Option<f64>,
            /// Extension (LiteLLM's name): price of one completion token, for cost accounting.
            #[serde(default, skip_serializing_if = "Option::is_none")]
            pub output_cost_per_token: Option<f64>,
            /// Extension: seconds allowed per HTTP call to the provider.
            #[serde(default, skip_serializing_if = "Option::is_none")]
            pub timeout: Option<f64>,
            /// Extension: transport retries of rate-limit and server errors per call.
            #[serde(default, skip_serializing_if = "Option::is_none")]
            pub max_retries: Option<u64>,
            /// Extension: how structured output is asked of an OpenAI-compatible server.
            #[serde(default, skip_serializing_if = "Option::is_none")]
            pub json_mode: Option<JsonModeName>,
            /// Extension: mark the system prompt for the provider's prompt cache (Anthropic
            /// `cache_control`).
            #[serde(default, skip_serializing_if = "Option::is_none")]
            pub prompt_caching: Option<bool>,
        }
    };
}
pub(crate) use model_settings;

model_settings! {
    /// Model settings; with `profile`, the other fields override the profile's.
    #[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
    pub struct ModelConfig {
        /// Profile to start from.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub profile: Option<String>,
        /// Model name (required without `profile`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub name: Option<String>,
    }
}

/// `json_mode`: how structured output is asked of an OpenAI-compatible server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum JsonModeName {
    /// `response_format: {type: json_schema, ...}` with the agent's output schema (default).
    JsonSchema,
    /// `response_format: {type: json_object}`, what the Python reference sends.
    JsonObject,
}

/// One structured output field.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct OutputFieldDef {
    /// Field type.
    #[serde(rename = "type")]
    pub kind: OutputType,
    /// What the field means.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Allowed values.
    #[serde(default, rename = "enum", skip_serializing_if = "Option::is_none")]
    pub enum_values: Option<Vec<String>>,
    /// Whether the field must be present.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub required: Option<bool>,
    /// Item type of a list.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub items: Option<Box<OutputFieldDef>>,
    /// Fields of an object.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub properties: Option<IndexMap<String, OutputFieldDef>>,
}

/// Output field types.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum OutputType {
    /// String.
    Str,
    /// Integer.
    Int,
    /// Float.
    Float,
    /// Boolean.
    Bool,
    /// Any JSON.
    Json,
    /// List.
    List,
    /// Object.
    Object,
}

/// MCP tool servers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct McpConfig {
    /// Servers by name.
    pub servers: IndexMap<String, McpServerDef>,
    /// Which tools to offer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_filter: Option<ToolFilter>,
    /// Prompt describing the tools (template).
    pub tool_prompt: String,
}

/// One MCP server (stdio or HTTP).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct McpServerDef {
    /// Stdio command.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<String>,
    /// Stdio arguments.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub args: Option<Vec<String>>,
    /// Stdio environment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env: Option<IndexMap<String, String>>,
    /// HTTP endpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_url: Option<String>,
    /// HTTP headers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub headers: Option<IndexMap<String, String>>,
    /// Seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<f64>,
}

/// Tool allow/deny lists (`server:tool`, wildcards allowed).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ToolFilter {
    /// Allowed tools.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow: Option<Vec<String>>,
    /// Denied tools.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deny: Option<Vec<String>>,
}
