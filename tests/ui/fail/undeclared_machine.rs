flatmachine_runtime::flatmachine!("ui/machines/undeclared_machine.yml");

fn main() {}
