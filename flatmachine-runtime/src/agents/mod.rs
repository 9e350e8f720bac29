//! Agents: what runs an `agent:` state.
//!
//! - [`config`]: the compiled description of a flatagent (prompts, resolved model, output).
//! - [`llm`]: the provider boundary ([`LlmBackend`]); built-in providers sit in `providers`
//!   behind the `openai` and `anthropic` features, and [`ScriptedBackend`] works offline.
//! - [`executor`]: the [`AgentExecutor`] trait and [`AgentResult`].

pub mod config;
pub mod executor;
pub mod llm;
pub mod scripted;

pub use config::{AgentConfig, EmbeddedJson, ModelParams, OutputField, OutputKind, Prompt};
pub use executor::{AgentExecutor, AgentResult};
pub use llm::{
    LlmBackend, LlmError, LlmErrorKind, LlmRequest, LlmResponse, Message, ResponseFormat, Role,
    Usage,
};
pub use scripted::ScriptedBackend;
