flatmachine_runtime::flatmachine!("ui/machines/users/provider/machine.yml");

fn main() {}
