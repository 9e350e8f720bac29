flatmachine_runtime::flatmachine!("ui/machines/missing_agent_file_on_error.yml");

fn main() {}
