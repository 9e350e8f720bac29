//! Compiler speed: check and generate code for the example machines of this repository, and for
//! a larger machine of the conformance corpus when `FLATMACHINE_CONFORMANCE_DIR` names it.
//!
//! `cargo bench -p flatmachine-build --bench compile`

use criterion::{Criterion, criterion_group, criterion_main};
use std::path::PathBuf;

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

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("compile");
    for (name, path) in [
        (
            "job_worker+child",
            repo("examples/machines/distributed/job_worker.yml"),
        ),
        (
            "writer_critic+agents",
            repo("examples/machines/writer_critic/machine.yml"),
        ),
        (
            "research_paper_analysis+3_children",
            corpus("research_paper_analysis/config/machine.yml"),
        ),
    ] {
        let Some(path) = path else { continue };
        if !path.exists() {
            eprintln!("skipping {name}: {} not found", path.display());
            continue;
        }
        group.bench_function(format!("check/{name}"), |b| {
            b.iter(|| flatmachine_build::check(&path, None))
        });
        group.bench_function(format!("compile+pretty/{name}"), |b| {
            b.iter(
                || match flatmachine_build::compile(&path, None, &Default::default()) {
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
