//! Run-loop throughput: a 1000-visit action loop with and without checkpoints.
//!
//! `cargo bench -p flatmachine-runtime --bench engine`

// The by-value `MachineBuilder::action` form is deprecated but must keep working: these tests pin it.
#![allow(deprecated)]

use criterion::{Criterion, criterion_group, criterion_main};
use flatmachine_runtime::persistence::CheckpointStore;
use flatmachine_runtime::{Context, Machine, MachineBuilder, Value};
use serde_json::json;

flatmachine_runtime::flatmachine!("benches/machines/loop.yml");

fn builder() -> MachineBuilder {
    Machine::of::<bench_loop::Machine>()
        .max_steps(10_000)
        .action("inc", |mut ctx: Context| {
            let i = ctx.get("i").and_then(Value::as_i64).unwrap_or(0);
            ctx.insert("i".into(), json!(i + 1));
            std::future::ready(Ok(ctx))
        })
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let input = json!({"n": 1000, "label": "bench"});
    let mut group = c.benchmark_group("loop_1000_visits");
    let none = builder().no_persistence().build().unwrap();
    group.bench_function("no_checkpoints", |b| {
        b.iter(|| rt.block_on(none.run(input.clone())).unwrap())
    });
    // The default with no `persistence:` section: every event into an in-memory store (a fresh
    // store per run, as a new process would have).
    group.bench_function("memory_checkpoints", |b| {
        b.iter_batched(
            || {
                builder()
                    .persistence(CheckpointStore::memory())
                    .build()
                    .unwrap()
            },
            |m| rt.block_on(m.run(input.clone())).unwrap(),
            criterion::BatchSize::SmallInput,
        )
    });
    let dir = tempfile::tempdir().unwrap();
    let local = builder()
        .persistence(CheckpointStore::new(std::sync::Arc::new(
            flatmachine_runtime::persistence::LocalFileBackend::new(dir.path()).with_fsync(false),
        )))
        .keep_last_checkpoints(8)
        .build()
        .unwrap();
    group.sample_size(10);
    group.bench_function("local_files_no_fsync_keep_8", |b| {
        b.iter(|| rt.block_on(local.run(input.clone())).unwrap())
    });
    let dir2 = tempfile::tempdir().unwrap();
    let local_all = builder()
        .persistence(CheckpointStore::new(std::sync::Arc::new(
            flatmachine_runtime::persistence::LocalFileBackend::new(dir2.path()).with_fsync(false),
        )))
        .build()
        .unwrap();
    group.bench_function("local_files_no_fsync_keep_all", |b| {
        b.iter(|| rt.block_on(local_all.run(input.clone())).unwrap())
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
