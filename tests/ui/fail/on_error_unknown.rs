flatmachine_runtime::flatmachine!("ui/machines/on_error_unknown.yml");

fn main() {}
