flatmachine_runtime::flatmachine!("ui/machines/missing_agent_file.yml");

fn main() {}
