//! MCP servers as real processes: the examples' filesystem-style server (built on `rmcp`)
//! over stdio and over streamable HTTP, and the ways a server can fail — it will not start,
//! dies mid-call, hangs, or answers garbage. Every failure must name the server.

use flatmachine_runtime::tools::McpServerSpec;
use flatmachine_runtime::tools::mcp::McpServer;
use serde_json::json;
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

const SERVER: &str = env!("CARGO_BIN_EXE_mcp_fs_server");

fn leak(s: impl Into<String>) -> &'static str {
    Box::leak(s.into().into_boxed_str())
}

fn leak_args(args: &[&str]) -> &'static [&'static str] {
    Box::leak(
        args.iter()
            .map(|a| leak(*a))
            .collect::<Vec<_>>()
            .into_boxed_slice(),
    )
}

fn shelf() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("a.md"), "alpha beta").unwrap();
    std::fs::create_dir(dir.path().join("sub")).unwrap();
    std::fs::write(dir.path().join("sub/b.md"), "gamma").unwrap();
    dir
}

fn stdio_spec(
    name: &str,
    command: &str,
    args: &[&str],
    env: &'static [(&'static str, &'static str)],
    timeout: Option<f64>,
) -> &'static McpServerSpec {
    Box::leak(Box::new(McpServerSpec {
        name: leak(name),
        command: Some(leak(command)),
        args: leak_args(args),
        env,
        server_url: None,
        headers: &[],
        timeout,
    }))
}

#[tokio::test]
async fn a_stdio_server_lists_and_runs_its_tools() {
    let dir = shelf();
    let root = dir.path().to_str().unwrap();
    let server = McpServer::start(stdio_spec("fs", SERVER, &[root], &[], None))
        .await
        .unwrap();
    let tools = server.list_tools().await.unwrap();
    let names: Vec<&str> = tools.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(names.len(), 2, "{names:?}");
    assert!(names.contains(&"list_directory") && names.contains(&"read_file"));
    let read = tools.iter().find(|t| t.name == "read_file").unwrap();
    assert_eq!(read.parameters["required"], json!(["path"]));

    let listing = server
        .call("list_directory", json!({"path": "."}))
        .await
        .unwrap();
    assert_eq!(listing.content, "a.md\nsub/");
    assert!(!listing.is_error);
    let text = server
        .call("read_file", json!({"path": "sub/b.md"}))
        .await
        .unwrap();
    assert_eq!(text.content, "gamma");
    let escape = server
        .call("read_file", json!({"path": "../etc/passwd"}))
        .await
        .unwrap();
    assert!(escape.is_error, "{escape:?}");
    assert!(escape.content.contains("outside the served directory"));
    server.shutdown().await;
}

#[tokio::test]
async fn a_stdio_server_gets_only_the_listed_environment() {
    // SAFETY: read by no other test of this binary; set before the server starts.
    unsafe { std::env::set_var("FM_MCP_SECRET_OF_THE_TEST", "do-not-leak") };
    unsafe { std::env::set_var("FM_MCP_PASSED", "passed-on") };
    let dir = shelf();
    let root = dir.path().to_str().unwrap();
    let server = McpServer::start(stdio_spec(
        "fs",
        SERVER,
        &[root, "--test-tools"],
        &[("ONLY_THIS", "yes"), ("FROM_PARENT", "${FM_MCP_PASSED}")],
        None,
    ))
    .await
    .unwrap();
    let env = server.call("env", json!({})).await.unwrap();
    assert_eq!(env.content, "FROM_PARENT=passed-on\nONLY_THIS=yes");
    server.shutdown().await;
}

#[tokio::test]
async fn shutdown_ends_the_server_process() {
    let dir = shelf();
    let pid_file = dir.path().join("server.pid");
    let root = dir.path().join("sub");
    let server = McpServer::start(stdio_spec(
        "fs",
        SERVER,
        &[
            root.to_str().unwrap(),
            "--pid-file",
            pid_file.to_str().unwrap(),
        ],
        &[],
        None,
    ))
    .await
    .unwrap();
    let pid = std::fs::read_to_string(&pid_file).unwrap();
    let proc = PathBuf::from(format!("/proc/{pid}"));
    assert!(proc.exists());
    server.shutdown().await;
    assert!(!proc.exists(), "server {pid} still running after shutdown");
}

/// Whether process `pid` is still alive (a zombie nobody reaped yet counts as gone).
fn alive(pid: &str) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

/// A stdio server runs in a process group of its own: what it left running in the background
/// goes with it at shutdown (as with subprocess agents).
#[tokio::test]
async fn shutdown_ends_what_the_server_started_in_the_background() {
    let dir = shelf();
    let child_file = dir.path().join("child.pid");
    let root = dir.path().join("sub");
    let server = McpServer::start(stdio_spec(
        "fs",
        SERVER,
        &[
            root.to_str().unwrap(),
            "--background-child",
            child_file.to_str().unwrap(),
        ],
        &[("PATH", "/usr/bin:/bin")],
        None,
    ))
    .await
    .unwrap();
    let child = std::fs::read_to_string(&child_file).unwrap();
    assert!(alive(&child), "the background child {child} runs");
    server.shutdown().await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while alive(&child) && std::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(
        !alive(&child),
        "background child {child} survived the server's shutdown"
    );
}

#[tokio::test]
async fn a_server_that_cannot_start_is_named() {
    let err = McpServer::start(stdio_spec(
        "ghost",
        "no-such-mcp-server-xyz",
        &[],
        &[],
        None,
    ))
    .await
    .unwrap_err();
    assert_eq!(err.error_type, "ToolError");
    assert!(
        err.message
            .contains("MCP server `ghost` could not start: `no-such-mcp-server-xyz` is not an executable on PATH"),
        "{err}"
    );

    let err = McpServer::start(stdio_spec(
        "refuser",
        SERVER,
        &["--fail-start"],
        &[],
        Some(5.0),
    ))
    .await
    .unwrap_err();
    assert!(err.message.starts_with("MCP server `refuser` "), "{err}");
    assert!(
        err.message.contains("refusing to start"),
        "stderr is quoted: {err}"
    );
}

#[tokio::test]
async fn a_server_answering_garbage_is_named() {
    let started = std::time::Instant::now();
    let err = McpServer::start(stdio_spec(
        "babbler",
        SERVER,
        &["--garbage"],
        &[],
        Some(2.0),
    ))
    .await
    .unwrap_err();
    assert!(err.message.starts_with("MCP server `babbler` "), "{err}");
    assert!(started.elapsed() < std::time::Duration::from_secs(10));
}

#[tokio::test]
async fn a_server_that_dies_or_hangs_mid_call_gives_a_tool_error() {
    let dir = shelf();
    let root = dir.path().to_str().unwrap();
    let server = McpServer::start(stdio_spec(
        "flaky",
        SERVER,
        &[root, "--test-tools"],
        &[],
        Some(1.0),
    ))
    .await
    .unwrap();
    let err = server.call("hang", json!({})).await.unwrap_err();
    assert_eq!(
        err.message,
        "MCP server `flaky` did not answer `hang` within 1s"
    );
    let err = server.call("crash", json!({})).await.unwrap_err();
    assert!(
        err.message.starts_with("MCP server `flaky` "),
        "{}",
        err.message
    );
    // Dead now: later calls fail fast and name it too.
    let err = server
        .call("read_file", json!({"path": "a.md"}))
        .await
        .unwrap_err();
    assert!(
        err.message
            .starts_with("MCP server `flaky` failed on `read_file`"),
        "{}",
        err.message
    );
    server.shutdown().await;
}

/// The server over streamable HTTP, in a process of its own; killed on drop.
struct HttpServer {
    child: Child,
    url: String,
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn http_server(root: &Path) -> HttpServer {
    let mut child = Command::new(SERVER)
        .args([root.to_str().unwrap(), "--http", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    HttpServer {
        child,
        url: line.trim().to_string(),
    }
}

#[tokio::test]
async fn a_streamable_http_server_lists_and_runs_its_tools() {
    let dir = shelf();
    let http = http_server(dir.path());
    assert!(http.url.starts_with("http://127.0.0.1:"), "{}", http.url);
    let spec = Box::leak(Box::new(McpServerSpec {
        name: "remote",
        command: None,
        args: &[],
        env: &[],
        server_url: Some(leak(http.url.clone())),
        headers: &[("X-Test", "yes")],
        timeout: Some(5.0),
    }));
    let server = McpServer::start(spec).await.unwrap();
    let mut names: Vec<String> = server
        .list_tools()
        .await
        .unwrap()
        .into_iter()
        .map(|t| t.name)
        .collect();
    names.sort();
    assert_eq!(names, ["list_directory", "read_file"]);
    let text = server
        .call("read_file", json!({"path": "a.md"}))
        .await
        .unwrap();
    assert_eq!(text.content, "alpha beta");
    server.shutdown().await;

    // A server that is not there is named.
    let spec = Box::leak(Box::new(McpServerSpec {
        name: "nowhere",
        command: None,
        args: &[],
        env: &[],
        server_url: Some("http://127.0.0.1:9/mcp"),
        headers: &[],
        timeout: Some(2.0),
    }));
    let err = McpServer::start(spec).await.unwrap_err();
    assert!(err.message.starts_with("MCP server `nowhere` "), "{err}");
}
