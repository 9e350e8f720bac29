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
