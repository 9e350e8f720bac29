//! The build.rs `Builder`: module name collisions, every failure reported.

use flatmachine_build::Builder;

fn machine(name: &str, target: &str) -> String {
    format!(
        "spec: flatmachine\nspec_version: \"1.0.0\"\ndata:\n  name: {name}\n  states:\n    start:\n      type: initial\n      transitions:\n        - to: {target}\n    done:\n      type: final\n"
    )
}

#[test]
fn two_machines_with_the_same_module_are_an_error_naming_both_files() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    std::fs::create_dir_all(&out).unwrap();
    let a = dir.path().join("a.yml");
    let b = dir.path().join("b.yml");
    std::fs::write(&a, machine("orders", "done")).unwrap();
    std::fs::write(&b, machine("orders", "done")).unwrap();
    let err = Builder::new()
        .machine(&a)
        .machine(&b)
        .out_dir(&out)
        .cargo_output(false)
        .compile()
        .unwrap_err();
    assert!(err.rendered.contains("same module `orders`"), "{err}");
    assert!(err.rendered.contains("a.yml"), "{err}");
    assert!(err.rendered.contains("b.yml"), "{err}");
    assert_eq!(err.failures.len(), 1);
    assert_eq!(err.failures[0].0.as_deref(), Some(b.as_path()));
}

#[test]
fn every_failing_machine_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    std::fs::create_dir_all(&out).unwrap();
    let bad1 = dir.path().join("bad1.yml");
    let good = dir.path().join("good.yml");
    let bad2 = dir.path().join("bad2.yml");
    std::fs::write(&bad1, machine("bad_one", "nowhere_one")).unwrap();
    std::fs::write(&good, machine("good", "done")).unwrap();
    std::fs::write(&bad2, machine("bad_two", "nowhere_two")).unwrap();
    let err = Builder::new()
        .machines([&bad1, &good, &bad2])
        .out_dir(&out)
        .cargo_output(false)
        .compile()
        .unwrap_err();
    assert_eq!(err.failures.len(), 2, "{err}");
    assert!(err.rendered.contains("nowhere_one"), "{err}");
    assert!(err.rendered.contains("nowhere_two"), "{err}");
    // The good machine was still written.
    assert!(out.join("good.rs").exists());
}

/// A build script's `main` returning the error prints its `Debug` form: the diagnostics as
/// rustc prints them (real newlines, each diagnostic once), not an escaped struct dump.
#[test]
fn debug_prints_the_diagnostics_as_rustc_does() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.yml");
    std::fs::write(&bad, machine("bad_one", "nowhere_one")).unwrap();
    let err = Builder::new()
        .machines([&bad])
        .out_dir(dir.path())
        .cargo_output(false)
        .compile()
        .unwrap_err();
    let debug = format!("{err:?}");
    assert_eq!(debug, err.to_string());
    assert!(!debug.contains("BuildError {"), "{debug}");
    assert!(!debug.contains("\\n"), "{debug}");
    assert!(debug.contains("\n") && debug.contains("--> "), "{debug}");
    assert_eq!(
        debug.matches("nowhere_one").count(),
        err.rendered.matches("nowhere_one").count()
    );
}

#[test]
fn silencing_warnings_keeps_rerun_if_changed() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    std::fs::create_dir_all(&out).unwrap();
    // No state marked `initial` (only `start` by name): a compiler warning.
    let warned = dir.path().join("warned.yml");
    std::fs::write(
        &warned,
        "spec: flatmachine\nspec_version: \"1.0.0\"\ndata:\n  name: warned\n  states:\n    start:\n      transitions:\n        - to: done\n    done:\n      type: final\n",
    )
    .unwrap();
    let lines = |warnings: bool| {
        let mut lines = Vec::new();
        Builder::new()
            .machine(&warned)
            .out_dir(&out)
            .cargo_output(true)
            .cargo_warnings(warnings)
            .compile_with(&mut |l| lines.push(l))
            .unwrap();
        lines
    };
    let loud = lines(true);
    assert!(
        loud.iter().any(|l| l.starts_with("cargo:warning=")),
        "{loud:?}"
    );
    let quiet = lines(false);
    assert!(
        !quiet.iter().any(|l| l.starts_with("cargo:warning=")),
        "{quiet:?}"
    );
    assert!(
        quiet
            .iter()
            .any(|l| l.starts_with("cargo:rerun-if-changed=") && l.ends_with("warned.yml")),
        "{quiet:?}"
    );
}

/// A `tool_loop` machine whose agent's only tools are Rust ones, with that agent.
fn rust_tool_machine(dir: &std::path::Path) -> std::path::PathBuf {
    std::fs::write(
        dir.join("counter.yml"),
        "spec: flatagent\nspec_version: \"1.0.0\"\ndata:\n  name: counter\n  model: {provider: openai, name: m}\n  system: You count.\n  user: \"{{ input.q }}\"\n",
    )
    .unwrap();
    let m = dir.join("counting.yml");
    std::fs::write(
        &m,
        "spec: flatmachine\nspec_version: \"1.0.0\"\ndata:\n  name: counting\n  agents:\n    counter: ./counter.yml\n  states:\n    start:\n      type: initial\n      agent: counter\n      input: {q: hi}\n      tool_loop: {allowed_tools: [word_count]}\n      transitions:\n        - to: done\n    done:\n      type: final\n",
    )
    .unwrap();
    m
}

#[test]
fn declared_rust_tools_reach_the_compiler() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    std::fs::create_dir_all(&out).unwrap();
    let m = rust_tool_machine(dir.path());
    // Undeclared, the agent has no tools and `word_count` is unknown.
    let err = Builder::new()
        .machine(&m)
        .out_dir(&out)
        .cargo_output(false)
        .compile()
        .unwrap_err();
    assert!(err.rendered.contains("has no tools"), "{err}");
    Builder::new()
        .machine(&m)
        .tools(["word_count"])
        .out_dir(&out)
        .cargo_output(false)
        .compile()
        .unwrap();
    assert!(out.join("counting.rs").exists());
}

/// Issue 18 #9: with cargo output off, warnings come back as values, located, on success and
/// on failure (the warnings of machines that compiled are not lost with the error).
#[test]
fn warnings_come_back_in_a_report() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    std::fs::create_dir_all(&out).unwrap();
    let warned = dir.path().join("warned.yml");
    std::fs::write(
        &warned,
        "spec: flatmachine\nspec_version: \"1.0.0\"\ndata:\n  name: warned\n  colour: blue\n  states:\n    start:\n      type: initial\n      transitions:\n        - to: done\n    done:\n      type: final\n",
    )
    .unwrap();
    let mut lines = Vec::new();
    let report = Builder::new()
        .machine(&warned)
        .out_dir(&out)
        .cargo_output(false)
        .compile_report_with(&mut |l| lines.push(l))
        .unwrap();
    assert!(lines.is_empty(), "{lines:?}");
    assert_eq!(report.machines.len(), 1);
    assert_eq!(report.warnings.len(), 1, "{:?}", report.warnings);
    let w = &report.warnings[0];
    assert_eq!(w.message, "unknown key `colour` is ignored");
    assert_eq!(w.machine, warned);
    assert!(
        w.location
            .as_deref()
            .is_some_and(|l| l.ends_with("warned.yml:5:3")),
        "{:?}",
        w.location
    );
    assert!(
        w.rendered.starts_with("warning: unknown key `colour`"),
        "{}",
        w.rendered
    );

    let bad = dir.path().join("bad.yml");
    std::fs::write(&bad, machine("bad", "nowhere")).unwrap();
    let err = Builder::new()
        .machines([&warned, &bad])
        .out_dir(&out)
        .cargo_output(false)
        .compile_report()
        .unwrap_err();
    assert_eq!(err.report.machines.len(), 1);
    let of = |m: &std::path::Path| {
        err.report
            .warnings
            .iter()
            .filter(|w| w.machine == m)
            .count()
    };
    assert_eq!(of(&warned), 1);
    assert!(of(&bad) > 0, "the failed machine's warnings too");
}

/// `typed_machine`: the user's own input / output types become `TypedMachineDef`'s, with the
/// field checks beside the module; a type that is not Rust is a reported failure.
#[test]
fn typed_machine_uses_the_users_types() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    std::fs::create_dir_all(&out).unwrap();
    let m = dir.path().join("m.yml");
    std::fs::write(
        &m,
        "spec: flatmachine\nspec_version: \"1.0.0\"\ndata:\n  name: orders\n  context:\n    id: \"{{ input.order_id }}\"\n  states:\n    start:\n      type: initial\n      transitions:\n        - to: done\n    done:\n      type: final\n      output:\n        status: ok\n",
    )
    .unwrap();
    let built = Builder::new()
        .typed_machine(&m, Some("crate::Order"), Some("crate::Outcome"))
        .out_dir(&out)
        .cargo_output(false)
        .compile()
        .unwrap_or_else(|e| panic!("{e}"));
    let text = std::fs::read_to_string(&built[0].output).unwrap();
    for expected in [
        "type __flatmachine_orders_input = crate::Order;",
        "let _ = &input.order_id;",
        "type __flatmachine_orders_output = crate::Outcome;",
        "let _ = &output.status;",
        "type Input = super::__flatmachine_orders_input;",
        "type Output = super::__flatmachine_orders_output;",
    ] {
        assert!(text.contains(expected), "missing `{expected}` in:\n{text}");
    }

    let err = Builder::new()
        .typed_machine(&m, Some("not a type"), None)
        .out_dir(&out)
        .cargo_output(false)
        .compile()
        .unwrap_err();
    assert!(
        err.rendered
            .contains("`not a type` (a type given to `typed_machine`"),
        "{err}"
    );
}
