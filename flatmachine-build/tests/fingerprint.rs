//! The shape fingerprint (`flatmachine_build::fingerprint`) written into checkpoints as
//! `config_hash`: what changes it and what does not.

use flatmachine_build::Checked;

/// Check a machine (and extra files) written to a temporary directory.
fn check(files: &[(&str, &str)]) -> (tempfile::TempDir, Checked) {
    let dir = tempfile::tempdir().unwrap();
    for (name, text) in files {
        std::fs::write(dir.path().join(name), text).unwrap();
    }
    let checked = flatmachine_build::check(&dir.path().join(files[0].0), Some(files[0].0.into()));
    (dir, checked)
}

fn machine(body: &str) -> String {
    format!("spec: flatmachine\nspec_version: \"1.0.0\"\n{body}")
}

/// The shape fingerprint names `tool_loop` states (their `tool_call` checkpoints only a loop
/// continues) without changing the hash of states that have none.
#[test]
fn the_fingerprint_covers_tool_loops_only_where_they_are() {
    const HELPER: &str = "spec: flatagent\nspec_version: \"1.0.0\"\ndata:\n  name: helper\n  model: { provider: openai, name: m }\n  system: s\n  user: \"{{ input.q }}\"\n  tools:\n    - type: function\n      function:\n        name: lookup\n        parameters: { type: object, properties: {} }\n";
    let hash = |tool_loop: &str| {
        let body = machine(&format!(
            "data:\n  name: m\n  agents:\n    helper: ./helper.yml\n  states:\n    start:\n      type: initial\n      agent: helper\n{tool_loop}      input:\n        q: hi\n      transitions:\n        - to: done\n    done:\n      type: final\n"
        ));
        let (_d, c) = check(&[("m.yml", &body), ("helper.yml", HELPER)]);
        let ir = c.irs[0].as_ref().expect("lowered");
        let shape = flatmachine_build::fingerprint::shape(ir);
        (ir.config_hash.clone(), shape)
    };
    let (plain, plain_shape) = hash("");
    let (off, _) = hash("      tool_loop: false\n");
    let (looped, looped_shape) = hash("      tool_loop: {max_turns: 3}\n");
    let (limits, _) = hash("      tool_loop: {max_turns: 9, denied_tools: [lookup]}\n");
    assert_eq!(plain, off, "`tool_loop: false` is no loop");
    assert!(plain_shape["states"][0].get("tool_loop").is_none());
    assert_ne!(plain, looped);
    assert_eq!(looped_shape["states"][0]["tool_loop"], true);
    assert_eq!(
        looped, limits,
        "limits change what a step computes, not the shape"
    );
}
