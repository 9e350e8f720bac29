flatmachine_runtime::flatmachine!("ui/machines/bad_expression_engine.yml");

fn main() {}
