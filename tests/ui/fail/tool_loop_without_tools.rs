// A tool_loop state whose agent has no tools (no inline tools, no MCP servers, no Rust tools).
flatmachine_runtime::flatmachine!("ui/machines/tool_loop_without_tools.yml");

fn main() {}
