flatmachine_runtime::flatmachine!("ui/machines/two_initial_states.yml");

fn main() {}
