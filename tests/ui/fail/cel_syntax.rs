flatmachine_runtime::flatmachine!("ui/machines/cel_syntax.yml");

fn main() {}
