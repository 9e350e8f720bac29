//! One condition evaluation on a 20-key context: the simple language (compiled to Rust) next to
//! the same condition in CEL (interpreted by the `cel` crate).
//!
//! `cargo bench -p flatmachine-runtime --bench conditions`

use criterion::{Criterion, criterion_group, criterion_main};
use flatmachine_runtime::cel::CelProgram;
use flatmachine_runtime::{Context, MachineDef};
use serde_json::json;
use std::hint::black_box;

flatmachine_runtime::flatmachine!("benches/machines/cond_simple.yml");
flatmachine_runtime::flatmachine!("benches/machines/cond_cel.yml");

/// 20 keys: the two the condition reads, and 18 others (scalars, strings, lists, objects).
fn context() -> Context {
    let mut value = json!({
        "score": 9, "round": 2,
        "title": "A draft about state machines", "body": "lorem ipsum ".repeat(20),
        "author": {"name": "Ada", "email": "ada@example.com"},
        "tags": ["rust", "cel", "yaml", "agents"],
        "history": [{"round": 1, "score": 5}, {"round": 2, "score": 9}],
        "approved": false, "ratio": 0.75, "retries": 0, "lang": "en", "model": "gpt",
        "notes": null, "max_rounds": 4, "threshold": 8, "critic": "strict",
        "feedback": "tighten the intro", "meta": {"a": 1, "b": [1, 2, 3]},
        "deadline": "2026-12-01T00:00:00Z", "id": "run-42"
    });
    let map = value.as_object_mut().unwrap();
    assert_eq!(map.len(), 20);
    std::mem::take(map)
}

fn bench(c: &mut Criterion) {
    let ctx = context();
    let simple = bench_cond_simple::Machine::spec().transition;
    let cel = bench_cond_cel::Machine::spec().transition;
    assert_eq!(simple(0, &ctx), Ok(Some(1)));
    assert_eq!(cel(0, &ctx), Ok(Some(1)));
    let mut group = c.benchmark_group("condition_20_keys");
    group.bench_function("simple", |b| {
        b.iter(|| simple(black_box(0), black_box(&ctx)))
    });
    group.bench_function("cel", |b| b.iter(|| cel(black_box(0), black_box(&ctx))));
    // The same CEL condition converting the whole context, as for a condition that uses
    // `context` as a whole (`size(context)`, `context[k]`).
    static WHOLE: CelProgram = CelProgram::new("context.score >= 8 && context.round < 4", None);
    group.bench_function("cel_whole_context", |b| {
        b.iter(|| WHOLE.eval(black_box(&ctx)))
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
