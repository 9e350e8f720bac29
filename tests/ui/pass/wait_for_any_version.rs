// `wait_for` compiles under any `spec_version` (here 0.4.0, older than the spec that added
// it); a later key that only annotates (`settings.backends.trigger`) is a warning.
flatmachine_runtime::flatmachine!("ui/machines/wait_for_any_version.yml");

fn main() {
    let spec = &wait_for_any_version::SPEC;
    assert!(spec.states[0].wait_for.is_some());
    assert_eq!(spec.states[0].timeout, Some(60.0));
    assert!(spec.config_hash.starts_with("fm-shape1:"));
    assert_eq!(spec.backends.unwrap().signal, Some("memory"));
}
