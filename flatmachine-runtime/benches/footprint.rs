//! Memory footprint and CPU time of the runtime's scenarios: heap held by an in-memory
//! checkpoint store after a 10,000-visit loop; peak RSS and time of a `foreach` over 1,000
//! children; and the CPU time (of the one thread running everything, read from
//! `/proc/thread-self/schedstat`, so other processes' load does not inflate it) per run of the
//! step, template and children scenarios. Each scenario runs in a fresh process (this binary
//! re-executed), so its peak RSS is its own.
//!
//! `cargo bench -p flatmachine-runtime --bench footprint` (one scenario: add its name, e.g.
//! `-- cpu`)

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use flatmachine_runtime::persistence::CheckpointStore;
use flatmachine_runtime::{Context, Machine, StateError, Value};
use serde_json::json;

flatmachine_runtime::flatmachine!("benches/machines/loop.yml");
flatmachine_runtime::flatmachine!("benches/machines/foreach.yml");
flatmachine_runtime::flatmachine!("benches/machines/templates20.yml");
flatmachine_runtime::flatmachine!("benches/machines/parallel3.yml");

/// The system allocator, counting live and peak heap bytes.
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded unchanged to the system allocator.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            let now = LIVE.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
            PEAK.fetch_max(now, Ordering::Relaxed);
        }
        p
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.dealloc(ptr, layout) };
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: forwarded unchanged to the system allocator.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            let now = if new_size >= layout.size() {
                LIVE.fetch_add(new_size - layout.size(), Ordering::Relaxed) + new_size
                    - layout.size()
            } else {
                LIVE.fetch_sub(layout.size() - new_size, Ordering::Relaxed)
                    - (layout.size() - new_size)
            };
            PEAK.fetch_max(now, Ordering::Relaxed);
        }
        p
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

const MIB: f64 = 1024.0 * 1024.0;

fn peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime")
}

fn memory_store_10k() {
    let rt = runtime();
    let store = CheckpointStore::memory();
    let machine = Machine::of::<bench_loop::Machine>()
        .max_steps(100_000)
        .action_mut("inc", |ctx: &mut Context, _| {
            Box::pin(async move {
                let i = ctx.get("i").and_then(Value::as_i64).unwrap_or(0);
                ctx.insert("i".into(), json!(i + 1));
                Ok::<(), StateError>(())
            })
        })
        .persistence(store.clone())
        .build()
        .unwrap();
    let before = LIVE.load(Ordering::Relaxed);
    let start = Instant::now();
    let result = rt
        .block_on(machine.run(json!({"n": 10_000, "label": "bench"})))
        .unwrap();
    let elapsed = start.elapsed();
    drop(machine);
    let held = LIVE.load(Ordering::Relaxed) - before;
    let keys = rt
        .block_on(store.checkpoint_keys(&result.execution_id))
        .unwrap()
        .len();
    println!(
        "memory_store_10k: {} steps, {keys} snapshots, store holds {:.1} MiB ({} bytes/snapshot), {:.2} ms, peak RSS {:.1} MiB",
        result.steps,
        held as f64 / MIB,
        held / keys.max(1),
        elapsed.as_secs_f64() * 1e3,
        peak_rss_kib() as f64 / 1024.0
    );
}

fn foreach_1000(persist: bool) {
    let rt = runtime();
    let builder = Machine::of::<bench_foreach::Machine>().action_mut("double", |ctx, _| {
        Box::pin(async move {
            let x = ctx.get("x").and_then(Value::as_i64).unwrap_or(0);
            ctx.insert("y".into(), json!(x * 2));
            Ok(())
        })
    });
    let machine = if persist {
        builder.persistence(CheckpointStore::memory())
    } else {
        builder.no_persistence()
    }
    .build()
    .unwrap();
    let items: Vec<usize> = (0..1000).collect();
    let start = Instant::now();
    let result = rt.block_on(machine.run(json!({ "items": items }))).unwrap();
    let elapsed = start.elapsed();
    assert_eq!(result.output, json!({"count": 1000}));
    println!(
        "foreach_1000 ({}): {:.2} ms, heap peak {:.1} MiB, peak RSS {:.1} MiB",
        if persist {
            "memory checkpoints"
        } else {
            "checkpoints off"
        },
        elapsed.as_secs_f64() * 1e3,
        PEAK.load(Ordering::Relaxed) as f64 / MIB,
        peak_rss_kib() as f64 / 1024.0
    );
}

/// CPU time of this thread so far, in nanoseconds.
fn thread_cpu_ns() -> u64 {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// Runs `f` `iters` times after 3 warm-up runs; prints the median CPU time of 5 rounds per
/// run and per `unit` (steps, children).
fn cpu(name: &str, iters: u32, units: f64, unit: &str, mut f: impl FnMut()) {
    for _ in 0..3 {
        f();
    }
    let mut rounds = Vec::new();
    for _ in 0..5 {
        let start = thread_cpu_ns();
        for _ in 0..iters {
            f();
        }
        rounds.push((thread_cpu_ns() - start) as f64 / f64::from(iters));
    }
    rounds.sort_by(f64::total_cmp);
    let per_run = rounds[2];
    println!(
        "{name:<34} {:>12.1} µs/run {:>10.3} µs/{unit}",
        per_run / 1e3,
        per_run / 1e3 / units
    );
}

fn double(ctx: &mut Context) -> Result<(), StateError> {
    let x = ctx.get("x").and_then(Value::as_i64).unwrap_or(0);
    ctx.insert("y".into(), json!(x * 2));
    Ok(())
}

fn cpu_scenarios() {
    let rt = runtime();
    let inc = |b: flatmachine_runtime::MachineBuilder| {
        b.max_steps(100_000)
            .action_mut("inc", |ctx: &mut Context, _| {
                Box::pin(async move {
                    let i = ctx.get("i").and_then(Value::as_i64).unwrap_or(0);
                    ctx.insert("i".into(), json!(i + 1));
                    Ok::<(), StateError>(())
                })
            })
    };
    let input = json!({"n": 1000, "label": "bench"});
    let off = inc(Machine::of::<bench_loop::Machine>())
        .no_persistence()
        .build()
        .unwrap();
    cpu("loop 1000, checkpoints off", 50, 1001.0, "step", || {
        rt.block_on(off.run(input.clone())).unwrap();
    });
    cpu("loop 1000, memory checkpoints", 20, 1001.0, "step", || {
        let m = inc(Machine::of::<bench_loop::Machine>())
            .persistence(CheckpointStore::memory())
            .build()
            .unwrap();
        rt.block_on(m.run(input.clone())).unwrap();
    });
    let templates = |b: flatmachine_runtime::MachineBuilder| {
        b.max_steps(100_000)
            .agent("echo", |input: Value, _ctx: Context| async move {
                Ok(flatmachine_runtime::AgentOutput::new(input))
            })
    };
    let t_input = json!({"n": 1000, "title": "state machines"});
    let t_off = templates(Machine::of::<bench_templates20::Machine>())
        .no_persistence()
        .build()
        .unwrap();
    cpu("20 templates x1000, off", 10, 1001.0, "step", || {
        rt.block_on(t_off.run(t_input.clone())).unwrap();
    });
    cpu("20 templates x1000, memory", 10, 1001.0, "step", || {
        let m = templates(Machine::of::<bench_templates20::Machine>())
            .persistence(CheckpointStore::memory())
            .build()
            .unwrap();
        rt.block_on(m.run(t_input.clone())).unwrap();
    });
    let with_double = |b: flatmachine_runtime::MachineBuilder| {
        b.max_steps(100_000)
            .action_mut("double", |ctx, _| Box::pin(async move { double(ctx) }))
    };
    let items: Vec<usize> = (0..1000).collect();
    let f_input = json!({ "items": items });
    let f_off = with_double(Machine::of::<bench_foreach::Machine>())
        .no_persistence()
        .build()
        .unwrap();
    cpu("foreach 1000, off", 5, 1000.0, "child", || {
        rt.block_on(f_off.run(f_input.clone())).unwrap();
    });
    cpu("foreach 1000, memory", 5, 1000.0, "child", || {
        let m = with_double(Machine::of::<bench_foreach::Machine>())
            .persistence(CheckpointStore::memory())
            .build()
            .unwrap();
        rt.block_on(m.run(f_input.clone())).unwrap();
    });
    let p_input = json!({"n": 100});
    let p_off = with_double(Machine::of::<bench_parallel3::Machine>())
        .no_persistence()
        .build()
        .unwrap();
    cpu("parallel of 3 x100, off", 10, 101.0, "step", || {
        rt.block_on(p_off.run(p_input.clone())).unwrap();
    });
    cpu("parallel of 3 x100, memory", 10, 101.0, "step", || {
        let m = with_double(Machine::of::<bench_parallel3::Machine>())
            .persistence(CheckpointStore::memory())
            .build()
            .unwrap();
        rt.block_on(m.run(p_input.clone())).unwrap();
    });
}

fn main() {
    let scenario = std::env::args().skip(1).find(|a| !a.starts_with("--"));
    match scenario.as_deref() {
        Some("memory_store_10k") => memory_store_10k(),
        Some("foreach_1000_off") => foreach_1000(false),
        Some("foreach_1000_memory") => foreach_1000(true),
        Some("cpu") => cpu_scenarios(),
        Some(other) => eprintln!("unknown scenario `{other}`"),
        None => {
            let exe = std::env::current_exe().expect("the benchmark binary");
            for name in [
                "memory_store_10k",
                "foreach_1000_off",
                "foreach_1000_memory",
                "cpu",
            ] {
                let status = std::process::Command::new(&exe)
                    .arg(name)
                    .status()
                    .expect("re-run the benchmark binary");
                assert!(status.success(), "{name} failed");
            }
        }
    }
}
