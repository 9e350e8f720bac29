//! A small filesystem-style MCP server built on `rmcp`, serving one directory read-only:
//! `list_directory` and `read_file` (paths relative to the root; nothing outside it is
//! reachable). The `mcp_fs_server` binary runs it, and so does the librarian example
//! (`librarian mcp-server <root>`), which starts itself as its MCP server.
//!
//! Arguments: `<root> [--http ADDR]` — stdio transport, or streamable HTTP at `/mcp` on `ADDR`
//! (the URL is printed on stdout). Test switches, for the failure tests only: `--test-tools`
//! adds `crash` (the process exits mid-call), `hang` (never answers) and `env` (lists the
//! environment the server got); `--garbage` answers every line on stdin with text that is not
//! JSON-RPC; `--fail-start` prints an error to stderr and exits 3; `--pid-file <path>` writes
//! the process id there; `--background-child <path>` starts `sleep 600` in the background (in
//! the server's process group) and writes its process id there.

use rmcp::handler::server::router::tool::ToolRouter;
use rmcp::handler::server::wrapper::Parameters;
use rmcp::model::{CallToolResult, ContentBlock, ServerCapabilities, ServerConfig};
use rmcp::{ErrorData, ServerHandler, ServiceExt, schemars, tool, tool_handler, tool_router};
use std::path::{Component, Path, PathBuf};

/// Largest file `read_file` returns (bigger files are cut).
const MAX_READ: usize = 64 * 1024;

#[derive(Debug, serde::Deserialize, schemars::JsonSchema)]
struct PathArg {
    /// A path relative to the served directory (`.` for the directory itself).
    path: String,
}

#[derive(Debug, serde::Deserialize, schemars::JsonSchema)]
struct Empty {}

#[derive(Clone)]
struct FsServer {
    root: PathBuf,
    tool_router: ToolRouter<Self>,
}

impl FsServer {
    fn new(root: PathBuf, test_tools: bool) -> Self {
        let mut tool_router = Self::tool_router();
        if !test_tools {
            for name in ["crash", "hang", "env"] {
                tool_router.remove_route(name);
            }
        }
        Self { root, tool_router }
    }

    /// `rel` resolved under the root, refusing anything that leaves it.
    fn resolve(&self, rel: &str) -> Result<PathBuf, String> {
        let rel = Path::new(rel);
        if rel.is_absolute()
            || rel
                .components()
                .any(|c| matches!(c, Component::ParentDir | Component::Prefix(_)))
        {
            return Err(format!(
                "`{}` is outside the served directory",
                rel.display()
            ));
        }
        let path = self.root.join(rel);
        let real = path
            .canonicalize()
            .map_err(|e| format!("`{}`: {e}", rel.display()))?;
        if !real.starts_with(&self.root) {
            return Err(format!(
                "`{}` is outside the served directory",
                rel.display()
            ));
        }
        Ok(real)
    }
}

fn text(s: impl Into<String>) -> CallToolResult {
    CallToolResult::success(vec![ContentBlock::text(s.into())])
}

fn failure(s: impl Into<String>) -> CallToolResult {
    CallToolResult::error(vec![ContentBlock::text(s.into())])
}

#[tool_router]
impl FsServer {
    #[tool(description = "List the entries of a directory (names; directories end with /)")]
    async fn list_directory(
        &self,
        Parameters(PathArg { path }): Parameters<PathArg>,
    ) -> Result<CallToolResult, ErrorData> {
        let dir = match self.resolve(&path) {
            Ok(d) => d,
            Err(e) => return Ok(failure(e)),
        };
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) => return Ok(failure(format!("`{path}`: {e}"))),
        };
        let mut names: Vec<String> = entries
            .filter_map(Result::ok)
            .map(|e| {
                let mut name = e.file_name().to_string_lossy().into_owned();
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    name.push('/');
                }
                name
            })
            .collect();
        names.sort();
        Ok(text(names.join("\n")))
    }

    #[tool(description = "Read a UTF-8 text file")]
    async fn read_file(
        &self,
        Parameters(PathArg { path }): Parameters<PathArg>,
    ) -> Result<CallToolResult, ErrorData> {
        let file = match self.resolve(&path) {
            Ok(f) => f,
            Err(e) => return Ok(failure(e)),
        };
        match std::fs::read(&file) {
            Ok(bytes) => {
                let cut = bytes.len().min(MAX_READ);
                Ok(text(String::from_utf8_lossy(&bytes[..cut]).into_owned()))
            }
            Err(e) => Ok(failure(format!("`{path}`: {e}"))),
        }
    }

    #[tool(description = "Test only: the server process exits in the middle of the call")]
    async fn crash(&self, Parameters(_): Parameters<Empty>) -> Result<CallToolResult, ErrorData> {
        eprintln!("mcp_fs_server: crashing on purpose");
        std::process::exit(7);
    }

    #[tool(description = "Test only: never answers")]
    async fn hang(&self, Parameters(_): Parameters<Empty>) -> Result<CallToolResult, ErrorData> {
        std::future::pending::<()>().await;
        Ok(text("unreachable"))
    }

    #[tool(description = "Test only: the names of the environment variables the server got")]
    async fn env(&self, Parameters(_): Parameters<Empty>) -> Result<CallToolResult, ErrorData> {
        let mut vars: Vec<String> = std::env::vars().map(|(k, v)| format!("{k}={v}")).collect();
        vars.sort();
        Ok(text(vars.join("\n")))
    }
}

#[tool_handler(router = self.tool_router)]
impl ServerHandler for FsServer {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
            .with_instructions("Read-only access to one directory")
    }
}

fn usage() -> ! {
    eprintln!(
        "usage: mcp_fs_server <root> [--http ADDR] [--test-tools] [--garbage] [--fail-start] [--pid-file PATH] [--background-child PATH]"
    );
    std::process::exit(2);
}

/// Runs the server with command-line arguments (without the program name): `<root>
/// [--http ADDR] [--test-tools] [--garbage] [--fail-start] [--pid-file PATH]
/// [--background-child PATH]`. Exits the process on bad arguments.
pub async fn main_with_args(args: impl IntoIterator<Item = String>) {
    let mut root = None;
    let mut http = None;
    let (mut test_tools, mut garbage, mut fail_start) = (false, false, false);
    let mut args = args.into_iter();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--http" => http = Some(args.next().unwrap_or_else(|| usage())),
            "--test-tools" => test_tools = true,
            "--garbage" => garbage = true,
            "--fail-start" => fail_start = true,
            "--pid-file" => {
                let path = args.next().unwrap_or_else(|| usage());
                if let Err(e) = std::fs::write(&path, std::process::id().to_string()) {
                    eprintln!("mcp_fs_server: {path}: {e}");
                    std::process::exit(2);
                }
            }
            "--background-child" => {
                let path = args.next().unwrap_or_else(|| usage());
                let child = std::process::Command::new("sleep")
                    .arg("600")
                    .stdin(std::process::Stdio::null())
                    .stdout(std::process::Stdio::null())
                    .stderr(std::process::Stdio::null())
                    .spawn();
                let written = child.and_then(|c| std::fs::write(&path, c.id().to_string()));
                if let Err(e) = written {
                    eprintln!("mcp_fs_server: --background-child {path}: {e}");
                    std::process::exit(2);
                }
            }
            _ if root.is_none() && !arg.starts_with("--") => root = Some(PathBuf::from(arg)),
            _ => usage(),
        }
    }
    if fail_start {
        eprintln!("mcp_fs_server: refusing to start (--fail-start)");
        std::process::exit(3);
    }
    if garbage {
        use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
        let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
        let mut out = tokio::io::stdout();
        while let Ok(Some(_)) = lines.next_line().await {
            let _ = out.write_all(b"this is not json-rpc {{{\n").await;
            let _ = out.flush().await;
        }
        return;
    }
    let root = root.unwrap_or_else(|| usage());
    let root = match root.canonicalize() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("mcp_fs_server: {}: {e}", root.display());
            std::process::exit(2);
        }
    };
    match http {
        None => {
            let server = FsServer::new(root, test_tools);
            match server.serve(rmcp::transport::stdio()).await {
                Ok(running) => {
                    let _ = running.waiting().await;
                }
                Err(e) => {
                    eprintln!("mcp_fs_server: {e}");
                    std::process::exit(1);
                }
            }
        }
        Some(addr) => serve_http(root, test_tools, &addr).await,
    }
}

async fn serve_http(root: PathBuf, test_tools: bool, addr: &str) {
    use rmcp::transport::streamable_http_server::{
        StreamableHttpServerConfig, StreamableHttpService, session::local::LocalSessionManager,
    };
    let service: StreamableHttpService<FsServer, LocalSessionManager> = StreamableHttpService::new(
        move || Ok(FsServer::new(root.clone(), test_tools)),
        Default::default(),
        StreamableHttpServerConfig::default(),
    );
    let router = axum::Router::new().nest_service("/mcp", service);
    let listener = match tokio::net::TcpListener::bind(addr).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("mcp_fs_server: cannot listen on {addr}: {e}");
            std::process::exit(2);
        }
    };
    let local = listener
        .local_addr()
        .map(|a| a.to_string())
        .unwrap_or_default();
    println!("http://{local}/mcp");
    use std::io::Write;
    let _ = std::io::stdout().flush();
    if let Err(e) = axum::serve(listener, router).await {
        eprintln!("mcp_fs_server: {e}");
        std::process::exit(1);
    }
}
