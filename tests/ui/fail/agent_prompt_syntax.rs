flatmachine_runtime::flatmachine!("ui/machines/agent_prompt_syntax.yml");

fn main() {}
