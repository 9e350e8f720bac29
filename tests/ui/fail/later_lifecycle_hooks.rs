flatmachine_runtime::flatmachine!("ui/machines/later_lifecycle_hooks.yml");

fn main() {}
