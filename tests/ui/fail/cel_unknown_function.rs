flatmachine_runtime::flatmachine!("ui/machines/cel_unknown_function.yml");

fn main() {}
