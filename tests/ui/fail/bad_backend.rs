flatmachine_runtime::flatmachine!("ui/machines/bad_backend.yml");

fn main() {}
