// Names that are Rust keywords, collide after case conversion, start with a digit, are empty or
// are not ASCII still give a module that compiles; the YAML names are kept as they were.
flatmachine_runtime::flatmachine!("ui/machines/odd/odd_names.yml");

use m_123__n_code_name::State;

fn main() {
    assert_eq!(m_123__n_code_name::NAME, "123 ünïcode-name!");
    let names = State::ALL.map(State::name);
    assert_eq!(
        names,
        [
            "1", "foo_bar", "foo-bar", "FooBar", "self", "Self", "État", "_", "", "__"
        ]
    );
    for (i, state) in State::ALL.iter().enumerate() {
        assert_eq!(state.name().parse::<State>().unwrap(), *state);
        assert_eq!(State::from_index(i), Some(*state));
    }
    assert_eq!(State::INITIAL.name(), "1");
    assert_eq!(
        State::FINAL.iter().map(|s| s.name()).collect::<Vec<_>>(),
        ["__"]
    );
    let context = flatmachine_runtime::Context::new();
    let mut state = State::INITIAL;
    let mut path = vec![state.name()];
    while let Some(next) = m_123__n_code_name::transition(state, &context).unwrap() {
        state = next;
        path.push(state.name());
    }
    assert_eq!(path, names);
    assert_eq!(m_123__n_code_name::children::self_::NAME, "self");
}
