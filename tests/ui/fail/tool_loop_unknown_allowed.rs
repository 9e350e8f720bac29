// allowed_tools naming no tool of the agent.
flatmachine_runtime::flatmachine!("ui/machines/tool_loop_unknown_allowed.yml");

fn main() {}
