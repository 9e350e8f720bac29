// denied_tools naming a tool that is neither inline nor a declared Rust tool.
flatmachine_runtime::flatmachine!("ui/machines/tool_loop_unknown_denied.yml", tools = [word_count]);

fn main() {}
