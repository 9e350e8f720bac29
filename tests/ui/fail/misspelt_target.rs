flatmachine_runtime::flatmachine!("ui/machines/misspelt_target.yml");

fn main() {}
