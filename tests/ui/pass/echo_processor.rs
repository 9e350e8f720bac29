// A strict-tier corpus machine, unmodified, through the macro.
flatmachine_runtime::flatmachine!("ui/machines/echo_processor.yml");

use echo_processor::State;

fn main() {
    assert_eq!(echo_processor::NAME, "echo_processor");
    assert_eq!(State::INITIAL.name(), "start");
    assert_eq!(State::INITIAL, State::Start);
    assert_eq!(State::ALL.map(State::name), ["start", "process", "done"]);
    assert_eq!(State::FINAL, &[State::Done]);
    assert_eq!("process".parse::<State>().unwrap(), State::Process);
    assert!("processing".parse::<State>().is_err());
    let context = flatmachine_runtime::Context::new();
    assert_eq!(
        echo_processor::transition(State::Start, &context).unwrap(),
        Some(State::Process)
    );
    assert_eq!(
        echo_processor::transition(State::Done, &context).unwrap(),
        None
    );
    assert_eq!(echo_processor::SPEC.actions, &["echo_delay"]);
    assert_eq!(
        echo_processor::SPEC.source,
        "ui/machines/echo_processor.yml"
    );
}
