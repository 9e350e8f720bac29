flatmachine_runtime::flatmachine!("ui/machines/wait_for_with_action.yml");

fn main() {}
