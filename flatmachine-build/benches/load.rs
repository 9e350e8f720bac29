//! YAML loading speed against file size: a generated machine of about 1, 4 and 16 MB (a long
//! chain of states), loaded (`yaml::parse`) and fully checked (`check`: load + analysis). Both
//! must grow linearly with the size.
//!
//! `cargo bench -p flatmachine-build --bench load`

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use flatmachine_build::source::SourceDb;

/// A valid machine of at least `bytes` bytes: `start` → `s0` → `s1` → … → `done`.
pub fn big_machine(bytes: usize) -> String {
    let mut text = String::from(
        "spec: flatmachine\nspec_version: \"1.0.0\"\ndata:\n  name: big\n  context:\n    x: 0\n  states:\n    start:\n      type: initial\n      transitions:\n        - to: s0\n",
    );
    let mut i = 0;
    while text.len() < bytes {
        text.push_str(&format!(
            "    s{i}:\n      transitions:\n        - condition: \"context.x > {i}\"\n          to: done\n        - to: s{}\n",
            i + 1
        ));
        i += 1;
    }
    text.push_str(&format!(
        "    s{i}:\n      transitions:\n        - to: done\n    done:\n      type: final\n"
    ));
    text
}

fn bench(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let mut group = c.benchmark_group("load");
    // Few samples, short warm-up: the 16 MB case takes seconds per iteration.
    group
        .sample_size(10)
        .warm_up_time(std::time::Duration::from_secs(1))
        .measurement_time(std::time::Duration::from_secs(5));
    for mb in [1usize, 4, 16] {
        let text = big_machine(mb << 20);
        group.throughput(Throughput::Bytes(text.len() as u64));
        let mut db = SourceDb::new();
        let id = db.add("big.yml".into(), "big.yml".into(), text.clone());
        group.bench_with_input(BenchmarkId::new("yaml_parse", mb), &id, |b, id| {
            b.iter(|| flatmachine_build::yaml::parse(*id, db.file(*id)).is_ok())
        });
        let path = dir.path().join(format!("big{mb}.yml"));
        std::fs::write(&path, &text).unwrap();
        group.bench_with_input(BenchmarkId::new("check", mb), &path, |b, path| {
            b.iter(|| flatmachine_build::check(path, None).has_errors())
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
