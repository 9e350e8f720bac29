//! The filesystem-style MCP server of `flatmachine_examples::mcp_fs` as a program:
//!
//! ```text
//! mcp_fs_server <root>                      # stdio transport
//! mcp_fs_server <root> --http 127.0.0.1:0   # streamable HTTP at /mcp; prints the URL
//! ```

#[tokio::main(flavor = "current_thread")]
async fn main() {
    flatmachine_examples::mcp_fs::main_with_args(std::env::args().skip(1)).await;
}
