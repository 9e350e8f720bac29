flatmachine_runtime::flatmachine!("ui/machines/cel_unknown_variable.yml");

fn main() {}
