//! Compiler speed: check and generate code for real machines from the conformance corpus.
//!
//! `cargo bench -p flatmachine-build --bench compile`

use criterion::{Criterion, criterion_group, criterion_main};
use std::path::PathBuf;

fn corpus(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared/conformance/corpus")
        .join(rel)
}

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("compile");
    for (name, rel) in [
        (
            "job_worker+child",
            "distributed_worker/config/job_worker.yml",
        ),
        ("writer_critic+agents", "writer_critic/config/machine.yml"),
        (
            "research_paper_analysis+3_children",
            "research_paper_analysis/config/machine.yml",
        ),
    ] {
        let path = corpus(rel);
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
