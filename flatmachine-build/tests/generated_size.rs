//! The generated code stays lean: a 50-state chain machine expands to at most 40 lines of
//! pretty-printed Rust per state (`docs/benchmarks.md`, "Generated code").

#[path = "../benches/chain.rs"]
mod chain;

/// Lines of `flatmachine expand` output for a chain of `states` states.
fn expanded_lines(states: usize, rich: bool) -> usize {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("chain.yml");
    std::fs::write(&path, chain::chain_machine(states, rich)).unwrap();
    let compiled = flatmachine_build::compile(&path, None, &Default::default())
        .unwrap_or_else(|c| panic!("the chain should compile:\n{}", c.render(false)));
    let text = compiled.pretty();
    syn::parse_file(&text).expect("generated code parses");
    text.lines().count()
}

#[test]
fn a_50_state_chain_generates_at_most_40_lines_per_state() {
    for rich in [false, true] {
        let lines = expanded_lines(50, rich);
        assert!(
            lines <= 50 * 40,
            "50-state chain (rich: {rich}) generated {lines} lines ({} per state)",
            lines / 50
        );
    }
}

#[test]
fn each_state_adds_a_bounded_number_of_lines() {
    // The marginal cost of a state, without the fixed per-machine part: bigger machines stay
    // under the target too (the plain chain's states cost ~16 lines, the rich ones ~34).
    for (rich, most) in [(false, 20.0), (true, 36.0)] {
        let per_state = (expanded_lines(60, rich) - expanded_lines(10, rich)) as f64 / 50.0;
        assert!(
            per_state <= most,
            "a state costs {per_state} lines (rich: {rich})"
        );
    }
}
