flatmachine_runtime::flatmachine!("ui/machines/agent_output_field_typo.yml");

fn main() {}
