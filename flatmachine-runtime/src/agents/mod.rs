//! Agents: what runs an `agent:` state.
//!
//! - [`config`]: the compiled description of a flatagent (prompts, resolved model, output).
//! - [`endpoints`]: where calls go at run time (builder and environment overrides).
//! - [`llm`]: the provider boundary ([`LlmBackend`]); built-in providers sit in `providers`
//!   behind the `openai` and `anthropic` features, and [`ScriptedBackend`] works offline.
//! - [`executor`]: the [`AgentExecutor`] trait and [`AgentResult`].

pub mod config;
pub mod endpoints;
pub mod execution;
pub mod executor;
pub mod llm;
#[cfg(any(feature = "openai", feature = "anthropic"))]
pub mod providers;
pub mod scripted;
pub mod tool_agent;

pub use config::{AgentConfig, EmbeddedJson, ModelParams, OutputField, OutputKind, Prompt};
pub use endpoints::EndpointOverrides;
pub use execution::ExecutionType;
pub use executor::{AgentCall, AgentExecutor, AgentResult, Billing};
pub use llm::{
    JsonMode, LlmBackend, LlmError, LlmErrorKind, LlmRequest, LlmResponse, Message, ResponseFormat,
    Role, ToolChoice, Usage,
};
#[cfg(any(feature = "openai", feature = "anthropic"))]
pub use providers::*;
pub use scripted::ScriptedBackend;
pub use tool_agent::ToolAgent;

pub mod adapter;
pub mod flatagent;
pub mod output;

pub use adapter::{
    AdapterEnv, AgentAdapter, AgentAdapterRegistry, ClosureExecutor, FlatAgentAdapter,
    MissingBackend, SubprocessAdapter,
};
pub use flatagent::FlatAgentExecutor;

/// The backend flatagents use when the builder is given none: the built-in providers (by each
/// agent's `provider`) when the `openai` or `anthropic` feature is on, else [`MissingBackend`],
/// whose calls fail with a `ConfigurationError` saying how to get one.
pub fn default_backend() -> std::sync::Arc<dyn LlmBackend> {
    #[cfg(any(feature = "openai", feature = "anthropic"))]
    {
        std::sync::Arc::new(providers::ProviderRouter::new())
    }
    #[cfg(not(any(feature = "openai", feature = "anthropic")))]
    {
        std::sync::Arc::new(MissingBackend)
    }
}
