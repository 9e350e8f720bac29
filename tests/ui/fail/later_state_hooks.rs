flatmachine_runtime::flatmachine!("ui/machines/later_state_hooks.yml");

fn main() {}
