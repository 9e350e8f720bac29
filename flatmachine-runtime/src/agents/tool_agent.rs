//! [`ToolAgent`]: an agent that can drive a `tool_loop` state — opening messages once, then
//! one model turn at a time over the growing conversation.

use super::executor::AgentResult;
use super::flatagent::{FlatAgentExecutor, cost, render};
use super::llm::{Message, ToolChoice};
use super::output;
use crate::error::error_type;
use crate::tools::{InlineToolSpec, McpSpec, ToolDefinition};
use crate::{StateError, Value};
use async_trait::async_trait;

/// An agent the engine can run a tool loop with. Flatagents implement it; other executors
/// return `None` from [`AgentExecutor::tool_agent`](super::AgentExecutor::tool_agent) and a
/// `tool_loop` state calling them fails with an `AgentError`.
#[async_trait]
pub trait ToolAgent: Send + Sync {
    /// The agent's name (for errors).
    fn name(&self) -> &str;

    /// The agent's inline `tools:`.
    fn inline_tools(&self) -> &'static [InlineToolSpec] {
        &[]
    }

    /// The agent's `mcp:` section.
    fn mcp(&self) -> Option<&'static McpSpec> {
        None
    }

    /// The conversation's opening messages (system, user) for the `input` of `state`, rendered
    /// once per visit. `tools` is the list bound as `tools` in the prompts (each offered tool as
    /// `{name, description, parameters, server}`); the MCP section's `tool_prompt`, rendered
    /// with it, is bound as `tools_prompt`.
    fn opening_messages(
        &self,
        state: &str,
        input: &Value,
        tools: &Value,
    ) -> Result<Vec<Message>, StateError>;

    /// One model call over `messages` made by `state`, offering `tools`. The result carries
    /// the reply text, the tool calls asked for, the finish reason, usage and cost (one API
    /// call). The engine draws every turn from the run tree's `max_agent_calls` budget before
    /// calling this.
    async fn turn(
        &self,
        state: &str,
        messages: &[Message],
        tools: &[ToolDefinition],
        choice: ToolChoice,
    ) -> Result<AgentResult, StateError>;

    /// The structured output read from the final answer, when the agent has an `output`
    /// schema (`None`: free text).
    fn final_output(&self, content: &str) -> Result<Option<Value>, StateError> {
        let _ = content;
        Ok(None)
    }
}

#[async_trait]
impl ToolAgent for FlatAgentExecutor {
    fn name(&self) -> &str {
        self.config().name
    }

    fn inline_tools(&self) -> &'static [InlineToolSpec] {
        self.config().tools
    }

    fn mcp(&self) -> Option<&'static McpSpec> {
        self.config().mcp
    }

    fn opening_messages(
        &self,
        state: &str,
        input: &Value,
        tools: &Value,
    ) -> Result<Vec<Message>, StateError> {
        let c = self.config();
        let tools_prompt = match c.mcp.and_then(|m| m.tool_prompt) {
            Some(prompt) => {
                let vars = minijinja::context! { tools => crate::template::json_to_mj(tools) };
                render(c, "mcp.tool_prompt", prompt, &vars)?
            }
            None => String::new(),
        };
        Ok(self
            .request_with_tools(Some(state), input, tools, &tools_prompt)?
            .messages)
    }

    async fn turn(
        &self,
        state: &str,
        messages: &[Message],
        tools: &[ToolDefinition],
        choice: ToolChoice,
    ) -> Result<AgentResult, StateError> {
        let mut request = self.model_request(Some(state), messages.to_vec());
        request.tools = tools.to_vec();
        request.tool_choice = choice;
        let name = self.config().name;
        let reply = crate::trace::observe(&request, self.backend().complete(&request))
            .await
            .map_err(|e| {
                let mut err = StateError::from(e);
                err.message = format!("agent `{name}`: {}", err.message);
                err
            })?;
        let cost = cost(&self.config().model, reply.usage);
        Ok(AgentResult {
            output: None,
            content: Some(reply.content),
            raw: reply.model.map(|m| serde_json::json!({ "model": m })),
            usage: reply.usage,
            api_calls: 1,
            cost,
            metadata: None,
            tool_calls: reply.tool_calls,
            finish_reason: reply.finish_reason,
        })
    }

    fn final_output(&self, content: &str) -> Result<Option<Value>, StateError> {
        let c = self.config();
        match c.output {
            Some(fields) => output::parse_output(c.name, fields, content).map(Some),
            None => Ok(None),
        }
    }
}

/// The error of a `tool_loop` state whose agent cannot drive one.
pub(crate) fn not_a_tool_agent(agent: &str, state: &str) -> StateError {
    StateError::new(
        error_type::AGENT,
        format!(
            "state `{state}` runs a tool loop, but agent `{agent}` cannot: only flatagents (and \
             executors whose `AgentExecutor::tool_agent` returns one) can call tools"
        ),
    )
}
