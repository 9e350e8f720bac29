//! MCP servers as tool sources (cargo feature `mcp`), through the official Rust SDK, `rmcp`.
//!
//! A flatagent's `mcp.servers` are started the first time a `tool_loop` state of the run
//! calls the agent, asked once for their tools (`tools/list`), and shut down when the run
//! ends. Each discovered tool that passes the section's `tool_filter` is offered to the model
//! under its own name; [`McpTool`] forwards a call (`tools/call`) and turns the reply into the
//! tool result.
//!
//! - **stdio** (`command`, `args`, `env`): the program is looked up on this process's `PATH`
//!   and started with **only** the variables listed in `env` (not this process's
//!   environment: list `PATH`, `HOME`, keys, ... where the server needs them). `${VAR}` in
//!   `command`, `args`, `env` values, `server_url` and `headers` is replaced by this process's variable `VAR` (empty
//!   when unset), so keys stay out of the YAML. It runs in a process group of its own; its
//!   stderr is read in bounded chunks and only the last 4 KiB are kept (for error messages);
//!   a message on its stdout is at most 16 MiB (`rmcp`'s line cap: a longer one is dropped).
//!   Shutdown closes its stdin, then sends `SIGTERM`, then kills it, and then kills what is
//!   left of its process group (anything it started in the background), as when the run
//!   drops the server without a shutdown.
//! - **streamable HTTP** (`server_url`, `headers`): `rmcp`'s client over reqwest.
//!
//! Failures name the server: one that will not start or does not finish the handshake within
//! its `timeout` (default [`DEFAULT_TIMEOUT`]) fails the state with a `ToolError`; a call to a
//! server that died, hangs past the timeout or answers garbage comes back to the model as an
//! error result.

use super::{
    McpServerSpec, McpSpec, Tool, ToolDefinition, ToolError, ToolFilter, ToolInvocation, ToolOutput,
};
use crate::error::error_type;
use crate::{StateError, Value};
use async_trait::async_trait;
use rmcp::ServiceExt;
use rmcp::model::{CallToolRequestParams, CallToolResult, ContentBlock};
use rmcp::service::{Peer, RoleClient, RunningService, ServiceError};
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use rmcp::transport::{StreamableHttpClientTransport, TokioChildProcess};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Seconds allowed for a server's handshake and for each request when its `timeout` is unset.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
/// How much of a stdio server's stderr is kept for error messages.
const STDERR_TAIL: usize = 4096;
/// Most tools taken from one server (a server listing more is cut, with a warning).
const MAX_TOOLS_PER_SERVER: usize = 512;

/// Tools discovered on MCP servers, each with the name of the server offering it.
pub(crate) type ServerTools = Vec<(Arc<dyn Tool>, String)>;

/// The MCP sessions of one run, by agent.
#[derive(Default)]
pub(crate) struct McpSessions {
    tools: HashMap<String, ServerTools>,
    servers: Vec<Arc<McpServer>>,
}

impl McpSessions {
    /// The tools of `agent`'s servers (started on the first call).
    pub(crate) async fn tools(
        &mut self,
        agent: &str,
        spec: &'static McpSpec,
    ) -> Result<ServerTools, StateError> {
        if let Some(tools) = self.tools.get(agent) {
            return Ok(tools.clone());
        }
        let filter = ToolFilter::new(spec.allow.iter().copied(), spec.deny.iter().copied());
        let mut tools: ServerTools = Vec::new();
        for server_spec in spec.servers {
            let server = Arc::new(McpServer::start(server_spec).await?);
            self.servers.push(server.clone());
            for tool in server.list_tools().await? {
                if filter.permits(&tool.name, Some(server_spec.name)) {
                    tools.push((
                        Arc::new(McpTool {
                            server: server.clone(),
                            definition: tool,
                        }),
                        server_spec.name.to_string(),
                    ));
                }
            }
        }
        self.tools.insert(agent.to_string(), tools.clone());
        Ok(tools)
    }

    /// Shuts every server down.
    pub(crate) async fn close(&mut self) {
        self.tools.clear();
        let servers = std::mem::take(&mut self.servers);
        futures::future::join_all(servers.iter().map(|s| s.shutdown())).await;
    }
}

/// One running MCP server.
pub struct McpServer {
    name: String,
    timeout: Duration,
    service: tokio::sync::Mutex<Option<RunningService<RoleClient, ()>>>,
    peer: Peer<RoleClient>,
    stderr: Arc<Mutex<String>>,
    secrets: Vec<String>,
    /// A stdio server's process group, killed at shutdown (and when dropped).
    group: Option<crate::process::GroupKiller>,
}

impl std::fmt::Debug for McpServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("McpServer")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

fn tool_error(message: String) -> StateError {
    StateError::new(error_type::TOOL, message)
}

/// `${VAR}` replaced by this process's `VAR` (empty when unset); other `$` kept.
pub fn expand_env(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        match after.find('}') {
            Some(end) => {
                let name = &after[..end];
                let valid =
                    !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
                if valid {
                    out.push_str(&std::env::var(name).unwrap_or_default());
                } else {
                    out.push_str(&rest[start..start + 3 + end]);
                }
                rest = &after[end + 1..];
            }
            None => {
                out.push_str(&rest[start..]);
                rest = "";
            }
        }
    }
    out.push_str(rest);
    out
}

/// The values `${VAR}` references in `text` stand for (for scrubbing them from messages).
fn substituted(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find("${") {
        let after = &rest[start + 2..];
        let Some(end) = after.find('}') else { break };
        if let Ok(value) = std::env::var(&after[..end]) {
            out.push(value);
        }
        rest = &after[end + 1..];
    }
    out
}

/// `text` with every secret (a value of at least 4 bytes taken from the environment) replaced.
fn scrub(secrets: &[String], text: String) -> String {
    secrets
        .iter()
        .filter(|s| s.len() >= 4)
        .fold(text, |t, secret| t.replace(secret.as_str(), "[redacted]"))
}

/// `command` as a path: as given when it has a `/`, else the first executable of that name on
/// this process's `PATH`.
fn find_program(command: &str) -> Option<PathBuf> {
    if command.contains('/') {
        return Some(PathBuf::from(command));
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(command))
        .find(|p| is_executable(p))
}

fn is_executable(path: &Path) -> bool {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        path.metadata()
            .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    }
    #[cfg(not(unix))]
    {
        path.is_file()
    }
}

impl McpServer {
    /// Starts (or connects to) the server and completes the MCP handshake.
    pub async fn start(spec: &McpServerSpec) -> Result<Self, StateError> {
        let timeout = spec
            .timeout
            .filter(|t| t.is_finite() && *t > 0.0)
            .and_then(|t| Duration::try_from_secs_f64(t).ok())
            .unwrap_or(DEFAULT_TIMEOUT);
        let name = spec.name;
        // What `${VAR}` brought in from this process's environment never appears in an
        // error message (a server may echo its key, a URL may carry a token).
        let mut secrets: Vec<String> = Vec::new();
        for text in spec
            .args
            .iter()
            .chain(spec.env.iter().map(|(_, v)| v))
            .chain(spec.headers.iter().map(|(_, v)| v))
            .chain(spec.server_url.iter())
        {
            secrets.extend(substituted(text));
        }
        let tool_error = |message: String| tool_error(scrub(&secrets, message));
        let stderr = Arc::new(Mutex::new(String::new()));
        let mut stderr_reader = None;
        let mut group = None;
        let handshake = match (spec.command, spec.server_url) {
            (Some(command), _) => {
                let command = expand_env(command);
                let program = find_program(&command).ok_or_else(|| {
                    tool_error(format!(
                        "MCP server `{name}` could not start: `{command}` is not an executable on PATH"
                    ))
                })?;
                let mut cmd = tokio::process::Command::new(&program);
                cmd.args(spec.args.iter().map(|a| expand_env(a)))
                    .env_clear()
                    .envs(spec.env.iter().map(|(k, v)| (*k, expand_env(v))))
                    .kill_on_drop(true);
                // Its own process group, so what it starts goes with it at shutdown.
                #[cfg(unix)]
                cmd.process_group(0);
                let (transport, child_stderr) = TokioChildProcess::builder(cmd)
                    .stderr(std::process::Stdio::piped())
                    .spawn()
                    .map_err(|e| {
                        tool_error(format!(
                            "MCP server `{name}` could not start `{}`: {e}",
                            program.display()
                        ))
                    })?;
                group = Some(crate::process::GroupKiller::of_leader(transport.id()));
                if let Some(child_stderr) = child_stderr {
                    stderr_reader =
                        Some(keep_stderr(name.to_string(), child_stderr, stderr.clone()));
                }
                tokio::time::timeout(timeout, ().serve(transport))
                    .await
                    .map(|r| r.map_err(|e| e.to_string()))
            }
            (None, Some(url)) => {
                install_crypto_provider();
                let mut headers = HashMap::new();
                for (k, v) in spec.headers {
                    let header = reqwest::header::HeaderName::from_bytes(k.as_bytes()).ok();
                    let value = reqwest::header::HeaderValue::from_str(&expand_env(v)).ok();
                    match (header, value) {
                        (Some(h), Some(mut v)) => {
                            v.set_sensitive(true);
                            headers.insert(h, v);
                        }
                        _ => {
                            return Err(tool_error(format!(
                                "MCP server `{name}`: header `{k}` is not a valid HTTP header"
                            )));
                        }
                    }
                }
                let config = StreamableHttpClientTransportConfig::with_uri(expand_env(url))
                    .custom_headers(headers)
                    .control_request_timeout(timeout);
                let transport = StreamableHttpClientTransport::from_config(config);
                tokio::time::timeout(timeout, ().serve(transport))
                    .await
                    .map(|r| r.map_err(|e| e.to_string()))
            }
            (None, None) => {
                return Err(tool_error(format!(
                    "MCP server `{name}` has neither `command` nor `server_url`"
                )));
            }
        };
        if !matches!(handshake, Ok(Ok(_)))
            && let Some(reader) = stderr_reader
        {
            // A server that exited has closed its stderr: read what it said before naming it.
            let _ = tokio::time::timeout(Duration::from_secs(1), reader).await;
        }
        let service = match handshake {
            Ok(Ok(service)) => service,
            Ok(Err(e)) => {
                return Err(tool_error(format!(
                    "MCP server `{name}` failed during the handshake: {e}{}",
                    stderr_note(&stderr)
                )));
            }
            Err(_) => {
                return Err(tool_error(format!(
                    "MCP server `{name}` did not complete the handshake within {}s{}",
                    timeout.as_secs_f64(),
                    stderr_note(&stderr)
                )));
            }
        };
        let peer = service.peer().clone();
        Ok(Self {
            name: name.to_string(),
            timeout,
            service: tokio::sync::Mutex::new(Some(service)),
            peer,
            stderr,
            secrets,
            group,
        })
    }

    /// The server's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The server's tools (`tools/list`, every page), as definitions.
    pub async fn list_tools(&self) -> Result<Vec<ToolDefinition>, StateError> {
        let name = &self.name;
        let listed = tokio::time::timeout(self.timeout, self.peer.list_all_tools())
            .await
            .map_err(|_| {
                tool_error(format!(
                    "MCP server `{name}` did not list its tools within {}s",
                    self.timeout.as_secs_f64()
                ))
            })?
            .map_err(|e| {
                tool_error(scrub(
                    &self.secrets,
                    format!(
                        "MCP server `{name}` could not list its tools: {}{}",
                        describe(&e),
                        stderr_note(&self.stderr)
                    ),
                ))
            })?;
        if listed.len() > MAX_TOOLS_PER_SERVER {
            tracing::warn!(server = %name, listed = listed.len(), "MCP server lists more tools than are kept");
        }
        Ok(listed
            .into_iter()
            .take(MAX_TOOLS_PER_SERVER)
            .map(|t| {
                ToolDefinition::new(
                    t.name.to_string(),
                    t.description.map(|d| d.to_string()).unwrap_or_default(),
                    Value::Object((*t.input_schema).clone()),
                )
            })
            .collect())
    }

    /// Calls one tool; any failure is a [`ToolError`] naming the server.
    pub async fn call(&self, tool: &str, arguments: Value) -> Result<ToolOutput, ToolError> {
        let name = &self.name;
        let arguments = match arguments {
            Value::Object(map) => map,
            _ => serde_json::Map::new(),
        };
        let params = CallToolRequestParams::new(tool.to_string()).with_arguments(arguments);
        let result = tokio::time::timeout(self.timeout, self.peer.call_tool(params))
            .await
            .map_err(|_| {
                ToolError::new(format!(
                    "MCP server `{name}` did not answer `{tool}` within {}s",
                    self.timeout.as_secs_f64()
                ))
            })?
            .map_err(|e| {
                ToolError::new(scrub(
                    &self.secrets,
                    format!(
                        "MCP server `{name}` failed on `{tool}`: {}{}",
                        describe(&e),
                        stderr_note(&self.stderr)
                    ),
                ))
            })?;
        Ok(result_to_output(result))
    }

    /// Closes the session (and ends a stdio server's process).
    pub async fn shutdown(&self) {
        if let Some(mut service) = self.service.lock().await.take() {
            match service.close_with_timeout(Duration::from_secs(10)).await {
                Ok(Some(_)) => tracing::debug!(server = %self.name, "MCP server shut down"),
                Ok(None) => {
                    tracing::warn!(server = %self.name, "MCP server did not shut down in time")
                }
                Err(e) => {
                    tracing::warn!(server = %self.name, error = %e, "MCP server shutdown failed")
                }
            }
        }
        if let Some(group) = &self.group {
            group.kill();
        }
    }
}

/// A readable reason for a failed request.
fn describe(e: &ServiceError) -> String {
    match e {
        ServiceError::TransportClosed => "the connection closed (the server exited?)".into(),
        ServiceError::McpError(err) => format!("error {}: {}", err.code.0, err.message),
        other => other.to_string(),
    }
}

fn stderr_note(stderr: &Mutex<String>) -> String {
    let tail = stderr.lock().unwrap_or_else(|e| e.into_inner());
    let tail = tail.trim();
    if tail.is_empty() {
        String::new()
    } else {
        format!("; its stderr ends: {tail}")
    }
}

/// Reads a stdio server's stderr into a bounded tail (and the debug log), in chunks: a server
/// printing without end, or one endless line, cannot grow this process's memory.
fn keep_stderr(
    server: String,
    stderr: impl tokio::io::AsyncRead + Unpin + Send + 'static,
    tail: Arc<Mutex<String>>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(crate::process::read_tail_into(
        stderr,
        STDERR_TAIL,
        move |chunk| {
            let text = String::from_utf8_lossy(chunk);
            tracing::debug!(server = %server, "mcp stderr: {text}");
            let mut t = tail.lock().unwrap_or_else(|e| e.into_inner());
            t.push_str(&text);
            if t.len() > STDERR_TAIL {
                let mut cut = t.len() - STDERR_TAIL;
                while !t.is_char_boundary(cut) {
                    cut += 1;
                }
                t.drain(..cut);
            }
        },
    ))
}

/// The tool result for the model: text blocks joined by newlines, other blocks as JSON;
/// `structuredContent` when there is no content.
fn result_to_output(result: CallToolResult) -> ToolOutput {
    let mut parts: Vec<String> = Vec::new();
    for block in &result.content {
        match block {
            ContentBlock::Text(t) => parts.push(t.text.clone()),
            other => parts.push(serde_json::to_string(other).unwrap_or_default()),
        }
    }
    if parts.is_empty()
        && let Some(structured) = &result.structured_content
    {
        parts.push(structured.to_string());
    }
    ToolOutput {
        content: parts.join("\n"),
        is_error: result.is_error.unwrap_or(false),
    }
}

/// The process-wide rustls crypto provider (ring) for HTTPS servers, if none is installed.
fn install_crypto_provider() {
    if rustls::crypto::CryptoProvider::get_default().is_none() {
        let _ = rustls::crypto::ring::default_provider().install_default();
    }
}

/// A tool of an MCP server.
pub struct McpTool {
    server: Arc<McpServer>,
    definition: ToolDefinition,
}

#[async_trait]
impl Tool for McpTool {
    fn definition(&self) -> &ToolDefinition {
        &self.definition
    }

    async fn call(
        &self,
        arguments: Value,
        _invocation: &ToolInvocation,
    ) -> Result<ToolOutput, ToolError> {
        self.server.call(&self.definition.name, arguments).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn stderr_keeps_a_bounded_tail_of_an_endless_line() {
        use tokio::io::AsyncWriteExt;
        let (mut writer, reader) = tokio::io::duplex(64 * 1024);
        let tail = Arc::new(Mutex::new(String::new()));
        let reading = keep_stderr("s".into(), reader, tail.clone());
        // 1 MiB without a newline, then the end that matters.
        let chunk = vec![b'x'; 64 * 1024];
        for _ in 0..16 {
            writer.write_all(&chunk).await.unwrap();
            assert!(tail.lock().unwrap().len() <= STDERR_TAIL);
        }
        writer.write_all(b"\nfatal: the end\n").await.unwrap();
        drop(writer);
        reading.await.unwrap();
        let tail = tail.lock().unwrap();
        assert!(tail.len() <= STDERR_TAIL, "{}", tail.len());
        assert!(tail.ends_with("fatal: the end\n"));
    }

    #[test]
    fn variables_are_expanded_from_this_process() {
        // SAFETY: a test-only variable no other test reads.
        unsafe { std::env::set_var("FM_MCP_TEST_VAR", "v1") };
        assert_eq!(expand_env("a${FM_MCP_TEST_VAR}b"), "av1b");
        assert_eq!(expand_env("${FM_MCP_UNSET_VAR_X}"), "");
        assert_eq!(expand_env("$HOME ${ not} ${"), "$HOME ${ not} ${");
    }

    #[test]
    fn secrets_from_the_environment_are_scrubbed() {
        // SAFETY: a test-only variable no other test reads.
        unsafe { std::env::set_var("FM_MCP_TEST_TOKEN", "tok-12345") };
        let secrets = substituted("https://x/mcp?key=${FM_MCP_TEST_TOKEN}");
        assert_eq!(secrets, ["tok-12345"]);
        assert_eq!(
            scrub(&secrets, "bad url https://x/mcp?key=tok-12345".into()),
            "bad url https://x/mcp?key=[redacted]"
        );
    }

    #[test]
    fn programs_are_found_on_path() {
        assert!(find_program("sh").is_some());
        assert!(find_program("no-such-program-anywhere").is_none());
        assert_eq!(find_program("./x"), Some(PathBuf::from("./x")));
    }
}
