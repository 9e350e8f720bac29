flatmachine_runtime::flatmachine!("ui/machines/users/profile_typo/machine.yml");

fn main() {}
