flatmachine_runtime::flatmachine!("ui/machines/foreach_without_machine.yml");

fn main() {}
