flatmachine_runtime::flatmachine!("ui/machines/undeclared_agent.yml");

fn main() {}
