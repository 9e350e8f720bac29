flatmachine_runtime::flatmachine!("ui/machines/condition_syntax.yml");

fn main() {}
