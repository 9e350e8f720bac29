flatmachine_runtime::flatmachine!("ui/machines/jinja_syntax.yml");

fn main() {}
