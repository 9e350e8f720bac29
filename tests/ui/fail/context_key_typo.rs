// A template reading a context key nothing sets is a compiler warning (here denied, to show it).
#![deny(deprecated)]

flatmachine_runtime::flatmachine!("ui/machines/context_key_typo.yml");

fn main() {}
