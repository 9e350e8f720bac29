//! The runtime's hot paths, one by one: a step, a checkpoint save per backend, template
//! rendering, a condition, child launches (`foreach`, parallel). Figures and the commands that
//! produced them are in `docs/benchmarks.md`.
//!
//! `cargo bench -p flatmachine-runtime --bench hot_paths`
//! (one group: `cargo bench -p flatmachine-runtime --bench hot_paths -- checkpoint_save`)

use std::hint::black_box;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use criterion::{BatchSize, BenchmarkId, Criterion, criterion_group, criterion_main};
use flatmachine_runtime::persistence::{CheckpointStore, LocalFileBackend, MachineSnapshot};
use flatmachine_runtime::template::{self, Scope, TemplateSlot, TemplateValue};
use flatmachine_runtime::{Context, Machine, MachineBuilder, MachineDef, StateError, Value};
use serde_json::json;

flatmachine_runtime::flatmachine!("benches/machines/loop.yml");
flatmachine_runtime::flatmachine!("benches/machines/templates20.yml");
flatmachine_runtime::flatmachine!("benches/machines/foreach.yml");
flatmachine_runtime::flatmachine!("benches/machines/parallel3.yml");

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime")
}

fn inc(ctx: &mut Context) -> Result<(), StateError> {
    let i = ctx.get("i").and_then(Value::as_i64).unwrap_or(0);
    ctx.insert("i".into(), json!(i + 1));
    Ok(())
}

fn double(ctx: &mut Context) -> Result<(), StateError> {
    let x = ctx.get("x").and_then(Value::as_i64).unwrap_or(0);
    ctx.insert("y".into(), json!(x * 2));
    Ok(())
}

fn loop_machine() -> MachineBuilder {
    Machine::of::<bench_loop::Machine>()
        .max_steps(100_000)
        .action_mut("inc", |ctx, _| Box::pin(async move { inc(ctx) }))
}

fn templates_machine() -> MachineBuilder {
    Machine::of::<bench_templates20::Machine>()
        .max_steps(100_000)
        .agent("echo", |input: Value, _ctx: Context| async move {
            Ok(flatmachine_runtime::engine::AgentOutput::new(input))
        })
}

fn with_double(builder: MachineBuilder) -> MachineBuilder {
    builder
        .max_steps(100_000)
        .action_mut("double", |ctx, _| Box::pin(async move { double(ctx) }))
}

/// One state visit: the 1000-visit loop of `loop.yml` (one action, one condition), and the
/// 20-template step of `templates20.yml`, per run of 1000 visits.
fn step(c: &mut Criterion) {
    let rt = runtime();
    let input = json!({"n": 1000, "label": "bench"});
    let mut group = c.benchmark_group("step_x1000");
    let off = loop_machine().no_persistence().build().unwrap();
    group.bench_function("checkpoints_off", |b| {
        b.iter(|| rt.block_on(off.run(input.clone())).unwrap())
    });
    group.bench_function("memory_checkpoints", |b| {
        b.iter_batched(
            || {
                loop_machine()
                    .persistence(CheckpointStore::memory())
                    .build()
                    .unwrap()
            },
            |m| rt.block_on(m.run(input.clone())).unwrap(),
            BatchSize::SmallInput,
        )
    });
    let t_input = json!({"n": 1000, "title": "state machines"});
    let t_off = templates_machine().no_persistence().build().unwrap();
    group.bench_function("templates20_checkpoints_off", |b| {
        b.iter(|| rt.block_on(t_off.run(t_input.clone())).unwrap())
    });
    group.bench_function("templates20_memory_checkpoints", |b| {
        b.iter_batched(
            || {
                templates_machine()
                    .persistence(CheckpointStore::memory())
                    .build()
                    .unwrap()
            },
            |m| rt.block_on(m.run(t_input.clone())).unwrap(),
            BatchSize::SmallInput,
        )
    });
    group.finish();
}

/// A 10-key context like a small agent workflow's.
fn context() -> Context {
    let mut value = json!({
        "i": 7, "n": 1000, "title": "A draft about state machines",
        "user": {"name": "Ada", "email": "ada@example.com", "id": 42},
        "tags": ["rust", "yaml", "agents"], "score": 0.75, "approved": false,
        "notes": null, "body": "lorem ipsum ".repeat(10), "history": [1, 2, 3, 4]
    });
    std::mem::take(value.as_object_mut().unwrap())
}

fn snapshot(step: u64) -> MachineSnapshot {
    let mut snap = MachineSnapshot::new(
        "3f2a9c1e-0000-4000-8000-000000000001",
        "bench",
        "1.0.0",
        "work",
        context(),
        step,
    )
    .with_event("execute");
    snap.total_api_calls = Some(3);
    snap.total_cost = Some(0.25);
    snap
}

/// `CheckpointStore::save_shared` of one snapshot (10-key context) per backend; steps cycle
/// over 1000 keys so files are replaced, as in a long run with pruning.
fn checkpoint_save(c: &mut Criterion) {
    let rt = runtime();
    let snaps: Vec<Arc<MachineSnapshot>> = (0..1000).map(|s| Arc::new(snapshot(s))).collect();
    let counter = AtomicU64::new(0);
    let next = || snaps[(counter.fetch_add(1, Ordering::Relaxed) % 1000) as usize].clone();
    let mut group = c.benchmark_group("checkpoint_save");
    let memory = CheckpointStore::memory();
    group.bench_function("memory", |b| {
        b.iter(|| rt.block_on(memory.save_shared(next())).unwrap())
    });
    let dir = tempfile::tempdir().unwrap();
    let local = CheckpointStore::new(Arc::new(
        LocalFileBackend::new(dir.path()).with_fsync(false),
    ));
    group.bench_function("local_fsync_off", |b| {
        b.iter(|| rt.block_on(local.save_shared(next())).unwrap())
    });
    let dir2 = tempfile::tempdir().unwrap();
    let synced = CheckpointStore::new(Arc::new(LocalFileBackend::new(dir2.path())));
    group.sample_size(10);
    group.bench_function("local_fsync_on", |b| {
        b.iter(|| rt.block_on(synced.save_shared(next())).unwrap())
    });
    group.finish();
}

static T_PATH: TemplateSlot = TemplateSlot::new("{{ input.item }}");
static T_MIXED: TemplateSlot =
    TemplateSlot::new("Hello {{ context.user.name }}, step {{ context.i }} of {{ context.n }}");
static T_BARE: TemplateSlot = TemplateSlot::new("context.user.name");
static F: [TemplateSlot; 20] = [
    TemplateSlot::new("{{ context.i }}"),
    TemplateSlot::new("{{ context.n }}"),
    TemplateSlot::new("{{ context.title }}"),
    TemplateSlot::new("{{ context.user.name }}"),
    TemplateSlot::new("{{ context.user.email }}"),
    TemplateSlot::new("{{ context.user.id }}"),
    TemplateSlot::new("{{ context.tags }}"),
    TemplateSlot::new("{{ context.tags[0] }}"),
    TemplateSlot::new("Hello {{ context.user.name }}!"),
    TemplateSlot::new("{{ context.title }} #{{ context.i }}"),
    TemplateSlot::new("{{ context.title | upper }}"),
    TemplateSlot::new("{{ context.tags | length }}"),
    TemplateSlot::new("{{ context.i + 1 }}"),
    TemplateSlot::new("{{ context.n - context.i }}"),
    TemplateSlot::new("{{ context.i > 5 }}"),
    TemplateSlot::new("{{ input.title }}"),
    TemplateSlot::new("{{ context.user }}"),
    TemplateSlot::new("step {{ context.i }} of {{ context.n }}"),
    TemplateSlot::new("context.user.name"),
    TemplateSlot::new("{{ context.score }}"),
];
static FIELDS: [(&str, TemplateValue); 20] = [
    ("f0", TemplateValue::Str(&F[0])),
    ("f1", TemplateValue::Str(&F[1])),
    ("f2", TemplateValue::Str(&F[2])),
    ("f3", TemplateValue::Str(&F[3])),
    ("f4", TemplateValue::Str(&F[4])),
    ("f5", TemplateValue::Str(&F[5])),
    ("f6", TemplateValue::Str(&F[6])),
    ("f7", TemplateValue::Str(&F[7])),
    ("f8", TemplateValue::Str(&F[8])),
    ("f9", TemplateValue::Str(&F[9])),
    ("f10", TemplateValue::Str(&F[10])),
    ("f11", TemplateValue::Str(&F[11])),
    ("f12", TemplateValue::Str(&F[12])),
    ("f13", TemplateValue::Str(&F[13])),
    ("f14", TemplateValue::Str(&F[14])),
    ("f15", TemplateValue::Str(&F[15])),
    ("f16", TemplateValue::Str(&F[16])),
    ("f17", TemplateValue::Str(&F[17])),
    ("f18", TemplateValue::Str(&F[18])),
    ("f19", TemplateValue::Str(&F[19])),
];

/// Template rendering on the 10-key context: building a state's scope, one plain path,
/// a mixed-text template, a bare path, and a 20-field map (the scope built once).
fn templates(c: &mut Criterion) {
    let ctx = context();
    let item = json!({"id": 7, "text": "hello"});
    let mut group = c.benchmark_group("template");
    group.bench_function("scope_for_state", |b| {
        b.iter(|| Scope::for_state(black_box(&ctx)))
    });
    let scope = Scope::for_state(&ctx);
    let input_scope = Scope::new(&ctx).with_input(&json!({"item": item}));
    group.bench_function("single_path", |b| {
        b.iter(|| template::render_slot(&T_PATH, black_box(&input_scope)).unwrap())
    });
    group.bench_function("mixed_text", |b| {
        b.iter(|| template::render_slot(&T_MIXED, black_box(&scope)).unwrap())
    });
    group.bench_function("bare_path", |b| {
        b.iter(|| template::render_slot(&T_BARE, black_box(&scope)).unwrap())
    });
    let map = TemplateValue::Map(&FIELDS);
    group.bench_function("fields_20", |b| {
        b.iter(|| template::render(&map, black_box(&scope)).unwrap())
    });
    group.bench_function("fields_20_with_scope", |b| {
        b.iter(|| template::render(&map, &Scope::for_state(black_box(&ctx))).unwrap())
    });
    group.finish();
}

/// The loop machine's compiled condition (`context.i < context.n and context.label != ''`).
fn condition(c: &mut Criterion) {
    let transition = bench_loop::Machine::spec().transition;
    let mut ctx = context();
    ctx.insert("label".into(), json!("bench"));
    assert_eq!(transition(0, &ctx), Ok(Some(0)));
    c.bench_function("condition/compiled_simple", |b| {
        b.iter(|| transition(black_box(0), black_box(&ctx)))
    });
}

/// Child launches: a `foreach` over N items (each a two-state child machine), and a loop of
/// 100 visits each running three children in parallel.
fn children(c: &mut Criterion) {
    let rt = runtime();
    let mut group = c.benchmark_group("children");
    for n in [10usize, 100, 1000] {
        let items: Vec<usize> = (0..n).collect();
        let input = json!({ "items": items });
        let off = with_double(Machine::of::<bench_foreach::Machine>())
            .no_persistence()
            .build()
            .unwrap();
        group.bench_with_input(BenchmarkId::new("foreach_off", n), &input, |b, input| {
            b.iter(|| rt.block_on(off.run(input.clone())).unwrap())
        });
        group.bench_with_input(BenchmarkId::new("foreach_memory", n), &input, |b, input| {
            b.iter_batched(
                || {
                    with_double(Machine::of::<bench_foreach::Machine>())
                        .persistence(CheckpointStore::memory())
                        .build()
                        .unwrap()
                },
                |m| rt.block_on(m.run(input.clone())).unwrap(),
                BatchSize::SmallInput,
            )
        });
    }
    let input = json!({"n": 100});
    let par = with_double(Machine::of::<bench_parallel3::Machine>())
        .no_persistence()
        .build()
        .unwrap();
    group.bench_function("parallel3_x100_off", |b| {
        b.iter(|| rt.block_on(par.run(input.clone())).unwrap())
    });
    group.bench_function("parallel3_x100_memory", |b| {
        b.iter_batched(
            || {
                with_double(Machine::of::<bench_parallel3::Machine>())
                    .persistence(CheckpointStore::memory())
                    .build()
                    .unwrap()
            },
            |m| rt.block_on(m.run(input.clone())).unwrap(),
            BatchSize::SmallInput,
        )
    });
    group.finish();
}

criterion_group!(
    benches,
    step,
    checkpoint_save,
    templates,
    condition,
    children
);
criterion_main!(benches);
