flatmachine_runtime::flatmachine!("ui/machines/users/no_model/machine.yml");

fn main() {}
