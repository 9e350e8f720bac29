flatmachine_runtime::flatmachine!("ui/machines/missing_states.yml");

fn main() {}
