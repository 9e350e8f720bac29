flatmachine_runtime::flatmachine!("ui/machines/wait_for_final.yml");

fn main() {}
