flatmachine_runtime::flatmachine!("ui/machines/on_error_map_unknown.yml");

fn main() {}
