flatmachine_runtime::flatmachine!("ui/machines/bad_state_type.yml");

fn main() {}
