flatmachine_runtime::flatmachine!("ui/machines/template_typo.yml");

fn main() {}
