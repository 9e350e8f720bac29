flatmachine_runtime::flatmachine!("ui/machines/condition_input_scope.yml");

fn main() {}
