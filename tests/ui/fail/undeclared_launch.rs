flatmachine_runtime::flatmachine!("ui/machines/undeclared_launch.yml");

fn main() {}
