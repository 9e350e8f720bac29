flatmachine_runtime::flatmachine!("ui/machines/bad_execution_type.yml");

fn main() {}
