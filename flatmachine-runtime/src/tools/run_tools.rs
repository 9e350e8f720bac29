//! The tools a run holds open: its MCP server connections, started on first use and closed
//! when the run ends.

use super::{McpSpec, Tool};
use crate::StateError;
use std::sync::Arc;

/// Per-run tool state (the MCP sessions of the run's agents, with feature `mcp`).
#[derive(Default)]
pub(crate) struct RunTools {
    #[cfg(feature = "mcp")]
    mcp: super::mcp::McpSessions,
}

impl std::fmt::Debug for RunTools {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunTools").finish_non_exhaustive()
    }
}

impl RunTools {
    /// The tools of `agent`'s MCP servers (each paired with its server's name), after the
    /// section's `tool_filter`. Servers start, and are asked for their tools, once per run.
    #[cfg(feature = "mcp")]
    pub(crate) async fn mcp_tools(
        &mut self,
        agent: &str,
        spec: &'static McpSpec,
    ) -> Result<Vec<(Arc<dyn Tool>, String)>, StateError> {
        self.mcp.tools(agent, spec).await
    }

    /// Without the `mcp` feature an agent with MCP servers cannot run its tool loop.
    #[cfg(not(feature = "mcp"))]
    pub(crate) async fn mcp_tools(
        &mut self,
        agent: &str,
        spec: &'static McpSpec,
    ) -> Result<Vec<(Arc<dyn Tool>, String)>, StateError> {
        let _ = spec;
        Err(StateError::new(
            crate::error::error_type::TOOL,
            format!(
                "agent `{agent}` has MCP servers, but flatmachine-runtime was built without its \
                 `mcp` feature"
            ),
        ))
    }

    /// Shuts every MCP server of the run down (stdio servers: stdin closed, then `SIGTERM`,
    /// then killed, each after a grace period).
    pub(crate) async fn close(&mut self) {
        #[cfg(feature = "mcp")]
        self.mcp.close().await;
    }
}
