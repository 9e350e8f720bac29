flatmachine_runtime::flatmachine!("ui/machines/agent_input_typo.yml");

fn main() {}
