//! Macro time: what `flatmachine!` does for one machine (load every file, schema-check,
//! analyse, generate tokens), and what `flatmachine expand` / the snapshots add on top of it
//! (pretty-printing), for a 50-state chain, the writer/critic example and (when
//! `FLATMACHINE_CONFORMANCE_DIR` names the conformance corpus) a larger corpus machine. Prints the size of the
//! generated code first.
//!
//! `cargo bench -p flatmachine-build --bench expand`

use criterion::{Criterion, criterion_group, criterion_main};
use flatmachine_build::CodegenOptions;
use std::path::{Path, PathBuf};

#[path = "chain.rs"]
mod chain;

/// What the macro passes (it tracks files read and turns warnings into deprecations).
fn macro_options() -> CodegenOptions {
    CodegenOptions {
        track_files_read: true,
        warnings_as_deprecations: true,
        ..Default::default()
    }
}

/// A file of this repository.
fn repo(rel: &str) -> Option<PathBuf> {
    Some(
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("..")
            .join(rel),
    )
}

/// A file of the optional conformance corpus (`$FLATMACHINE_CONFORMANCE_DIR/corpus/...`; a
/// relative directory is taken from the repository root).
fn corpus(rel: &str) -> Option<PathBuf> {
    let dir = std::env::var_os("FLATMACHINE_CONFORMANCE_DIR").filter(|d| !d.is_empty());
    if dir.is_none() {
        eprintln!("note: FLATMACHINE_CONFORMANCE_DIR is not set; skipping corpus machine {rel}");
    }
    let dir = dir?;
    repo("").map(|root| root.join(dir).join("corpus").join(rel))
}

fn report_size(name: &str, path: &Path, states: usize) {
    match flatmachine_build::compile(path, None, &CodegenOptions::default()) {
        Ok(c) => {
            let lines = c.pretty().lines().count();
            eprintln!(
                "{name}: {lines} generated lines, {states} states, {:.1} lines/state",
                lines as f64 / states as f64
            );
        }
        Err(c) => eprintln!("{name}: does not compile:\n{}", c.render(false)),
    }
}

fn bench(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let mut machines: Vec<(String, PathBuf)> = Vec::new();
    for (name, rich) in [("chain50", false), ("chain50_rich", true)] {
        let path = dir.path().join(format!("{name}.yml"));
        std::fs::write(&path, chain::chain_machine(50, rich)).unwrap();
        report_size(name, &path, 50);
        machines.push((name.to_string(), path));
    }
    for (name, path) in [
        (
            "writer_critic",
            repo("examples/machines/writer_critic/machine.yml"),
        ),
        (
            "research_paper_analysis",
            corpus("research_paper_analysis/config/machine.yml"),
        ),
    ] {
        let Some(path) = path else { continue };
        if path.exists() {
            machines.push((name.to_string(), path));
        } else {
            eprintln!("skipping {name}: {} not found", path.display());
        }
    }

    let mut group = c.benchmark_group("expand");
    for (name, path) in &machines {
        let opts = macro_options();
        // The macro: tokens, never pretty-printed.
        group.bench_function(format!("macro/{name}"), |b| {
            b.iter(|| match flatmachine_build::compile(path, None, &opts) {
                Ok(c) => c.tokens.is_empty(),
                Err(_) => true,
            })
        });
        // `flatmachine expand` and the snapshots: the same plus prettyplease.
        group.bench_function(format!("expand+pretty/{name}"), |b| {
            b.iter(
                || match flatmachine_build::compile(path, None, &CodegenOptions::default()) {
                    Ok(c) => c.pretty().len(),
                    Err(_) => 0,
                },
            )
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
