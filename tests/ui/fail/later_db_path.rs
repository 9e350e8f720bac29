flatmachine_runtime::flatmachine!("ui/machines/later_db_path.yml");

fn main() {}
