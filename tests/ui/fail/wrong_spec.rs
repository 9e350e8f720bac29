flatmachine_runtime::flatmachine!("ui/machines/wrong_spec.yml");

fn main() {}
