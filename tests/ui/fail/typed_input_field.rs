flatmachine_runtime::flatmachine!("ui/machines/typed_input_field.yml");

fn main() {}
