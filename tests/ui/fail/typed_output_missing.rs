flatmachine_runtime::flatmachine!("ui/machines/typed_output_missing.yml");

fn main() {}
