flatmachine_runtime::flatmachine!("ui/machines/bad_mode.yml");

fn main() {}
