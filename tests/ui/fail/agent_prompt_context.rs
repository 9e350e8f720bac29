flatmachine_runtime::flatmachine!("ui/machines/agent_prompt_context.yml");

fn main() {}
