use flatmachine_runtime::MachineDef;

// `tool_loop: true` (spec 1.0.0) and the object form with limits both compile; a Rust tool is
// declared to the compiler and may be named in `allowed_tools`.
flatmachine_runtime::flatmachine!("ui/machines/tool_loop_v1.yml");
flatmachine_runtime::flatmachine!("ui/machines/tool_loops.yml", tools = [word_count]);

fn main() {
    let v1 = tool_loop_v1::Machine::spec();
    assert!(v1.states[0].tool_loop.is_some());
    let spec = tool_loops::Machine::spec();
    let tl = spec.states[0].tool_loop.as_ref().unwrap();
    assert_eq!(tl.allowed_tools, ["lookup", "word_count"]);
    assert_eq!(spec.rust_tools, ["word_count"]);
    let config = spec.agents[0].flatagent.unwrap();
    assert_eq!(config.tools[0].name, "lookup");
}
