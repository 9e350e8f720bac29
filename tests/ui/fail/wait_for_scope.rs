flatmachine_runtime::flatmachine!("ui/machines/wait_for_scope.yml");

fn main() {}
