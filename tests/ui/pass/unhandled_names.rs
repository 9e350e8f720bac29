// `build()` knows every action and agent the machine uses: one without a handler is a build
// error listing all of them, before any run (and any LLM call) starts. A fallback action
// handler or hooks count as handling every action.
use flatmachine_runtime::hooks::ActionOutcome;
use flatmachine_runtime::engine::BuildError;
use flatmachine_runtime::{Machine, Value};

flatmachine_runtime::flatmachine!("ui/machines/unhandled_names.yml");

fn main() {
    let error = Machine::of::<unhandled_names::Machine>()
        .action_mut("load_ticket", |_ctx, _call| Box::pin(async { Ok(()) }))
        .build()
        .unwrap_err();
    let BuildError::MissingHandlers { missing, .. } = &error else {
        panic!("unexpected error: {error}");
    };
    let names: Vec<&str> = missing.iter().map(|m| m.name.as_str()).collect();
    assert_eq!(names, ["researcher", "approve_reply"]);
    let text = error.to_string();
    assert!(text.contains("action `approve_reply` (state `approve`"), "{text}");
    assert!(text.contains("has type `smolagents`, which has no adapter"), "{text}");

    // A fallback takes every action; a closure serves the agent.
    let built = Machine::of::<unhandled_names::Machine>()
        .fallback_action(|_call, _ctx| Box::pin(async { Ok(ActionOutcome::Handled) }))
        .agent("researcher", |_input, _ctx| async {
            Ok(flatmachine_runtime::AgentOutput::new(Value::Null))
        })
        .build();
    assert!(built.is_ok());
}
