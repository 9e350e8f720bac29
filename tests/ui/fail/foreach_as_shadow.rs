flatmachine_runtime::flatmachine!("ui/machines/foreach_as_shadow.yml");

fn main() {}
