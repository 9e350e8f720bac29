flatmachine_runtime::flatmachine!("ui/machines/too_deep.yml");

fn main() {}
