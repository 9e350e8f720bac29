//! The compiler's context checks (`flatmachine_build::dataflow`): keys read that nothing sets,
//! strings a key can never equal, agent prompt inputs a state does not pass.

use flatmachine_build::{Checked, Diagnostic};

/// Check a machine (and optional extra files) written to a temporary directory.
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

/// The diagnostics whose message contains `what`.
fn find<'a>(c: &'a Checked, what: &str) -> Vec<&'a Diagnostic> {
    c.diagnostics
        .iter()
        .filter(|d| d.message.contains(what))
        .collect()
}

const CLASSIFIER: &str = "spec: flatagent\nspec_version: \"1.0.0\"\ndata:\n  name: classifier\n  model: { provider: openai, name: m }\n  system: s\n  user: \"{{ input.text }}\"\n  output:\n    category: { type: str, enum: [billing, bug, spam] }\n";

#[test]
fn a_key_nothing_sets_is_a_warning_naming_the_keys_that_are_set() {
    let m = machine(
        "data:\n  name: m\n  context:\n    summary: \"{{ input.s }}\"\n    topic: t\n  states:\n    start:\n      type: initial\n      transitions:\n        - condition: \"context.summary == 'x'\"\n          to: done\n        - to: done\n    done:\n      type: final\n      output:\n        a: \"{{ context.sumary }}\"\n        b: \"{{ context.nothing_like_it }}\"\n        c: \"{{ context.missing | default('') }}\"\n        d: \"{% if context.maybe is defined %}{{ context.maybe }}{% endif %}\"\n        e: \"{{ context.last_error }}\"\n",
    );
    let (_d, c) = check(&[("m.yml", &m)]);
    let w = find(&c, "`context.sumary` is read here");
    assert_eq!(w.len(), 1, "{}", c.render(false));
    assert!(!w[0].is_error());
    assert_eq!(c.db().location(w[0].span.unwrap()), "m.yml:18:24");
    assert_eq!(w[0].notes, ["keys set in this machine: `summary`, `topic`"]);
    assert_eq!(w[0].help[0], "did you mean `summary`?");
    // With no action and no hooks, any unset key is reported, close to a set one or not.
    assert_eq!(find(&c, "`context.nothing_like_it`").len(), 1);
    // Guarded reads and the runtime's own keys are not.
    for quiet in ["missing", "maybe", "last_error"] {
        assert!(
            find(&c, &format!("`context.{quiet}`")).is_empty(),
            "{}",
            c.render(false)
        );
    }
    assert!(!c.has_errors());
}

#[test]
fn undeclared_actions_leave_only_near_misses_and_declarations_restore_the_check() {
    let states = "  states:\n    start:\n      type: initial\n      action: load\n      transitions:\n        - to: done\n    done:\n      type: final\n      output:\n        a: \"{{ context.totl }}\"\n        b: \"{{ context.from_action }}\"\n";
    let body = format!("data:\n  name: m\n  context:\n    total: 0\n{states}");
    let (_d, c) = check(&[("m.yml", &machine(&body))]);
    // `load` may write anything: `from_action` is not reported, the typo of `total` is.
    assert!(find(&c, "`context.from_action`").is_empty());
    let w = find(&c, "`context.totl`");
    assert_eq!(w.len(), 1, "{}", c.render(false));
    assert!(w[0].notes[1].contains("action `load` may set keys the compiler cannot see"));
    assert!(w[0].notes[1].contains("`load: [totl]`"), "{:?}", w[0].notes);

    // Declared: `from_action` is set, and nothing undeclared remains, so every read is checked.
    let declared = format!(
        "{}metadata:\n  writes:\n    load: [from_action]\n",
        machine(&body)
    );
    let (_d, c) = check(&[("m.yml", &declared)]);
    assert!(
        find(&c, "`context.from_action`").is_empty(),
        "{}",
        c.render(false)
    );
    assert_eq!(find(&c, "`context.totl`").len(), 1);

    // A declaration for an action the machine does not have is a warning with a suggestion.
    let stray = format!(
        "{}metadata:\n  writes:\n    laod: [from_action]\n",
        machine(&body)
    );
    let (_d, c) = check(&[("m.yml", &stray)]);
    let w = find(&c, "`metadata.writes` names `laod`");
    assert_eq!(w.len(), 1, "{}", c.render(false));
    assert_eq!(w[0].help, ["did you mean `load`?"]);
    let bad = format!("{}metadata:\n  writes: [a]\n", machine(&body));
    let (_d, c) = check(&[("m.yml", &bad)]);
    assert_eq!(find(&c, "`metadata.writes` is ignored").len(), 1);
}

#[test]
fn hooks_may_write_unless_declared() {
    let body = "data:\n  name: m\n  hooks:\n    class: Audit\n  states:\n    start:\n      type: initial\n      transitions:\n        - to: done\n    done:\n      type: final\n      output:\n        a: \"{{ context.audit_id }}\"\n";
    let (_d, c) = check(&[("m.yml", &machine(body))]);
    assert!(find(&c, "`context.audit_id`").is_empty());
    let declared = format!("{}metadata:\n  writes:\n    Audit: []\n", machine(body));
    let (_d, c) = check(&[("m.yml", &declared)]);
    assert_eq!(find(&c, "`context.audit_id`").len(), 1);
}

#[test]
fn a_string_an_enum_field_never_has_is_an_error_with_a_suggestion() {
    let body = |condition: &str, extra: &str| {
        machine(&format!(
            "data:\n  name: m\n  context:\n    category: null\n  agents:\n    classifier: ./c.yml\n  states:\n    start:\n      type: initial\n      agent: classifier\n      input:\n        text: x\n      output_to_context:\n        category: \"{{{{ output.category }}}}\"\n      transitions:\n        - condition: \"{condition}\"\n          to: done\n        - to: done\n{extra}    done:\n      type: final\n"
        ))
    };
    let (_d, c) = check(&[
        ("m.yml", &body("context.category == 'spma'", "")),
        ("c.yml", CLASSIFIER),
    ]);
    let e = find(&c, "is never");
    assert_eq!(e.len(), 1, "{}", c.render(false));
    assert!(e[0].is_error());
    assert_eq!(
        e[0].message,
        "`context.category` is never `\"spma\"`: the `category` field of agent `classifier`'s output has an `enum` without it"
    );
    assert_eq!(c.db().location(e[0].span.unwrap()), "m.yml:18:43");
    assert_eq!(e[0].help, ["did you mean `spam`?"]);
    assert_eq!(
        e[0].notes,
        ["its values: `null`, `\"billing\"`, `\"bug\"`, `\"spam\"`"]
    );
    // `!=`, the literal first: the same mistake.
    let (_d, c) = check(&[
        ("m.yml", &body("'spma' != context.category", "")),
        ("c.yml", CLASSIFIER),
    ]);
    assert_eq!(find(&c, "is never").len(), 1);
    // A value of the enum is fine.
    let (_d, c) = check(&[
        ("m.yml", &body("context.category == 'spam'", "")),
        ("c.yml", CLASSIFIER),
    ]);
    assert!(find(&c, "is never").is_empty(), "{}", c.render(false));
    // An action that may write the key makes it a warning.
    let (_d, c) = check(&[
        (
            "m.yml",
            &body(
                "context.category == 'spma'",
                "    review:\n      action: relabel\n      transitions:\n        - to: done\n",
            ),
        ),
        ("c.yml", CLASSIFIER),
    ]);
    let w = find(&c, "is never");
    assert_eq!(w.len(), 1, "{}", c.render(false));
    assert!(!w[0].is_error());
    assert!(
        w[0].notes[0].contains("action `relabel`"),
        "{:?}",
        w[0].notes
    );
}

#[test]
fn cel_conditions_are_checked_too() {
    let m = machine(
        "data:\n  name: m\n  expression_engine: cel\n  context:\n    category: null\n  agents:\n    classifier: ./c.yml\n  states:\n    start:\n      type: initial\n      agent: classifier\n      input:\n        text: x\n      output_to_context:\n        category: \"{{ output.category }}\"\n      transitions:\n        - condition: \"context.category == 'spma' || context.catgory == 'bug' || has(context.opt)\"\n          to: done\n        - to: done\n    done:\n      type: final\n",
    );
    let (_d, c) = check(&[("m.yml", &m), ("c.yml", CLASSIFIER)]);
    let e = find(&c, "is never");
    assert_eq!(e.len(), 1, "{}", c.render(false));
    assert_eq!(c.db().location(e[0].span.unwrap()), "m.yml:19:43");
    let w = find(&c, "`context.catgory` is read here");
    assert_eq!(w.len(), 1, "{}", c.render(false));
    assert_eq!(c.db().location(w[0].span.unwrap()), "m.yml:19:53");
    assert_eq!(w[0].help[0], "did you mean `category`?");
    // `has()` tests for a key that may be missing.
    assert!(find(&c, "`context.opt`").is_empty());
}

#[test]
fn agent_inputs_a_state_does_not_pass() {
    let agent = "spec: flatagent\nspec_version: \"1.0.0\"\ndata:\n  name: greeter\n  model: { provider: openai, name: m }\n  system: \"Hi {{ input.name }}\"\n  user: \"{{ input.custmer }} {{ input.tone | default('warm') }}\"\n";
    let m = |input: &str| {
        machine(&format!(
            "data:\n  name: m\n  agents:\n    greeter: ./a.yml\n  states:\n    start:\n      type: initial\n      agent: greeter\n{input}      transitions:\n        - to: done\n    done:\n      type: final\n"
        ))
    };
    let (_d, c) = check(&[
        (
            "m.yml",
            &m("      input:\n        customer: c\n        name: n\n"),
        ),
        ("a.yml", agent),
    ]);
    let e = find(&c, "agent prompt reads `input.custmer`");
    assert_eq!(e.len(), 1, "{}", c.render(false));
    assert!(e[0].is_error());
    assert_eq!(c.db().location(e[0].span.unwrap()), "a.yml:7:19");
    assert_eq!(e[0].help, ["did you mean `customer`?"]);
    assert_eq!(
        e[0].notes,
        ["state `start` calls agent `greeter` with `input:` `customer`, `name`"]
    );
    assert!(find(&c, "input.tone").is_empty());
    assert!(find(&c, "input.name").is_empty());
    // No `input:` at all: the agent's input is empty; a warning per field read.
    let (_d, c) = check(&[("m.yml", &m("")), ("a.yml", agent)]);
    assert!(!c.has_errors(), "{}", c.render(false));
    let w = find(&c, "agent prompt reads `input.");
    assert_eq!(w.len(), 2, "{}", c.render(false));
    assert!(w[0].notes[0].ends_with("with no `input:`, so the agent's input is empty"));
}

/// A `tool_loop` state keeps `_tool_calls_count`, `_tool_loop_turns`, ... in the context: reads
/// of them are satisfied in a machine with a loop, and reported in one without.
#[test]
fn a_tool_loop_sets_its_progress_keys() {
    const HELPER: &str = "spec: flatagent\nspec_version: \"1.0.0\"\ndata:\n  name: helper\n  model: { provider: openai, name: m }\n  system: s\n  user: \"{{ input.q }}\"\n  tools:\n    - type: function\n      function:\n        name: lookup\n        parameters: { type: object, properties: {} }\n";
    let body = |tool_loop: &str| {
        machine(&format!(
            "data:\n  name: m\n  agents:\n    helper: ./helper.yml\n  states:\n    start:\n      type: initial\n      agent: helper\n{tool_loop}      input:\n        q: hi\n      transitions:\n        - condition: \"context._tool_calls_count > 3\"\n          to: done\n        - to: done\n    done:\n      type: final\n      output:\n        turns: \"{{{{ context._tool_loop_turns }}}}\"\n        stop: \"{{{{ context._tool_loop_stop }}}}\"\n"
        ))
    };
    let (_d, c) = check(&[
        ("m.yml", &body("      tool_loop: true\n")),
        ("helper.yml", HELPER),
    ]);
    for key in ["_tool_calls_count", "_tool_loop_turns", "_tool_loop_stop"] {
        assert!(
            find(&c, &format!("`context.{key}`")).is_empty(),
            "{}",
            c.render(false)
        );
    }
    let (_d, c) = check(&[("m.yml", &body("")), ("helper.yml", HELPER)]);
    assert_eq!(
        find(&c, "`context._tool_calls_count` is read here").len(),
        1,
        "{}",
        c.render(false)
    );
}
