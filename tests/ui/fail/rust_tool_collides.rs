// A Rust tool declared with the name of an inline tool of the agent.
flatmachine_runtime::flatmachine!("ui/machines/rust_tool_collides.yml", tools = [lookup]);

fn main() {}
