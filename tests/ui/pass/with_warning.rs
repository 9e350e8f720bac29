// A machine with a compiler warning (an unreachable state) still compiles; the warning is a
// rustc warning, not an error.
flatmachine_runtime::flatmachine!("ui/machines/with_warning.yml");

fn main() {
    assert_eq!(with_warning::State::ALL.len(), 3);
    assert_eq!(with_warning::State::INITIAL.name(), "start");
}
