// Shared by `benches/expand.rs` and `tests/generated_size.rs` (`#[path]` module): the chain
// machines the generated-code size and macro time are measured on.

/// A chain of `states` states: `start` → `s1` → … → `done`. With `rich == false` every middle
/// state only has a compiled condition and two transitions (the shape of `benches/load.rs`);
/// with `rich == true` it also runs an action, maps its output into the context with two
/// templates and routes errors, like a typical workflow step.
#[allow(dead_code)]
pub fn chain_machine(states: usize, rich: bool) -> String {
    assert!(states >= 3, "a chain has at least start, one step and done");
    let mut text = String::from(
        "spec: flatmachine\nspec_version: \"1.0.0\"\ndata:\n  name: chain\n  context:\n    x: \"{{ input.x | default(0) }}\"\n    mode: fast\n  states:\n    start:\n      type: initial\n      transitions:\n        - to: s1\n",
    );
    let last = states - 2;
    for i in 1..=last {
        let next = if i == last {
            "done".to_string()
        } else {
            format!("s{}", i + 1)
        };
        text.push_str(&format!("    s{i}:\n"));
        if rich {
            text.push_str(&format!(
                "      action: step\n      output_to_context:\n        x: \"{{{{ output.x }}}}\"\n        last: s{i}\n      on_error:\n        default: done\n      transitions:\n        - condition: \"context.x > {i} and context.mode == 'fast'\"\n          to: done\n        - to: {next}\n"
            ));
        } else {
            text.push_str(&format!(
                "      transitions:\n        - condition: \"context.x > {i}\"\n          to: done\n        - to: {next}\n"
            ));
        }
    }
    text.push_str("    done:\n      type: final\n      output:\n        x: \"{{ context.x }}\"\n");
    text
}
