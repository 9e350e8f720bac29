// An inline tool whose `parameters` is not a valid JSON Schema.
flatmachine_runtime::flatmachine!("ui/machines/inline_tool_bad_schema.yml");

fn main() {}
