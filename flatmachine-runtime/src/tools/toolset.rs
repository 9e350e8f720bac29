//! [`ToolSet`]: the tools one `tool_loop` visit offers, and the checked way to call them.

use super::schema::ArgumentValidator;
use super::{Tool, ToolCall, ToolDefinition, ToolFilter, ToolInvocation, ToolOutput};
use std::sync::Arc;
use std::time::Duration;

/// Where a tool comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ToolSource {
    /// The agent's `tools:` (with its Rust handler).
    Inline,
    /// Registered in Rust on the builder.
    Rust,
    /// Discovered on an MCP server.
    Mcp {
        /// The server's name in the agent's `mcp.servers`.
        server: String,
    },
}

impl ToolSource {
    /// The MCP server, for MCP tools.
    pub fn server(&self) -> Option<&str> {
        match self {
            ToolSource::Mcp { server } => Some(server),
            _ => None,
        }
    }
}

struct Entry {
    tool: Arc<dyn Tool>,
    source: ToolSource,
    validator: ArgumentValidator,
}

/// The tools a model is offered, by name, with each one's compiled argument schema.
///
/// Tools removed by a [`ToolFilter`] are not offered (the model is never told about them) and
/// a call to one anyway is answered "not allowed".
#[derive(Default)]
pub struct ToolSet {
    entries: Vec<Entry>,
    withheld: Vec<String>,
}

impl std::fmt::Debug for ToolSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ToolSet")
            .field("tools", &self.names())
            .field("withheld", &self.withheld)
            .finish()
    }
}

impl ToolSet {
    /// An empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a tool. Two tools with one name are refused (`Err` names where the first came
    /// from), so the model can never reach the wrong one.
    pub fn add(&mut self, tool: Arc<dyn Tool>, source: ToolSource) -> Result<(), String> {
        let name = tool.definition().name.clone();
        if let Some(other) = self
            .entries
            .iter()
            .find(|e| e.tool.definition().name == name)
        {
            return Err(format!(
                "two tools are named `{name}`: {} and {}",
                describe(&other.source),
                describe(&source)
            ));
        }
        let validator = ArgumentValidator::new(&tool.definition().parameters);
        self.entries.push(Entry {
            tool,
            source,
            validator,
        });
        Ok(())
    }

    /// Keeps only the tools `filter` permits; the others are withheld.
    pub fn retain(&mut self, filter: &ToolFilter) {
        let mut withheld = Vec::new();
        self.entries.retain(|e| {
            let name = &e.tool.definition().name;
            let keep = filter.permits(name, e.source.server());
            if !keep {
                withheld.push(name.clone());
            }
            keep
        });
        self.withheld.extend(withheld);
    }

    /// Names of the offered tools, in order.
    pub fn names(&self) -> Vec<&str> {
        self.entries
            .iter()
            .map(|e| e.tool.definition().name.as_str())
            .collect()
    }

    /// Whether no tool is offered.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The offered tools' definitions, in order (what the model is sent).
    pub fn definitions(&self) -> Vec<ToolDefinition> {
        self.entries
            .iter()
            .map(|e| e.tool.definition().clone())
            .collect()
    }

    /// Each offered tool with its source, in order.
    pub fn tools(&self) -> impl Iterator<Item = (&ToolDefinition, &ToolSource)> {
        self.entries
            .iter()
            .map(|e| (e.tool.definition(), &e.source))
    }

    /// Runs one call, never failing: an unknown or withheld tool, arguments that are not a
    /// JSON object or do not fit the schema, a timeout (`timeout`, when set) and the tool's own
    /// error all come back as an error result for the model. The result is cut to
    /// [`MAX_RESULT_BYTES`](super::MAX_RESULT_BYTES).
    pub async fn call(
        &self,
        call: &ToolCall,
        invocation: &ToolInvocation,
        timeout: Option<Duration>,
    ) -> ToolOutput {
        self.call_unbounded(call, invocation, timeout)
            .await
            .bounded()
    }

    async fn call_unbounded(
        &self,
        call: &ToolCall,
        invocation: &ToolInvocation,
        timeout: Option<Duration>,
    ) -> ToolOutput {
        let name = call.name.as_str();
        let Some(entry) = self
            .entries
            .iter()
            .find(|e| e.tool.definition().name == name)
        else {
            if self.withheld.iter().any(|w| w == name) {
                return ToolOutput::error(format!(
                    "Tool `{name}` is not allowed here; available tools: {}",
                    self.available()
                ));
            }
            return ToolOutput::error(format!(
                "Unknown tool `{}`; available tools: {}",
                shorten(name),
                self.available()
            ));
        };
        let arguments = match call.parsed_arguments() {
            Ok(a) => a,
            Err(e) => {
                return ToolOutput::error(format!("Tool `{name}` was not run: {e}"));
            }
        };
        if let Err(e) = entry.validator.check(&arguments) {
            return ToolOutput::error(format!("Tool `{name}` was not run: {e}"));
        }
        let run = entry.tool.call(arguments, invocation);
        let outcome = match timeout.filter(|t| !t.is_zero()) {
            Some(limit) => match tokio::time::timeout(limit, run).await {
                Ok(outcome) => outcome,
                Err(_) => {
                    return ToolOutput::error(format!(
                        "Tool `{name}` timed out after {}s",
                        limit.as_secs_f64()
                    ));
                }
            },
            None => run.await,
        };
        match outcome {
            Ok(output) => output,
            Err(e) => ToolOutput::error(format!("Error: {}", e.message)),
        }
    }

    fn available(&self) -> String {
        let names = self.names();
        if names.is_empty() {
            "(none)".into()
        } else {
            names.join(", ")
        }
    }
}

fn describe(source: &ToolSource) -> String {
    match source {
        ToolSource::Inline => "an inline tool of the agent".into(),
        ToolSource::Rust => "a Rust tool registered on the builder".into(),
        ToolSource::Mcp { server } => format!("a tool of MCP server `{server}`"),
    }
}

/// A name from the model, cut for an error message.
fn shorten(name: &str) -> String {
    if name.chars().count() <= 80 {
        return name.to_string();
    }
    let cut: String = name.chars().take(80).collect();
    format!("{cut}…")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tools::{ToolError, tool_fn};
    use serde_json::json;

    #[derive(serde::Deserialize, schemars::JsonSchema)]
    struct Echo {
        text: String,
    }

    fn set() -> ToolSet {
        let mut set = ToolSet::new();
        set.add(
            Arc::new(tool_fn("echo", "Echoes", |a: Echo| async move {
                Ok::<_, ToolError>(a.text)
            })),
            ToolSource::Rust,
        )
        .unwrap();
        set.add(
            Arc::new(tool_fn("fail", "Fails", |_: Echo| async move {
                Err::<String, _>(ToolError::new("disk full"))
            })),
            ToolSource::Mcp {
                server: "fs".into(),
            },
        )
        .unwrap();
        set
    }

    async fn run(set: &ToolSet, name: &str, args: &str) -> ToolOutput {
        let call = ToolCall {
            id: "c1".into(),
            name: name.into(),
            arguments: args.into(),
        };
        set.call(&call, &ToolInvocation::new("c1", name), None)
            .await
    }

    #[tokio::test]
    async fn calls_are_checked_before_the_tool_runs() {
        let set = set();
        assert_eq!(
            run(&set, "echo", r#"{"text":"hi"}"#).await,
            ToolOutput::text("hi")
        );
        let out = run(&set, "echo", r#"{"text": 1}"#).await;
        assert!(out.is_error && out.content.contains("schema"), "{out:?}");
        let out = run(&set, "echo", r#"{"text": "#).await;
        assert!(
            out.is_error && out.content.contains("not valid JSON"),
            "{out:?}"
        );
        let out = run(&set, "nope", "{}").await;
        assert!(
            out.is_error && out.content.contains("Unknown tool `nope`"),
            "{out:?}"
        );
        assert!(out.content.contains("echo, fail"), "{out:?}");
        let out = run(&set, "fail", r#"{"text":"x"}"#).await;
        assert_eq!(out, ToolOutput::error("Error: disk full"));
    }

    #[tokio::test]
    async fn filtered_tools_are_not_offered_and_not_run() {
        let mut set = set();
        set.retain(&ToolFilter::new(Vec::<String>::new(), ["fs:*"]));
        assert_eq!(set.names(), ["echo"]);
        let out = run(&set, "fail", r#"{"text":"x"}"#).await;
        assert!(
            out.is_error && out.content.contains("not allowed"),
            "{out:?}"
        );
    }

    #[test]
    fn duplicate_names_are_refused() {
        let mut set = set();
        let err = set
            .add(
                Arc::new(tool_fn("echo", "again", |a: Echo| async move {
                    Ok::<_, ToolError>(a.text)
                })),
                ToolSource::Inline,
            )
            .unwrap_err();
        assert!(err.contains("two tools are named `echo`"), "{err}");
        let schema = set.definitions()[0].parameters.clone();
        assert_eq!(schema["required"], json!(["text"]));
    }
}
