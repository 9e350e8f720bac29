// An agent with no `model` (the default profile of the file the machine's `profiles:` names)
// and no `system`, on a provider that needs no key: compiles, and without a warning (a
// warning would be a use of a deprecated item here).
#![deny(deprecated)]
flatmachine_runtime::flatmachine!("ui/machines/users/defaults/machine.yml");

fn main() {
    assert_eq!(defaults::State::INITIAL.name(), "start");
}
