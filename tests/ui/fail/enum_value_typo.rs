flatmachine_runtime::flatmachine!("ui/machines/enum_value_typo.yml");

fn main() {}
