// Reading a field a free-text agent never returns is a compiler warning (here denied, to show
// it).
#![deny(deprecated)]

flatmachine_runtime::flatmachine!("ui/machines/free_text_output_field.yml");

fn main() {}
